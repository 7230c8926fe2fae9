"""Data conventions of DESIGN.md section 2, checked against hand-written inputs with known contents.

Raw ``.skeleton`` text is written here line by line (not through ``format_skeleton``), so a parser
that shares a mistake with the writer still fails. Every value encodes where it came from (frame,
body, 1-based joint line), so an off-by-one joint, a swapped column or a swapped person shows.
"""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from skelcl.data import SkeletonArrays, load_dataset
from skelcl.data.ntu import SkeletonFormatError, parse_skeleton
from skelcl.data.prepare import prepare_ntu
from skelcl.data.splits import (
    NTU60_TRAIN_SUBJECTS,
    NTU120_TRAIN_SUBJECTS,
    missing_skeleton_samples,
    ntu_split,
    parse_ntu_names,
)

RAW = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ntu_raw")
ONE = os.path.join(RAW, "S001C001P001R001A011.skeleton")
TWO = os.path.join(RAW, "S001C003P008R002A058.skeleton")
needs_raw = pytest.mark.skipif(not (os.path.isfile(ONE) and os.path.isfile(TWO)), reason="NTU samples absent")

BIG_ID = 72057594037931101  # a real Kinect tracking id: above 2**53


# ---------------------------------------------------------------------------------------------------
# hand-written raw files


def _pos(t: int, k: int, j: int, motion: float) -> tuple[float, float, float]:
    """Position of 0-based joint ``j`` of body ``k`` at frame ``t``: a standing figure (tall in y)."""
    return (round(0.01 * j + 0.5 * k, 4), round(0.1 * j - 1.0, 4), round(3.0 + motion * t + 0.001 * j, 4))


def _flat_pos(t: int, j: int) -> tuple[float, float, float]:
    """A wide, flat detection (furniture): x-extent far above the y-extent, and lots of motion."""
    return (round(-1.5 + 0.125 * j + 0.3 * (t % 2), 4), round(0.001 * j, 4), round(2.0 + 0.4 * (t % 3), 4))


def _joint_line(p, j: int) -> str:
    # depth, colour and orientation columns hold values no position has: a swapped column shows
    pixels = f"{250 + j}.5 {200 + j}.25 {900 + j}.5 {500 + j}.25"
    return f"{p[0]} {p[1]} {p[2]} {pixels} 0.5 -0.5 0.25 -0.25 {j % 3}"


def _raw_text(num_frames: int, bodies: list[tuple[int, list[int], object]], newline: str = "\r\n") -> str:
    """``bodies``: (body id, frames, pos(t, j) -> xyz) in listing order within each frame."""
    out = [str(num_frames)]
    for t in range(num_frames):
        here = [(bid, pos) for bid, frames, pos in bodies if t in frames]
        out.append(str(len(here)))
        for bid, pos in here:
            out.append(f"{bid} 0 1 1 0 0 0 0.01 -0.02 2")
            out.append("25")
            out += [_joint_line(pos(t, j), j) for j in range(25)]
    return newline.join(out) + newline


# a 22-frame scene: frames 0-1 and 20-21 empty, frame 12 empty in the middle, four bodies
A_FRAMES = [*range(2, 12), *range(13, 20)]  # 17 frames, small motion
B_FRAMES = [*range(2, 10), *range(14, 20)]  # 14 frames, large motion: person 0
C_FRAMES = list(range(5, 10))  # 5 frames: short-lived noise, dropped
D_FRAMES = list(range(2, 20))  # flat: dropped by the spread rule
SCENE = [
    (BIG_ID, A_FRAMES, lambda t, j: _pos(t, 0, j, 0.001)),
    (17, C_FRAMES, lambda t, j: _pos(t, 2, j, 0.9)),
    (BIG_ID + 3, B_FRAMES, lambda t, j: _pos(t, 1, j, 0.05)),
    (99, D_FRAMES, _flat_pos),
]
ONE_BODY = [(7, list(range(13)), lambda t, j: _pos(t, 0, j, 0.02))]  # 13 frames: not noise


