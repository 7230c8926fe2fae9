"""Data: loading every supported source into ``SkeletonArrays``, NTU parsing and preparation,
benchmark splits, temporal sampling and batch iteration.

``load_dataset`` and ``SkeletonArrays`` are imported eagerly; the rest on first use, so that
reading data does not import torch.
"""

from __future__ import annotations

import importlib

from .dataset import SkeletonArrays
from .formats import load_dataset, save_npz
from .rows import PaddedRows, RowConcat, RowSubset

__all__ = ["SkeletonArrays", "RowSubset", "RowConcat", "PaddedRows", "load_dataset", "save_npz",
           "BatchLoader", "sample_frames", "read_skeleton", "ntu_split", "prepare_ntu"]

_LAZY = {
    "BatchLoader": ".loader",
    "sample_frames": ".temporal",
    "read_skeleton": ".ntu",
    "ntu_split": ".splits",
    "prepare_ntu": ".prepare",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
