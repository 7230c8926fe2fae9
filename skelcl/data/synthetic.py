"""A procedural skeleton-action dataset in the NTU RGB+D 25-joint layout.

Every performance is an articulated motion: joint-angle trajectories per action class, turned into
joint positions by forward kinematics on a skeleton with the subject's own bone lengths. Each
performance is then "recorded" by three cameras, as in NTU RGB+D: the same world motion expressed
in each camera's coordinate system (Kinect v2 camera space: x to the sensor's left, y up, z away
from the sensor, metres), with per-sensor noise and short tracking freezes.

Why it looks like this: the data must make viewpoint matter. Raw camera coordinates change a lot
with camera yaw, elevation and distance, while the classes differ only in how joints move (left
against right variants, sitting down against standing up, squatting against sitting), so a
classifier must see through the viewpoint to do well on the held-out camera.

World frame: y up, the floor at y = 0. Body frame (rest pose): X to the person's left, Y up, Z the
direction the person faces; both are right-handed, like the Kinect camera frame. NTU-like
recording geometry: camera 1 at azimuth 0, cameras 2 and 3 at +45 and -45 degrees, all looking at
the performer; replication 1 faces camera 2, replication 2 faces camera 3 (odd/even replications
alternate), so camera 1 always sees 45-degree views and cameras 2 and 3 see front and side views.
Unlike NTU, camera 1 is mounted high and looks down, so the held-out camera of the cross-view
split also differs in elevation (see ``_CAMERA_RAISE_M``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import SkeletonArrays

__all__ = [
    "ACTIONS",
    "BONE_PARENT",
    "SyntheticRecording",
    "generate_synthetic",
    "load_synthetic",
    "simulate",
]

# Bump when the generator changes what it produces for the same parameters (invalidates caches).
GENERATOR_VERSION = 3

# NTU 25-joint Kinect v2 order, 0-based.
(SPINE_BASE, SPINE_MID, NECK, HEAD, L_SHOULDER, L_ELBOW, L_WRIST, L_HAND, R_SHOULDER, R_ELBOW,
 R_WRIST, R_HAND, L_HIP, L_KNEE, L_ANKLE, L_FOOT, R_HIP, R_KNEE, R_ANKLE, R_FOOT, SPINE_SHOULDER,
 L_HANDTIP, L_THUMB, R_HANDTIP, R_THUMB) = range(25)
NUM_JOINTS = 25

# Kinematic tree of Kinect v2 (parent of each joint; the root is the spine base). Bone j is the
# segment parent[j] -> j, and the rotation stored for joint j turns that segment.
BONE_PARENT = np.array(
    [-1, 0, 20, 2, 20, 4, 5, 6, 20, 8, 9, 10, 0, 12, 13, 14, 0, 16, 17, 18, 1, 7, 7, 11, 11]
)
# Parents before children, so one pass of forward kinematics suffices.
_FK_ORDER = (1, 20, 2, 3, 4, 5, 6, 7, 21, 22, 8, 9, 10, 11, 23, 24, 12, 13, 14, 15, 16, 17, 18, 19)
# Left joint -> right joint; the right half of the body is the left half mirrored in X.
_MIRROR = {4: 8, 5: 9, 6: 10, 7: 11, 21: 23, 22: 24, 12: 16, 13: 17, 14: 18, 15: 19}

# Rest pose of a 1.75 m adult: bone length (m) and direction in the body frame.
_REST = {
    SPINE_MID: (0.26, (0, 1, 0)),
    SPINE_SHOULDER: (0.24, (0, 1, 0)),
    NECK: (0.07, (0, 1, 0.05)),
    HEAD: (0.14, (0, 1, 0.1)),
    L_SHOULDER: (0.17, (1, -0.25, 0)),
    L_ELBOW: (0.28, (0, -1, 0)),
    L_WRIST: (0.25, (0, -1, 0)),
    L_HAND: (0.07, (0, -1, 0)),
    L_HANDTIP: (0.08, (0, -1, 0)),
    L_THUMB: (0.05, (-0.2, -0.5, 0.85)),
    L_HIP: (0.09, (1, -0.4, 0)),
    L_KNEE: (0.42, (0, -1, 0)),
    L_ANKLE: (0.40, (0, -1, 0)),
    L_FOOT: (0.13, (0, -0.3, 1)),
}
_FEET = (L_ANKLE, L_FOOT, R_ANKLE, R_FOOT)

# Action classes: (name, number of people). Action id (the "Aaaa" of a name) is index + 1.
ACTIONS: tuple[tuple[str, int], ...] = (
    ("wave left hand", 1),
    ("wave right hand", 1),
    ("kick with right leg", 1),
    ("squat", 1),
    ("jump", 1),
    ("clap", 1),
    ("punch with right fist", 1),
    ("bow", 1),
    ("turn around", 1),
    ("walk", 1),
    ("sit down", 1),
    ("stand up", 1),
    ("arm circles", 1),
    ("shake hands", 2),
    ("push other person", 2),
)

# NTU-60 cross-subject training performers; ids above 40 train when odd (half the subjects).
_NTU_XSUB_TRAIN = {1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38}
_CAMERA_AZIMUTH_DEG = {1: 0.0, 2: 45.0, 3: -45.0}
# Height of each camera above its setup's base height (m). Camera 1 hangs high and looks down
# (about 25-45 degrees), so the held-out camera of the cross-view split differs from the training
# cameras in elevation as well as in yaw: a representation that ignores viewpoint is needed.
_CAMERA_RAISE_M = {1: (1.7, 2.3), 2: (-0.1, 0.1), 3: (-0.1, 0.1)}
_UPPER = {"L": L_ELBOW, "R": R_ELBOW}  # upper arm
_FORE = {"L": L_WRIST, "R": R_WRIST}  # forearm
_THIGH = {"L": L_KNEE, "R": R_KNEE}
_SHIN = {"L": L_ANKLE, "R": R_ANKLE}
_FOOT = {"L": L_FOOT, "R": R_FOOT}


@dataclass
class SyntheticRecording:
    """The generated data plus the ground truth behind it (for tests and diagnostics).

    arrays:          the dataset, N = 3 * (number of performances), cameras 1, 2, 3 in turn.
    performance:     (N,) index of the performance each sequence records.
    camera_rotation: (N, 3, 3) world -> camera rotation; ``x_cam = R (x_world - position)``.
    camera_position: (N, 3) camera centre in world coordinates (m).
    """

    arrays: SkeletonArrays
    performance: np.ndarray
    camera_rotation: np.ndarray
    camera_position: np.ndarray


# ----------------------------------------------------------------------------------------------
# small geometry helpers (all vectorised over leading dimensions)


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _smoothstep(s):
    s = np.clip(s, 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _plateau(s, ramp=0.2):
    """0 outside [0, 1], 1 in the middle, smooth ramps of width ``ramp`` at both ends."""
    return _smoothstep(s / ramp) * _smoothstep((1.0 - s) / ramp)


def _bumps(s, k):
    """``k`` smooth 0 -> 1 -> 0 bumps over s in [0, 1] (0 outside)."""
    inside = (s >= 0) & (s <= 1)
    return np.where(inside, np.sin(np.pi * k * np.clip(s, 0, 1)) ** 2, 0.0)


def _rest_offsets(scale):
    """(P,) or (P, 25) bone scale -> (P, 25, 3) bone vectors of the rest pose (m)."""
    offsets = np.zeros((NUM_JOINTS, 3))
    for joint, (length, direction) in _REST.items():
        d = np.asarray(direction, float)
        offsets[joint] = length * d / np.linalg.norm(d)
        if joint in _MIRROR:
            offsets[_MIRROR[joint]] = offsets[joint] * (-1.0, 1.0, 1.0)
    return offsets[None] * scale[..., None]


def _rot_yzx(angles):
    """(..., 3) angles (rx, ry, rz) -> (..., 3, 3) ``Ry(ry) Rz(rz) Rx(rx)``, written out (no stacking)."""
    cx, cy, cz = (np.cos(angles[..., i]) for i in range(3))
    sx, sy, sz = (np.sin(angles[..., i]) for i in range(3))
    out = np.empty(angles.shape + (3,))
    out[..., 0, 0] = cy * cz
    out[..., 0, 1] = sy * sx - cy * sz * cx
    out[..., 0, 2] = cy * sz * sx + sy * cx
    out[..., 1, 0] = sz
    out[..., 1, 1] = cz * cx
    out[..., 1, 2] = -cz * sx
    out[..., 2, 0] = -sy * cz
    out[..., 2, 1] = sy * sz * cx + cy * sx
    out[..., 2, 2] = cy * cx - sy * sz * sx
    return out


def _forward_kinematics(angles, offsets, root_rotation):
    """Joint positions relative to the root.

    angles: (P, T, 25, 3) per-joint (rx, ry, rz) in radians, local rotation ``Ry Rz Rx`` of each
    bone in its parent's frame. offsets: (P, 25, 3) rest bone vectors. root_rotation:
    (P, T, 3, 3) body -> world. Returns (P, T, 25, 3).
    """
    local = _rot_yzx(angles)
    glob = np.empty_like(local)
    pos = np.zeros(angles.shape[:3] + (3,))
    glob[:, :, 0] = root_rotation
    for j in _FK_ORDER:
        p = BONE_PARENT[j]
        glob[:, :, j] = glob[:, :, p] @ local[:, :, j]
        pos[:, :, j] = pos[:, :, p] + np.einsum("ptij,pj->pti", glob[:, :, j], offsets[:, j])
    return pos


# ----------------------------------------------------------------------------------------------
# action trajectories


class _Pose:
    """Joint-angle (degrees) and root trajectories of a group of performances, filled by actions.

    Angles use the left-side convention; ``rot(..., side="R")`` mirrors them (ry, rz negated).
    For limbs hanging down at rest: rx < 0 swings forward, rz > 0 lifts a left limb sideways.
    For the spine: rx > 0 bends forward.
    """

    def __init__(self, n, t):
        self.angles = np.zeros((n, t, NUM_JOINTS, 3))
        self.yaw = np.zeros((n, t))  # extra body yaw (degrees)
        self.forward = np.zeros((n, t))  # root displacement along the facing direction (m)
        self.lift = np.zeros((n, t))  # height above floor contact (m)

    def rot(self, joint, side="L", rx=0.0, ry=0.0, rz=0.0):
        sign = 1.0
        if side == "R":
            joint, sign = _MIRROR.get(joint, joint), -1.0
        self.angles[:, :, joint, 0] += rx
        self.angles[:, :, joint, 1] += sign * ry
        self.angles[:, :, joint, 2] += sign * rz


def _wave(pose, s, q, side):
    e = _plateau(s)
    osc = np.sin(2 * np.pi * q.cycles * 3.0 * s + q.phase)
    pose.rot(_UPPER[side], side, rx=-20 * e, rz=85 * q.amp * e)
    pose.rot(_FORE[side], side, rz=(75 + 28 * q.amp * osc) * e)
    pose.rot(_FORE[side], side, rx=-15 * e)


def _kick(pose, s, q):
    b = _bumps(s, np.where(q.r1 < 0.5, 1, 2))
    pose.rot(_THIGH["R"], "R", rx=-75 * q.amp * b)
    pose.rot(_SHIN["R"], "R", rx=320 * b * (1 - b))  # knee bent on the way up and down
    pose.rot(SPINE_MID, rx=-10 * b)
    for side in "LR":
        pose.rot(_UPPER[side], side, rz=15 * b)


def _squat_pose(pose, depth, lean):
    for side in "LR":
        pose.rot(_THIGH[side], side, rx=-95 * depth)
        pose.rot(_SHIN[side], side, rx=115 * depth)
        pose.rot(_FOOT[side], side, rx=-20 * depth)
        pose.rot(_UPPER[side], side, rx=-60 * depth)
    pose.rot(SPINE_MID, rx=lean)


def _squat(pose, s, q):
    depth = q.amp * _bumps(s, np.where(q.r1 < 0.5, 2, 3))
    _squat_pose(pose, depth, 30 * depth)


def _sit(pose, s, q, down):
    progress = _smoothstep((s - 0.1) / 0.6)
    depth = progress if down else 1.0 - progress
    for side in "LR":
        pose.rot(_THIGH[side], side, rx=-88 * depth)
        pose.rot(_SHIN[side], side, rx=88 * depth)
        pose.rot(_UPPER[side], side, rx=-25 * depth)
        pose.rot(_FORE[side], side, rx=-40 * depth)
    pose.rot(SPINE_MID, rx=30 * q.amp * np.sin(np.pi * progress) + 5 * depth)


def _jump(pose, s, q):
    k = np.where(q.r1 < 0.5, 1, 2)
    phase = np.where((s >= 0) & (s < 1), (np.clip(s, 0, 1) * k) % 1.0, 0.0)
    crouch = np.where(phase < 0.4, np.sin(np.pi * phase / 0.4) ** 2, 0.0)
    flight = np.where((phase >= 0.4) & (phase < 0.8), np.sin(np.pi * (phase - 0.4) / 0.4), 0.0)
    _squat_pose(pose, 0.45 * crouch, 15 * crouch)
    pose.lift += 0.25 * q.amp * flight
    for side in "LR":
        pose.rot(_UPPER[side], side, rx=-140 * flight + 40 * crouch)
        pose.rot(_SHIN[side], side, rx=15 * flight)


def _clap(pose, s, q):
    e = _plateau(s)
    n = np.round(3 + 2 * q.r1)
    open_ = 0.5 * (1 - np.cos(2 * np.pi * n * s))
    for side in "LR":
        pose.rot(_UPPER[side], side, rx=-75 * e, ry=(-16 + 50 * q.amp * open_) * e)
        pose.rot(_FORE[side], side, rx=-25 * e)


def _punch(pose, s, q):
    e = _plateau(s, 0.15)
    b = _bumps(s, np.where(q.r1 < 0.5, 2, 3)) ** 2  # sharp thrusts
    pose.rot(_UPPER["L"], "L", rx=-35 * e)
    pose.rot(_FORE["L"], "L", rx=-110 * e)
    pose.rot(_UPPER["R"], "R", rx=-(35 + 50 * q.amp * b) * e)
    pose.rot(_FORE["R"], "R", rx=-(110 - 100 * b) * e)
    pose.rot(SPINE_SHOULDER, ry=20 * b)


def _bow(pose, s, q):
    b = _plateau(s, 0.35)
    pose.rot(SPINE_MID, rx=40 * q.amp * b)
    pose.rot(SPINE_SHOULDER, rx=20 * q.amp * b)
    pose.rot(NECK, rx=10 * b)
    for side in "LR":  # the arms turn with the trunk; swing them forward so they hang down
        pose.rot(_UPPER[side], side, rx=-50 * q.amp * b)


def _stepping(pose, s, q, n, size):
    ph = 2 * np.pi * n * s + q.phase
    inside = (s >= 0) & (s <= 1)
    for side, shift in (("L", 0.0), ("R", np.pi)):
        swing = np.where(inside, np.sin(ph + shift), 0.0)
        pose.rot(_THIGH[side], side, rx=-size * swing)
        pose.rot(_SHIN[side], side, rx=1.3 * size * np.maximum(0.0, np.sin(ph + shift + np.pi / 2)) * inside)
        pose.rot(_UPPER[side], side, rx=0.8 * size * swing)


def _turn(pose, s, q):
    direction = np.where(q.r1 < 0.5, 1.0, -1.0)
    pose.yaw += direction * 180 * _smoothstep(s)
    _stepping(pose, s, q, 2.0, 12 * q.amp)


def _walk(pose, s, q):
    n = np.round(2 + q.r1)
    pose.forward += 0.35 * n * q.amp * (np.clip(s, 0, 1) - 0.5)
    _stepping(pose, s, q, n, 25 * q.amp)


def _arm_circles(pose, s, q):
    e = _plateau(s)
    ph = 2 * np.pi * q.cycles * 4.0 * s + q.phase
    for side in "LR":
        pose.rot(_UPPER[side], side, rx=25 * q.amp * np.sin(ph) * e, rz=(85 + 25 * q.amp * np.cos(ph)) * e)


def _shake_hands(pose, s, q):
    reach = _plateau(s, 0.3)
    shake = _bumps((s - 0.3) / 0.4, 1) * np.sin(2 * np.pi * 3 * s)
    pose.rot(_UPPER["R"], "R", rx=-(50 + 10 * shake) * reach, ry=-15 * reach)
    pose.rot(_FORE["R"], "R", rx=-40 * reach)
    pose.rot(SPINE_MID, rx=8 * reach)


def _push(pose, s, q):
    thrust = _bumps((s - 0.3) / 0.4, 1)
    reach = _plateau(s, 0.3)
    for side in "LR":
        pose.rot(_UPPER[side], side, rx=-(30 * reach + 55 * q.amp * thrust))
        pose.rot(_FORE[side], side, rx=-(90 * reach - 80 * thrust))
    pose.rot(SPINE_MID, rx=15 * thrust)
    pose.forward += 0.2 * _smoothstep((s - 0.3) / 0.3)


def _pushed(pose, s, q):
    recoil = _bumps((s - 0.4) / 0.45, 1)
    pose.forward -= 0.35 * q.amp * _smoothstep((s - 0.4) / 0.3)
    pose.rot(SPINE_MID, rx=-20 * recoil)
    for side in "LR":
        pose.rot(_UPPER[side], side, rx=-40 * recoil, rz=20 * recoil)
        pose.rot(_FORE[side], side, rx=-50 * recoil)
    _stepping(pose, np.where(s >= 0.4, (s - 0.4) / 0.5, -1.0), q, 1.0, 15 * recoil)


# action index -> (motion of person 0, motion of person 1 or None)
_MOTIONS = (
    (lambda p, s, q: _wave(p, s, q, "L"), None),
    (lambda p, s, q: _wave(p, s, q, "R"), None),
    (_kick, None),
    (_squat, None),
    (_jump, None),
    (_clap, None),
    (_punch, None),
    (_bow, None),
    (_turn, None),
    (_walk, None),
    (lambda p, s, q: _sit(p, s, q, True), None),
    (lambda p, s, q: _sit(p, s, q, False), None),
    (_arm_circles, None),
    (_shake_hands, _shake_hands),
    (_push, _pushed),
)


class _Params:
    """Per-performance random parameters, as (n, 1) columns that broadcast over time."""

    def __init__(self, **cols):
        for k, v in cols.items():
            setattr(self, k, np.asarray(v, float)[:, None])

    def take(self, index):
        out = _Params.__new__(_Params)
        for k, v in vars(self).items():
            setattr(out, k, v[index])
        return out


# ----------------------------------------------------------------------------------------------
# the generator


def _check(name, value, low, high=None, integer=False):
    if integer and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not integer and not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not np.isfinite(value) or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")


def _settings(num_subjects, reps_per_class, num_frames, seed, two_person_fraction, noise, drop_rate,
              num_classes, num_setups):
    _check("num_subjects", num_subjects, 2, 999, integer=True)
    _check("reps_per_class", reps_per_class, 1, 999, integer=True)
    _check("num_frames", num_frames, 16, 10000, integer=True)
    _check("seed", seed, 0, 2**63 - 1, integer=True)
    _check("two_person_fraction", two_person_fraction, 0.0, 1.0)
    _check("noise", noise, 0.0, 0.5)
    _check("drop_rate", drop_rate, 0.0, 0.2)
    _check("num_classes", num_classes, 2, len(ACTIONS), integer=True)
    _check("num_setups", num_setups, 1, 999, integer=True)
    return dict(num_subjects=int(num_subjects), reps_per_class=int(reps_per_class),
                num_frames=int(num_frames), seed=int(seed), two_person_fraction=float(two_person_fraction),
                noise=float(noise), drop_rate=float(drop_rate), num_classes=int(num_classes),
                num_setups=int(num_setups))


def _person_world(pose, offsets, facing_deg, place):
    """Forward kinematics of one person per performance, feet on the floor -> (P, T, 25, 3) world."""
    yaw = np.deg2rad(facing_deg[:, None] + pose.yaw)
    root_rot = _rot_y(yaw)
    joints = _forward_kinematics(np.deg2rad(pose.angles), offsets, root_rot)
    heading = np.deg2rad(facing_deg)[:, None]
    root = np.stack([np.sin(heading) * pose.forward, pose.lift, np.cos(heading) * pose.forward], -1)
    root = root + place[:, None, :]
    joints = joints + root[:, :, None, :]
    floor = joints[:, :, _FEET, 1].min(axis=2) - pose.lift  # lowest foot, flight excluded
    joints[..., 1] -= (floor - 0.03)[..., None]  # ankles/feet ~3 cm above the floor
    return joints


def _cameras(rng, num_setups, setup, num_perf):
    """(P, 3, 3, 3) world->camera rotations and (P, 3, 3) positions of cameras 1, 2, 3."""
    height = rng.uniform(0.6, 1.3, num_setups)
    distance = rng.uniform(2.4, 3.4, num_setups)
    raise_lo, raise_hi = np.array([_CAMERA_RAISE_M[c] for c in (1, 2, 3)]).T
    cam_height = height[setup - 1][:, None] + rng.uniform(raise_lo, raise_hi, (num_perf, 3))
    cam_dist = distance[setup - 1][:, None] + rng.uniform(-0.3, 0.3, (num_perf, 3))
    azimuth = np.deg2rad(np.array([_CAMERA_AZIMUTH_DEG[c] for c in (1, 2, 3)]))[None]
    azimuth = azimuth + np.deg2rad(rng.uniform(-5, 5, (num_perf, 3)))
    target_y = rng.uniform(0.85, 1.15, (num_perf, 3))
    roll = np.deg2rad(rng.uniform(-3, 3, (num_perf, 3)))

    pos = np.stack([cam_dist * np.sin(azimuth), cam_height, cam_dist * np.cos(azimuth)], -1)
    target = np.stack([np.zeros_like(target_y), target_y, np.zeros_like(target_y)], -1)
    z = target - pos
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    x = np.cross(np.array([0.0, 1.0, 0.0]), z)  # sensor's left
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(z, x)
    rot = np.stack([x, y, z], -2)  # rows: camera axes in world coordinates
    rot = _rot_z(roll) @ rot
    return rot, pos


def _freeze_dropouts(rng, seq, length, rate):
    """Tracking losses, in place: a joint holds its previous reported position for 2-6 frames.

    seq: (S, T, V, 3) camera coordinates, length: (S,) valid frames. Kinect never reports a
    lost joint as zero, so neither do we (all-zero slots mean "no person"). Events are drawn
    sparsely (their count is binomial), so the cost scales with the number of events.
    """
    s_, t_, v_, _ = seq.shape
    count = rng.binomial(s_ * t_ * v_, rate)
    si = rng.integers(0, s_, count)
    t0 = rng.integers(1, t_, count)
    vi = rng.integers(0, v_, count)
    burst = rng.integers(2, 7, count)
    held = seq[si, t0 - 1, vi] + rng.normal(0.0, 0.01, (count, 3)).astype(seq.dtype)
    for k in range(6):
        t = t0 + k
        hit = (k < burst) & (t < length[si])
        seq[si[hit], t[hit], vi[hit]] = held[hit]


def simulate(
    *,
    num_subjects: int = 40,
    reps_per_class: int = 2,
    num_frames: int = 64,
    seed: int = 0,
    two_person_fraction: float = 0.1,
    noise: float = 0.01,
    drop_rate: float = 0.002,
    num_classes: int = len(ACTIONS),
    num_setups: int = 6,
) -> SyntheticRecording:
    """Generate the dataset together with its camera ground truth (see ``generate_synthetic``)."""
    cfg = _settings(num_subjects, reps_per_class, num_frames, seed, two_person_fraction, noise,
                    drop_rate, num_classes, num_setups)
    rng = np.random.default_rng(cfg["seed"])
    n_sub, n_rep, t_max, n_cls = num_subjects, reps_per_class, num_frames, num_classes

    # subjects: body size, proportions (left/right symmetric), tempo, amplitude, rest posture
    sub_scale = rng.uniform(0.88, 1.08, n_sub)[:, None] * rng.uniform(0.93, 1.07, (n_sub, NUM_JOINTS))
    for left, right in _MIRROR.items():
        sub_scale[:, right] = sub_scale[:, left]
    sub_speed = rng.uniform(0.8, 1.25, n_sub)
    sub_amp = rng.uniform(0.85, 1.15, n_sub)
    sub_posture = rng.normal(0.0, 1.0, (n_sub, 4))

    # performances: every subject performs every class reps_per_class times
    subject, action, rep = (a.ravel() for a in np.meshgrid(
        np.arange(1, n_sub + 1), np.arange(n_cls), np.arange(1, n_rep + 1), indexing="ij"))
    n_perf = subject.size
    si = subject - 1
    setup = rng.integers(1, cfg["num_setups"] + 1, n_perf)
    length = np.clip(np.round(t_max * rng.uniform(0.6, 1.0, n_perf) / np.sqrt(sub_speed[si])),
                     t_max // 2, t_max).astype(np.int64)
    q = _Params(
        amp=sub_amp[si] * rng.uniform(0.85, 1.15, n_perf),
        cycles=sub_speed[si] * rng.uniform(0.8, 1.2, n_perf),
        phase=rng.uniform(0, 2 * np.pi, n_perf),
        start=rng.uniform(0.0, 0.15, n_perf),
        end=rng.uniform(0.85, 1.0, n_perf),
        r1=rng.random(n_perf),
    )
    # replications alternate between facing camera 2 and camera 3; small random deviation.
    # An interacting pair faces each other across that direction, so that camera sees both.
    two_person = np.array([ACTIONS[a][1] == 2 for a in action])
    facing = np.where(rep % 2 == 1, _CAMERA_AZIMUTH_DEG[2], _CAMERA_AZIMUTH_DEG[3])
    facing = facing + np.where(two_person, 90.0, 0.0) + rng.normal(0.0, 10.0, n_perf)
    place = np.stack([rng.uniform(-0.3, 0.3, n_perf), np.zeros(n_perf), rng.uniform(-0.3, 0.3, n_perf)], -1)

    frame = np.arange(t_max)[None, :]
    u = frame / np.maximum(length[:, None] - 1, 1)  # 0..1 over the valid frames
    s = (u - q.start) / (q.end - q.start)  # 0..1 over the action itself

    def idle(idx):
        """Rest posture of the performing subject plus slow sway of every joint."""
        n = idx.size
        pose = _Pose(n, t_max)
        post = sub_posture[si[idx]]
        for side in "LR":
            pose.rot(_UPPER[side], side, rz=(9 + 3 * post[:, 0:1]))
            pose.rot(_FORE[side], side, rx=-(12 + 5 * post[:, 1:2]))
        pose.rot(SPINE_MID, rx=2 + 2 * post[:, 2:3])
        pose.rot(NECK, rx=3 * post[:, 3:4])
        amp = rng.uniform(0.0, 3.0, (n, 1, NUM_JOINTS, 3))
        freq = rng.uniform(0.3, 1.5, (n, 1, NUM_JOINTS, 3))
        ph = rng.uniform(0, 2 * np.pi, (n, 1, NUM_JOINTS, 3))
        pose.angles += amp * np.sin(2 * np.pi * freq * u[idx][:, :, None, None] + ph)
        return pose

    pose_a = idle(np.arange(n_perf))
    bystander = ~two_person & (rng.random(n_perf) < cfg["two_person_fraction"])
    has_b = two_person | bystander
    b_idx = np.flatnonzero(has_b)
    pose_b = idle(b_idx)

    for c in range(n_cls):
        idx = np.flatnonzero(action == c)
        motion_a, motion_b = _MOTIONS[c]
        part = _Pose(idx.size, t_max)
        motion_a(part, s[idx], q.take(idx))
        for k in ("angles", "yaw", "forward", "lift"):
            getattr(pose_a, k)[idx] += getattr(part, k)
        if motion_b is not None:
            pos_in_b = np.searchsorted(b_idx, idx)
            part = _Pose(idx.size, t_max)
            motion_b(part, s[idx], q.take(idx))
            for k in ("angles", "yaw", "forward", "lift"):
                getattr(pose_b, k)[pos_in_b] += getattr(part, k)

    world_a = _person_world(pose_a, _rest_offsets(sub_scale[si]), facing, place)
    # the second person: an interaction partner facing person 0, or a bystander to the side
    partner_sub = (si[b_idx] + 1 + rng.integers(0, n_sub - 1, b_idx.size)) % n_sub
    heading = np.deg2rad(facing[b_idx])
    fwd = np.stack([np.sin(heading), np.zeros_like(heading), np.cos(heading)], -1)
    side_dir = np.stack([np.cos(heading), np.zeros_like(heading), -np.sin(heading)], -1)
    gap = np.where(two_person[b_idx], rng.uniform(0.75, 0.95, b_idx.size), rng.uniform(1.1, 1.6, b_idx.size))
    inter = two_person[b_idx][:, None]
    place_b = place[b_idx] + np.where(inter, fwd * gap[:, None], side_dir * gap[:, None])
    facing_b = facing[b_idx] + np.where(two_person[b_idx], 180.0, rng.normal(0, 20, b_idx.size))
    world_b = _person_world(pose_b, _rest_offsets(sub_scale[partner_sub]), facing_b, place_b)
    # keep an interacting pair centred where a single performer would stand
    world_a[two_person] -= (fwd[inter[:, 0]] * gap[inter[:, 0], None] / 2)[:, None, None, :]
    world_b[inter[:, 0]] -= (fwd[inter[:, 0]] * gap[inter[:, 0], None] / 2)[:, None, None, :]

    # record with the three cameras; each sensor adds its own noise and tracking freezes
    cam_rot, cam_pos = _cameras(rng, cfg["num_setups"], setup, n_perf)  # (P, 3, 3, 3), (P, 3, 3)
    seq_len = np.repeat(length, 3)
    n_seq = 3 * n_perf
    b_seq = np.flatnonzero(np.repeat(has_b, 3))
    x = np.zeros((n_seq, 3, t_max, NUM_JOINTS, 2), np.float32)
    for m, (world, perf) in enumerate(((world_a, np.arange(n_perf)), (world_b, b_idx))):
        rel = world[:, None] - cam_pos[perf][:, :, None, None, :]  # (p, 3 cams, T, V, 3)
        cam = np.einsum("pcij,pctvj->pctvi", cam_rot[perf], rel).astype(np.float32)
        cam = cam.reshape(-1, t_max, NUM_JOINTS, 3)
        if cfg["noise"] > 0:  # Kinect depth noise is larger along the viewing axis
            sigma = (cfg["noise"] * np.array([1.0, 1.0, 2.0])).astype(np.float32)
            cam += rng.standard_normal(cam.shape, dtype=np.float32) * sigma
        lengths = seq_len if m == 0 else seq_len[b_seq]
        if cfg["drop_rate"] > 0:
            _freeze_dropouts(rng, cam, lengths, cfg["drop_rate"])
        cam[frame[0][None, :] >= lengths[:, None]] = 0.0  # zero padding after the valid frames
        rows = slice(None) if m == 0 else b_seq
        x[rows, :, :, :, m] = cam.transpose(0, 3, 1, 2)

    view = np.tile(np.array([1, 2, 3]), n_perf)
    subj = np.repeat(subject, 3)
    act = np.repeat(action, 3)
    names = np.array([
        f"S{st:03d}C{c:03d}P{p:03d}R{r:03d}A{a + 1:03d}"
        for st, c, p, r, a in zip(np.repeat(setup, 3), view, subj, np.repeat(rep, 3), act)
    ])
    train_sub = np.array([(p in _NTU_XSUB_TRAIN) if p <= 40 else (p % 2 == 1) for p in range(n_sub + 1)])
    arrays = SkeletonArrays(
        x=x,
        y=act.astype(np.int64),
        layout="ntu25",
        num_classes=n_cls,
        name=names,
        subject=subj.astype(np.int64),
        view=view.astype(np.int64),
        setup=np.repeat(setup, 3).astype(np.int64),
        length=seq_len.astype(np.int64),
        splits={"xsub": train_sub[subj], "xview": view != 1},
    )
    return SyntheticRecording(
        arrays=arrays,
        performance=np.repeat(np.arange(n_perf), 3),
        camera_rotation=cam_rot.reshape(n_seq, 3, 3),
        camera_position=cam_pos.reshape(n_seq, 3),
    )


def generate_synthetic(
    *,
    num_subjects: int = 40,
    reps_per_class: int = 2,
    num_frames: int = 64,
    seed: int = 0,
    two_person_fraction: float = 0.1,
    noise: float = 0.01,
    drop_rate: float = 0.002,
    num_classes: int = len(ACTIONS),
    num_setups: int = 6,
) -> SkeletonArrays:
    """Generate the synthetic dataset (no cache); deterministic from ``seed``.

    num_subjects x num_classes x reps_per_class performances, each seen by cameras 1, 2, 3, so
    N = 3 x that (defaults: 40 x 15 x 2 x 3 = 3,600 sequences). Sequences hold between
    num_frames / 2 and num_frames valid frames, zero padded after.
    two_person_fraction: share of one-person performances with a second, idle person in the scene
    (the interaction classes always have two). noise: sensor noise std in metres (doubled along
    the viewing axis). drop_rate: per joint and frame, the chance that tracking freezes for a few
    frames. num_classes: use the first num_classes of ``ACTIONS``. num_setups: camera setups
    (height and distance), one drawn per performance.
    """
    return simulate(num_subjects=num_subjects, reps_per_class=reps_per_class, num_frames=num_frames,
                    seed=seed, two_person_fraction=two_person_fraction, noise=noise, drop_rate=drop_rate,
                    num_classes=num_classes, num_setups=num_setups).arrays


def _default_cache_dir() -> Path:
    return Path(os.environ.get("SKELCL_CACHE", Path.home() / ".cache" / "skelcl"))


def load_synthetic(
    *,
    num_subjects: int = 40,
    reps_per_class: int = 2,
    num_frames: int = 64,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    two_person_fraction: float = 0.1,
    noise: float = 0.01,
    drop_rate: float = 0.002,
    num_classes: int = len(ACTIONS),
    num_setups: int = 6,
) -> SkeletonArrays:
    """The synthetic dataset, generated once and cached as .npz keyed by its parameters.

    cache_dir defaults to $SKELCL_CACHE or ~/.cache/skelcl. See ``generate_synthetic``.
    """
    cfg = _settings(num_subjects, reps_per_class, num_frames, seed, two_person_fraction, noise,
                    drop_rate, num_classes, num_setups)
    key = hashlib.sha1(json.dumps({"version": GENERATOR_VERSION, **cfg}, sort_keys=True).encode()).hexdigest()
    folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    path = folder / f"synthetic-{key[:16]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return SkeletonArrays(
                x=f["x"], y=f["y"], layout="ntu25", num_classes=int(f["num_classes"]), name=f["name"],
                subject=f["subject"], view=f["view"], setup=f["setup"], length=f["length"],
                splits={"xsub": f["split_xsub"], "xview": f["split_xview"]},
            )
    data = generate_synthetic(**cfg)
    folder.mkdir(parents=True, exist_ok=True)
    # write to a temporary file and rename, so concurrent readers never see a partial file
    fd, tmp = tempfile.mkstemp(prefix=path.stem, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, x=data.x, y=data.y, num_classes=data.num_classes, name=data.name,
                     subject=data.subject, view=data.view, setup=data.setup, length=data.length,
                     split_xsub=data.splits["xsub"], split_xview=data.splits["xview"])
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return data
