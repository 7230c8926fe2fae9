"""GPU report for whole-pipeline pretraining: one NTU-60-sized epoch, and the train step alone.

``run(out_dir, quick=False) -> list[dict]`` (rows as in the team's GPU benchmark protocol), or
``python bench/gpu_train.py OUT_DIR``, which also writes ``OUT_DIR/train.json``.

* ``train_epoch``: one pretraining epoch of ``skelcl.train.run`` (loader with prefetch, temporal
  sampling, two on-device views, ST-GCN width 16, fused NT-Xent, LARS) over 40,091 synthetic
  sequences at T = 50 (the NTU-60 x-sub training-set size), batch 256, bf16 autocast. The
  sequences are the synthetic generator's 3,600 tiled to 40,091: the time of an epoch does not
  depend on what the skeletons do. ``ms`` is the epoch's wall time (first steps' compilation and
  autotuning included); the note also gives the steady-state rate and the epoch time it implies.
  Target (issue 10): <= 4 s on one H100/H200; DESIGN section 5: 15.7 s for a plain eager pipeline.
* ``train_step``: one step on a fixed batch already on the GPU (B = 256, T = 50, width 16): skelcl
  (fused views + fused NT-Xent + multi-tensor LARS) against the plain-PyTorch reference pipeline
  (``skelcl.reference.view_transform``, the naive 2N x 2N NT-Xent, the per-parameter
  ``LARSReference``), both bf16 autocast, same encoder. ``ratio_vs_ref`` is the speed-up.
  ``skelcl-bf16-aligned`` and ``-sparse``: the same with the joints mixed through a transposed,
  padded matrix or by the sparse Triton kernels (``stgcn.PORTABLE_MIX``). These rows run first; the
  epoch then uses the way of mixing that gave the fastest step (named in its note).
* ``skelcl-bf16-compile-ro``: the epoch again with ``--compile reduce-overhead`` (the encoder's
  forward and backward replayed from CUDA graphs) and the sparse mixing (the fastest when replayed
  from graphs; the batched product if that fails), while the time budget allows.

Whole run: about 20-40 s on an H100/H200 (data generation ~5 s, the epoch, a few hundred steps).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
for _p in (os.path.dirname(_HERE), _HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import _timing  # noqa: E402
from _timing import cuda_step_ms_and_peak  # noqa: E402

NTU60_XSUB_TRAIN = 40_091
FRAMES = 50
BATCH = 256
WIDTH = 16


def _row(suite, case, impl, ms=None, peak=None, ratio=None, note=""):
    return {"suite": suite, "case": case, "impl": impl, "ms": ms, "peak_mib": peak, "ratio_vs_ref": ratio,
            "note": note}


def ntu_sized_synthetic(n: int, frames: int = FRAMES, **synthetic):
    """The synthetic set (3,600 sequences, ``frames`` long) tiled to ``n`` training sequences."""
    from skelcl.data import SkeletonArrays
    from skelcl.data.synthetic import generate_synthetic

    base = generate_synthetic(num_frames=frames, **synthetic)
    n_test = 64  # a test split must exist for the run; it is never used (no evaluation here)
    idx = np.resize(np.arange(len(base)), n + n_test)
    train = np.arange(n + n_test) < n
    return SkeletonArrays(x=base.x[idx], y=base.y[idx], layout=base.layout, num_classes=base.num_classes,
                          length=base.length[idx], splits={"bench": train})


def epoch_config(out: str, amp: bool = True, batch: int = BATCH, frames: int = FRAMES, width: int = WIDTH,
                 depth: int | None = None, compile: bool | str = False, joint_mixing: str = "auto") -> dict:
    """The ``skelcl.train`` configuration of the epoch benchmark (also used by the CPU benchmark)."""
    return dict(data="synthetic-ntu60-sized", benchmark="bench", frames=frames, model="stgcn-quarter",
                width=width, depth=depth, epochs=1, batch_size=batch, amp=amp, out=out, evaluate=False,
                progress=False, tensorboard=False, log_every=10, checkpoint_every=0, compile=compile,
                joint_mixing=joint_mixing)


def measure_epoch(data, amp: bool = True, **config) -> dict:
    """One epoch through ``skelcl.train.run``; wall time, steady rate and peak memory."""
    from skelcl.train import run as train_run

    with tempfile.TemporaryDirectory() as out:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        summary = train_run(epoch_config(out, amp, **config), data=data)
        wall = time.perf_counter() - t0
        records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    rates = [r["seq_per_s"] for r in records if r.get("kind") == "train"][1:]  # the first holds warm-up
    steady = statistics.median(rates) if rates else None
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    return {"epoch_s": summary["pretrain_seconds"], "wall_s": wall, "steady_seq_s": steady, "peak_mib": peak,
            "steps": summary["steps"], "sequences": summary["steps"] * summary["batch_size"]}


def _encoder(device, width: int, depth: int | None):
    from skelcl.models import ContrastiveModel, build_encoder

    torch.manual_seed(0)
    enc = build_encoder("stgcn-quarter", layout="ntu25", width_multiplier=width / 16, depth=depth)
    return ContrastiveModel(enc).to(device)


def make_skelcl_step(device, batch: int = BATCH, frames: int = FRAMES, amp: bool = True, width: int = WIDTH,
                     depth: int | None = None):
    """skelcl's TrainStep on a fixed raw batch (T = 64 frames, sampled down to ``frames``)."""
    from skelcl.optim import LARS, warmup_cosine
    from skelcl.train import TrainStep
    from skelcl.views import get_sampler

    model = _encoder(device, width, depth)
    opt = LARS(model.parameters(), lr=0.3)
    sched = warmup_cosine(opt, base_lr=0.3, warmup_steps=10, total_steps=10**6)
    gen = torch.Generator(device=device).manual_seed(0)
    step = TrainStep(model, opt, sched, get_sampler("moderate"), frames=frames, temperature=0.1,
                     generator=gen, amp_dtype=torch.bfloat16 if amp else None)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 64, 25, 2, generator=g).to(device)
    lengths = torch.randint(32, 65, (batch,), generator=g).to(device)
    return lambda: step(x, lengths)


