"""CPU train-step throughput: skelcl's channels-last STGCN vs the plain NCTV ST-GCN.

``pytest bench/test_bench_encoder.py --benchmark-only``: widths 16 and 64, N=32, T=50, M=2, one
SGD step (forward, backward, update) in float32. Sequences/s = 32 / mean time. The GPU report is
bench/gpu_encoder.py; its CPU-runnable parts are smoke-tested here.

Each case also records the minor page faults per step (``extra_info["minor_faults_per_step"]``,
Unix only): glibc maps large blocks it cannot take from its heap (over 32 MiB) and unmaps them on
free, and trims the top of the heap, so the kernel zero-fills those pages again every step. At
width 64 the NCTV model takes 0.7-0.9 million faults per step (roughly 1 s of its 4-5 s on a
2-core VM), and the count depends on what ran earlier in the process: compare ratios measured in
one run, and look at this column when figures move.
"""

from __future__ import annotations

import pytest
import torch
from gpu_encoder import make_model, make_step, run, with_portable_mix

N, T = 32, 50


def _minor_faults() -> int:
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


@pytest.mark.parametrize("width", [16, 64])
@pytest.mark.parametrize("impl", ["nctv", "skelcl"])
def test_train_step_cpu(benchmark, impl, width):
    torch.manual_seed(0)
    step = make_step(make_model(impl, width, "cpu"), N, T, "cpu", amp_dtype=None)
    benchmark.group = f"encoder train step w{width} N{N} T{T} M2"
    benchmark.extra_info["sequences"] = N
    step()  # warm-up round, outside the fault count
    before = _minor_faults()
    loss = benchmark.pedantic(step, rounds=3, warmup_rounds=0, iterations=1)
    benchmark.extra_info["minor_faults_per_step"] = (_minor_faults() - before) // 3
    assert torch.isfinite(loss)


def test_gpu_report_parts_on_cpu(tmp_path):
    """The GPU report's model and step builders run (tiny, on CPU, with bf16 autocast)."""
    for impl in ("nctv", "skelcl"):
        step = make_step(make_model(impl, 16, "cpu"), 2, 8, "cpu")
        assert torch.isfinite(step())
    import skelcl.models.stgcn as stgcn_module

    before = stgcn_module.PORTABLE_MIX
    seen = []
    step = with_portable_mix("aligned", lambda: lambda: seen.append(stgcn_module.PORTABLE_MIX))()
    step()
    assert seen == ["aligned"] and stgcn_module.PORTABLE_MIX == before  # set while running, then restored
    step = with_portable_mix("aligned", lambda: make_step(make_model("skelcl", 16, "cpu"), 2, 8, "cpu"))()
    assert torch.isfinite(step())
    rows = run(str(tmp_path), quick=True)
    assert (tmp_path / "encoder.json").exists()
    keys = {"suite", "case", "impl", "ms", "peak_mib", "ratio_vs_ref", "note"}
    assert rows and all(set(r) == keys for r in rows)
    if not torch.cuda.is_available():
        assert all(r["ms"] is None for r in rows)


def test_saved_rows_are_written_out_at_every_addition():
    """The GPU modules keep their rows in SavedRows so that a module cut at its time limit still
    leaves what it measured: appending, extending and += each write the rows so far."""
    import _timing

    written = []
    rows = _timing.SavedRows(lambda done: written.append([r["i"] for r in done]))
    rows.append({"i": 0})
    rows += [{"i": 1}, {"i": 2}]
    rows.extend([{"i": 3}])
    assert isinstance(rows, _timing.SavedRows)
    assert written == [[0], [0, 1, 2], [0, 1, 2, 3]]
