"""GPU report for the encoders: ST-GCN train-step throughput, skelcl vs the plain NCTV ST-GCN.

``run(out_dir, quick=False) -> list[dict]`` (rows as in the team's GPU benchmark protocol), or
``python bench/gpu_encoder.py OUT_DIR`` which also writes ``OUT_DIR/encoder.json``.

Cases: widths 64 and 16 (original and SkeletonCLR size), N=128, T=64, M=2, NTU-25 joints, bf16
autocast, one SGD train step (forward, backward, update), run eagerly and replayed from a CUDA
graph ("skelcl-graph": one launch per step instead of one per kernel), each also with the joints
mixed through a transposed, padded matrix ("-aligned") and by the sparse Triton kernels ("-sparse")
instead of the plain batched product (stgcn.PORTABLE_MIX). The reference
is the NCTV ST-GCN kept in tests/nctv_stgcn.py, measured in the same run; DESIGN section 5 has its
H200 figures (54 ms width 64, 21.6 ms width 16 with AMP + channels_last). torch.compile is
measured while the time budget lasts (a compile costs tens of seconds; its time is in the note):
first in reduce-overhead mode ("-ro": the compiled forward and backward replayed from CUDA
graphs) with the sparse mixing ("-ro-sparse") and with the batched product, then in the default
mode.
Whole run: about 1 s per eager case plus the compiles, under 150 s on an H100/H200.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (os.path.dirname(_HERE), os.path.join(os.path.dirname(_HERE), "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _timing  # noqa: E402
from _timing import capture_cuda_graph, cuda_step_ms_and_peak  # noqa: E402
from nctv_stgcn import NCTVSTGCN  # noqa: E402

import skelcl.models.stgcn as stgcn_module  # noqa: E402
from skelcl.layouts import get_layout  # noqa: E402
from skelcl.models import STGCN, stgcn_widths  # noqa: E402

SUITE = "encoder_train_step"
COMPILE_BUDGET_S = 100.0  # a compiled case (about 40 s) starts only while less than this has gone


def make_model(impl: str, width: int, device, channels_last_ref: bool = False) -> torch.nn.Module:
    """``impl`` "skelcl" or "nctv"; width 64 -> the original ST-GCN, 16 -> quarter width."""
    widths = stgcn_widths(10, width / 64)
    if impl == "skelcl":
        model = STGCN(widths=widths)
    elif impl == "nctv":
        model = NCTVSTGCN(get_layout("ntu25").adjacency_partitions(), widths=widths)
    else:
        raise ValueError(f"impl must be 'skelcl' or 'nctv', got {impl!r}")
    model = model.to(device)
    if channels_last_ref:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_step(model: torch.nn.Module, n: int, t: int, device, amp_dtype=torch.bfloat16, compile_model=False,
              cast_cache=True):
    """A closure running one train step on a fixed random batch (N, 3, T, 25, 2). ``compile_model``:
    False, True (torch.compile's default mode) or a mode name such as "reduce-overhead"."""
    x = torch.randn(n, 3, t, 25, 2, device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    mode = compile_model if isinstance(compile_model, str) else None
    fwd = torch.compile(model, mode=mode) if compile_model else model
    graphed_modes = mode in ("reduce-overhead", "max-autotune")
    device_type = torch.device(device).type

    def step():
        if graphed_modes:  # a new step for cudagraph trees: the previous step's outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None,
                            cache_enabled=cast_cache):
            loss = fwd(x).float().square().mean()
        loss.backward()
        opt.step()
        return loss

    return step


def make_graphed_step(model: torch.nn.Module, n: int, t: int, device, amp_dtype=torch.bfloat16, warmup=3):
    """``make_step``'s whole step (forward, backward, SGD update) recorded once in a CUDA graph; each
    call replays it with one launch, so the host no longer enqueues every kernel. The warm-up runs on
    a side stream first (cuDNN autotuning, Triton compiles, momentum buffers). Autocast's weight-cast
    cache is off, as CUDA graph capture under autocast requires."""
    graph, loss = capture_cuda_graph(make_step(model, n, t, device, amp_dtype, cast_cache=False), warmup)

    def step():
        graph.replay()
        return loss

    return step


@contextlib.contextmanager
def portable_mix(mix: str):
    """stgcn.PORTABLE_MIX set to ``mix`` ("bmm", "aligned" or "sparse") inside the block."""
    previous = stgcn_module.PORTABLE_MIX
    stgcn_module.PORTABLE_MIX = mix
    try:
        yield
    finally:
        stgcn_module.PORTABLE_MIX = previous


def with_portable_mix(mix: str, build):
    """``build`` with the joints mixed the ``mix`` way while the step is built (warm-up and capture
    included) and run."""

    def built():
        with portable_mix(mix):
            step = build()

        def step_with_mix():
            with portable_mix(mix):
                return step()

        return step_with_mix

    return built


def _row(case, impl, ms=None, peak=None, ratio=None, note=""):
    return {"suite": SUITE, "case": case, "impl": impl, "ms": ms, "peak_mib": peak, "ratio_vs_ref": ratio,
            "note": note}


def _measure(case, impl, build, warmup, repeats, n, ref_ms=None, extra_note=""):
    try:
        torch.cuda.empty_cache()
        t0 = time.perf_counter()
        step = build()
        step()  # first call: compilation / autotuning, outside the timing
        torch.cuda.synchronize()
        first_s = time.perf_counter() - t0
        ms, peak = cuda_step_ms_and_peak(step, warmup, repeats)
        note = f"{n / ms * 1e3:.0f} seq/s; first call {first_s:.1f} s{extra_note}"
        return _row(case, impl, ms, peak, None if ref_ms is None else ref_ms / ms, note)
    except torch.cuda.OutOfMemoryError:
        return _row(case, impl, note="OOM")
    except Exception as exc:  # one failing case must not stop the report
        return _row(case, impl, note=f"error: {type(exc).__name__}: {exc}"[:300])
    finally:
        torch.cuda.empty_cache()


def run(out_dir: str, quick: bool = False, impls: set[str] | None = None) -> list[dict]:
    """``impls``: measure only these rows (e.g. {"skelcl-compile-ro"}); None: all of them."""
    os.makedirs(out_dir, exist_ok=True)
    n, t = 128, 64
    if not torch.cuda.is_available():
        rows = [_row(f"w{w} N{n} T{t} M2 bf16", "skelcl-eager", note="skipped: no CUDA device")
                for w in (64, 16)]
        _write(out_dir, rows)
        return rows
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    warmup, repeats = (2, 5) if quick else (3, 10)
    rows, began = _timing.SavedRows(lambda done: _write(out_dir, done)), time.perf_counter()

    def builder(impl, width, **kw):
        return lambda: make_step(make_model(impl, width, dev), n, t, dev, **kw)

    for width in (64, 16) if impls is None else ():
        case = f"w{width} N{n} T{t} M2 bf16"
        ref = _measure(case, "nctv-eager", builder("nctv", width), warmup, repeats, n)
        rows.append(ref)
        rows.append(_measure(case, "skelcl-eager", builder("skelcl", width), warmup, repeats, n, ref["ms"]))
        if not quick:
            graphed = lambda w=width: make_graphed_step(make_model("skelcl", w, dev), n, t, dev)  # noqa: E731
            rows.append(_measure(case, "skelcl-graph", graphed, warmup, repeats, n, ref["ms"],
                                 " (first call = warm-up + capture)"))
            for mix, how in (("aligned", "transposed, padded matrix (aligned GEMM operands)"),
                             ("sparse", "the sparse Triton kernels")):
                eager = with_portable_mix(mix, builder("skelcl", width))
                rows.append(_measure(case, f"skelcl-eager-{mix}", eager, warmup, repeats, n, ref["ms"],
                                     f"; joints mixed by {how}"))
                rows.append(_measure(case, f"skelcl-graph-{mix}", with_portable_mix(mix, graphed), warmup,
                                     repeats, n, ref["ms"], f"; {how}, replayed from a CUDA graph"))
            rows.append(_measure(case, "skelcl-eager-fp32", builder("skelcl", width, amp_dtype=None), warmup,
                                 repeats, n, None, "; fp32 (torch default TF32 settings), no reference row"))
    # Compiled, while the budget lasts (the most promising first): in mode reduce-overhead ("-ro", whose
    # CUDA graphs replay the compiled forward and backward; the SGD update stays eager), with the sparse
    # mixing (the fastest replayed from graphs on an H100) and with the batched product, then in the
    # default mode.
    compiled_cases = [(16, "skelcl-compile-ro-sparse"), (64, "skelcl-compile-ro-sparse"),
                      (64, "skelcl-compile-ro"), (16, "skelcl-compile-ro"),
                      (64, "skelcl-compile"), (16, "skelcl-compile")]
    for width, impl in compiled_cases:
        case = f"w{width} N{n} T{t} M2 bf16"
        if impls is not None and impl not in impls:
            continue
        if quick or time.perf_counter() - began > COMPILE_BUDGET_S:
            rows.append(_row(case, impl, note="skipped: quick mode or time budget"))
            continue
        ref_ms = next((r["ms"] for r in rows if r["case"] == case and r["impl"] == "nctv-eager"), None)
        mode = "reduce-overhead" if "-ro" in impl else True
        build = builder("skelcl", width, compile_model=mode)
        if impl.endswith("-sparse"):
            build = with_portable_mix("sparse", build)
        rows.append(_measure(case, impl, build, warmup, repeats, n, ref_ms, " (first call = compile)"))
    _write(out_dir, list(rows))
    return list(rows)


def _write(out_dir: str, rows: list[dict]) -> None:
    with open(os.path.join(out_dir, "encoder.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 4) or (len(sys.argv) == 4 and sys.argv[2] != "--only"):
        raise SystemExit("usage: python bench/gpu_encoder.py OUT_DIR [--only IMPL,IMPL...]")
    only = set(sys.argv[3].split(",")) if len(sys.argv) == 4 else None
    for r in run(sys.argv[1], impls=only):
        print(json.dumps(r))
