"""LARS step time on ST-GCN-shaped parameters: skelcl.optim.LARS vs the per-parameter loop and SGD.

Run: ``python bench/gpu_lars.py OUT_DIR`` (writes OUT_DIR/lars.json), or ``run(out_dir)`` from the
GPU report. On a machine without CUDA it measures the CPU instead (and says so in the notes).
"""

from __future__ import annotations

import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import _timing  # noqa: E402

from skelcl.optim import LARS  # noqa: E402
from skelcl.reference import LARSReference  # noqa: E402

PIECE = "lars"


def stgcn_param_shapes(width: int = 64, num_classes: int = 60, joints: int = 25, partitions: int = 3,
                       temporal_kernel: int = 9) -> list[tuple[int, ...]]:
    """Parameter shapes of the original ST-GCN (Yan et al. 2018) in its module order.

    Input batch norm over 3 x V channels; ten blocks (graph conv producing K x out channels,
    batch norm, temporal conv, batch norm; a 1x1 conv + batch norm residual where the width
    changes); ten edge-importance masks (K, V, V); the 1x1 classifier. Width 64 gives 102
    tensors and 3.10 M parameters.
    """
    c = [width, width, width, width, 2 * width, 2 * width, 2 * width, 4 * width, 4 * width, 4 * width]
    shapes: list[tuple[int, ...]] = [(3 * joints,), (3 * joints,)]
    for i, out in enumerate(c):
        cin = 3 if i == 0 else c[i - 1]
        shapes += [(partitions * out, cin, 1, 1), (partitions * out,), (out,), (out,),
                   (out, out, temporal_kernel, 1), (out,), (out,), (out,)]
        if i > 0 and cin != out:
            shapes += [(out, cin, 1, 1), (out,), (out,), (out,)]
    shapes += [(partitions, joints, joints)] * len(c)
    shapes += [(num_classes, c[-1], 1, 1), (num_classes,)]
    return shapes


def tiny_shapes(shapes) -> list[tuple[int, ...]]:
    """The same number of tensors with the same ranks (so the same exclusion split), 2 elements
    each: a step on them costs only its fixed per-step work (Python, dispatch, launches)."""
    return [(1,) * (len(s) - 1) + (2,) for s in shapes]


def make_params(shapes, device="cpu", dtype=torch.float32, seed: int = 0) -> list[torch.nn.Parameter]:
    """Parameters of the given shapes with random values and random gradients already set."""
    gen = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = torch.nn.Parameter((0.1 * torch.randn(s, generator=gen, dtype=dtype)).to(device))
        p.grad = (1e-2 * torch.randn(s, generator=gen, dtype=dtype)).to(device)
        params.append(p)
    return params


def foreach_lars(params, **options) -> LARS:
    """skelcl's LARS held to its torch._foreach_* path (what CUDA ran before the Triton kernels, and
    the CPU fallback)."""
    opt = LARS(params, lr=0.1, **options)
    opt._triton = opt._fused_cpu = False
    return opt


OPTIMIZERS = {
    "reference": lambda ps: LARSReference(ps, lr=0.1),
    "skelcl": lambda ps: LARS(ps, lr=0.1),  # Triton kernels on CUDA, the C++ kernel on CPU
    "skelcl_nesterov_clip": lambda ps: LARS(ps, lr=0.1, nesterov=True, clip=True),
    "skelcl_foreach": foreach_lars,
    "sgd_foreach": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-6, foreach=True),
}


def graphed_step(opt: torch.optim.Optimizer, warmup: int = 3):
    """``opt.step`` recorded once in a CUDA graph (after a warm-up on a side stream that creates the
    momentum buffers and plans); the returned function replays it. Possible only because LARS never
    reads a value back to the host; the learning rate is fixed at capture."""
    graph, _ = _timing.capture_cuda_graph(opt.step, warmup)
    return graph.replay


def run(out_dir: str, quick: bool = False) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    widths = [64] if quick else [16, 64, 128]
    cases = [(f"width={w}", stgcn_param_shapes(w)) for w in widths]
    if not quick:  # the fixed per-step cost: ST-GCN's 102 tensors with 2 elements each
        cases.insert(0, ("width=64,tiny", tiny_shapes(stgcn_param_shapes(64))))
    rows = []
    for label, shapes in cases:
        n = sum(math.prod(s) for s in shapes)
        case = f"P={n},tensors={len(shapes)},{label}"
        for impl, build in OPTIMIZERS.items():
            try:
                params = make_params(shapes, device)
                opt = build(params)
                row = _timing.measure("lars_step", case, impl, opt.step, device=device, warmup=3,
                                      repeats=50, budget_s=1.0 if device == "cuda" else 2.0,
                                      note="" if device == "cuda" else "measured on CPU (no CUDA)", x=n)
            except Exception as exc:  # one failing case must not stop the others
                row = _timing.make_row("lars_step", case, impl, note=_timing.error_note(exc), x=n)
            rows.append(row)
            params = opt = None
            if device == "cuda":
                torch.cuda.empty_cache()
        if device == "cuda":  # the same LARS step replayed from a CUDA graph: its GPU time alone
            try:
                replay = graphed_step(LARS(make_params(shapes, device), lr=0.1))
                row = _timing.measure("lars_step", case, "skelcl_graph", replay, device=device, warmup=3,
                                      repeats=50, budget_s=1.0, note="replayed from a CUDA graph", x=n)
            except Exception as exc:
                row = _timing.make_row("lars_step", case, "skelcl_graph", note=_timing.error_note(exc), x=n)
            rows.append(row)
            replay = None
            torch.cuda.empty_cache()
    _timing.add_ratios(rows, "reference")
    sgd = {r["case"]: r["ms"] for r in rows if r["impl"] == "sgd_foreach" and r["ms"]}
    for r in rows:
        if r["impl"].startswith("skelcl") and r["ms"] and sgd.get(r["case"]):
            vs_sgd = f"{r['ms'] / sgd[r['case']]:.2f}x SGD foreach time"
            r["note"] = f"{r['note']}; {vs_sgd}" if r["note"] else vs_sgd
    return rows


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/gpu_lars.py OUT_DIR [--quick]")
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    result = run(out, quick="--quick" in sys.argv[2:])
    _timing.print_table(result)
    _timing.write_json(result, os.path.join(out, f"{PIECE}.json"))
