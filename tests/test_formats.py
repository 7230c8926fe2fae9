"""Round trips of every loader: write small random arrays in each format, load them back."""

from __future__ import annotations

import os
import pickle
import sys
import types

import numpy as np
import pytest

from skelcl.data import SkeletonArrays, load_dataset, save_npz
from skelcl.data.formats import infer_lengths

NAMES = np.array(["S001C001P001R001A001", "S002C002P003R002A005", "S003C003P002R001A060",
                  "S004C001P004R001A010", "S005C002P007R002A033"])


def _x(rng, n=5, t=9, v=25, m=2):
    x = rng.normal(size=(n, 3, t, v, m)).astype(np.float32)
    x[:, :, t - 2 :] = 0  # padding at the end
    x[1, :, 4:] = 0  # a shorter sequence
    if n > 2 and m > 1:
        x[2, :, :, :, 1] = 0  # one person only
    return x


def test_skelcl_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = _x(rng)
    data = SkeletonArrays(x=x, y=np.array([0, 4, 59, 9, 32]), name=NAMES, length=np.array([7, 4, 7, 7, 7]))
    split = np.array([True, False, True, True, False])
    save_npz(tmp_path / "d.npz", data, split=split)
    d = load_dataset(str(tmp_path / "d.npz"))
    np.testing.assert_array_equal(d.x, x)
    assert d.y.tolist() == [0, 4, 59, 9, 32] and d.layout == "ntu25"
    assert d.name.tolist() == NAMES.tolist() and d.length.tolist() == [7, 4, 7, 7, 7]
    assert d.subject.tolist() == [1, 3, 2, 4, 7] and d.view.tolist() == [1, 2, 3, 1, 2]
    assert d.splits["given"].tolist() == split.tolist()
    assert d.splits["xsub60"].tolist() == [True, False, True, True, False]
    assert set(d.splits) == {"given", "xsub60", "xview60"}


def test_skelcl_npz_kinect20_minimal(tmp_path):
    rng = np.random.default_rng(1)
    x = _x(rng, v=20, m=1)
    np.savez(tmp_path / "k.npz", x=x, y=np.arange(5), subject=np.arange(5) % 3)
    d = load_dataset(tmp_path / "k.npz")
    assert d.layout == "kinect20" and d.length.tolist() == [7, 4, 7, 7, 7] and d.splits == {}
    assert d.subject.tolist() == [0, 1, 2, 0, 1] and d.name is None


def test_unknown_joint_count_needs_layout(tmp_path):
    np.savez(tmp_path / "u.npz", x=_x(np.random.default_rng(2), v=18), y=np.zeros(5, int))
    with pytest.raises(ValueError, match="V=18"):
        load_dataset(tmp_path / "u.npz")
    assert load_dataset(tmp_path / "u.npz", layout="openpose18").layout == "openpose18"


def test_stgcn_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    xtr, xva = _x(rng, n=3, t=11), _x(rng, n=2, t=11)
    np.save(tmp_path / "train_data_joint.npy", xtr)
    np.save(tmp_path / "val_data_joint.npy", xva)
    with open(tmp_path / "train_label.pkl", "wb") as f:
        pickle.dump(([n + ".skeleton" for n in NAMES[:3]], [0, 4, 59]), f)
    with open(tmp_path / "val_label.pkl", "wb") as f:
        pickle.dump((list(NAMES[3:]), [9, 32]), f)
    for spec in (str(tmp_path), str(tmp_path / "train_data_joint.npy"), str(tmp_path / "val_data_joint.npy")):
        d = load_dataset(spec)
        np.testing.assert_array_equal(d.x, np.concatenate([xtr, xva]))
        assert d.y.tolist() == [0, 4, 59, 9, 32] and d.name.tolist() == NAMES.tolist()
        assert d.splits["given"].tolist() == [True, True, True, False, False]
        assert d.length.tolist() == [9, 4, 9, 9, 4]
        assert "xview60" in d.splits


