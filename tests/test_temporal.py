"""Temporal crop-and-resize on the batch, checked against per-sample F.interpolate in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skelcl.data.temporal import sample_frames


def _resize(seq: torch.Tensor, t_out: int) -> torch.Tensor:
    """(C, L, V, M) -> (C, t_out, V, M) with F.interpolate, the reference."""
    c, length, v, m = seq.shape
    flat = seq.permute(0, 2, 3, 1).reshape(1, c * v * m, length)
    out = F.interpolate(flat, size=t_out, mode="linear", align_corners=False)
    return out.reshape(c, v, m, t_out).permute(0, 3, 1, 2)


def _batch(rng, n=4, t=23, v=5, m=2, dtype=torch.float64):
    x = torch.randn(n, 3, t, v, m, generator=rng, dtype=torch.float64)
    length = torch.tensor([23, 17, 9, 1][:n])
    for i in range(n):
        x[i, :, length[i]:] = 0
    return x.to(dtype), length


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("t_out", [7, 30])
def test_centre_mode_matches_interpolate(rng, dtype, t_out):
    x, length = _batch(rng, dtype=dtype)
    out = sample_frames(x, length, t_out, random_crop=False)
    assert out.shape == (4, 3, t_out, 5, 2) and out.dtype == dtype and out.is_contiguous()
    for i in range(4):
        ref = _resize(x[i, :, : length[i]].double(), t_out)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(out[i].double(), ref, rtol=tol, atol=tol)


def test_centre_crop_ratio(rng):
    x, length = _batch(rng)
    out = sample_frames(x, length, 6, random_crop=False, max_ratio=0.5)
    # L=23 -> crop 11 frames starting at (23 - 11) // 2 = 6
    torch.testing.assert_close(out[0], _resize(x[0, :, 6:17], 6))


def test_random_crop_is_some_window_of_the_right_size(rng):
    x, length = _batch(rng)
    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        out = sample_frames(x, length, 12, generator=g, min_ratio=0.3, max_ratio=0.8)
        for i in range(4):
            L = int(length[i])
            found = False
            for crop in range(1, L + 1):
                if not (int(0.3 * L) - 1 <= crop <= max(1, int(0.8 * L))):
                    continue
                for s in range(0, L - crop + 1):
                    if torch.allclose(out[i], _resize(x[i, :, s : s + crop], 12), atol=1e-12):
                        found = True
                        break
                if found:
                    break
            assert found, f"sample {i}: output is no resized window of the valid part"


def test_determinism_and_variety(rng):
    x, length = _batch(rng)
    a = sample_frames(x, length, 10, generator=torch.Generator().manual_seed(1))
    b = sample_frames(x, length, 10, generator=torch.Generator().manual_seed(1))
    c = sample_frames(x, length, 10, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a[0], c[0])
    full = sample_frames(x, length, 10, generator=torch.Generator().manual_seed(3), min_ratio=1.0)
    torch.testing.assert_close(full, sample_frames(x, length, 10, random_crop=False), rtol=0, atol=0)


def test_absent_slots_stay_zero(rng):
    n, t = 3, 20
    x = torch.zeros(n, 3, t, 4, 2, dtype=torch.float64)
    x[..., 0] = torch.randn(n, 3, t, 4, generator=rng, dtype=torch.float64)
    c = torch.randn(3, 1, 4, generator=rng, dtype=torch.float64)
    x[:, :, 5:12, :, 1] = c  # person 1 present in frames 5..11 only, as a constant pose
    length = torch.tensor([20, 20, 0])
    x[2] = 0
    for random_crop in (False, True):
        g = torch.Generator().manual_seed(0)
        out = sample_frames(x, length, 33, random_crop=random_crop, generator=g)
        p1 = out[:2, :, :, :, 1]
        zero = (p1 == 0).all(dim=1).all(dim=-1)  # (2, 33)
        exact = torch.isclose(p1, c.expand(2, 3, 33, 4), rtol=0, atol=1e-12).all(dim=1).all(dim=-1)
        assert (zero | exact).all(), "a person slot was blended with padding"
        assert exact.any() and zero.any()
        assert (out[2] == 0).all()
        assert (out[:2, :, :, :, 0] != 0).any(dim=1).any(dim=-1).all()


def test_bad_arguments():
    x = torch.zeros(2, 3, 4, 5, 2)
    with pytest.raises(ValueError, match="length"):
        sample_frames(x, torch.tensor([1, 2, 3]), 4)
    with pytest.raises(ValueError, match="T_out"):
        sample_frames(x, torch.tensor([1, 2]), 0)
    with pytest.raises(ValueError, match="min_ratio"):
        sample_frames(x, torch.tensor([1, 2]), 4, min_ratio=0.9, max_ratio=0.5)
    with pytest.raises(ValueError, match="x must"):
        sample_frames(torch.zeros(2, 3, 4), torch.tensor([1, 2]), 4)
    with pytest.raises(ValueError, match="floating"):
        sample_frames(x.long(), torch.tensor([1, 2]), 4)
