"""NT-Xent on CPU: fused chunked path vs the naive reference (2N x 2N logits), forward + backward.

Time: pytest-benchmark. Peak memory: torch's CPU allocations are invisible to tracemalloc, so each
case also runs once in a fresh subprocess that reports its peak RSS growth over the inputs
(``extra_info["peak_rss_delta_mib"]``). ``python bench/test_bench_ntxent.py`` prints both numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from skelcl import reference as ref
from skelcl.ops import ntxent_loss

DIM = 128
SIZES = [2048, 8192]  # 2N

_PEAK_SCRIPT = r"""
import json, resource, sys, torch
from skelcl import reference as ref
from skelcl.ops import ntxent_loss
impl, two_n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
g = torch.Generator().manual_seed(0)
z1 = torch.randn(two_n // 2, dim, generator=g, requires_grad=True)
z2 = torch.randn(two_n // 2, dim, generator=g, requires_grad=True)
def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
def hwm_kib():  # this process's peak RSS (ru_maxrss would carry the parent's peak across exec)
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
fn = (lambda: ref.ntxent_loss(z1, z2, 0.1)) if impl == "reference" else (
    lambda: ntxent_loss(z1, z2, 0.1, backend="cpu"))
# Warm up on a tiny batch first: the first call pages in code and allocator pools, which is not
# the memory the algorithm needs.
w1, w2 = z1[:8].detach().clone().requires_grad_(), z2[:8].detach().clone().requires_grad_()
(ref.ntxent_loss(w1, w2, 0.1) if impl == "reference" else ntxent_loss(w1, w2, 0.1, backend="cpu")).backward()
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
except OSError:
    pass
base = max(rss_kib(), hwm_kib())
fn().backward()
peak = hwm_kib()
print(json.dumps({"peak_rss_delta_mib": max(peak - base, 0) / 1024}))
"""


def peak_rss_delta_mib(impl: str, two_n: int, dim: int = DIM) -> float:
    """Peak RSS growth of one forward+backward in a fresh process (the inputs excluded), MiB."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, impl, str(two_n), str(dim)], env=env,
                         capture_output=True, text=True, check=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_delta_mib"]


def _step(impl: str, z1, z2):
    if impl == "reference":
        loss = ref.ntxent_loss(z1, z2, 0.1)
    else:
        loss = ntxent_loss(z1, z2, 0.1, backend="cpu")
    loss.backward()
    return loss


@pytest.mark.parametrize("impl", ["reference", "fused-cpu"])
@pytest.mark.parametrize("two_n", SIZES)
def test_ntxent_fwd_bwd_cpu(benchmark, two_n, impl):
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(two_n // 2, DIM, generator=g, requires_grad=True)
    z2 = torch.randn(two_n // 2, DIM, generator=g, requires_grad=True)
    benchmark.group = f"ntxent-cpu-2N={two_n}"
    benchmark.extra_info.update(two_n=two_n, dim=DIM, impl=impl,
                                peak_rss_delta_mib=round(peak_rss_delta_mib(impl, two_n), 1))
    benchmark.pedantic(_step, args=(impl, z1, z2), rounds=3, warmup_rounds=1)


if __name__ == "__main__":
    import time

    for two_n in SIZES:
        g = torch.Generator().manual_seed(0)
        z1 = torch.randn(two_n // 2, DIM, generator=g, requires_grad=True)
        z2 = torch.randn(two_n // 2, DIM, generator=g, requires_grad=True)
        for impl in ("reference", "fused-cpu"):
            _step(impl, z1, z2)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                _step(impl, z1, z2)
                times.append(time.perf_counter() - t0)
            print(f"2N={two_n} D={DIM} {impl:10s} median {sorted(times)[1] * 1e3:8.1f} ms  "
                  f"peak RSS delta {peak_rss_delta_mib(impl, two_n):7.1f} MiB")
