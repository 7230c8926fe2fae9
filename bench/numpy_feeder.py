"""Baseline: per-sample NumPy view augmentation inside a Dataset, as SkeletonCLR-style feeders do.

Each ``__getitem__`` copies one sequence, draws two cameras with NumPy's random module, centres,
rotates and translates it with NumPy, and returns both views; a DataLoader then collates the
batch. This is the pipeline the fused op replaces, written the straightforward way.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["NumpyTwoViewDataset", "numpy_two_view_batches"]

_DEGREES = np.deg2rad(np.arange(0, 360, 60, dtype=np.float64))


def _rotation(a: float, b: float, g: float) -> np.ndarray:
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    rx = np.array([[1, 0, 0], [0, ca, sa], [0, -sa, ca]])
    ry = np.array([[cb, 0, -sb], [0, 1, 0], [sb, 0, cb]])
    rz = np.array([[cg, sg, 0], [-sg, cg, 0], [0, 0, 1]])
    return rx @ ry @ rz


def _one_view(data: np.ndarray, rng: np.random.Generator, unit: float, center_joint: int) -> np.ndarray:
    """data (3, T, V, M) -> one random view with the paper's discrete settings."""
    present = (data != 0).any(axis=(0, 2))  # (T, M)
    frames0 = np.flatnonzero(present[:, 0])
    centre = data[:, frames0[0], center_joint, 0] if frames0.size else np.zeros(3, data.dtype)
    a, b, g = rng.choice(_DEGREES, size=3)
    rot = _rotation(a, b, g)
    shift = rng.integers(0, 6) * unit * rot[2]  # along the virtual camera's z axis
    c, t, v, m = data.shape
    flat = (data - (centre + shift)[:, None, None, None].astype(data.dtype)).reshape(3, -1)
    out = (rot.astype(data.dtype) @ flat).reshape(c, t, v, m)
    out *= present[None, :, None, :]
    return out


class NumpyTwoViewDataset(Dataset):
    """Yields (view1, view2) float32 (3, T, V, M) arrays of sequence ``index``."""

    def __init__(self, x: np.ndarray, *, unit: float = 0.5, center_joint: int = 1, seed: int = 0):
        self.x, self.unit, self.center_joint = x, unit, center_joint
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int):
        data = np.array(self.x[index], dtype=np.float32)
        return (_one_view(data, self.rng, self.unit, self.center_joint),
                _one_view(data, self.rng, self.unit, self.center_joint))


def numpy_two_view_batches(x: np.ndarray, batch_size: int, *, seed: int = 0):
    """One pass over x through a DataLoader (no worker processes): yields (x1, x2) torch batches."""
    dataset = NumpyTwoViewDataset(x, seed=seed)
    yield from DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)


def _self_check() -> None:
    """The baseline computes the same transform as the reference (used by the benchmark module)."""
    from skelcl.reference import view_transform

    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 6, 5, 2)).astype(np.float32)
    x[1, :, :, :, 1] = 0
    ds = NumpyTwoViewDataset(x, seed=3)
    v1, _ = ds[1]
    rng = np.random.default_rng(3)
    a = rng.choice(_DEGREES, size=3)
    m = rng.integers(0, 6)
    rot = _rotation(*a)
    expect = view_transform(torch.from_numpy(x[1:2]).double(), torch.tensor(a)[None],
                            torch.from_numpy(m * 0.5 * rot[2])[None])
    np.testing.assert_allclose(v1, expect[0].numpy(), atol=1e-5)
