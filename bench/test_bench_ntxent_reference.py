"""Baseline: the naive NT-Xent reference (2N x 2N logits), forward + backward on CPU."""

from __future__ import annotations

import pytest
import torch

from skelcl import reference as ref


@pytest.mark.parametrize("two_n", [512, 2048])
def test_reference_ntxent_fwd_bwd_cpu(benchmark, two_n):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(two_n // 2, 128, generator=g, requires_grad=True)
    z2 = torch.randn(two_n // 2, 128, generator=g, requires_grad=True)

    def step():
        loss = ref.ntxent_loss(z1, z2, 0.1)
        loss.backward()
        return loss

    benchmark.group = f"ntxent-cpu-2N={two_n}"
    benchmark.extra_info.update(two_n=two_n, dim=128, impl="reference")
    benchmark(step)
