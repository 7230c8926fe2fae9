"""prepare-ntu: body selection rules, padding, skip-and-report, resume, parallel = serial, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from skelcl.data import load_dataset
from skelcl.data.__main__ import main
from skelcl.data.ntu import NUM_JOINTS, SkeletonFile, format_skeleton, make_body
from skelcl.data.prepare import prepare_ntu, select_bodies, skeleton_to_array


def _person(rng, frames, amplitude=0.1, x0=0.0):
    """A standing figure (taller than wide) moving with the given amplitude."""
    f = len(frames)
    base = np.stack([rng.uniform(-0.2, 0.2, NUM_JOINTS) + x0, np.linspace(-0.9, 0.8, NUM_JOINTS),
                     np.full(NUM_JOINTS, 3.0)], axis=1)
    return base[None] + amplitude * rng.normal(size=(f, NUM_JOINTS, 3))


def _flat(rng, frames):
    """A wide, flat detection (x-extent far larger than y-extent): noise."""
    f = len(frames)
    base = np.stack([np.linspace(-1.5, 1.5, NUM_JOINTS), rng.uniform(-0.05, 0.05, NUM_JOINTS),
                     np.full(NUM_JOINTS, 3.0)], axis=1)
    return base[None] + 0.5 * rng.normal(size=(f, NUM_JOINTS, 3)) * [1, 0.01, 1]


def test_select_bodies_rules():
    # the rules one by one, with person slots and motion: tests/test_body_selection.py
    rng = np.random.default_rng(0)
    fr = np.arange(40)
    calm = make_body(1, fr, _person(rng, fr, 0.02), rng)
    short = make_body(2, np.arange(11), _person(rng, np.arange(11), 1.0), rng)  # 11 frames: dropped
    flat = make_body(3, fr, _flat(rng, fr), rng)  # large motion, but flat: dropped
    active = make_body(4, fr, _person(rng, fr, 0.2, x0=1.0), rng)
    medium = make_body(5, np.arange(12), _person(rng, np.arange(12), 0.1), rng)  # 12 frames: kept
    skel = SkeletonFile("s.skeleton", 40, [calm, short, flat, active, medium])
    # active is person 0, medium (more motion than calm) person 1; calm overlaps both: dropped
    assert select_bodies(skel) == [[3], [4]]
    skel = SkeletonFile("s.skeleton", 40, [calm, short, flat])
    assert select_bodies(skel) == [[0]]
    # the only body left by the length rule is kept, flat or not
    skel = SkeletonFile("s.skeleton", 40, [short, flat])
    assert select_bodies(skel) == [[1]]
    assert select_bodies(SkeletonFile("e.skeleton", 3, [])) == []


def test_skeleton_to_array_pads_and_trims():
    rng = np.random.default_rng(1)
    a = make_body(1, np.arange(5, 30), _person(rng, np.arange(5, 30), 0.3), rng)
    b = make_body(2, np.r_[10:20, 25:35], _person(rng, np.r_[10:20, 25:35], 0.05), rng)
    arr, length = skeleton_to_array(SkeletonFile("s", 40, [b, a]))
    assert length == 30 and arr.shape == (3, 30, NUM_JOINTS, 2)  # frames 5..34
    np.testing.assert_array_equal(arr[:, :25, :, 0], a.xyz.transpose(2, 0, 1))
    assert (arr[:, 25:, :, 0] == 0).all()
    np.testing.assert_array_equal(arr[:, 5:15, :, 1], b.xyz[:10].transpose(2, 0, 1))
    assert (arr[:, 15:20, :, 1] == 0).all() and (arr[:, :5, :, 1] == 0).all()
    arr, length = skeleton_to_array(SkeletonFile("s", 40, [b, a]), max_frames=12)
    assert length == 12 and arr.shape[1] == 12


def _write_raw(folder, rng, names, frames=30, bodies=1):
    os.makedirs(folder, exist_ok=True)
    for k, name in enumerate(names):
        fr = np.arange(frames - k % 5)
        people = [make_body(100 + m, fr, _person(rng, fr, 0.1 * (m + 1), x0=m), rng) for m in range(bodies)]
        with open(os.path.join(folder, name + ".skeleton"), "w", newline="") as f:
            f.write(format_skeleton(len(fr), people))


NAMES = ["S001C001P001R001A001", "S001C002P003R001A002", "S002C003P002R002A060", "S003C001P008R001A010",
         "S005C002P004R001A001",  # on the NTU-60 missing list
         "S018C001P045R001A061"]  # NTU-120 only


def test_prepare_skips_missing_malformed_and_resumes(tmp_path, capsys):
    rng = np.random.default_rng(2)
    raw = tmp_path / "raw"
    _write_raw(raw, rng, NAMES, bodies=2)
    (raw / "S004C001P005R001A003.skeleton").write_text("5\r\n1\r\n1 0 1 1 1 1 0 0 0 2\r\n25\r\n1 2 3\r\n")
    out = tmp_path / "out"
    s = prepare_ntu(raw, out, "xsub60", progress=False)
    assert s.num_samples == 4 and s.num_skipped_missing == 1
    assert len(s.skipped) == 1 and "S004C001P005R001A003.skeleton:5:" in s.skipped[0]["reason"]
    assert "skipped" in capsys.readouterr().err
    d = load_dataset(str(out))
    assert isinstance(d.x, np.memmap) and d.x.shape == (4, 3, 30, NUM_JOINTS, 2) and d.x.dtype == np.float32
    assert d.name.tolist() == NAMES[:4] and d.y.tolist() == [0, 1, 59, 9]
    assert d.length.tolist() == [30, 29, 28, 27]
    assert d.splits["xsub60"].tolist() == [True, False, True, True]
    for i in range(4):
        assert (d.x[i, :, d.length[i]:] == 0).all() and (d.x[i, :, : d.length[i]] != 0).any(axis=(0, 2)).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_train"] == 3 and meta["skipped"][0]["name"] == "S004C001P005R001A003"
    # resume: finished parts are reused, not recomputed
    parts = sorted(os.listdir(out / "parts"))
    stamp = [os.path.getmtime(out / "parts" / p) for p in parts]
    x_before = np.array(d.x)
    s2 = prepare_ntu(raw, out, "xsub60", progress=False)
    assert s2.num_samples == 4 and sorted(os.listdir(out / "parts")) == parts
    assert [os.path.getmtime(out / "parts" / p) for p in parts] == stamp
    np.testing.assert_array_equal(np.asarray(load_dataset(str(out)).x), x_before)


def test_parts_of_another_selection_are_not_reused(tmp_path, monkeypatch):
    import skelcl.data.prepare as prep

    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    _write_raw(raw, rng, NAMES[:3], bodies=2)
    prepare_ntu(raw, tmp_path / "fresh", "xsub60", progress=False)
    fresh = np.asarray(load_dataset(str(tmp_path / "fresh")).x)
    # an --out made by an older selection (here: one that swaps the persons)
    select = prep.select_bodies
    with monkeypatch.context() as m:
        m.setattr(prep, "SELECTION_VERSION", prep.SELECTION_VERSION - 1)
        m.setattr(prep, "select_bodies", lambda skel: select(skel)[::-1])
        prepare_ntu(raw, tmp_path / "out", "xsub60", progress=False)
    old_parts = set(os.listdir(tmp_path / "out" / "parts"))
    old = np.asarray(load_dataset(str(tmp_path / "out")).x)
    np.testing.assert_array_equal(old, fresh[..., ::-1])
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["selection_version"] == \
        prep.SELECTION_VERSION - 1
    # the rerun re-parses every chunk, matches a fresh run and deletes the parts it cannot use
    prepare_ntu(raw, tmp_path / "out", "xsub60", progress=False)
    np.testing.assert_array_equal(np.asarray(load_dataset(str(tmp_path / "out")).x), fresh)
    assert set(os.listdir(tmp_path / "out" / "parts")) == set(os.listdir(tmp_path / "fresh" / "parts"))
    assert not old_parts & set(os.listdir(tmp_path / "out" / "parts"))
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["selection_version"] == \
        prep.SELECTION_VERSION


def test_parallel_equals_serial_and_ntu120(tmp_path, monkeypatch):
    import skelcl.data.prepare as prep

    monkeypatch.setattr(prep, "CHUNK", 2)  # several parts for the workers
    rng = np.random.default_rng(3)
    _write_raw(tmp_path / "raw", rng, NAMES)
    a = prepare_ntu(tmp_path / "raw", tmp_path / "serial", "xset120", progress=False)
    b = prepare_ntu(tmp_path / "raw", tmp_path / "par", "xset120", workers=2, progress=False)
    assert a.num_samples == b.num_samples == 5  # only the NTU-120 missing list applies
    da, db = load_dataset(str(tmp_path / "serial")), load_dataset(str(tmp_path / "par"))
    np.testing.assert_array_equal(np.asarray(da.x), np.asarray(db.x))
    assert set(da.splits) == {"xsub120", "xset120"}


def test_cli(tmp_path, capsys):
    _write_raw(tmp_path / "raw", np.random.default_rng(4), NAMES[:2])
    rc = main(["prepare-ntu", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "o"),
               "--benchmark", "xview60", "--workers", "1", "--no-progress"])
    assert rc == 0 and "2 samples" in capsys.readouterr().out
    rc = main(["prepare-ntu", "--raw", str(tmp_path / "none"), "--out", str(tmp_path / "o2"), "--benchmark",
               "xview60"])
    assert rc == 2 and "none" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["prepare-ntu", "--raw", "r", "--out", "o", "--benchmark", "xsub"])
