"""CPU benchmark of the two-view augmentation: C++ op vs eager reference vs per-sample NumPy.

    PYTHONPATH=. pytest bench/test_bench_augment.py --benchmark-only --benchmark-group-by=param:frames

All three produce both views of a batch of N = 256 sequences (M = 2, V = 25) from the paper's
sampler; the NumPy one does it per sample inside a Dataset/DataLoader loop.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy_feeder import _self_check, numpy_two_view_batches

from skelcl import reference
from skelcl.ops import augment as aug
from skelcl.ops import two_views
from skelcl.views import get_sampler

N, V, M = 256, 25, 2


def _batch(frames: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(N, 3, frames, V, M, generator=gen)
    x[N // 2 :, :, :, :, 1] = 0  # half the sequences have one person
    x[:, :, frames * 3 // 4 :] = 0  # padded tail
    return x


def _reference_two_views(x, sampler, gen):
    n, _, t = x.shape[:3]
    return tuple(reference.view_transform(x, *sampler.sample(n, t, generator=gen)) for _ in range(2))


@pytest.mark.parametrize("frames", [64, 300])
@pytest.mark.parametrize("impl", ["cpp", "reference", "numpy-dataloader"])
def test_two_views_cpu(benchmark, impl, frames):
    x = _batch(frames)
    benchmark.group = f"two views N={N} T={frames} M={M} (CPU)"
    gen = torch.Generator().manual_seed(1)
    sampler = get_sampler("paper")
    if impl == "cpp":
        if aug._cpu_op() is None:
            pytest.skip("the C++ extension could not be built")
        out = benchmark(two_views, x, sampler, generator=gen, backend="cpu")
    elif impl == "reference":
        out = benchmark(_reference_two_views, x, sampler, gen)
    else:
        xn = x.numpy()
        out = benchmark(lambda: [b for b in numpy_two_view_batches(xn, N)][0])
    assert out[0].shape == x.shape and out[1].shape == x.shape


def test_numpy_baseline_matches_reference():
    _self_check()
    assert np.isfinite(_batch(8).numpy()).all()
