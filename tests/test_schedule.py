"""Warm-up + cosine schedule and the batch-size scaling rule."""

from __future__ import annotations

import math

import pytest
import torch

from skelcl.optim import LARS, scaled_lr, warmup_cosine


def test_shape_linear_warmup_then_cosine_to_final():
    f = warmup_cosine(None, base_lr=2.0, warmup_steps=10, total_steps=110, final_lr=0.1)
    lrs = [f(s) for s in range(130)]
    # Warm-up: equal increments from base/10 up to base at step 9.
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[9] == pytest.approx(2.0)
    assert all(b - a == pytest.approx(0.2) for a, b in zip(lrs[:9], lrs[1:10]))
    # Cosine: starts at base, half-way at the midpoint, strictly decreasing, ends at final.
    assert lrs[10] == pytest.approx(2.0)
    assert lrs[60] == pytest.approx(0.1 + 1.9 * 0.5)
    assert lrs[35] == pytest.approx(0.1 + 1.9 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert all(b < a for a, b in zip(lrs[10:110], lrs[11:110]))
    assert lrs[109] > 0.1
    assert all(lr == 0.1 for lr in lrs[110:])


def test_no_warmup_starts_at_base():
    f = warmup_cosine(None, base_lr=1.0, warmup_steps=0, total_steps=4)
    assert [f(s) for s in range(5)] == pytest.approx([1.0, 0.5 + 0.5 * math.cos(math.pi / 4), 0.5,
                                                      0.5 - 0.5 * math.cos(math.pi / 4), 0.0])


def test_lambda_lr_drives_optimizer_groups_and_resumes():
    params = [torch.nn.Parameter(torch.ones(3, 3)), torch.nn.Parameter(torch.ones(3))]
    opt = LARS([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], lr=1.0)
    sched = warmup_cosine(opt, base_lr=1.0, warmup_steps=3, total_steps=8, final_lr=0.0)
    f = warmup_cosine(None, base_lr=1.0, warmup_steps=3, total_steps=8, final_lr=0.0)
    seen = []
    for _ in range(6):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [s[0] for s in seen] == pytest.approx([f(s) for s in range(6)])
    assert [s[1] for s in seen] == pytest.approx([0.5 * f(s) for s in range(6)])  # keeps its ratio

    opt2 = LARS([{"params": params[:1]}, {"params": params[1:], "lr": 0.5}], lr=1.0)
    sched2 = warmup_cosine(opt2, base_lr=1.0, warmup_steps=3, total_steps=8, final_lr=0.0)
    sched2.load_state_dict(sched.state_dict())
    opt2.load_state_dict(opt.state_dict())
    sched.step()
    sched2.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])


@pytest.mark.parametrize("kwargs, word", [
    (dict(base_lr=-1.0, warmup_steps=1, total_steps=5), "base_lr"),
    (dict(base_lr=1.0, warmup_steps=-1, total_steps=5), "warmup_steps"),
    (dict(base_lr=1.0, warmup_steps=6, total_steps=5), "warmup_steps"),
    (dict(base_lr=1.0, warmup_steps=1, total_steps=0), "total_steps"),
    (dict(base_lr=1.0, warmup_steps=1, total_steps=5.0), "total_steps"),
    (dict(base_lr=1.0, warmup_steps=1, total_steps=5, final_lr=float("nan")), "final_lr"),
])
def test_schedule_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        warmup_cosine(None, **kwargs)


def test_schedule_rejects_non_optimizer_and_negative_step():
    with pytest.raises(ValueError, match="optimizer"):
        warmup_cosine("sgd", base_lr=1.0, warmup_steps=1, total_steps=5)
    with pytest.raises(ValueError, match="step"):
        warmup_cosine(None, base_lr=1.0, warmup_steps=1, total_steps=5)(-1)


def test_scaled_lr_rules():
    assert scaled_lr(0.3, 256) == pytest.approx(0.3)
    assert scaled_lr(0.3, 4096) == pytest.approx(4.8)  # SimCLR: 0.3 x B / 256
    assert scaled_lr(0.3, 1024, reference_batch=512) == pytest.approx(0.6)
    assert scaled_lr(1.2, 4096, rule="sqrt") == pytest.approx(0.075 * math.sqrt(4096))  # SimCLR sqrt rule
    assert scaled_lr(1.2, 64, rule="sqrt") == pytest.approx(0.6)


@pytest.mark.parametrize("args, kwargs, word", [
    ((0.3, 0), {}, "batch_size"),
    ((0.3, 12.5), {}, "batch_size"),
    ((-0.3, 256), {}, "base_lr"),
    ((0.3, 256), dict(reference_batch=0), "reference_batch"),
    ((0.3, 256), dict(rule="log"), "rule"),
])
def test_scaled_lr_bad_arguments(args, kwargs, word):
    with pytest.raises(ValueError, match=word):
        scaled_lr(*args, **kwargs)