def _expected_scene() -> np.ndarray:
    """(3, 18, 25, 2): frames 2..19, person 0 = body B, person 1 = body A, everything else zero."""
    x = np.zeros((3, 18, 25, 2), np.float32)
    for m, (frames, k, motion) in enumerate(((B_FRAMES, 1, 0.05), (A_FRAMES, 0, 0.001))):
        for t in frames:
            for j in range(25):
                x[:, t - 2, j, m] = np.array(_pos(t, k, j, motion), dtype=np.float32)
    return x


def test_hand_written_file_exact_values():
    s = parse_skeleton(_raw_text(22, SCENE).encode(), "scene.skeleton")
    assert s.num_frames == 22
    # order of first appearance (frame 2 lists A, B, D; C comes at frame 5); ids survive exactly
    assert [b.body_id for b in s.bodies] == [BIG_ID, BIG_ID + 3, 99, 17]
    a, b, _, c = s.bodies
    assert a.frames.tolist() == A_FRAMES and b.frames.tolist() == B_FRAMES and c.frames.tolist() == C_FRAMES
    assert a.xyz.dtype == np.float32 and a.xyz.shape == (17, 25, 3)
    # joint line k (1-based, k = 1..25) is index k - 1; columns 0-2 are x, y, z
    for i, t in enumerate(B_FRAMES):
        for j in (0, 1, 20, 24):
            np.testing.assert_array_equal(b.xyz[i, j], np.array(_pos(t, 1, j, 0.05), np.float32))
            np.testing.assert_array_equal(b.depth_xy[i, j], [250 + j + 0.5, 200 + j + 0.25])
            np.testing.assert_array_equal(b.color_xy[i, j], [900 + j + 0.5, 500 + j + 0.25])
            np.testing.assert_array_equal(b.orientation[i, j], [0.5, -0.5, 0.25, -0.25])
    assert b.tracking_state[0].tolist() == [j % 3 for j in range(25)]
    np.testing.assert_array_equal(a.lean[0], np.array([0.01, -0.02], np.float32))
    assert a.clipped_edges[0] == 0 and a.hand_left_confidence[0] == 1 and a.body_tracking_state[0] == 2


def test_lf_and_crlf_parse_the_same():
    crlf = parse_skeleton(_raw_text(22, SCENE).encode(), "a")
    lf = parse_skeleton(_raw_text(22, SCENE, newline="\n").encode(), "b")
    for p, q in zip(crlf.bodies, lf.bodies):
        np.testing.assert_array_equal(p.xyz, q.xyz)
        np.testing.assert_array_equal(p.frames, q.frames)


# ---------------------------------------------------------------------------------------------------
# malformed files: a clear error naming the file and the line, never garbage or a deep crash


def _lines() -> list[str]:
    return _raw_text(3, [(5, [0, 1, 2], lambda t, j: _pos(t, 0, j, 0.01))], newline="\n").splitlines()


def _expect(lines: list[str], line: int, words: str):
    with pytest.raises(SkeletonFormatError) as info:
        parse_skeleton(("\n".join(lines) + "\n").encode(), "bad.skeleton")
    msg = str(info.value)
    assert msg.startswith(f"bad.skeleton:{line}:") and words in msg, msg


def test_field_counts_that_cancel_out_are_an_error():
    # line 6 gets a 13th field, line 7 loses one: the file still holds 12 numbers per joint overall
    lines = _lines()
    extra = lines[6].split()
    lines[5] += " " + extra[0]
    lines[6] = " ".join(extra[1:])
    _expect(lines, 6, "13 fields")


def test_joint_lines_merged_with_a_blank_line_are_an_error():
    lines = _lines()
    lines[5] = lines[5] + " " + lines[6]
    lines[6] = ""
    _expect(lines, 6, "24 fields")


