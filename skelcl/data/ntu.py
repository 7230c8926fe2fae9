"""Parser of the raw NTU RGB+D ``.skeleton`` text format.

Layout of a file (DESIGN.md section 2): the frame count; then per frame a body count and, per body,
one line of 10 body fields, a joint count and one line of 12 fields per joint. Only the few header
lines are walked in Python; all joint lines of a file are converted to numbers in one call, which is
what makes a 56,880-file directory parse in minutes.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

__all__ = [
    "NUM_JOINTS", "SkeletonFormatError", "Body", "SkeletonFile", "read_skeleton", "parse_skeleton",
    "format_skeleton", "make_body",
]

NUM_JOINTS = 25  # Kinect v2
_BODY_FIELDS = 10
_JOINT_FIELDS = 12


class SkeletonFormatError(ValueError):
    """A malformed ``.skeleton`` file; ``path`` and ``line`` (1-based) say where."""

    def __init__(self, path: str, line: int, problem: str):
        super().__init__(f"{path}:{line}: {problem}")
        self.path = path
        self.line = line
        self.problem = problem


@dataclass
class Body:
    """One tracked body: every array has one row per frame in which the body appears."""

    body_id: int  # Kinect tracking id, e.g. 72057594037931101 (exceeds float64 precision: kept as int)
    frames: np.ndarray  # (F,) int64 frame indices into the file
    xyz: np.ndarray  # (F, 25, 3) float32 camera-space metres
    depth_xy: np.ndarray  # (F, 25, 2) float32 depth-image pixels
    color_xy: np.ndarray  # (F, 25, 2) float32 colour-image pixels
    orientation: np.ndarray  # (F, 25, 4) float32 joint orientation quaternion (w, x, y, z)
    tracking_state: np.ndarray  # (F, 25) int8: 0 not tracked, 1 inferred, 2 tracked
    clipped_edges: np.ndarray  # (F,) int32 bit mask
    hand_left_confidence: np.ndarray  # (F,) int8
    hand_left_state: np.ndarray  # (F,) int8
    hand_right_confidence: np.ndarray  # (F,) int8
    hand_right_state: np.ndarray  # (F,) int8
    is_restricted: np.ndarray  # (F,) bool
    lean: np.ndarray  # (F, 2) float32 (leanX, leanY)
    body_tracking_state: np.ndarray  # (F,) int8


@dataclass
class SkeletonFile:
    """A parsed file: ``bodies`` in order of first appearance."""

    path: str
    num_frames: int
    bodies: list[Body]


def read_skeleton(path: str | os.PathLike) -> SkeletonFile:
    """Parse one ``.skeleton`` file; a malformed file raises SkeletonFormatError (a ValueError)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read skeleton file: {e.strerror or e}") from e
    return parse_skeleton(data, path)


