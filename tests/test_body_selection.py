"""prepare-ntu body selection: the rules, their order and the person slots of the CTR-GCN NTU denoising.

Bodies here are a fixed standing figure plus a sway along z shared by all its joints, so a body's
motion (variance pooled over joints and frames, summed over x, y, z) is the figure's spatial
variance plus the sway's variance, and the tests can set which body ranks first.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from skelcl.data.ntu import NUM_JOINTS, SkeletonFile, make_body, read_skeleton
from skelcl.data.prepare import select_bodies, skeleton_to_array

RAW = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ntu_raw")
TWO = os.path.join(RAW, "S001C003P008R002A058.skeleton")


def _figure(frames, sway=0.0, scale=1.0, x0=0.0):
    """(F, 25, 3): a figure taller (y) than wide (x), swaying along z by ``sway``."""
    frames = np.asarray(frames)
    j = np.arange(NUM_JOINTS)
    base = np.stack([x0 + scale * 0.01 * j, scale * np.linspace(-0.9, 0.8, NUM_JOINTS),
                     np.full(NUM_JOINTS, 3.0)], axis=1)
    out = np.repeat(base[None], len(frames), axis=0)
    out[:, :, 2] += sway * np.sin(0.7 * frames)[:, None]
    return out


def _flat(frames):
    """(F, 25, 3): a wide, flat detection (furniture), with more motion than any figure here."""
    frames = np.asarray(frames)
    j = np.arange(NUM_JOINTS)
    base = np.stack([np.linspace(-1.5, 1.5, NUM_JOINTS), 0.001 * j, np.full(NUM_JOINTS, 3.0)], axis=1)
    out = np.repeat(base[None], len(frames), axis=0)
    out[:, :, 2] += np.sin(0.7 * frames)[:, None]
    return out


def _body(body_id, frames, xyz):
    return make_body(body_id, frames, xyz, np.random.default_rng(body_id))


def _skel(*bodies):
    return SkeletonFile("s.skeleton", 1 + max(int(b.frames.max()) for b in bodies), list(bodies))


def _motion(xyz) -> float:
    """The reference measure, written out: np.var of the (F*25, 3) positions, axis 0, summed."""
    return float(np.var(np.asarray(xyz, np.float64).reshape(-1, 3), axis=0).sum())


def test_id_switch_is_merged_into_one_person():
    # one actor's id changes at frame 30 (a then b); the other actor (c) is there throughout. a ranks
    # above b: the other way round, a would meet person 1's span from the clip start (test below)
    a = _body(1, range(30), _figure(range(30), 0.1))
    b = _body(2, range(30, 60), _figure(range(30, 60), 0.05, x0=0.3))
    c = _body(3, range(60), _figure(range(60), 0.3, x0=1.0))
    assert select_bodies(_skel(a, b, c)) == [[2], [0, 1]]
    arr, length = skeleton_to_array(_skel(a, b, c))
    assert length == 60
    np.testing.assert_array_equal(arr[..., 0], c.xyz.transpose(2, 0, 1))
    np.testing.assert_array_equal(arr[..., 1], np.concatenate([a.xyz, b.xyz]).transpose(2, 0, 1))


def test_id_switch_of_the_only_actor_keeps_person_0_from_the_first_frame():
    # the later half moves more, so it ranks first; the earlier half joins it instead of person 1,
    # and person 0 is present from frame 0 (where normalisation looks for it)
    a = _body(1, range(30), _figure(range(30), 0.05))
    b = _body(2, range(30, 70), _figure(range(30, 70), 0.3))
    assert select_bodies(_skel(a, b)) == [[1, 0]]
    arr, length = skeleton_to_array(_skel(a, b))
    assert length == 70 and (arr[..., 1] == 0).all()
    np.testing.assert_array_equal(arr[..., 0], np.concatenate([a.xyz, b.xyz]).transpose(2, 0, 1))


def test_spans_sharing_one_frame_do_not_overlap_and_the_later_ranked_body_wins_it():
    x = _body(1, range(30), _figure(range(30), 0.3))
    y = _body(2, range(29, 59), _figure(range(29, 59), 0.05, x0=0.5))
    assert select_bodies(_skel(x, y)) == [[0, 1]]
    arr, _ = skeleton_to_array(_skel(x, y))
    np.testing.assert_array_equal(arr[:, 29, :, 0], y.xyz[0].T)  # y is placed after x
    np.testing.assert_array_equal(arr[:, 28, :, 0], x.xyz[28].T)
    # the other ranking: x is placed after y and keeps the shared frame
    y = _body(2, range(29, 59), _figure(range(29, 59), 0.6, x0=0.5))
    assert select_bodies(_skel(x, y)) == [[1, 0]]
    arr, _ = skeleton_to_array(_skel(x, y))
    np.testing.assert_array_equal(arr[:, 29, :, 0], x.xyz[29].T)
    # two shared frames are an overlap: two persons
    y = _body(2, range(28, 58), _figure(range(28, 58), 0.05, x0=0.5))
    assert select_bodies(_skel(x, y)) == [[0], [1]]


def test_third_body_fills_person_1_after_its_first_body():
    a = _body(1, range(60), _figure(range(60), 0.5))
    b = _body(2, range(25), _figure(range(25), 0.2, x0=1.0))
    c = _body(3, range(30, 60), _figure(range(30, 60), 0.1, x0=1.0))
    assert select_bodies(_skel(a, b, c)) == [[0], [1, 2]]
    arr, length = skeleton_to_array(_skel(a, b, c))
    assert length == 60
    np.testing.assert_array_equal(arr[:, :25, :, 1], b.xyz.transpose(2, 0, 1))
    assert (arr[:, 25:30, :, 1] == 0).all()  # person 1's gap stays zero
    np.testing.assert_array_equal(arr[:, 30:, :, 1], c.xyz.transpose(2, 0, 1))


def test_third_body_overlapping_both_persons_is_dropped():
    a = _body(1, range(60), _figure(range(60), 0.5))
    b = _body(2, range(41), _figure(range(41), 0.2, x0=1.0))
    c = _body(3, range(30, 60), _figure(range(30, 60), 0.1, x0=1.0))
    assert select_bodies(_skel(a, b, c)) == [[0], [1]]


def test_person_1_span_starts_at_the_clip_start():
    # as in CTR-GCN, whose person-1 span starts as [0, 0]: c, before b, overlaps that span and is
    # dropped although it would fit before b's first frame
    a = _body(1, range(60), _figure(range(60), 0.5))
    b = _body(2, range(30, 60), _figure(range(30, 60), 0.2, x0=1.0))
    c = _body(3, range(26), _figure(range(26), 0.1, x0=1.0))
    assert select_bodies(_skel(a, c, b)) == [[0], [2]]


def test_flat_body_is_dropped():
    a = _body(1, range(40), _figure(range(40), 0.1))
    f = _body(2, range(40), _flat(range(40)))
    b = _body(3, range(40), _figure(range(40), 0.2, x0=1.0))
    assert _motion(f.xyz) > _motion(b.xyz) > _motion(a.xyz)
    assert select_bodies(_skel(a, f, b)) == [[2], [0]]


def test_spread_rule_stops_when_one_body_remains():
    # both are flat; the first seen is dropped, then the rule stops and the second is kept (dropping
    # both and falling back to the longest would keep the first)
    f1 = _body(1, range(50), _flat(range(50)))
    f2 = _body(2, range(30), _flat(range(30)))
    assert select_bodies(_skel(f1, f2)) == [[1]]


def test_single_body_after_the_length_rule_is_kept_even_if_flat():
    short = _body(1, range(11), _figure(range(11), 0.5))  # 11 frames: noise
    f = _body(2, range(40), _flat(range(40)))
    assert select_bodies(_skel(short, f)) == [[1]]


def test_fallback_keeps_the_longest_when_every_body_is_short():
    bodies = [_body(1, range(5), _figure(range(5))), _body(2, range(3, 11), _figure(range(3, 11))),
              _body(3, range(2, 10), _figure(range(2, 10)))]
    assert select_bodies(_skel(*bodies)) == [[1]]
    assert select_bodies(SkeletonFile("e.skeleton", 3, [])) == []


def test_motion_pools_joints_and_frames():
    # a tall, nearly still figure against a small one that moves: pooled over joints and frames the
    # tall one's extent dominates; summed per joint over time (skelcl's former measure) it would not
    tall = _body(1, range(40), _figure(range(40), 0.01, scale=2.0))
    small = _body(2, range(40), _figure(range(40), 0.4, scale=0.3, x0=1.0))
    per_joint = [float(b.xyz.astype(np.float64).var(axis=0).sum()) for b in (tall, small)]
    assert per_joint[1] > per_joint[0] and _motion(tall.xyz) > _motion(small.xyz)
    assert select_bodies(_skel(small, tall)) == [[1], [0]]


def test_flat_frames_lower_motion_to_the_min():
    # p's flat frames (a wide detection off to the side) inflate its motion; on its other frames it
    # moves less than q, and min(motion, motion of non-flat frames) ranks q first
    fr = np.arange(40)
    xyz = _figure(fr, 0.05)
    xyz[:10] = _flat(fr[:10]) + [2.0, 0.0, 0.0]  # 25 % flat: kept
    p = _body(1, fr, xyz)
    q = _body(2, fr, _figure(fr, 0.3, x0=1.0))
    assert _motion(p.xyz) > _motion(q.xyz) > _motion(p.xyz[10:])
    assert select_bodies(_skel(p, q)) == [[1], [0]]


def test_flat_frames_never_raise_motion():
    # r's flat frames collapse near its centre and lower its pooled variance; the non-flat frames
    # alone measure more than s, but the min keeps r's lower full measure, so s ranks first
    fr = np.arange(40)
    xyz = _figure(fr)
    centre = xyz[0].mean(axis=0)
    xyz[:10] = centre + np.stack([np.linspace(-0.01, 0.01, NUM_JOINTS), np.zeros(NUM_JOINTS),
                                  np.zeros(NUM_JOINTS)], axis=1)
    r = _body(1, fr, xyz)
    s = _body(2, fr, _figure(fr, scale=0.95, x0=1.0))
    assert _motion(r.xyz[10:]) > _motion(s.xyz) > _motion(r.xyz)
    assert select_bodies(_skel(r, s)) == [[1], [0]]


def test_motion_ties_keep_first_appearance_order():
    fr = range(40)
    a = _body(7, fr, _figure(fr, 0.2))
    b = _body(3, fr, _figure(fr, 0.2))
    assert select_bodies(_skel(a, b)) == [[0], [1]]


@pytest.mark.skipif(not os.path.isfile(TWO), reason="NTU sample absent")
def test_handshake_file_person_order():
    skel = read_skeleton(TWO)
    motion = {b.body_id: _motion(b.xyz) for b in skel.bodies}
    assert round(motion[72057594037944734], 3) == 0.237 and round(motion[72057594037944738], 3) == 0.198
    sel = select_bodies(skel)
    assert [[skel.bodies[i].body_id for i in slot] for slot in sel] == [[72057594037944734],
                                                                       [72057594037944738]]
    arr, length = skeleton_to_array(skel)
    assert length == 70
    np.testing.assert_array_equal(arr[..., 0], skel.bodies[sel[0][0]].xyz.transpose(2, 0, 1))
    np.testing.assert_array_equal(arr[..., 1], skel.bodies[sel[1][0]].xyz.transpose(2, 0, 1))