def test_other_malformed_lines_name_their_line():
    lines = _lines()
    lines[2] = " ".join(lines[2].split()[:9])  # body info line with 9 fields
    _expect(lines, 3, "9 fields")
    lines = _lines()
    lines[1] = "-1"
    _expect(lines, 2, "negative")
    lines = _lines()
    lines[3] = "twenty-five"
    _expect(lines, 4, "joint count")
    lines = _lines()
    lines[2] = "abc " + " ".join(lines[2].split()[1:])
    _expect(lines, 3, "body id")
    lines = _lines() + ["1"]
    _expect(lines, len(lines), "after the last frame")
    lines = _lines()
    lines[0] = "4"  # one frame more than the file holds
    _expect(lines, len(lines), "ends early")


def test_raw_directory_names_a_malformed_file(tmp_path):
    lines = _lines()
    lines[10] = lines[10].replace("0.5", "x.5", 1)
    (tmp_path / "S001C001P001R001A001.skeleton").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"S001C001P001R001A001\.skeleton:11:"):
        load_dataset(tmp_path)


# ---------------------------------------------------------------------------------------------------
# raw files -> (N, 3, T, V, M) float32: body selection, person order, absent slots, labels


def test_scene_through_the_raw_directory_loader(tmp_path):
    (tmp_path / "S002C003P004R002A013.skeleton").write_text(_raw_text(22, SCENE))
    d = load_dataset(tmp_path)
    assert d.x.dtype == np.float32 and d.x.shape == (1, 3, 18, 25, 2)
    np.testing.assert_array_equal(d.x[0], _expected_scene())
    assert (d.x[0, :, 12 - 2] == 0).all()  # the frame with no body stays zero for both persons
    assert d.y.tolist() == [12] and d.length.tolist() == [18]  # A013 -> label 12 (0-based)
    assert d.subject.tolist() == [4] and d.view.tolist() == [3] and d.setup.tolist() == [2]


def test_scene_through_prepare_ntu(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "S002C003P004R002A013.skeleton").write_text(_raw_text(22, SCENE))
    one = [(7, list(range(1, 14)), lambda t, j: _pos(t, 0, j, 0.02))]  # 13 frames from frame 1
    (raw / "S001C001P003R001A060.skeleton").write_text(_raw_text(15, one))
    s = prepare_ntu(raw, tmp_path / "out", "xview60", progress=False)
    assert s.num_samples == 2 and s.skipped == []
    d = load_dataset(str(tmp_path / "out"))
    assert d.x.dtype == np.float32 and d.x.shape == (2, 3, 18, 25, 2)
    assert d.name.tolist() == ["S001C001P003R001A060", "S002C003P004R002A013"]  # sorted by file name
    assert d.y.tolist() == [59, 12] and d.y.dtype == np.int64 and d.length.tolist() == [13, 18]
    np.testing.assert_array_equal(d.x[1], _expected_scene())
    first = np.zeros((3, 18, 25, 2), np.float32)
    for t in range(1, 14):
        for j in range(25):
            first[:, t - 1, j, 0] = _pos(t, 0, j, 0.02)
    np.testing.assert_array_equal(d.x[0], first)  # padding after 13 frames and person 1: exactly zero
    assert d.splits["xview60"].tolist() == [False, True] and d.num_classes == 60


