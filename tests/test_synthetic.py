"""The built-in synthetic dataset: determinism, layout, camera geometry, kinematics, splits, cache."""

from __future__ import annotations

import re

import numpy as np
import pytest

from skelcl.data.dataset import SkeletonArrays
from skelcl.data.synthetic import (
    ACTIONS,
    BONE_PARENT,
    _freeze_dropouts,
    generate_synthetic,
    load_synthetic,
    simulate,
)

SMALL = dict(num_subjects=4, reps_per_class=2, num_frames=32)
NAME = re.compile(r"^S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})$")
NTU60_XSUB_TRAIN = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}


@pytest.fixture(scope="module")
def small() -> SkeletonArrays:
    return generate_synthetic(seed=3, **SMALL)


@pytest.fixture(scope="module")
def clean():
    """Noise and tracking freezes off, so geometry can be checked exactly."""
    return simulate(seed=5, noise=0.0, drop_rate=0.0, **SMALL)


def present(x: np.ndarray) -> np.ndarray:
    """(N, 3, T, V, M) -> (N, T, M) True where a slot holds a person."""
    return (x != 0).any(axis=(1, 3))


def test_deterministic_bitwise(small):
    again = generate_synthetic(seed=3, **SMALL)
    assert again.x.tobytes() == small.x.tobytes()
    for field in ("y", "name", "subject", "view", "setup", "length"):
        np.testing.assert_array_equal(getattr(again, field), getattr(small, field))
    other = generate_synthetic(seed=4, **SMALL)
    assert not np.array_equal(other.x, small.x)


def test_shapes_and_dtypes(small):
    k = len(ACTIONS)
    n = SMALL["num_subjects"] * k * SMALL["reps_per_class"] * 3
    assert small.x.shape == (n, 3, SMALL["num_frames"], 25, 2)
    assert small.x.dtype == np.float32 and small.x.flags.c_contiguous
    assert small.layout == "ntu25" and small.num_classes == k
    assert small.y.dtype == np.int64 and set(small.y) == set(range(k))
    assert np.bincount(small.y).min() == np.bincount(small.y).max()  # balanced classes
    assert set(small.view) == {1, 2, 3}
    assert np.isfinite(small.x).all()
    t = SMALL["num_frames"]
    assert small.length.min() >= t // 2 and small.length.max() <= t
    assert len(set(small.length)) > 3  # sequences of different lengths


def test_metric_camera_space(small):
    """Metres in Kinect camera space: the person is mostly 2-4 m in front of the sensor."""
    p = present(small.x)[:, :, 0]
    depth = small.x[:, 2, :, 1, 0][p]  # spine middle
    assert 1.2 < depth.min() and depth.max() < 5.0
    assert 2.0 < np.median(depth) < 4.0
    # shoulder width of an adult: 0.25 - 0.5 m
    width = np.linalg.norm(small.x[:, :, :, 4, 0] - small.x[:, :, :, 8, 0], axis=1)[p]
    assert 0.2 < np.median(width) < 0.5


def test_padding_is_zero_and_valid_frames_present(small):
    t = np.arange(small.x.shape[2])
    pad = t[None, :] >= small.length[:, None]  # (N, T)
    assert (small.x.transpose(0, 2, 1, 3, 4)[pad] == 0).all()
    assert present(small.x)[:, :, 0][~pad].all()
    # person 1: all valid frames or none (a second person is never a fragment)
    p1 = present(small.x)[:, :, 1]
    frames = p1.sum(1)
    assert ((frames == 0) | (frames == small.length)).all()
    # no joint of a present person is reported as exactly zero (tracking losses freeze instead)
    joints_zero = (small.x == 0).all(axis=1)[..., 0]  # (N, T, V) person 0
    assert not joints_zero[~pad].any()


def test_second_person():
    data = generate_synthetic(seed=1, two_person_fraction=0.0, **SMALL)
    two = np.array([ACTIONS[a][1] == 2 for a in data.y])
    assert two.any() and sum(p == 2 for _, p in ACTIONS) >= 2
    has_p1 = present(data.x)[:, :, 1].any(1)
    np.testing.assert_array_equal(has_p1, two)
    crowded = generate_synthetic(seed=1, two_person_fraction=1.0, **SMALL)
    assert present(crowded.x)[:, :, 1].any(1).all()


