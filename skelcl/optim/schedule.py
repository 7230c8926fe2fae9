"""Learning-rate rules for large-batch contrastive training: batch scaling, warm-up + cosine decay."""

from __future__ import annotations

import math

import torch


def scaled_lr(base_lr: float, batch_size: int, reference_batch: int = 256, rule: str = "linear") -> float:
    """Learning rate for ``batch_size`` given the one tuned at ``reference_batch``.

    ``rule="linear"``: ``base_lr * batch_size / reference_batch`` (SimCLR's default,
    ``0.3 * B / 256``, is ``base_lr=0.3``). ``rule="sqrt"``: ``base_lr * sqrt(batch_size /
    reference_batch)``, which SimCLR recommends for small batches and long training; its
    ``0.075 * sqrt(B)`` is ``base_lr=1.2`` with the default ``reference_batch=256``. With several
    devices, ``batch_size`` is the global batch (all devices together).
    """
    _check_positive("base_lr", base_lr, allow_zero=True)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")
    if isinstance(reference_batch, bool) or not isinstance(reference_batch, int) or reference_batch <= 0:
        raise ValueError(f"reference_batch: must be a positive int, got {reference_batch!r}")
    if rule == "linear":
        return base_lr * batch_size / reference_batch
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / reference_batch)
    raise ValueError(f"rule: must be 'linear' or 'sqrt', got {rule!r}")


class WarmupCosine:
    """The schedule as a plain function of the step index: ``lr = schedule(step)``.

    * ``step < warmup_steps``: linear warm-up, ``base_lr * (step + 1) / warmup_steps`` (the first
      step already moves, the last warm-up step reaches ``base_lr``);
    * ``warmup_steps <= step < total_steps``: cosine from ``base_lr`` down towards ``final_lr``,
      ``final_lr + (base_lr - final_lr) * (1 + cos(pi * t)) / 2``, ``t = (step - warmup_steps) /
      (total_steps - warmup_steps)``;
    * ``step >= total_steps``: ``final_lr``.
    """

    def __init__(self, base_lr: float, warmup_steps: int, total_steps: int, final_lr: float = 0.0):
        _check_positive("base_lr", base_lr, allow_zero=True)
        _check_positive("final_lr", final_lr, allow_zero=True)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps <= 0:
            raise ValueError(f"total_steps: must be a positive int, got {total_steps!r}")
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be a non-negative int, got {warmup_steps!r}")
        if warmup_steps > total_steps:
            raise ValueError(f"warmup_steps: must be <= total_steps ({total_steps}), got {warmup_steps}")
        self.base_lr, self.final_lr = float(base_lr), float(final_lr)
        self.warmup_steps, self.total_steps = warmup_steps, total_steps

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step: must be >= 0, got {step}")
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.final_lr
        t = (step - self.warmup_steps) / (self.total_steps - self.warmup_steps)
        return self.final_lr + (self.base_lr - self.final_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def warmup_cosine(optimizer: torch.optim.Optimizer | None, *, base_lr: float, warmup_steps: int,
                  total_steps: int, final_lr: float = 0.0):
    """Linear warm-up then cosine decay, stepped once per optimiser step (not per epoch).

    With ``optimizer=None`` returns a :class:`WarmupCosine` (a function ``step -> lr``) for
    custom loops. With an optimiser returns a ``torch.optim.lr_scheduler.LambdaLR``: it sets
    every group's ``lr`` to ``schedule(step) * group_initial_lr / base_lr`` — groups created with
    ``lr=base_lr`` follow the schedule exactly and groups with another ``lr`` keep their ratio to
    it. Creating it already applies step 0; call ``scheduler.step()`` after each
    ``optimizer.step()``. Its ``state_dict`` holds the step count for resuming.
    """
    schedule = WarmupCosine(base_lr, warmup_steps, total_steps, final_lr)
    if optimizer is None:
        return schedule
    if not isinstance(optimizer, torch.optim.Optimizer):
        kind = type(optimizer).__name__
        raise ValueError(f"optimizer: must be a torch.optim.Optimizer or None, got {kind}")
    if base_lr == 0:
        raise ValueError("base_lr: must be positive with an optimizer (groups scale by lr / base_lr)")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _Factor(schedule))


class _Factor:
    """``schedule(step) / base_lr``: a picklable LambdaLR multiplier (a lambda would not be)."""

    def __init__(self, schedule: WarmupCosine):
        self.schedule = schedule

    def __call__(self, step: int) -> float:
        return self.schedule(step) / self.schedule.base_lr


def _check_positive(name: str, value, allow_zero: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite Python number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name}: must be {'>= 0' if allow_zero else '> 0'}, got {value}")
