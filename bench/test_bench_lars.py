"""LARS step on ST-GCN-shaped parameters (102 tensors, 3.1 M): skelcl vs per-parameter loop vs SGD."""

from __future__ import annotations

import pytest
import torch
from gpu_lars import OPTIMIZERS, make_params, stgcn_param_shapes


@pytest.mark.parametrize("impl", list(OPTIMIZERS))
def test_lars_step_cpu(benchmark, impl):
    params = make_params(stgcn_param_shapes(64), "cpu", torch.float32)
    opt = OPTIMIZERS[impl](params)
    benchmark.group = "lars-step-cpu-stgcn64"
    benchmark.extra_info.update(tensors=len(params), params=sum(p.numel() for p in params), impl=impl)
    benchmark.pedantic(opt.step, rounds=15, warmup_rounds=2)


@pytest.mark.cuda
@pytest.mark.parametrize("impl", list(OPTIMIZERS))
def test_lars_step_cuda(benchmark, impl):
    params = make_params(stgcn_param_shapes(64), "cuda", torch.float32)
    opt = OPTIMIZERS[impl](params)

    def step():
        opt.step()
        torch.cuda.synchronize()

    benchmark.group = "lars-step-cuda-stgcn64"
    benchmark.extra_info.update(tensors=len(params), impl=impl)
    benchmark.pedantic(step, rounds=50, warmup_rounds=5)
