"""Temporal sampling of a batch to a fixed number of frames, on the batch's device.

Training (``random_crop=True``): per sequence, a crop of ``p * length`` frames with ``p`` drawn
uniformly from ``[min_ratio, max_ratio]`` at a random offset inside the valid part, resized to
``T_out`` frames by linear interpolation (the crop-and-resize of SkeletonCLR/CTR-GCN pipelines).
Evaluation (``random_crop=False``): the centred crop of ``max_ratio * length`` frames, resized the
same way; no randomness.

Interpolation follows ``F.interpolate(mode="linear", align_corners=False)``. A (frame, person) slot
of the output is exactly zero when a source slot it interpolates from is absent (all zero), so a
person entering mid-sequence never appears as a scaled-down ghost. A sequence of length 0 gives
all zeros.
"""

from __future__ import annotations

import torch

__all__ = ["sample_frames"]


def sample_frames(
    x: torch.Tensor,
    length: torch.Tensor,
    T_out: int,
    *,
    generator: torch.Generator | None = None,
    random_crop: bool = True,
    min_ratio: float = 0.5,
    max_ratio: float = 1.0,
) -> torch.Tensor:
    """(N, C, T, V, M) -> (N, C, T_out, V, M) on x's device and dtype; ``length`` (N,) valid frames."""
    if not isinstance(x, torch.Tensor) or x.dim() != 5:
        raise ValueError(f"x must be a (N, C, T, V, M) tensor, got {type(x).__name__} "
                         f"of shape {tuple(getattr(x, 'shape', ()))}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    n, _, t = x.shape[:3]
    length = torch.as_tensor(length, device=x.device)
    if length.shape != (n,):
        raise ValueError(f"length must have shape ({n},), got {tuple(length.shape)}")
    if int(T_out) != T_out or T_out < 1:
        raise ValueError(f"T_out must be a positive integer, got {T_out!r}")
    if not 0.0 < min_ratio <= max_ratio <= 1.0:
        raise ValueError(f"need 0 < min_ratio <= max_ratio <= 1, got {min_ratio=}, {max_ratio=}")
    T_out = int(T_out)
    L = length.to(torch.float64).clamp(0, t)

    if random_crop:
        # draw on the generator's device (a CPU generator may drive a CUDA batch), then move
        dev = generator.device if generator is not None else x.device
        u = torch.rand(2, n, generator=generator, device=dev, dtype=torch.float64).to(x.device)
        ratio = min_ratio + (max_ratio - min_ratio) * u[0]
    else:
        ratio = torch.full((n,), max_ratio, dtype=torch.float64, device=x.device)
    crop = torch.floor(ratio * L).clamp(min=1.0)
    crop = torch.minimum(crop, L.clamp(min=1.0))
    slack = (L - crop).clamp(min=0.0)
    start = torch.floor(u[1] * (slack + 1)).clamp(max=slack) if random_crop else torch.floor(slack / 2)

    # source position of each output frame inside the crop (align_corners=False convention)
    j = torch.arange(T_out, device=x.device, dtype=torch.float64)
    src = ((j[None, :] + 0.5) * (crop[:, None] / T_out) - 0.5).clamp(min=0.0)
    src = torch.minimum(src, crop[:, None] - 1)
    lo = torch.floor(src)
    w = (src - lo).to(x.dtype)  # (N, T_out)
    hi = torch.minimum(lo + 1, crop[:, None] - 1)
    lo_idx = (start[:, None] + lo).long().clamp(0, t - 1)
    hi_idx = (start[:, None] + hi).long().clamp(0, t - 1)

    xt = x.transpose(1, 2)  # (N, T, C, V, M): frames leading, a view
    rows = torch.arange(n, device=x.device)[:, None]
    a = xt[rows, lo_idx]  # (N, T_out, C, V, M)
    b = xt[rows, hi_idx]
    wb = w[:, :, None, None, None]
    out = a * (1 - wb) + b * wb
    # a slot is absent when all its joints are zero; any absent source with weight > 0 zeroes it
    a_absent = (a == 0).all(dim=2).all(dim=2)  # (N, T_out, M)
    b_absent = (b == 0).all(dim=2).all(dim=2)
    absent = (a_absent & (w < 1)[..., None]) | (b_absent & (w > 0)[..., None])
    absent = absent | (length <= 0)[:, None, None]
    out = out.masked_fill(absent[:, :, None, None, :], 0)
    return out.transpose(1, 2).contiguous()