def make_reference_step(device, batch: int = BATCH, frames: int = FRAMES, amp: bool = True,
                        width: int = WIDTH, depth: int | None = None):
    """The same step from plain-PyTorch parts: reference views, naive NT-Xent, per-parameter LARS."""
    from skelcl import reference as ref
    from skelcl.data.temporal import sample_frames
    from skelcl.views import get_sampler

    model = _encoder(device, width, depth)
    opt = ref.LARSReference(model.parameters(), lr=0.3)
    sampler = get_sampler("moderate")
    gen = torch.Generator(device=device).manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 64, 25, 2, generator=g).to(device)
    lengths = torch.randint(32, 65, (batch,), generator=g).to(device)

    def step():
        xs = sample_frames(x, lengths, frames, generator=gen)
        views = []
        for _ in range(2):
            angles, shift = sampler.sample(batch, frames, device=device, generator=gen)
            views.append(ref.view_transform(xs, angles.reshape(batch, 3), shift.reshape(batch, 3)))
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
            z = model(torch.cat(views))
        loss = ref.ntxent_loss(*z.float().chunk(2), 0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()

    return step


def _guard(suite, case, impl, fn):
    """Run ``fn() -> row``; turn OOM and other errors into rows so one case never stops the rest."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        return _row(suite, case, impl, note="OOM")
    except Exception as exc:  # noqa: BLE001 - reported in the row
        return _row(suite, case, impl, note=f"error: {type(exc).__name__}: {exc}"[:300])
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


COMPILED_EPOCH_AFTER_S = 60.0  # the compiled epoch (about a minute) runs only if the rest took less
# The compiled epoch's mixing: replayed from CUDA graphs, the sparse Triton kernels beat the batched
# product by 8-24 % on an H100 and an H200 (gpu_encoder's graph and compiled rows), whichever was
# fastest eagerly; it is what skelcl.train's joint_mixing="auto" picks there.
GRAPHED_MIX = "sparse"


def run(out_dir: str, quick: bool = False) -> list[dict]:
    os.makedirs(out_dir, exist_ok=True)
    n = 10_240 if quick else NTU60_XSUB_TRAIN
    epoch_case = f"N={n},T={FRAMES},width={WIDTH},B={BATCH}"
    step_case = f"B={BATCH},T={FRAMES},width={WIDTH}"
    if not torch.cuda.is_available():
        rows = [_row("train_epoch", epoch_case, "skelcl-bf16", note="skipped: no CUDA device"),
                _row("train_step", step_case, "skelcl-bf16", note="skipped: no CUDA device"),
                _row("train_step", step_case, "reference", note="skipped: no CUDA device")]
        _write(out_dir, rows)
        return rows
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    step_rows = {}
    rows = _timing.SavedRows(lambda done: _write(out_dir, done + list(step_rows.values())))
    began = time.perf_counter()

    # Train-step rows first: the epoch then runs with whichever joint mixing made the fastest step.
    repeats = 5 if quick else 20
    from gpu_encoder import with_portable_mix

    impl_of_mix = {"bmm": "skelcl-bf16", "aligned": "skelcl-bf16-aligned", "sparse": "skelcl-bf16-sparse"}
    makers = [("reference", make_reference_step)]
    makers += [(impl, lambda dev, mix=mix: with_portable_mix(mix, lambda: make_skelcl_step(dev))())
               for mix, impl in impl_of_mix.items()]
    for impl, make in makers:
        def one(impl=impl, make=make):
            fn = make(device)
            ms, peak = cuda_step_ms_and_peak(fn, warmup=3, repeats=repeats)
            return _row("train_step", step_case, impl, ms, peak, None, f"{BATCH / ms * 1e3:.0f} seq/s")

        step_rows[impl] = _guard("train_step", step_case, impl, one)
        _write(out_dir, list(rows) + list(step_rows.values()))
    ref_ms = step_rows["reference"]["ms"]
    timed = {mix: step_rows[impl]["ms"] for mix, impl in impl_of_mix.items() if step_rows[impl]["ms"]}
    best_mix = min(timed, key=timed.get) if timed else "bmm"

    built = {}

    def epoch_with_mix(mix: str, **config) -> dict:
        if "data" not in built:
            t0 = time.perf_counter()
            built["data"] = ntu_sized_synthetic(n)
            built["seconds"] = time.perf_counter() - t0
        return measure_epoch(built["data"], amp=True, joint_mixing=mix, **config)

    def epoch_row():
        r = epoch_with_mix(best_mix)
        implied = n / r["steady_seq_s"] if r["steady_seq_s"] else float("nan")
        note = (f"{r['sequences'] / r['epoch_s']:.0f} seq/s over the epoch incl. warm-up; steady "
                f"{r['steady_seq_s']:.0f} seq/s -> {implied:.2f} s/epoch; {r['steps']} steps; joints mixed "
                f"'{best_mix}' (fastest step above); data built in {built['seconds']:.1f} s (not counted)")
        return _row("train_epoch", epoch_case, "skelcl-bf16", r["epoch_s"] * 1e3, r["peak_mib"], None, note)

    def compiled_epoch_row():
        # The encoder compiled in reduce-overhead mode (forward and backward replayed from CUDA graphs).
        # Its compile and graph recording fall in the first steps: the steady rate is the figure.
        mix, failed = GRAPHED_MIX, ""
        try:
            r = epoch_with_mix(mix, compile="reduce-overhead")
        except Exception as exc:  # the default mixing is still worth a figure
            if mix == "bmm":
                raise
            mix, failed = "bmm", f" ('{GRAPHED_MIX}' failed: {type(exc).__name__}: {str(exc)[:120]})"
            torch.cuda.empty_cache()
            r = epoch_with_mix(mix, compile="reduce-overhead")
        implied = n / r["steady_seq_s"] if r["steady_seq_s"] else float("nan")
        note = (f"--compile reduce-overhead; steady {r['steady_seq_s']:.0f} seq/s -> {implied:.2f} s/epoch; "
                f"{r['sequences'] / r['epoch_s']:.0f} seq/s over the epoch incl. compile; "
                f"joints mixed '{mix}'{failed}")
        return _row("train_epoch", epoch_case, "skelcl-bf16-compile-ro", r["epoch_s"] * 1e3, r["peak_mib"],
                    None, note)

    rows.append(_guard("train_epoch", epoch_case, "skelcl-bf16", epoch_row))
    if quick or time.perf_counter() - began > COMPILED_EPOCH_AFTER_S:
        rows.append(_row("train_epoch", epoch_case, "skelcl-bf16-compile-ro",
                         note="skipped: quick mode or time budget"))
    else:
        rows.append(_guard("train_epoch", epoch_case, "skelcl-bf16-compile-ro", compiled_epoch_row))
    for r in step_rows.values():
        if ref_ms and r["ms"]:
            r["ratio_vs_ref"] = ref_ms / r["ms"]
    done = list(rows) + list(step_rows.values())
    _write(out_dir, done)
    return done


def _write(out_dir: str, rows: list[dict]) -> None:
    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    env = {"torch": torch.__version__, "cuda": card}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    with open(os.path.join(out_dir, "train.json"), "w") as f:
        json.dump({"environment": env, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python bench/gpu_train.py OUT_DIR [--quick]")
    for row in run(sys.argv[1], quick="--quick" in sys.argv[2:]):
        print(json.dumps(row))
