"""Where a train step spends its time on a GPU: wall time, GPU busy time, launches, top kernels.

    python bench/profile_step.py [--widths 16 64] [--n 128] [--t 64] [--fp32] [--rows 15]

Profiles the encoder train step of bench/gpu_encoder.py (skelcl's ST-GCN, forward, backward and
SGD update on a fixed batch, bf16 autocast unless ``--fp32``) for a few steps with torch.profiler.
A step whose GPU busy time is far below its wall time is bound by host-side launches, not by
kernels: fewer, larger kernels (or CUDA graphs) help there, faster kernels do not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))]
from gpu_encoder import make_model, make_step  # noqa: E402


def _self_device_us(evt) -> float:
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, name):
            return float(getattr(evt, name))
    return 0.0


def profile(width: int, n: int, t: int, amp: bool, rows: int, steps: int = 5, device: str = "cuda") -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    step = make_step(make_model("skelcl", width, device), n, t, device,
                     amp_dtype=torch.bfloat16 if amp else None)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    host_ms = (time.perf_counter() - t0) * 1e3 / steps  # enqueue time, GPU possibly still behind
    sync()
    wall_ms = (time.perf_counter() - t0) * 1e3 / steps

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        sync()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    if device != "cuda":  # CPU (checking this script): self CPU time stands in for kernel time
        kernels = []
    busy_ms = sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / steps
    print(f"\n== skelcl ST-GCN width {width}, N={n}, T={t}, M=2, {'bf16 autocast' if amp else 'fp32'}")
    print(f"wall {wall_ms:.2f} ms/step; host enqueue {host_ms:.2f} ms/step; GPU busy {busy_ms:.2f} ms/step; "
          f"{len(kernels) / steps:.0f} kernels/step")
    metric = _self_device_us if device == "cuda" else (lambda e: float(e.self_cpu_time_total))
    averages = [e for e in prof.key_averages() if metric(e) > 0]
    averages.sort(key=metric, reverse=True)
    total = sum(metric(e) for e in averages) or 1.0
    print(f"{'self GPU ms/step':>16} {'share':>6} {'calls/step':>10}  op")
    for e in averages[:rows]:
        us = metric(e)
        print(f"{us / 1e3 / steps:16.3f} {100 * us / total:5.1f}% {e.count / steps:10.1f}  {e.key[:90]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--t", type=int, default=64)
    ap.add_argument("--fp32", action="store_true")
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("--device", default="cuda", help="cuda; cpu only to check this script")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("profile_step: needs a CUDA device")
        return 1
    torch.backends.cudnn.benchmark = True
    for width in args.widths:
        profile(width, args.n, args.t, not args.fp32, args.rows, device=args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
