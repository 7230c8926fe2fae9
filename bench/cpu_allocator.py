"""CPU train step with glibc's default malloc settings and with freed memory retained (skelcl.hostmem).

    python bench/cpu_allocator.py [--widths 16 64] [--steps 3]

Each (implementation, width, setting) runs in its own process, since the setting is process-wide
and the page-fault count depends on what ran before: skelcl's channels-last STGCN and the plain
NCTV ST-GCN (tests/nctv_stgcn.py), N = 32, T = 50, M = 2, float32, one SGD step as in
bench/test_bench_encoder.py. Prints the median step time, system time and minor page faults per step,
and the peak RSS, as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CHILD = """
import json, resource, sys, time
impl, width, setting, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
if setting == "retained":
    from skelcl.hostmem import retain_freed_host_memory
    assert retain_freed_host_memory(), "glibc's malloc is needed"
import torch
from gpu_encoder import make_model, make_step
torch.manual_seed(0)
step = make_step(make_model(impl, width, "cpu"), 32, 50, "cpu", amp_dtype=None)
step(); step()
rows = []
for _ in range(steps):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    step()
    r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    rows.append((t1 - t0, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt))
print(json.dumps({"steps": rows, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def measure(impl: str, width: int, setting: str, steps: int) -> dict:
    env = os.environ | {"PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "bench")])}
    out = subprocess.run([sys.executable, "-c", _CHILD, impl, str(width), setting, str(steps)], check=True,
                         capture_output=True, text=True, env=env, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    wall, sys_s, faults = zip(*result["steps"])
    return {"impl": impl, "width": width, "malloc": setting, "step_s": statistics.median(wall),
            "sys_s": statistics.median(sys_s), "faults": int(statistics.median(faults)),
            "peak_rss_mib": result["peak_rss_mib"]}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    print("| width | implementation | malloc | step (s) | system time (s) | faults/step | peak RSS (MiB) |")
    print("|---:|---|---|---:|---:|---:|---:|")
    rows = []
    for width in args.widths:
        for impl in ("nctv", "skelcl"):
            for setting in ("default", "retained"):
                r = measure(impl, width, setting, args.steps)
                rows.append(r)
                print(f"| {width} | {impl} | {setting} | {r['step_s']:.3f} | {r['sys_s']:.3f} | "
                      f"{r['faults']:,} | {r['peak_rss_mib']:.0f} |", flush=True)
    for width in args.widths:
        for setting in ("default", "retained"):
            t = {r["impl"]: r["step_s"] for r in rows if r["width"] == width and r["malloc"] == setting}
            print(f"width {width}, malloc {setting}: skelcl {t['nctv'] / t['skelcl']:.2f}x the NCTV step")
    return rows


if __name__ == "__main__":
    main()