def parse_skeleton(data: bytes, path: str = "<bytes>") -> SkeletonFile:
    """Parse the bytes of a ``.skeleton`` file (CRLF or LF line ends, any surrounding whitespace)."""
    lines = data.split(b"\n")
    n_lines = len(lines)
    pos = 0  # index of the next line to read; line numbers in messages are pos + 1

    def next_line(what: str) -> bytes:
        nonlocal pos
        # blank lines (a trailing newline, stray empty lines) carry nothing: skip them
        while pos < n_lines and not lines[pos].strip():
            pos += 1
        if pos >= n_lines:
            raise SkeletonFormatError(path, _last_line(lines), f"file ends early: expected {what}")
        pos += 1
        return lines[pos - 1]

    def read_count(what: str) -> int:
        line = next_line(what)
        try:
            value = int(line)
        except ValueError:
            raise SkeletonFormatError(path, pos, f"expected {what} (an integer), got {_show(line)}") from None
        if value < 0:
            raise SkeletonFormatError(path, pos, f"{what} is negative ({value})")
        return value

    num_frames = read_count("the frame count")
    if num_frames == 0:
        raise SkeletonFormatError(path, pos, "the file has 0 frames")

    body_ids: list[int] = []  # per occurrence (frame, body)
    occ_frame: list[int] = []
    body_rows: list[list[bytes]] = []
    body_lines: list[int] = []
    joint_starts: list[int] = []  # index of the first joint line of each occurrence
    for t in range(num_frames):
        n_bodies = read_count(f"the body count of frame {t}")
        for b in range(n_bodies):
            line = next_line(f"the info line of body {b} in frame {t}")
            fields = line.split()
            if len(fields) != _BODY_FIELDS:
                raise SkeletonFormatError(
                    path, pos, f"body line of frame {t} has {len(fields)} fields, expected {_BODY_FIELDS}"
                )
            try:
                body_ids.append(int(fields[0]))
            except ValueError:
                problem = f"body id {_show(fields[0])} is not an integer"
                raise SkeletonFormatError(path, pos, problem) from None
            body_rows.append(fields)
            body_lines.append(pos)
            occ_frame.append(t)
            n_joints = read_count(f"the joint count of body {b} in frame {t}")
            if n_joints != NUM_JOINTS:
                raise SkeletonFormatError(path, pos, f"joint count is {n_joints}, expected {NUM_JOINTS}")
            # joint lines are taken as the next 25 lines; blank lines inside a block are an error
            if pos + NUM_JOINTS > n_lines or (pos + NUM_JOINTS == n_lines and not lines[-1].strip()):
                problem = f"file ends inside the joints of body {b} in frame {t} (truncated)"
                raise SkeletonFormatError(path, _last_line(lines), problem)
            joint_starts.append(pos)
            pos += NUM_JOINTS
    while pos < n_lines:
        if lines[pos].strip():
            problem = f"unexpected content after the last frame: {_show(lines[pos])}"
            raise SkeletonFormatError(path, pos + 1, problem)
        pos += 1

    n_occ = len(joint_starts)
    joints = _parse_joint_lines(lines, joint_starts, path)  # (n_occ, 25, 12) float64
    body_info = _parse_body_lines(body_rows, body_lines, path)  # (n_occ, 9) float64

    bodies: list[Body] = []
    if n_occ:
        frames = np.asarray(occ_frame, dtype=np.int64)
        order: dict[int, list[int]] = {}
        for i, bid in enumerate(body_ids):  # dict keeps first-appearance order
            order.setdefault(bid, []).append(i)
        for bid, occ in order.items():
            idx = np.asarray(occ, dtype=np.int64)
            j = joints[idx]
            info = body_info[idx]
            bodies.append(
                Body(
                    body_id=bid,
                    frames=frames[idx],
                    xyz=j[:, :, 0:3].astype(np.float32),
                    depth_xy=j[:, :, 3:5].astype(np.float32),
                    color_xy=j[:, :, 5:7].astype(np.float32),
                    orientation=j[:, :, 7:11].astype(np.float32),
                    tracking_state=j[:, :, 11].astype(np.int8),
                    clipped_edges=info[:, 0].astype(np.int32),
                    hand_left_confidence=info[:, 1].astype(np.int8),
                    hand_left_state=info[:, 2].astype(np.int8),
                    hand_right_confidence=info[:, 3].astype(np.int8),
                    hand_right_state=info[:, 4].astype(np.int8),
                    is_restricted=info[:, 5] != 0,
                    lean=info[:, 6:8].astype(np.float32),
                    body_tracking_state=info[:, 8].astype(np.int8),
                )
            )
    return SkeletonFile(path=path, num_frames=num_frames, bodies=bodies)


def _last_line(lines: list[bytes]) -> int:
    """1-based number of the last non-blank line (1 for an empty file): where a truncation shows."""
    for k in range(len(lines) - 1, -1, -1):
        if lines[k].strip():
            return k + 1
    return 1


def _show(line: bytes) -> str:
    text = line.decode("utf-8", "replace").strip()
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _parse_joint_lines(lines: list[bytes], starts: list[int], path: str) -> np.ndarray:
    n = len(starts)
    if n == 0:
        return np.zeros((0, NUM_JOINTS, _JOINT_FIELDS))
    block = []
    for s in starts:
        block.extend(lines[s : s + NUM_JOINTS])
    values = _to_floats(b" ".join(block))
    # the total alone would let a 13-field line and an 11-field line cancel out: count every line too
    if (values is None or values.size != n * NUM_JOINTS * _JOINT_FIELDS or not np.isfinite(values).all()
            or any(len(line.split()) != _JOINT_FIELDS for line in block)):
        _locate_bad_joint_line(lines, starts, path)  # raises with the line number
    return values.reshape(n, NUM_JOINTS, _JOINT_FIELDS)


def _parse_body_lines(rows: list[list[bytes]], line_numbers: list[int], path: str) -> np.ndarray:
    if not rows:
        return np.zeros((0, _BODY_FIELDS - 1))
    values = _to_floats(b" ".join(b" ".join(r[1:]) for r in rows))
    if values is None or values.size != len(rows) * (_BODY_FIELDS - 1) or not np.isfinite(values).all():
        for fields, line in zip(rows, line_numbers):
            _check_numeric(fields[1:], path, line, "body line")
    return values.reshape(len(rows), _BODY_FIELDS - 1)


