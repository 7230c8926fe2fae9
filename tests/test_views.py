"""The virtual-camera samplers: shapes, value sets, held angles, reproducibility."""

from __future__ import annotations

import math

import pytest
import torch

from skelcl.reference import rotation_matrix
from skelcl.views import PRESETS, ViewSampler, get_sampler

PAPER_RAD = torch.tensor([math.radians(d) for d in (0, 60, 120, 180, 240, 300)])


def _draw(name, n=400, t=1, seed=0, **overrides):
    gen = torch.Generator().manual_seed(seed)
    return get_sampler(name, **overrides).sample(n, t, device="cpu", generator=gen)


def _in_set(values: torch.Tensor, allowed: torch.Tensor) -> bool:
    return bool((values[..., None] - allowed).abs().min(dim=-1).values.max() < 1e-6)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_shapes_dtype_and_reproducibility(name):
    frame = PRESETS[name].frame_level
    angles, shift = _draw(name, n=7, t=5)
    want = (7, 5, 3) if frame else (7, 3)
    assert angles.shape == want and shift.shape == want
    assert angles.dtype == shift.dtype == torch.float32
    again = _draw(name, n=7, t=5)
    assert torch.equal(angles, again[0]) and torch.equal(shift, again[1])
    assert torch.isfinite(angles).all() and torch.isfinite(shift).all()


def test_different_seeds_differ():
    a0, s0 = _draw("paper", seed=0)
    a1, s1 = _draw("paper", seed=1)
    assert not torch.equal(a0, a1) and not torch.equal(s0, s1)


def test_paper_values_and_distance_along_camera_z():
    angles, shift = _draw("paper", n=2000)
    assert _in_set(angles, PAPER_RAD)
    for axis in range(3):  # every angle of the set is used on every axis
        assert torch.unique(angles[:, axis]).numel() == 6
    # d = m * 0.5 * R^T e_z, so R d = (0, 0, m * 0.5) with m in {0, ..., 5}.
    in_camera = torch.einsum("nij,nj->ni", rotation_matrix(angles.double()), shift.double())
    assert in_camera[:, :2].abs().max() < 1e-5
    assert _in_set(in_camera[:, 2].float(), torch.arange(6) * 0.5)
    assert torch.unique((in_camera[:, 2] * 2).round()).numel() == 6


def test_paper_frame_draws_per_frame():
    angles, shift = _draw("paper-frame", n=50, t=9)
    assert _in_set(angles, PAPER_RAD)
    assert (angles[:, 1:] != angles[:, :1]).any(dim=-1).any()  # frames differ within a sequence


@pytest.mark.parametrize("name, held", [("no-alpha", 0), ("no-beta", 1), ("no-gamma", 2)])
def test_ablations_hold_one_angle(name, held):
    angles, _ = _draw(name)
    assert (angles[:, held] == 0).all()
    for axis in {0, 1, 2} - {held}:
        assert torch.unique(angles[:, axis]).numel() == 6


def test_distance_only_and_none():
    angles, shift = _draw("distance-only")
    assert (angles == 0).all()
    assert (shift[:, :2] == 0).all() and _in_set(shift[:, 2], torch.arange(6) * 0.5)
    assert torch.unique(shift[:, 2]).numel() == 6
    angles, shift = _draw("none", t=4)
    assert (angles == 0).all() and (shift == 0).all()
    assert PRESETS["none"].is_identity and not PRESETS["paper"].is_identity


def test_moderate_ranges():
    angles, shift = _draw("moderate", n=4000)
    deg = torch.rad2deg(angles)
    assert deg[:, 1].abs().max() <= 60 and deg[:, 1].abs().max() > 55  # yaw = beta
    assert deg[:, 0].abs().max() <= 15 and deg[:, 2].abs().max() <= 15  # pitch, roll
    dist = shift.norm(dim=-1)
    assert dist.min() >= 0 and dist.max() <= 2.5 + 1e-5 and dist.max() > 2.3
    assert torch.unique(dist).numel() > 100  # continuous


def test_directions():
    _, shift = _draw("paper", direction="world-z")
    assert (shift[:, :2] == 0).all()
    _, shift = _draw("paper", direction="random", distance="fixed", distance_fixed=2.0, unit=1.0)
    assert torch.allclose(shift.norm(dim=-1), torch.full((400,), 2.0), atol=1e-5)
    assert (shift[:, 0].abs() > 0.5).any()


def test_get_sampler_overrides_and_dict_form():
    s = get_sampler("paper", unit=1.0, frame_level=True)
    assert s.unit == 1.0 and s.frame_level and PRESETS["paper"].unit == 0.5
    assert get_sampler(s) is s
    d = s.as_dict()
    assert d["unit"] == 1.0 and d["angle_set_deg"] == (0.0, 60.0, 120.0, 180.0, 240.0, 300.0)
    assert ViewSampler(**d) == s
    assert "paper" in repr(s) and "unit=1.0" in repr(s)


@pytest.mark.parametrize(
    "call, word",
    [
        (lambda: get_sampler("nope"), "name_or_sampler"),
        (lambda: get_sampler(3), "name_or_sampler"),
        (lambda: get_sampler("paper", bogus=1), "bogus"),
        (lambda: ViewSampler(angles="sometimes"), "angles"),
        (lambda: ViewSampler(distance="far"), "distance"),
        (lambda: ViewSampler(direction="up"), "direction"),
        (lambda: ViewSampler(beta_range_deg=(10.0, -10.0)), "beta_range_deg"),
        (lambda: ViewSampler(angles="continuous", alpha_range_deg=(0.0, float("inf"))),
         "alpha_range_deg must be finite"),
        (lambda: ViewSampler(unit=float("nan")), "finite"),
        (lambda: ViewSampler(distance_max=2.5), "distance_max"),
        (lambda: PRESETS["paper"].sample(-1), "n must"),
    ],
)
def test_bad_settings_raise(call, word):
    with pytest.raises(ValueError, match=word):
        call()
