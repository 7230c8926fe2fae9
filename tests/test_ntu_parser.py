"""The raw .skeleton parser: real NTU files checked against their text, generated edge cases, errors."""

from __future__ import annotations

import os

import numpy as np
import pytest

from skelcl.data.ntu import (
    NUM_JOINTS,
    SkeletonFormatError,
    format_skeleton,
    make_body,
    parse_skeleton,
    read_skeleton,
)

RAW = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "ntu_raw")
ONE = os.path.join(RAW, "S001C001P001R001A011.skeleton")  # 82 frames, one person reading
TWO = os.path.join(RAW, "S001C003P008R002A058.skeleton")  # 70 frames, two people shaking hands
needs_raw = pytest.mark.skipif(not (os.path.isfile(ONE) and os.path.isfile(TWO)), reason="NTU samples absent")


def _line(path: str, number: int) -> list[str]:
    """Fields of 1-based line ``number``, read as plain text (independent of the parser)."""
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if i == number:
                return line.split()
    raise AssertionError(f"{path} has no line {number}")


@needs_raw
def test_real_file_one_body():
    s = read_skeleton(ONE)
    assert s.num_frames == 82 and len(s.bodies) == 1
    b = s.bodies[0]
    assert b.body_id == int(_line(ONE, 3)[0]) == 72057594037931648
    np.testing.assert_array_equal(b.frames, np.arange(82))
    assert b.xyz.shape == (82, 25, 3) and b.xyz.dtype == np.float32
    # each frame takes 1 + 1 + 1 + 25 lines; frame t, joint j sits on line 2 + 28 t + 3 + j
    for t, j in ((0, 0), (0, 24), (41, 7), (81, 24)):
        fields = _line(ONE, 2 + 28 * t + 3 + j)
        ref = np.array(fields[:11], dtype=np.float32)
        np.testing.assert_array_equal(b.xyz[t, j], ref[0:3])
        np.testing.assert_array_equal(b.depth_xy[t, j], ref[3:5])
        np.testing.assert_array_equal(b.color_xy[t, j], ref[5:7])
        np.testing.assert_array_equal(b.orientation[t, j], ref[7:11])
        assert b.tracking_state[t, j] == int(fields[11])
    head = _line(ONE, 2 + 28 * 10 + 1)
    np.testing.assert_array_equal(b.lean[10], np.array(head[7:9], dtype=np.float32))
    assert b.body_tracking_state[10] == int(head[9])


@needs_raw
def test_real_file_two_bodies():
    s = read_skeleton(TWO)
    assert s.num_frames == 70 and len(s.bodies) == 2
    assert [b.body_id for b in s.bodies] == [72057594037944738, 72057594037944734]
    for m, b in enumerate(s.bodies):
        assert b.xyz.shape == (70, NUM_JOINTS, 3)
        np.testing.assert_array_equal(b.frames, np.arange(70))
        # a frame is 1 + 2 * 27 = 55 lines; body m's joints start 2 + 27 m lines after the count line
        for t, j in ((0, 0), (33, 12), (69, 24)):
            fields = _line(TWO, 2 + 55 * t + 27 * m + 3 + j)
            np.testing.assert_array_equal(b.xyz[t, j], np.array(fields[:3], dtype=np.float32))
        assert int(_line(TWO, 2 + 55 * 69 + 27 * m + 1)[0]) == b.body_id


def _bodies(rng, num_frames, specs):
    """Bodies from (id, frames) specs with random joints."""
    return [make_body(bid, fr, rng.normal(size=(len(fr), NUM_JOINTS, 3)), rng) for bid, fr in specs]


def _assert_same(parsed, bodies):
    assert [b.body_id for b in parsed.bodies] == [b.body_id for b in bodies]
    for p, b in zip(parsed.bodies, bodies):
        np.testing.assert_array_equal(p.frames, b.frames)
        for field in ("xyz", "depth_xy", "color_xy", "orientation", "tracking_state", "lean", "clipped_edges",
                      "hand_left_state", "hand_right_confidence", "is_restricted", "body_tracking_state"):
            np.testing.assert_array_equal(getattr(p, field), getattr(b, field), err_msg=field)