def _to_floats(text: bytes) -> np.ndarray | None:
    """Whitespace-separated numbers, or None when a token is not a number."""
    with warnings.catch_warnings():
        # NumPy stops at the first non-number with a DeprecationWarning: make that an error
        warnings.simplefilter("error")
        try:
            return np.fromstring(text.decode("ascii", "replace"), dtype=np.float64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None


def _check_numeric(fields: list[bytes], path: str, line: int, what: str) -> None:
    for tok in fields:
        try:
            value = float(tok)
        except ValueError:
            raise SkeletonFormatError(path, line, f"{what} has a non-numeric field {_show(tok)}") from None
        if not np.isfinite(value):
            raise SkeletonFormatError(path, line, f"{what} has a non-finite value {_show(tok)}")


def _locate_bad_joint_line(lines: list[bytes], starts: list[int], path: str) -> None:
    for s in starts:
        for k in range(s, s + NUM_JOINTS):
            fields = lines[k].split()
            if len(fields) != _JOINT_FIELDS:
                raise SkeletonFormatError(
                    path, k + 1, f"joint line has {len(fields)} fields, expected {_JOINT_FIELDS}"
                )
            _check_numeric(fields, path, k + 1, "joint line")
    raise SkeletonFormatError(path, starts[0] + 1, "joint lines could not be parsed")  # not reached


def make_body(body_id: int, frames, xyz, rng: np.random.Generator | None = None) -> Body:
    """A Body with the given positions and plausible other fields (random when ``rng`` is given):
    test data and benchmark input in the raw format."""
    frames = np.asarray(frames, dtype=np.int64)
    xyz = np.asarray(xyz, dtype=np.float32)
    f = len(frames)
    if xyz.shape != (f, NUM_JOINTS, 3):
        raise ValueError(f"xyz must be ({f}, {NUM_JOINTS}, 3), got shape {xyz.shape}")
    rng = rng or np.random.default_rng(0)
    quat = rng.normal(size=(f, NUM_JOINTS, 4)).astype(np.float32)
    return Body(
        body_id=int(body_id), frames=frames, xyz=xyz,
        depth_xy=rng.uniform(0, 512, (f, NUM_JOINTS, 2)).astype(np.float32),
        color_xy=rng.uniform(0, 1920, (f, NUM_JOINTS, 2)).astype(np.float32),
        orientation=quat / np.linalg.norm(quat, axis=-1, keepdims=True),
        tracking_state=rng.integers(0, 3, (f, NUM_JOINTS)).astype(np.int8),
        clipped_edges=rng.integers(0, 16, f).astype(np.int32),
        hand_left_confidence=rng.integers(0, 2, f).astype(np.int8),
        hand_left_state=rng.integers(0, 4, f).astype(np.int8),
        hand_right_confidence=rng.integers(0, 2, f).astype(np.int8),
        hand_right_state=rng.integers(0, 4, f).astype(np.int8),
        is_restricted=rng.integers(0, 2, f).astype(bool),
        lean=rng.uniform(-1, 1, (f, 2)).astype(np.float32),
        body_tracking_state=np.full(f, 2, dtype=np.int8),
    )


def format_skeleton(num_frames: int, bodies: list[Body], newline: str = "\r\n") -> str:
    """The ``.skeleton`` text of ``bodies`` (inverse of parse_skeleton; floats written with repr,
    so float32 values read back exactly). NTU files use CRLF line ends."""
    per_frame: list[list[tuple[Body, int]]] = [[] for _ in range(num_frames)]
    for b in bodies:
        for k, t in enumerate(b.frames):
            per_frame[int(t)].append((b, k))
    out = [str(num_frames)]
    for entries in per_frame:
        out.append(str(len(entries)))
        for b, k in entries:
            info = [b.clipped_edges[k], b.hand_left_confidence[k], b.hand_left_state[k],
                    b.hand_right_confidence[k], b.hand_right_state[k], int(b.is_restricted[k])]
            out.append(" ".join([str(b.body_id)] + [str(int(v)) for v in info]
                                + [repr(float(v)) for v in b.lean[k]] + [str(int(b.body_tracking_state[k]))]))
            out.append(str(NUM_JOINTS))
            cols = np.concatenate([b.xyz[k], b.depth_xy[k], b.color_xy[k], b.orientation[k]], axis=1)
            for j in range(NUM_JOINTS):
                out.append(" ".join([repr(float(v)) for v in cols[j]] + [str(int(b.tracking_state[k, j]))]))
    return newline.join(out) + newline
