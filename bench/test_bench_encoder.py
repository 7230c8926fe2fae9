"""CPU train-step throughput: skelcl's channels-last STGCN vs the plain NCTV ST-GCN.

``pytest bench/test_bench_encoder.py --benchmark-only``: widths 16 and 64, N=32, T=50, M=2, one
SGD step (forward, backward, update) in float32. Sequences/s = 32 / mean time. The GPU report is
bench/gpu_encoder.py; its CPU-runnable parts are smoke-tested here.
"""

from __future__ import annotations

import pytest
import torch
from gpu_encoder import make_model, make_step, run

N, T = 32, 50


@pytest.mark.parametrize("width", [16, 64])
@pytest.mark.parametrize("impl", ["nctv", "skelcl"])
def test_train_step_cpu(benchmark, impl, width):
    torch.manual_seed(0)
    step = make_step(make_model(impl, width, "cpu"), N, T, "cpu", amp_dtype=None)
    benchmark.group = f"encoder train step w{width} N{N} T{T} M2"
    benchmark.extra_info["sequences"] = N
    loss = benchmark.pedantic(step, rounds=3, warmup_rounds=1, iterations=1)
    assert torch.isfinite(loss)


def test_gpu_report_parts_on_cpu(tmp_path):
    """The GPU report's model and step builders run (tiny, on CPU, with bf16 autocast)."""
    for impl in ("nctv", "skelcl"):
        step = make_step(make_model(impl, 16, "cpu"), 2, 8, "cpu")
        assert torch.isfinite(step())
    rows = run(str(tmp_path), quick=True)
    assert (tmp_path / "encoder.json").exists()
    keys = {"suite", "case", "impl", "ms", "peak_mib", "ratio_vs_ref", "note"}
    assert rows and all(set(r) == keys for r in rows)
    if not torch.cuda.is_available():
        assert all(r["ms"] is None for r in rows)