@pytest.mark.parametrize("newline", ["\r\n", "\n"])
def test_generated_round_trip_with_edge_cases(newline):
    rng = np.random.default_rng(7)
    big = 72057594037931101  # above 2**53: must survive exactly
    # frames 0-2 empty, a body that leaves and comes back, 4 bodies at once in frames 10-12
    specs = [
        (big, np.r_[3:9, 11:20]),
        (big + 5, np.arange(5, 20)),
        (17, np.arange(10, 13)),
        (18, np.arange(10, 13)),
    ]
    bodies = _bodies(rng, 20, specs)
    text = format_skeleton(20, bodies, newline=newline)
    parsed = parse_skeleton(text.encode(), "gen.skeleton")
    assert parsed.num_frames == 20
    _assert_same(parsed, bodies)


def test_trailing_whitespace_and_blank_tail():
    rng = np.random.default_rng(1)
    bodies = _bodies(rng, 3, [(5, np.arange(3))])
    lines = format_skeleton(3, bodies, newline="\n").splitlines()
    text = "\r\n".join(line + "  \t" for line in lines) + "\r\n\r\n  \r\n"
    _assert_same(parse_skeleton(text.encode(), "ws.skeleton"), bodies)


def test_all_frames_empty_gives_no_bodies():
    parsed = parse_skeleton(b"3\r\n0\r\n0\r\n0\r\n", "empty.skeleton")
    assert parsed.num_frames == 3 and parsed.bodies == []


def _text(rng, num_frames=4):
    return format_skeleton(num_frames, _bodies(rng, num_frames, [(9, np.arange(num_frames))]), newline="\n")


def _expect_error(text: str, line: int, words: str):
    with pytest.raises(SkeletonFormatError) as info:
        parse_skeleton(text.encode(), "bad.skeleton")
    msg = str(info.value)
    assert msg.startswith(f"bad.skeleton:{line}:"), msg
    assert words in msg, msg
    assert info.value.line == line and isinstance(info.value, ValueError)


def test_truncated_file_is_an_error():
    lines = _text(np.random.default_rng(2)).splitlines()
    _expect_error("\n".join(lines[:-3]) + "\n", len(lines) - 3, "truncated")
    _expect_error("\n".join(lines[:30]), 30, "ends")  # cut just after frame 0: a body count is missing


def test_wrong_joint_count_is_an_error():
    lines = _text(np.random.default_rng(3)).splitlines()
    lines[3] = "20"  # frame 0: count line 2, body line 3, joint count on line 4
    _expect_error("\n".join(lines), 4, "joint count is 20")


def test_non_numeric_field_names_its_line():
    lines = _text(np.random.default_rng(4)).splitlines()
    fields = lines[40].split()
    fields[2] = "abc"
    lines[40] = " ".join(fields)
    _expect_error("\n".join(lines), 41, "non-numeric")


def test_nan_is_an_error():
    lines = _text(np.random.default_rng(5)).splitlines()
    fields = lines[60].split()
    fields[0] = "nan"
    lines[60] = " ".join(fields)
    _expect_error("\n".join(lines), 61, "non-finite")


def test_short_joint_line_is_an_error():
    lines = _text(np.random.default_rng(6)).splitlines()
    lines[10] = " ".join(lines[10].split()[:11])
    _expect_error("\n".join(lines), 11, "11 fields")


def test_zero_frames_and_bad_header():
    _expect_error("0\n", 1, "0 frames")
    _expect_error("x\n", 1, "frame count")
    _expect_error("", 1, "ends early")
    _expect_error("2\n0\n", 2, "body count of frame 1")


def test_missing_file_names_path(tmp_path):
    with pytest.raises(ValueError, match="nope.skeleton"):
        read_skeleton(tmp_path / "nope.skeleton")