def test_three_cameras_record_the_same_world_motion(clean):
    data = clean.arrays
    # performances come as three consecutive sequences from cameras 1, 2, 3
    np.testing.assert_array_equal(data.view.reshape(-1, 3), np.tile([1, 2, 3], (len(data) // 3, 1)))
    for field in ("y", "subject", "setup", "length"):
        values = getattr(data, field).reshape(-1, 3)
        assert (values == values[:, :1]).all(), field
    np.testing.assert_array_equal(clean.performance, np.repeat(np.arange(len(data) // 3), 3))
    rot = clean.camera_rotation
    eye = np.broadcast_to(np.eye(3), rot.shape)
    np.testing.assert_allclose(rot @ rot.transpose(0, 2, 1), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-12)

    cam = data.x.astype(np.float64).transpose(0, 2, 4, 3, 1)  # (N, T, M, V, 3)
    world = np.einsum("nji,ntmvj->ntmvi", rot, cam) + clean.camera_position[:, None, None, None, :]
    mask = present(data.x)[:, :, :, None, None]
    world = np.where(mask, world, 0.0).reshape(-1, 3, *world.shape[1:])
    np.testing.assert_allclose(world[:, 1], world[:, 0], atol=1e-5)
    np.testing.assert_allclose(world[:, 2], world[:, 0], atol=1e-5)
    # ... while the raw camera coordinates differ a lot between cameras
    raw = data.x.reshape(-1, 3, *data.x.shape[1:])
    assert np.abs(raw[:, 1] - raw[:, 0]).max(axis=(1, 2, 3, 4)).min() > 0.3
    # the floor is level in the world frame: feet near y = 0, head about 1.4-2 m up
    feet = world[..., 0, [14, 15, 18, 19], 1].min(-1)  # (P, 3, T) person 0
    valid = mask[..., 0, 0, 0].reshape(-1, 3, mask.shape[1])
    assert np.abs(feet[valid]).max() < 0.6  # jumps lift the feet
    assert np.median(feet[valid]) == pytest.approx(0.03, abs=0.02)


def test_bone_lengths_constant_per_subject(clean):
    data = clean.arrays
    child = np.flatnonzero(BONE_PARENT >= 0)
    bones = data.x[:, :, :, child, 0] - data.x[:, :, :, BONE_PARENT[child], 0]  # (N, 3, T, B)
    length = np.linalg.norm(bones.astype(np.float64), axis=1)  # (N, T, B)
    p = present(data.x)[:, :, 0]
    for subject in np.unique(data.subject):
        rows = length[data.subject == subject][p[data.subject == subject]]  # (frames, B)
        assert np.ptp(rows, axis=0).max() < 1e-4, subject
        assert rows.min() > 0.02
    first_frame = [length[data.subject == s][p[data.subject == s]][0] for s in np.unique(data.subject)]
    per_subject = np.stack(first_frame)
    assert np.ptp(per_subject, axis=0).max() > 0.01  # subjects differ in build


def test_noise_perturbs_cameras_independently():
    rec = simulate(seed=5, noise=0.01, drop_rate=0.0, **SMALL)
    data = rec.arrays
    cam = data.x.astype(np.float64).transpose(0, 2, 4, 3, 1)
    world = np.einsum("nji,ntmvj->ntmvi", rec.camera_rotation, cam) + rec.camera_position[:, None, None, None]
    world = world.reshape(-1, 3, *world.shape[1:])
    p = present(data.x).reshape(-1, 3, data.x.shape[2], 2)[:, 0, :, 0]
    diff = (world[:, 1] - world[:, 0])[:, :, 0][p]  # (frames, V, 3) person 0
    assert 0.005 < diff.std() < 0.05


def test_freeze_dropouts_hold_previous_position():
    rng = np.random.default_rng(0)
    t = np.arange(40, dtype=np.float32)
    seq = np.broadcast_to(t[None, :, None, None], (50, 40, 25, 3)).copy() + 1.0  # moves 1 per frame
    length = rng.integers(20, 41, 50)
    seq[np.arange(40)[None, :] >= length[:, None]] = 0.0
    before = seq.copy()
    _freeze_dropouts(np.random.default_rng(1), seq, length, 0.02)
    changed = (seq != before).any(-1)  # (S, T, V)
    assert changed.any()
    assert not changed[:, 0].any()
    assert not changed[np.arange(40)[None, :] >= length[:, None]].any()  # padding untouched
    # a frozen joint reports an earlier frame's position (plus centimetre jitter), never zero
    held = seq[changed]
    assert (np.abs(held) > 0.5).all()
    frame = np.nonzero(changed)[1]
    assert (held.mean(-1) < before[changed].mean(-1) - 0.9).all()
    assert (held.mean(-1) > frame - 6 + 1.0 - 0.1).all()  # at most 6 frames stale


def test_names_parse_and_match_fields(small):
    parsed = np.array([[int(g) for g in NAME.match(n).groups()] for n in small.name])
    np.testing.assert_array_equal(parsed[:, 0], small.setup)
    np.testing.assert_array_equal(parsed[:, 1], small.view)
    np.testing.assert_array_equal(parsed[:, 2], small.subject)
    np.testing.assert_array_equal(parsed[:, 4], small.y + 1)
    assert set(parsed[:, 3]) == {1, 2}
    assert len(set(small.name)) == len(small.name)


def test_splits():
    data = generate_synthetic(num_subjects=40, reps_per_class=1, num_frames=16, num_classes=2)
    np.testing.assert_array_equal(data.splits["xview"], data.view != 1)
    np.testing.assert_array_equal(data.splits["xsub"], np.isin(data.subject, list(NTU60_XSUB_TRAIN)))
    assert data.splits["xsub"].mean() == 0.5
    train, test = data.train_test("xview")
    assert set(train.view) == {2, 3} and set(test.view) == {1}
    big = generate_synthetic(num_subjects=60, reps_per_class=1, num_frames=16, num_classes=2)
    assert big.splits["xsub"].mean() == 0.5


def test_replications_face_different_cameras(clean):
    """Odd replications face camera 2, even ones camera 3: camera 2 sees R001 from the front."""
    data = clean.arrays
    rep = np.array([int(n[13:16]) for n in data.name])
    # the person's right minus left shoulder, in camera x: positive when seen from the front
    shoulders = (data.x[:, 0, :, 8, 0] - data.x[:, 0, :, 4, 0])[:, 0]
    front = np.median(shoulders[(data.view == 2) & (rep == 1)])
    side = np.median(np.abs(shoulders[(data.view == 3) & (rep == 1)]))
    assert front > 0.2 and side < front / 2


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(num_subjects=1), "num_subjects"),
        (dict(num_subjects=2.5), "num_subjects"),
        (dict(reps_per_class=0), "reps_per_class"),
        (dict(num_frames=8), "num_frames"),
        (dict(seed=-1), "seed"),
        (dict(seed="a"), "seed"),
        (dict(two_person_fraction=1.5), "two_person_fraction"),
        (dict(noise=-0.1), "noise"),
        (dict(noise=float("nan")), "noise"),
        (dict(drop_rate=0.9), "drop_rate"),
        (dict(num_classes=len(ACTIONS) + 1), "num_classes"),
        (dict(num_setups=0), "num_setups"),
    ],
)
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        generate_synthetic(**kwargs)
    with pytest.raises(ValueError, match=word):
        load_synthetic(cache_dir="/nonexistent-never-written", **kwargs)


def test_cache_round_trip(tmp_path):
    kw = dict(num_subjects=3, reps_per_class=1, num_frames=16, seed=2)
    first = load_synthetic(cache_dir=tmp_path, **kw)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    second = load_synthetic(cache_dir=tmp_path, **kw)
    fresh = generate_synthetic(**kw)
    for got in (first, second):
        assert got.x.tobytes() == fresh.x.tobytes()
        for field in ("y", "name", "subject", "view", "setup", "length"):
            np.testing.assert_array_equal(getattr(got, field), getattr(fresh, field))
        for key in ("xsub", "xview"):
            np.testing.assert_array_equal(got.splits[key], fresh.splits[key])
        assert got.num_classes == fresh.num_classes and got.layout == "ntu25"
    # the file is what the second call read: tamper with it and see
    np.savez(files[0], **{**dict(np.load(files[0])), "y": np.zeros_like(fresh.y)})
    assert (load_synthetic(cache_dir=tmp_path, **kw).y == 0).all()
    load_synthetic(cache_dir=tmp_path, **{**kw, "seed": 3})
    assert len(list(tmp_path.glob("*.npz"))) == 2


def test_held_out_camera_looks_down(clean):
    """Camera 1 (the cross-view test camera) is mounted high; cameras 2 and 3 are about level."""
    up_in_camera = clean.camera_rotation[:, :, 1]  # world up in each camera's coordinates
    tilt = np.degrees(np.arccos(np.clip(up_in_camera[:, 1], -1, 1)))  # angle between camera y and up
    view = clean.arrays.view
    assert 15 < tilt[view == 1].min() and tilt[view == 1].max() < 50
    assert tilt[view != 1].max() < 20
    assert np.median(tilt[view == 1]) - np.median(tilt[view != 1]) > 15


def _ridge_top1(train_x, train_y, test_x, test_y, num_classes, reg=1.0):
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    w = np.linalg.solve(a.T @ a + reg * len(a) * np.eye(a.shape[1]), a.T @ np.eye(num_classes)[train_y])
    return float(((b @ w).argmax(1) == test_y).mean())


def _distance_stats(x):
    """View-invariant features: pairwise joint distances of person 0, mean/std/speed over time."""
    i, j = np.triu_indices(25, 1)
    d = np.linalg.norm(x[:, :, ::2, i, 0] - x[:, :, ::2, j, 0], axis=1).astype(np.float64)  # (N, T', P)
    return np.concatenate([d.mean(1), d.std(1), np.abs(np.diff(d, axis=1)).mean(1)], 1)


def test_classes_are_told_apart_by_motion_across_views():
    """Rotation-invariant motion features, fitted on cameras 2-3, classify camera 1 well."""
    data = generate_synthetic(num_subjects=6, reps_per_class=2, num_frames=32, seed=0)
    train = data.splits["xview"]
    f = _distance_stats(data.x)
    top1 = _ridge_top1(f[train], data.y[train], f[~train], data.y[~train], data.num_classes)
    assert top1 > 0.85
    # the same probe on shuffled labels is at chance: the check can fail
    shuffled = np.random.default_rng(0).permutation(data.y[train])
    assert _ridge_top1(f[train], shuffled, f[~train], data.y[~train], data.num_classes) < 0.3
