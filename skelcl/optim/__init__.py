"""Optimisation: LARS (SimCLR semantics, multi-tensor) and learning-rate schedules."""

from .lars import LARS
from .schedule import scaled_lr, warmup_cosine

__all__ = ["LARS", "scaled_lr", "warmup_cosine"]
