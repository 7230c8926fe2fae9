"""Whole training step and a small pretraining epoch on CPU (issue 10's end-to-end figure, CPU side).

``train-step``: skelcl's ``TrainStep`` (fused views, fused NT-Xent, multi-tensor LARS) against the
same step from plain-PyTorch parts (``skelcl.reference`` views, naive NT-Xent, per-parameter LARS),
same encoder, fp32 and bf16 autocast. ``train-epoch``: one epoch of ``skelcl.train.run`` (loader,
prefetch, logging) over a small tiled synthetic set. Sizes are small so the suite fits the CPU
budget; the GPU sizes (B = 256, T = 50, width 16, 40,091 sequences) are in ``gpu_train.py``.
"""

from __future__ import annotations

import gpu_train  # bench/ is on sys.path (bench/conftest.py)
import pytest

BATCH, FRAMES, WIDTH, DEPTH = 32, 20, 8, 6


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["skelcl", "reference"])
def test_train_step_cpu(benchmark, impl, amp):
    make = gpu_train.make_skelcl_step if impl == "skelcl" else gpu_train.make_reference_step
    step = make("cpu", batch=BATCH, frames=FRAMES, amp=amp, width=WIDTH, depth=DEPTH)
    loss = step()  # warm-up (and first-use builds) outside the timing
    assert float(loss) == float(loss)  # not NaN
    benchmark.group = f"train-step-cpu-B={BATCH},T={FRAMES},width={WIDTH},depth={DEPTH}"
    benchmark.extra_info.update(impl=impl, amp=amp, batch=BATCH, frames=FRAMES, width=WIDTH, depth=DEPTH)
    benchmark.pedantic(step, rounds=3, iterations=1)


def test_train_epoch_cpu(benchmark):
    data = gpu_train.ntu_sized_synthetic(8 * BATCH + 5, frames=32, num_subjects=4, reps_per_class=1)
    benchmark.group = "train-epoch-cpu"
    result = benchmark.pedantic(gpu_train.measure_epoch, args=(data,),
                                kwargs=dict(amp=True, batch=BATCH, frames=FRAMES, width=WIDTH, depth=DEPTH),
                                rounds=1, iterations=1)
    assert result["steps"] == 8
    benchmark.extra_info.update(steps=result["steps"], epoch_s=result["epoch_s"],
                                steady_seq_per_s=result["steady_seq_s"])
