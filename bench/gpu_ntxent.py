"""GPU report for the fused NT-Xent loss: forward+backward time and peak memory vs the naive loss.

``run(out_dir, quick=False) -> list[dict]`` (rows: suite, case, impl, ms, peak_mib, ratio_vs_ref,
note), or ``python bench/gpu_ntxent.py OUT_DIR`` which writes OUT_DIR/ntxent.json.

Cases: 2N in {4096, 16384, 65536, 131072, 1048576}, D = 128, float32 (tf32 similarities) and
bfloat16 inputs. Implementations: "fused-triton" (skelcl.ops.ntxent_loss, backend="triton"),
"naive-eager" (skelcl.reference.ntxent_loss fed the same dtype), "naive-compile" (the same under
torch.compile with dynamic shapes, only while the time budget lasts). ratio_vs_ref is
naive-eager ms / this row's ms (a speedup). peak_mib is the peak allocation during one
forward+backward above what was allocated before it (the inputs), so it includes the input
gradients; the note gives the part beyond inputs and gradients ("extra"). A first "check" suite
compares the fused loss and gradients with the float64 reference at 2N = 4096.

Before the table, a tile sweep ("ntxent-tiles") times the forward and the backward kernel alone at
2N = 65,536, D = 128 with 16-bit operands (bf16; float32 with tf32 allowed multiplies float16) for
each candidate (BLOCK_M, BLOCK_N, num_warps, num_stages), checks each against the default config's
output, and installs the fastest pair in ``skelcl.kernels.ntxent.TUNED`` for the rest of the run:
the table's fused rows are measured with the winners, which the note names.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

DIM = 128
SIZES = [4096, 16384, 65536, 131072, 1048576]
NAIVE_LIMIT_GIB = 60.0
# Peak of the naive loss per logit (bytes), from its measured 48.1 GiB (fp32) / 40.1 GiB (bf16)
# at 2N = 65,536: logits, the softmax and its gradient, in fp32 whatever the input dtype.
NAIVE_BYTES_PER_LOGIT = {"float32": 12.1, "bfloat16": 10.1}


def _root_on_path():
    """The repository root (for skelcl) and bench/ (for _timing) on sys.path."""
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.dirname(here), here):
        if path not in sys.path:
            sys.path.insert(0, path)


ECHO = False  # the command line prints each row as soon as it is measured (a killed run keeps them)


def _format(r: dict) -> str:
    ms = "-" if r["ms"] is None else f"{r['ms']:.2f}"
    return (f"{r['suite']:15s} {r['case']:28s} {r['impl']:22s} ms={ms:>9s} peak_mib={r['peak_mib']} "
            f"{r['note']}")


def _row(suite, case, impl, ms=None, peak_mib=None, ratio=None, note=""):
    row = {"suite": suite, "case": case, "impl": impl, "ms": ms, "peak_mib": peak_mib,
           "ratio_vs_ref": ratio, "note": note}
    if ECHO:
        print(_format(row), flush=True)
    return row


def _time_fwd_bwd(fn, z1, z2, repeats):
    """Median ms of fn(z1, z2).backward() with CUDA events, after one warm-up; and peak MiB above start."""
    import torch

    def step():
        z1.grad = z2.grad = None
        fn(z1, z2).backward()

    step()  # warm-up: compiles kernels
    torch.cuda.synchronize()
    z1.grad = z2.grad = None
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    return statistics.median(times), peak


def _check_rows(torch, ntxent_loss, reference):
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    for dtype, tf32 in ((torch.float32, False), (torch.float32, True), (torch.bfloat16, True)):
        impl = f"fused-triton {str(dtype).split('.')[-1]}{' tf32' if tf32 and dtype == torch.float32 else ''}"
        try:
            z1 = torch.randn(2048, DIM, device="cuda", generator=g).to(dtype)
            z2 = torch.randn(2048, DIM, device="cuda", generator=g).to(dtype)
            a, b = z1.double().requires_grad_(), z2.double().requires_grad_()
            want = reference.ntxent_loss(a, b, 0.1)
            want.backward()
            x, y = z1.clone().requires_grad_(), z2.clone().requires_grad_()
            got = ntxent_loss(x, y, 0.1, backend="triton", allow_tf32=tf32)
            got.backward()
            scale = max(a.grad.abs().max().item(), b.grad.abs().max().item())
            err = max((x.grad.double() - a.grad).abs().max().item(),
                      (y.grad.double() - b.grad).abs().max().item())
            note = (f"loss {got.item():.6f} vs float64 {want.item():.6f}; "
                    f"max grad error / max grad = {err / scale:.2e}")
            rows.append(_row("ntxent-check", "2N=4096 D=128 tau=0.1", impl, note=note))
        except Exception as e:  # noqa: BLE001 - one failure must not stop the report
            note = f"error: {type(e).__name__}: {e}"[:500]
            rows.append(_row("ntxent-check", "2N=4096 D=128 tau=0.1", impl, note=note))
    return rows


# (BLOCK_M, BLOCK_N, num_warps, num_stages); the first of each list is the default for 16-bit operands
# (the winners of two sweeps on an H200; the rest are neighbours and earlier candidates).
FWD_TILES = [(128, 64, 4, 4), (128, 64, 4, 3), (128, 64, 8, 3), (64, 64, 4, 4), (128, 128, 4, 3),
             (128, 32, 4, 4), (64, 128, 4, 4), (128, 64, 4, 2)]
BWD_TILES = [(64, 128, 4, 2), (128, 128, 8, 2), (64, 64, 4, 3), (64, 128, 4, 3), (64, 128, 8, 2),
             (128, 64, 8, 2), (256, 64, 8, 2), (128, 128, 4, 2)]
SWEEP_2N = 65536


def _tile_sweep(torch, quick: bool) -> list[dict]:
    """Time each candidate tile config of the forward and the backward kernel; install the winners."""
    from _timing import cuda_step_ms_and_peak
    from skelcl.kernels import ntxent as kernels

    def event_ms(fn):  # one warm-up call (compiles), then 5 calls each timed on its own
        return cuda_step_ms_and_peak(fn, warmup=1, repeats=5)[0]

    rows, n = [], SWEEP_2N // 2
    suite, case = "ntxent-tiles", f"2N={SWEEP_2N} D={DIM} bf16 operands"
    g = torch.Generator(device="cuda").manual_seed(1)
    z1 = torch.randn(n, DIM, device="cuda", generator=g).to(torch.bfloat16)
    z2 = torch.randn(n, DIM, device="cuda", generator=g).to(torch.bfloat16)
    zh, inv, _ = kernels.normalize_rows(z1, z2, True, torch.bfloat16)
    gout = torch.ones((), device="cuda")
    lse2, _ = kernels.ntxent_forward(zh, zh, n, 0, n, 0.1, True, config=FWD_TILES[0], normalized=True)
    dz_ref = kernels.ntxent_backward(zh, zh, lse2, z1, z2, inv, gout, n, 0, n, 0.1, config=BWD_TILES[0])
    best = {}
    for backward, tiles in ((False, FWD_TILES), (True, BWD_TILES)):
        for cfg in tiles[:2] if quick else tiles:
            name = f"{'bwd' if backward else 'fwd'} {cfg[0]}x{cfg[1]} w{cfg[2]} s{cfg[3]}"
            try:
                if backward:
                    fn = lambda c=cfg: kernels.ntxent_backward(zh, zh, lse2, z1, z2, inv, gout, n, 0, n, 0.1,
                                                               config=c)
                    ref_scale = dz_ref.float().abs().max().item()
                    diff = (fn().float() - dz_ref.float()).abs().max().item() / ref_scale
                else:
                    fn = lambda c=cfg: kernels.ntxent_forward(zh, zh, n, 0, n, 0.1, True, config=c,
                                                              normalized=True)
                    diff = (fn()[0] - lse2).abs().max().item() / lse2.abs().max().item()
                ms = event_ms(fn)
                ok = diff < 1e-2
                rows.append(_row(suite, case, name, ms=ms, note=f"max rel. diff vs default {diff:.1e}"
                                 + ("" if ok else " (rejected)")))
                if ok and ms < best.get(backward, (None, float("inf")))[1]:
                    best[backward] = (cfg, ms)
            except Exception as e:  # noqa: BLE001 - e.g. out of shared memory for this config
                rows.append(_row(suite, case, name, note=f"error: {type(e).__name__}: {e}"[:300]))
    # The same default tiles with the older loop bodies: a running maximum in the forward, two
    # exponentials per weight in the backward. Their ratio to the default rows is what each saves.
    def running_max():
        return kernels.ntxent_forward(zh, zh, n, 0, n, 0.1, True, config=FWD_TILES[0], normalized=True,
                                      fixed_max=False)

    def two_exp():
        return kernels.ntxent_backward(zh, zh, lse2, z1, z2, inv, gout, n, 0, n, 0.1, config=BWD_TILES[0],
                                       shortcut_limit=-1.0)

    variants = (("fwd running max", running_max), ("bwd two exp2", two_exp))
    for name, fn in variants:
        try:
            rows.append(_row(suite, case, f"{name} {BWD_TILES[0] if 'bwd' in name else FWD_TILES[0]}",
                             ms=event_ms(fn), note="A/B against the first row of its kind"))
        except Exception as e:  # noqa: BLE001
            rows.append(_row(suite, case, name, note=f"error: {type(e).__name__}: {e}"[:300]))
    for backward, (cfg, ms) in best.items():
        for nbytes in (2,):  # bf16 and fp16 operands share the tiles
            kernels.TUNED[(128, nbytes, backward)] = cfg
        rows.append(_row(suite, case, f"{'bwd' if backward else 'fwd'} winner {cfg}", ms=ms,
                         note="installed for the fused rows below"))
    return rows


IMPLS = ("fused-triton", "naive-eager", "naive-compile")


def run(out_dir: str, quick: bool = False, sizes: list[int] | None = None, impls: tuple[str, ...] = IMPLS,
        sweep: bool = True) -> list[dict]:
    """``sizes``/``impls``/``sweep`` narrow the run (the command line's --sizes, --impls, --no-sweep)."""
    _root_on_path()
    import _timing
    import torch

    from skelcl import reference
    from skelcl.ops import ntxent_loss

    if not torch.cuda.is_available():
        return [_row("ntxent-fwd-bwd", "-", "fused", note="skipped: no CUDA device")]
    budget_s = 25.0 if quick else 100.0
    t_start = time.monotonic()
    sizes = sizes or ([4096, 65536, 1048576] if quick else SIZES)
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32}
    os.makedirs(out_dir, exist_ok=True)
    rows = _timing.SavedRows(lambda done: _write(out_dir, done))  # a run cut short keeps what it measured
    rows += _tile_sweep(torch, quick) if sweep else []
    torch.cuda.empty_cache()  # the sweep's tensors are gone with its frame
    rows += _check_rows(torch, ntxent_loss, reference)
    from skelcl.kernels import ntxent as kernels
    tiles = "; tiles " + ", ".join(f"{'bwd' if key[2] else 'fwd'} {cfg}"
                                   for key, cfg in sorted(kernels.TUNED.items()))

    fused = lambda a, b: ntxent_loss(a, b, 0.1, backend="triton")
    naive = lambda a, b: reference.ntxent_loss(a, b, 0.1)
    naive_compiled = torch.compile(naive, dynamic=True)  # one compile per dtype serves every size
    plan = [(impl, name, two_n) for impl in impls for name in dtypes for two_n in sizes]
    ref_ms = {}
    for impl, name, two_n in plan:
        case = f"2N={two_n} D={DIM} {name}"
        suite = "ntxent-fwd-bwd"
        if impl != "fused-triton":
            need_gib = NAIVE_BYTES_PER_LOGIT[name] * two_n**2 / 2**30
            if need_gib > NAIVE_LIMIT_GIB:
                rows.append(_row(suite, case, impl, note=f"skipped: naive needs {need_gib:.0f} GiB"))
                continue
            # A compile takes tens of seconds: start one only with that much budget left.
            if impl == "naive-compile" and (quick or time.monotonic() - t_start > budget_s - 30):
                rows.append(_row(suite, case, impl, note="skipped: no time budget left for a compile"))
                continue
        if time.monotonic() - t_start > budget_s:
            rows.append(_row(suite, case, impl, note=f"skipped: time budget of {budget_s:.0f} s spent"))
            continue
        fn = {"fused-triton": fused, "naive-eager": naive, "naive-compile": naive_compiled}[impl]
        repeats = 1 if two_n >= 1048576 else (3 if two_n >= 131072 else 7)
        z1 = z2 = None
        try:
            g = torch.Generator(device="cuda").manual_seed(0)
            z1 = torch.randn(two_n // 2, DIM, device="cuda", generator=g).to(dtypes[name]).requires_grad_()
            z2 = torch.randn(two_n // 2, DIM, device="cuda", generator=g).to(dtypes[name]).requires_grad_()
            ms, peak = _time_fwd_bwd(fn, z1, z2, repeats)
            grads_mib = 2 * z1.numel() * z1.element_size() / 2**20
            note = f"extra beyond inputs+grads {peak - grads_mib:.1f} MiB; median of {repeats}"
            if impl == "fused-triton":
                note += tiles
            if impl == "naive-eager":
                ref_ms[case] = ms
            rows.append(_row(suite, case, impl, ms=ms, peak_mib=peak, note=note))
        except torch.cuda.OutOfMemoryError:
            rows.append(_row(suite, case, impl, note="OOM"))
        except Exception as e:  # noqa: BLE001 - one failure must not stop the report
            rows.append(_row(suite, case, impl, note=f"error: {type(e).__name__}: {e}"[:500]))
        finally:
            del z1, z2
            torch.cuda.empty_cache()
    for row in rows:
        base = ref_ms.get(row["case"])
        if base is not None and row["ms"] and row["suite"] == "ntxent-fwd-bwd":
            row["ratio_vs_ref"] = base / row["ms"]

    _write(out_dir, list(rows))
    return list(rows)


def _write(out_dir: str, rows: list[dict]) -> None:
    with open(os.path.join(out_dir, "ntxent.json"), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", default=None, help="comma-separated 2N values (default: all)")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--no-sweep", action="store_true", help="skip the tile sweep (use the defaults)")
    args = ap.parse_args()
    chosen = [int(v) for v in args.sizes.split(",")] if args.sizes else None
    ECHO = True
    rows = run(args.out_dir, args.quick, chosen, tuple(args.impls.split(",")), not args.no_sweep)
    print("\n".join(_format(r) for r in rows if r["ratio_vs_ref"]))  # rows whose ratio came last
