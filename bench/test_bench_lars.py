"""LARS step on ST-GCN-shaped parameters (102 tensors, 3.1 M): skelcl vs per-parameter loop vs SGD.

On CPU four steps are compared side by side (group ``lars-step-cpu-stgcn64``): the per-parameter
loop (``reference``), skelcl's LARS on its fused C++ kernel (``skelcl_cpp``, csrc/lars.cpp), the
same optimiser forced onto its foreach path (``skelcl_foreach``, what runs when the extension
cannot be built) and ``torch.optim.SGD(foreach=True)`` for scale. ``test_lars_cpu_ratios`` prints
the speed-ups over the loop from interleaved rounds (medians), which a busy machine distorts less.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from gpu_lars import OPTIMIZERS, make_params, stgcn_param_shapes

import skelcl.optim.lars as lars_module
from skelcl.optim import LARS
from skelcl.reference import LARSReference


def _lars(fused: bool, **kwargs):
    def build(ps):
        opt = LARS(ps, lr=0.1, **kwargs)
        opt._fused_cpu = fused
        return opt
    return build


CPU_OPTIMIZERS = {
    "reference": lambda ps: LARSReference(ps, lr=0.1),
    "skelcl_cpp": _lars(True),
    "skelcl_foreach": _lars(False),
    "skelcl_cpp_nesterov_clip": _lars(True, nesterov=True, clip=True),
    "sgd_foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-6, foreach=True),
}


@pytest.mark.parametrize("impl", list(CPU_OPTIMIZERS))
def test_lars_step_cpu(benchmark, impl):
    if impl.startswith("skelcl_cpp") and lars_module._cpu_op() is None:
        pytest.skip("the C++ extension could not be built")
    params = make_params(stgcn_param_shapes(64), "cpu", torch.float32)
    opt = CPU_OPTIMIZERS[impl](params)
    benchmark.group = "lars-step-cpu-stgcn64"
    benchmark.extra_info.update(tensors=len(params), params=sum(p.numel() for p in params), impl=impl,
                                threads=torch.get_num_threads())
    benchmark.pedantic(opt.step, rounds=15, warmup_rounds=2)


def test_lars_cpu_ratios(benchmark):
    """Loop / C++ / foreach / SGD medians over interleaved rounds, and the speed-ups over the loop."""
    if lars_module._cpu_op() is None:
        pytest.skip("the C++ extension could not be built")
    names = ["reference", "skelcl_cpp", "skelcl_foreach", "sgd_foreach"]
    opts = {n: CPU_OPTIMIZERS[n](make_params(stgcn_param_shapes(64), "cpu", torch.float32)) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    for rnd in range(12):
        for n, opt in opts.items():
            start = time.perf_counter()
            opt.step()
            if rnd >= 2:  # warm-up rounds
                times[n].append(time.perf_counter() - start)
    ms = {n: 1e3 * statistics.median(t) for n, t in times.items()}
    ratios = {n: ms["reference"] / ms[n] for n in names}
    benchmark.group = "lars-step-cpu-stgcn64-ratios"
    benchmark.extra_info.update(threads=torch.get_num_threads(), **{f"{n}_ms": ms[n] for n in names},
                                **{f"{n}_speedup": ratios[n] for n in names})
    print(f"\nLARS step, ST-GCN width 64, CPU, {torch.get_num_threads()} threads: "
          + ", ".join(f"{n} {ms[n]:.2f} ms ({ratios[n]:.2f}x loop)" for n in names))
    benchmark.pedantic(opts["skelcl_cpp"].step, rounds=1, iterations=1)


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