def test_stgcn_missing_label(tmp_path):
    np.save(tmp_path / "train_data_joint.npy", _x(np.random.default_rng(4)))
    with pytest.raises(ValueError, match="train_label.pkl"):
        load_dataset(tmp_path)


def test_ctrgcn_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    x = _x(rng, n=5, t=8)  # (N, 3, T, V, M)
    flat = x.transpose(0, 2, 4, 3, 1).reshape(5, 8, 150)  # CTR-GCN: (N, T, M*V*C)
    y = np.eye(60)[[3, 1, 59, 0, 7]]
    np.savez(tmp_path / "NTU60_CS.npz", x_train=flat[:3], y_train=y[:3], x_test=flat[3:], y_test=y[3:])
    d = load_dataset(tmp_path / "NTU60_CS.npz")
    np.testing.assert_array_equal(d.x, x)
    assert d.y.tolist() == [3, 1, 59, 0, 7] and d.num_classes == 60
    assert d.splits["given"].tolist() == [True, True, True, False, False]
    # the reshape is not a transpose-free guess: joint 1 of person 1 at frame 2 is where CTR-GCN puts it
    np.testing.assert_array_equal(d.x[0, :, 2, 1, 1], flat[0, 2, 75 + 3 : 75 + 6])


@pytest.mark.parametrize("compressed", [False, True])
def test_ctrgcn_parts_of_different_lengths_stored_either_way(tmp_path, compressed):
    """Uncompressed members are memory-mapped and converted in chunks (more sequences than one chunk
    here), compressed ones loaded: the same arrays; a shorter test part is zero-padded in time."""
    from skelcl.data import formats

    rng = np.random.default_rng(11)
    x = _x(rng, n=1030, t=6)
    flat = x.transpose(0, 2, 4, 3, 1).reshape(1030, 6, 150)
    save = np.savez_compressed if compressed else np.savez
    save(tmp_path / "d.npz", x_train=flat[:1027], y_train=np.eye(60)[np.arange(1027) % 60],
         x_test=flat[1027:, :4], y_test=np.eye(60)[[1, 2, 3]])
    with np.load(tmp_path / "d.npz") as z:
        assert isinstance(formats._npz_member(z, str(tmp_path / "d.npz"), "x_train"), np.memmap) != compressed
    d = load_dataset(tmp_path / "d.npz")
    np.testing.assert_array_equal(d.x[:1027], x[:1027])
    np.testing.assert_array_equal(d.x[1027:, :, :4], x[1027:, :, :4])
    assert not d.x[1027:, :, 4:].any() and d.x.shape == (1030, 3, 6, 25, 2)
    assert d.y[-3:].tolist() == [1, 2, 3] and d.splits["given"].sum() == 1027


def test_ctrgcn_parts_with_different_joint_counts_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x_train=np.ones((2, 3, 150), np.float32), y_train=np.eye(60)[[0, 1]],
             x_test=np.ones((1, 3, 120), np.float32), y_test=np.eye(60)[[2]])
    with pytest.raises(ValueError, match="different joint counts"):
        load_dataset(tmp_path / "d.npz")


@pytest.mark.parametrize("compressed", [False, True])
def test_skelcl_npz_is_memory_mapped_when_stored_plain(tmp_path, compressed):
    from skelcl.data import SkeletonArrays, save_npz

    rng = np.random.default_rng(12)
    x = _x(rng, n=4, t=5)
    if compressed:
        np.savez_compressed(tmp_path / "d.npz", x=x, y=np.arange(4))
    else:
        save_npz(tmp_path / "d.npz", SkeletonArrays(x=x, y=np.arange(4)))
    d = load_dataset(tmp_path / "d.npz")
    assert isinstance(d.x, np.memmap) != compressed and d.x.dtype == np.float32
    np.testing.assert_array_equal(d.x, x)


