"""LARS step on ST-GCN-shaped parameters (102 tensors, 3.1 M): skelcl vs per-parameter loop vs SGD.

On CPU four steps are compared side by side (group ``lars-step-cpu-stgcn64``): the per-parameter
loop (``reference``), skelcl's LARS on its fused C++ kernel (``skelcl_cpp``, csrc/lars.cpp), the
same optimiser forced onto its foreach path (``skelcl_foreach``, what runs when the extension
cannot be built) and ``torch.optim.SGD(foreach=True)`` for scale. ``test_lars_cpu_ratios`` prints
the speed-ups over the loop from interleaved rounds (medians), which a busy machine distorts less.
``test_lars_fixed_cost_cpu_tiny`` times the same 102 tensors with 2 elements each: what a step costs
besides moving data (the foreach path's CUDA code path included, as a proxy for launch overhead).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from gpu_lars import OPTIMIZERS, make_params, stgcn_param_shapes, tiny_shapes

import skelcl.optim.lars as lars_module
from skelcl.optim import LARS
from skelcl.reference import LARSReference


def _lars(fused: bool, broadcast: str = "auto", **kwargs):
    def build(ps):
        opt = LARS(ps, lr=0.1, **kwargs)
        opt._fused_cpu = fused
        opt._broadcast = broadcast
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


def test_lars_fixed_cost_cpu_tiny(benchmark):
    """The per-step cost that does not depend on the data: ST-GCN's 102 tensors with 2 elements each.

    ``foreach_flat`` runs the CUDA code path on CPU (flat trust buffer), a proxy for the Python and
    dispatch work that bounds the CUDA step (on CPU every foreach op also loops over its tensors);
    ``foreach_scalar`` is the CPU fallback without the extension; ``cpp`` the fused kernel.
    """
    shapes = tiny_shapes(stgcn_param_shapes(64))
    names = {"cpp": _lars(True), "foreach_flat": _lars(False, "flat"),
             "foreach_flat_nesterov_clip": _lars(False, "flat", nesterov=True, clip=True),
             "foreach_scalar": _lars(False, "scalar"), "sgd_foreach": CPU_OPTIMIZERS["sgd_foreach"]}
    if lars_module._cpu_op() is None:
        del names["cpp"]
    opts = {n: build(make_params(shapes, "cpu", torch.float32)) for n, build in names.items()}
    times: dict[str, list[float]] = {n: [] for n in opts}
    for rnd in range(105):
        for n, opt in opts.items():
            start = time.perf_counter()
            opt.step()
            if rnd >= 5:
                times[n].append(time.perf_counter() - start)
    us = {n: 1e6 * statistics.median(t) for n, t in times.items()}
    benchmark.group = "lars-step-cpu-tiny"
    benchmark.extra_info.update(threads=torch.get_num_threads(), **{f"{n}_us": us[n] for n in us})
    print("\nLARS step, 102 tensors of 2 elements, CPU: "
          + ", ".join(f"{n} {v:.0f} us" for n, v in us.items()))
    benchmark.pedantic(opts["foreach_flat"].step, rounds=1, iterations=1)


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
