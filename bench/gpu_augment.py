"""GPU report for the view augmentation: ``two_views`` vs the eager reference, and bandwidth.

    python bench/gpu_augment.py OUT_DIR        # writes OUT_DIR/augment.json

``run(out_dir, quick=False) -> list[dict]`` is what the project's GPU report script imports. Rows:
suite, case, impl, ms (median, CUDA events via triton.testing.do_bench), peak_mib (memory allocated
by one call beyond what was live before it), ratio_vs_ref (reference ms / this ms), note.

Bytes that must move for two views: x read once and two views written, 3 * |x|. The copy ceiling
is measured on the same card as ``x.clone()`` (|x| read + |x| written) and reported next to it.
"""

from __future__ import annotations

import json
import os
import sys

import torch

SUITE = "augment"
CASES = [(256, 300), (1024, 64)]  # (N, T); M = 2, V = 25 (NTU)
V, M = 25, 2


def _batch(n: int, t: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(n, 3, t, V, M, device="cuda", generator=gen)
    x[n // 2 :, :, :, :, 1] = 0  # half the sequences have one person
    x[:, :, t * 3 // 4 :] = 0  # padded tail
    return x.to(dtype)


def _time(fn, quick: bool, graph: bool = False) -> tuple[float, float]:
    """(median ms, peak MiB allocated by one call beyond the live memory before it).

    With ``graph`` the calls are replayed from a CUDA graph, which removes the host-side launch
    cost and leaves the device time.
    """
    import triton.testing

    fn()  # compile and cache before timing (and before any graph capture)
    torch.cuda.synchronize()
    if graph:
        ms = triton.testing.do_bench_cudagraph(fn, rep=20 if quick else 50, return_mode="median")
    else:
        warmup, rep = (10, 30) if quick else (25, 100)
        ms = triton.testing.do_bench(fn, warmup=warmup, rep=rep, return_mode="median")
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    return float(ms), float(peak)


def _row(case: str, impl: str, ms=None, peak=None, ratio=None, note: str = "") -> dict:
    return {"suite": SUITE, "case": case, "impl": impl, "ms": ms, "peak_mib": peak, "ratio_vs_ref": ratio,
            "note": note}


def _case(n: int, t: int, dtype: torch.dtype, quick: bool) -> list[dict]:
    from skelcl.kernels.augment import view_augment_triton

    from skelcl import reference
    from skelcl.ops import two_views
    from skelcl.views import get_sampler

    case = f"N={n} T={t} V={V} M={M} {str(dtype).replace('torch.', '')}"
    rows: list[dict] = []
    x = _batch(n, t, dtype)
    sampler = get_sampler("paper")
    gen = torch.Generator(device="cuda").manual_seed(1)
    n_bytes = 3 * x.numel() * x.element_size()
    angles, shift = sampler.sample(2 * n, t, device="cuda", generator=gen)
    angles, shift = angles.reshape(2, n, 1, 3), shift.reshape(2, n, 1, 3)

    def ref_sampled():
        return tuple(reference.view_transform(x, *sampler.sample(n, t, device="cuda", generator=gen))
                     for _ in range(2))

    def ref_given():
        return tuple(reference.view_transform(x, angles[k, :, 0], shift[k, :, 0]) for k in range(2))

    kernel = lambda: view_augment_triton(x, angles, shift, 1)
    ref_graph = "reference eager, params given, CUDA graph"
    # (name, fn, timed in a CUDA graph, baseline name)
    impls = [
        ("reference eager, sampling included", ref_sampled, False, None),
        ("two_views, sampling included", lambda: two_views(x, sampler, generator=gen), False,
         "reference eager, sampling included"),
        ("reference eager, params given", ref_given, False, None),
        ("triton kernel, params given", kernel, False, "reference eager, params given"),
        (ref_graph, ref_given, True, None),
        ("triton kernel, params given, CUDA graph", kernel, True, ref_graph),
        ("two_views (default generator), CUDA graph", lambda: two_views(x, sampler), True, ref_graph),
    ]

    # Correctness on this card, recorded in the notes.
    try:
        got = kernel()
        err = max(float((got[k].double() - reference.view_transform(x.double(), angles[k, :, 0].double(),
                                                                   shift[k, :, 0].double())).abs().max())
                  for k in range(2))
        check = f"max abs err vs float64 reference {err:.2e}"
    except Exception as exc:  # recorded, never fatal
        check = f"check failed: {type(exc).__name__}: {exc}"

    copy_gbs = None
    try:
        ms, peak = _time(lambda: x.clone(), quick, graph=True)
        copy_gbs = 2 * x.numel() * x.element_size() / ms / 1e6
        rows.append(_row(case, "copy ceiling (x.clone), CUDA graph", ms, peak, None,
                         f"{copy_gbs:.0f} GB/s read+write"))
    except Exception as exc:
        rows.append(_row(case, "copy ceiling (x.clone)", note=f"{type(exc).__name__}: {exc}"))
    times: dict[str, float] = {}
    for impl, fn, graph, base in impls:
        try:
            ms, peak = _time(fn, quick, graph)
            times[impl] = ms
            gbs = n_bytes / ms / 1e6
            note = f"{gbs:.0f} GB/s effective (3|x| bytes)"
            if copy_gbs:
                note += f", {100 * gbs / copy_gbs:.0f}% of copy"
            if base is not None:
                note += f"; ratio vs '{base}'; {check}"
            ratio = times[base] / ms if base in times else None
            rows.append(_row(case, impl, ms, peak, ratio, note))
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append(_row(case, impl, note="OOM"))
        except Exception as exc:
            rows.append(_row(case, impl, note=f"{type(exc).__name__}: {exc}"))
    return rows


def run(out_dir: str, quick: bool = False) -> list[dict]:
    """Benchmark every case; one failing case never stops the others. Writes out_dir/augment.json."""
    rows: list[dict] = []
    if not torch.cuda.is_available():
        rows.append(_row("-", "-", note="no CUDA device"))
    else:
        cases = [(n, t, torch.float32) for n, t in CASES] + [(256, 300, torch.bfloat16)]
        for n, t, dtype in cases[:2] if quick else cases:
            try:
                rows.extend(_case(n, t, dtype, quick))
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                rows.append(_row(f"N={n} T={t}", "-", note="OOM"))
            except Exception as exc:
                rows.append(_row(f"N={n} T={t}", "-", note=f"{type(exc).__name__}: {exc}"))
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        with open(os.path.join(out_dir, "augment.json"), "w") as f:
            json.dump({"device": device, "torch": torch.__version__, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for r in run(sys.argv[1] if len(sys.argv) > 1 else "."):
        ms = "-" if r["ms"] is None else f"{r['ms']:.4f}"
        ratio = "" if r["ratio_vs_ref"] is None else f"x{r['ratio_vs_ref']:.1f}"
        print(f"{r['case']:30s} {r['impl']:44s} {ms:>9s} ms {ratio:>7s}  {r['note']}")