@pytest.mark.parametrize("channels", [2, 3])
def test_pyskl_round_trip(tmp_path, channels):
    rng = np.random.default_rng(6)
    ann = []
    lengths = [6, 9, 4]
    persons = [1, 2, 3]
    for i, (t, m) in enumerate(zip(lengths, persons)):
        kp = rng.normal(size=(m, t, 17, channels)).astype(np.float32)
        ann.append({"frame_dir": f"clip{i}", "label": i, "keypoint": kp, "total_frames": t,
                    "keypoint_score": np.ones((m, t, 17), np.float32)})
    obj = {"split": {"xsub_train": ["clip0", "clip2"], "xsub_val": ["clip1"]}, "annotations": ann}
    with open(tmp_path / "a.pkl", "wb") as f:
        pickle.dump(obj, f)
    d = load_dataset(tmp_path / "a.pkl")
    assert d.x.shape == (3, 3, 9, 17, 2) and d.layout == "coco17"
    assert d.length.tolist() == lengths and d.y.tolist() == [0, 1, 2]
    assert d.splits == {"xsub": d.splits["xsub"]} and d.splits["xsub"].tolist() == [True, False, True]
    for i, a in enumerate(ann):
        kp = a["keypoint"][:2]
        got = d.x[i, :channels, : lengths[i], :, : kp.shape[0]]
        np.testing.assert_array_equal(got, kp.transpose(3, 1, 2, 0))
        assert (d.x[i, :, lengths[i] :] == 0).all()
    if channels == 2:
        assert (d.x[:, 2] == 0).all()
    assert (d.x[0, :, :, :, 1] == 0).all()  # the missing second person stays zero


def test_raw_directory(tmp_path):
    from skelcl.data.ntu import NUM_JOINTS, format_skeleton, make_body

    rng = np.random.default_rng(7)
    for name, t in (("S001C001P001R001A003", 15), ("S001C002P002R001A007", 20)):
        xyz = rng.normal(size=(t, NUM_JOINTS, 3)) * [0.1, 1, 0.1]
        (tmp_path / f"{name}.skeleton").write_text(format_skeleton(t, [make_body(1, np.arange(t), xyz, rng)]))
    d = load_dataset(tmp_path)
    assert d.x.shape == (2, 3, 20, 25, 2) and d.y.tolist() == [2, 6] and d.length.tolist() == [15, 20]
    assert d.splits["xview60"].tolist() == [False, True]


def test_synthetic_is_delegated(monkeypatch):
    captured = {}

    def load_synthetic(**kw):
        captured.update(kw)
        return SkeletonArrays(x=np.ones((2, 3, 4, 25, 2), np.float32), y=np.array([0, 1]))

    monkeypatch.setitem(sys.modules, "skelcl.data.synthetic",
                        types.SimpleNamespace(load_synthetic=load_synthetic))
    d = load_dataset("synthetic", synthetic_kwargs={"seed": 3})
    assert captured == {"seed": 3} and len(d) == 2


@pytest.mark.parametrize("spec, words", [
    ("/no/such/path.npz", "no such file"),
    ("{tmp}/x.txt", "unknown format"),
    ("{tmp}/bad.npz", "expected keys"),
    ("{tmp}/bad.pkl", "pyskl"),
    ("{tmp}/empty", "not a prepare-ntu output"),
    ("{tmp}/train_data.npy", "label file"),
])
def test_bad_specs_name_the_path(tmp_path, spec, words):
    (tmp_path / "x.txt").write_text("hi")
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with open(tmp_path / "bad.pkl", "wb") as f:
        pickle.dump([1, 2], f)
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "train_data.npy", np.zeros((1, 3, 2, 25, 2), np.float32))
    spec = spec.format(tmp=tmp_path)
    with pytest.raises(ValueError, match=words) as info:
        load_dataset(spec)
    assert spec in str(info.value) or os.path.dirname(spec) in str(info.value)


def test_infer_lengths_chunked():
    x = np.zeros((5, 3, 6, 2, 1), np.float32)
    x[0, 0, 5, 1, 0] = 1
    x[2, 1, 0, 0, 0] = -1
    x[3, 2, 2, 1, 0] = 3
    assert infer_lengths(x, chunk=2).tolist() == [6, 0, 1, 3, 0]