def test_prepared_dataset_carries_the_benchmark_it_was_made_for(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("S001C001P003R001A060", "S002C002P045R001A001"):
        (raw / f"{name}.skeleton").write_text(_raw_text(13, ONE_BODY))
    prepare_ntu(raw, tmp_path / "out", "xset120", progress=False)
    d = load_dataset(str(tmp_path / "out"))
    assert d.num_classes == 120
    assert d.splits["xset120"].tolist() == [False, True]  # odd setup tests, even setup trains
    train, test = d.train_test("xset120")
    assert train.name.tolist() == ["S002C002P045R001A001"] and test.name.tolist() == ["S001C001P003R001A060"]


def test_file_with_no_body_is_skipped_and_reported(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "S001C001P001R001A001.skeleton").write_text("3\r\n0\r\n0\r\n0\r\n")
    (raw / "S001C001P001R001A002.skeleton").write_text(_raw_text(13, ONE_BODY))
    s = prepare_ntu(raw, tmp_path / "out", "xsub60", progress=False)
    assert s.num_samples == 1 and len(s.skipped) == 1
    assert "S001C001P001R001A001.skeleton" in s.skipped[0]["reason"] and "no body" in s.skipped[0]["reason"]


def _text_rows(path: str) -> list[list[str]]:
    with open(path) as f:
        return [line.split() for line in f]


def _independent_bodies(path: str) -> dict[int, dict[int, np.ndarray]]:
    """body id -> {frame: (25, 3) xyz}, walking the text with no code from skelcl."""
    rows = _text_rows(path)
    i, out = 1, {}
    for t in range(int(rows[0][0])):
        nb = int(rows[i][0])
        i += 1
        for _ in range(nb):
            bid = int(rows[i][0])
            assert int(rows[i + 1][0]) == 25
            out.setdefault(bid, {})[t] = np.array([r[:3] for r in rows[i + 2 : i + 27]], dtype=np.float32)
            i += 27
    return out


@needs_raw
def test_real_files_land_at_the_right_place(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in (ONE, TWO):
        os.symlink(os.path.abspath(p), raw / os.path.basename(p))
    prepare_ntu(raw, tmp_path / "out", "xsub60", progress=False)
    d = load_dataset(str(tmp_path / "out"))
    assert d.name.tolist() == ["S001C001P001R001A011", "S001C003P008R002A058"]
    assert d.y.tolist() == [10, 57] and d.x.dtype == np.float32 and d.x.shape[1:] == (3, 82, 25, 2)
    assert d.splits["xsub60"].tolist() == [True, True] and d.splits["xview60"].tolist() == [False, True]
    one = _independent_bodies(ONE)
    (body,) = one.values()
    ref = np.stack([body[t] for t in range(82)]).transpose(2, 0, 1)  # (3, T, 25)
    np.testing.assert_array_equal(d.x[0, :, :, :, 0], ref)
    assert (d.x[0, :, :, :, 1] == 0).all() and d.length[0] == 82
    two = _independent_bodies(TWO)
    assert len(two) == 2 and d.length[1] == 70 and (d.x[1, :, 70:] == 0).all()
    # person 0 is the body that moves more: the variance of its positions pooled over joints and
    # frames, summed over x, y, z (CTR-GCN's motion measure); the two overlap throughout: two persons
    motion = {b: np.stack(list(fr.values())).astype(np.float64).reshape(-1, 3).var(axis=0).sum()
              for b, fr in two.items()}
    order = sorted(two, key=lambda b: -motion[b])
    for m, bid in enumerate(order):
        ref = np.stack([two[bid][t] for t in range(70)]).transpose(2, 0, 1)
        np.testing.assert_array_equal(d.x[1, :, :70, :, m], ref)
    # the body centre (1-based joint 2, "middle of the spine") is V index 1: between the base and the neck
    spine = d.x[0, 1, 0, [0, 1, 20], 0]
    assert spine[0] < spine[1] < spine[2]


# ---------------------------------------------------------------------------------------------------
# benchmark rules and the published split sizes


_DESIGN_XSUB60 = [1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38]
_DESIGN_XSUB120_EXTRA = [45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84,
                         85, 86, 89, 91, 92, 93, 94, 95, 97, 98, 100, 103]


def test_subject_lists_are_exactly_the_published_ones():
    assert sorted(NTU60_TRAIN_SUBJECTS) == _DESIGN_XSUB60
    assert sorted(NTU120_TRAIN_SUBJECTS) == sorted(_DESIGN_XSUB60 + _DESIGN_XSUB120_EXTRA)
    names = [f"S018C001P{p:03d}R001A061" for p in range(1, 107)]
    assert np.flatnonzero(ntu_split(names, "xsub120")).tolist() == [
        p - 1 for p in _DESIGN_XSUB60 + _DESIGN_XSUB120_EXTRA
    ]


# published sizes after dropping the missing samples (DESIGN.md section 2); NTU-60 before dropping:
# x-sub 40,320 / 16,560 and x-view 37,920 / 18,960 (the NTU RGB+D paper)
_SIZES = {"xsub60": (40091, 16487), "xview60": (37646, 18932), "xsub120": (63026, 50919),
          "xset120": (54468, 59477)}


@pytest.mark.parametrize("split_name", sorted(_SIZES))
def test_missing_lists_reconcile_with_the_published_split_sizes(split_name):
    dataset = "ntu60" if split_name.endswith("60") else "ntu120"
    missing = sorted(missing_skeleton_samples(dataset))
    train = ntu_split(missing, split_name)
    full_train = _SIZES[split_name][0] + int(train.sum())
    full_test = _SIZES[split_name][1] + int((~train).sum())
    assert full_train + full_test == (56880 if dataset == "ntu60" else 114480)
    if split_name == "xsub60":
        assert (full_train, full_test) == (40320, 16560)
    elif split_name == "xview60":
        assert (full_train, full_test) == (37920, 18960)
    else:
        # every (setup, performer) group is recorded by 3 cameras x 2 replications x 60 actions
        assert full_train % 360 == 0 and full_test % 360 == 0
    f = parse_ntu_names(missing)
    if dataset == "ntu60":
        assert f["setup"].max() <= 17 and f["action"].max() <= 60 and f["performer"].max() <= 40


# ---------------------------------------------------------------------------------------------------
# readers of other projects' files


# ST-GCN label files written by Python 2: the labels are NumPy scalars whose raw bytes are a py2 str
_PY2_LABEL_PICKLE = (
    b"((lp0\nS'S001C001P001R001A001.skeleton'\np1\na(lp2\ncnumpy.core.multiarray\nscalar\np3\n"
    b"(cnumpy\ndtype\np4\n(S'i8'\np5\nI0\nI1\ntp6\nRp7\n(I3\nS'<'\np8\nNNNI-1\nI-1\nI0\ntp9\n"
    b"bS'\\xc8\\x00\\x00\\x00\\x00\\x00\\x00\\x00'\np10\ntp11\nRp12\natp13\n."
)


def test_stgcn_float64_data_and_python2_labels(tmp_path):
    x = np.random.default_rng(0).normal(size=(1, 3, 6, 25, 2))  # float64 on disk
    np.save(tmp_path / "train_data_joint.npy", x)
    (tmp_path / "train_label.pkl").write_bytes(_PY2_LABEL_PICKLE)
    d = load_dataset(tmp_path)
    assert d.x.dtype == np.float32
    np.testing.assert_array_equal(d.x, x.astype(np.float32))
    assert d.y.tolist() == [200] and d.name.tolist() == ["S001C001P001R001A001"]


def test_ctrgcn_missing_or_mismatched_labels(tmp_path):
    flat = np.random.default_rng(1).normal(size=(3, 4, 150)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x_train=flat, y_train=np.eye(60)[[0, 1, 2]], x_test=flat)
    with pytest.raises(ValueError, match="no y_test"):
        load_dataset(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", x_train=flat, y_train=np.eye(60)[[0, 1]])
    with pytest.raises(ValueError, match="y_train"):
        load_dataset(tmp_path / "b.npz")


def test_ctrgcn_layout_exact(tmp_path):
    # value = 1000 * person + 10 * joint + channel at every frame: the (N, T, M*V*C) order, C innermost
    m, v, c = np.meshgrid(np.arange(2), np.arange(25), np.arange(3), indexing="ij")
    row = (1000 * m + 10 * v + c + 1).astype(np.float32).reshape(150)
    flat = np.tile(row, (2, 5, 1))
    flat[1, 3:] = 0  # padding
    np.savez(tmp_path / "NTU60_CV.npz", x_train=flat[:1], y_train=np.eye(60)[[5]], x_test=flat[1:],
             y_test=np.eye(60)[[59]])
    d = load_dataset(tmp_path / "NTU60_CV.npz")
    assert d.x.shape == (2, 3, 5, 25, 2) and d.x.dtype == np.float32
    assert d.x[0, 2, 4, 24, 1] == 1000 + 240 + 2 + 1 and d.x[0, 0, 0, 1, 0] == 11
    assert d.y.tolist() == [5, 59] and d.length.tolist() == [5, 3] and d.num_classes == 60


def test_pyskl_exact_placement_and_bad_annotations(tmp_path):
    kp = np.zeros((3, 4, 25, 3), np.float32)  # (M, T, V, C)
    for m_, t, v, c in np.ndindex(kp.shape):
        kp[m_, t, v, c] = 1000 * m_ + 100 * t + v + 0.25 * c + 1
    ann = [{"frame_dir": "S001C002P001R001A001", "label": 0, "keypoint": kp, "total_frames": 4},
           {"frame_dir": "S001C001P003R001A002", "label": 1, "keypoint": kp[:1, :2], "total_frames": 3}]
    obj = {"split": {"xview_train": ["S001C002P001R001A001"], "xview_val": ["S001C001P003R001A002"]},
           "annotations": ann}
    with open(tmp_path / "ntu.pkl", "wb") as f:
        pickle.dump(obj, f)
    d = load_dataset(tmp_path / "ntu.pkl")
    assert d.x.shape == (2, 3, 4, 25, 2) and d.x.dtype == np.float32
    assert d.x[0, 2, 3, 24, 1] == 1000 + 300 + 24 + 0.5 + 1  # (M, T, V, C) -> (C, T, V, M)
    assert d.x[1, 0, 1, 0, 0] == 101 and (d.x[1, :, 2:] == 0).all() and (d.x[1, ..., 1] == 0).all()
    assert d.length.tolist() == [4, 2] and d.y.tolist() == [0, 1]  # total_frames 3 > the 2 frames held
    assert d.splits["xview"].tolist() == [True, False] and d.splits["xview60"].tolist() == [True, False]
    assert d.splits["xsub60"].tolist() == [True, False]
    del ann[1]["keypoint"]
    with open(tmp_path / "bad.pkl", "wb") as f:
        pickle.dump(obj, f)
    with pytest.raises(ValueError, match=r"annotations\[1\] has no 'keypoint'"):
        load_dataset(tmp_path / "bad.pkl")


def test_labels_must_be_0_based_and_in_range():
    x = np.zeros((2, 3, 4, 25, 2), np.float32)
    with pytest.raises(ValueError, match="0-based"):
        SkeletonArrays(x=x, y=np.array([-1, 0]))
    with pytest.raises(ValueError, match="num_classes=60"):
        SkeletonArrays(x=x, y=np.array([0, 60]), num_classes=60)
    assert SkeletonArrays(x=x, y=np.array([0, 59]), num_classes=60).num_classes == 60


def test_rerun_picks_up_a_repaired_file(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "S001C001P001R001A002.skeleton").write_text(_raw_text(13, ONE_BODY))
    bad = raw / "S001C001P001R001A001.skeleton"
    bad.write_text("13\r\n1\r\n")
    s = prepare_ntu(raw, tmp_path / "out", "xsub60", progress=False)
    assert s.num_samples == 1 and len(s.skipped) == 1
    bad.write_text(_raw_text(13, ONE_BODY))
    s = prepare_ntu(raw, tmp_path / "out", "xsub60", progress=False)
    assert s.num_samples == 2 and s.skipped == []
    names = load_dataset(str(tmp_path / "out")).name.tolist()
    assert names == ["S001C001P001R001A001", "S001C001P001R001A002"]
