"""The in-memory (or memory-mapped) form every data source is loaded into."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .rows import LazyRows, RowSubset

__all__ = ["SkeletonArrays"]


@dataclass
class SkeletonArrays:
    """A labelled set of skeleton sequences.

    x:        (N, 3, T, V, M) float32; may be a np.memmap or one of the lazy row views of
              ``skelcl.data.rows`` (read when indexed); absent (frame, person) slots are zero.
    y:        (N,) int64 class labels in [0, num_classes).
    layout:   joint-graph name understood by ``skelcl.layouts`` ("ntu25", "kinect20", "coco17").
    splits:   benchmark name -> (N,) bool array, True for training samples ("xsub", "xview",
              "xsub60", "xview60", "xsub120", "xset120", or "given" for a user-supplied split).
    The optional per-sample arrays are None when a source does not carry them.
    """

    x: np.ndarray | LazyRows
    y: np.ndarray
    layout: str = "ntu25"
    num_classes: int | None = None
    name: np.ndarray | None = None  # (N,) str, e.g. NTU "S001C001P001R001A001"
    subject: np.ndarray | None = None  # (N,) int performer id
    view: np.ndarray | None = None  # (N,) int camera id
    setup: np.ndarray | None = None  # (N,) int setup id
    length: np.ndarray | None = None  # (N,) int valid frames
    splits: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self):
        if self.x.ndim != 5 or self.x.shape[1] != 3:
            raise ValueError(f"x must be (N, 3, T, V, M), got shape {self.x.shape}")
        self.y = np.asarray(self.y, dtype=np.int64)
        n = self.x.shape[0]
        if self.y.shape != (n,):
            raise ValueError(f"y must be ({n},) to match x, got shape {self.y.shape}")
        if n and self.y.min() < 0:
            raise ValueError(f"labels must be 0-based class indices, found {int(self.y.min())}")
        if self.num_classes is None:
            self.num_classes = int(self.y.max()) + 1 if n else 0
        elif n and self.y.max() >= self.num_classes:
            raise ValueError(f"label {int(self.y.max())} is out of range for num_classes={self.num_classes}")
        for f in ("name", "subject", "view", "setup", "length"):
            value = getattr(self, f)
            if value is not None and len(value) != n:
                raise ValueError(f"{f} has {len(value)} entries for {n} sequences")
        for key, mask in self.splits.items():
            mask = np.asarray(mask, dtype=bool)
            if mask.shape != (n,):
                raise ValueError(f"split {key!r} must be a ({n},) bool mask, got shape {mask.shape}")
            self.splits[key] = mask

    def __len__(self) -> int:
        return self.x.shape[0]

    def take(self, index) -> SkeletonArrays:
        """The subset at ``index`` (indices or a bool mask). Its x is a ``RowSubset`` of this one's,
        read when batches are gathered: splitting copies no sequence, and memory-mapped data stays
        on disk."""
        index = np.asarray(index)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        kw = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "x" and isinstance(value, (np.ndarray, LazyRows)):
                kw["x"] = RowSubset.of(value, index)
            elif f.name == "splits":
                kw["splits"] = {k: m[index] for k, m in value.items()}
            elif f.name in ("layout", "num_classes"):
                kw[f.name] = value
            else:
                kw[f.name] = None if value is None else value[index]
        return SkeletonArrays(**kw)

    def train_test(self, benchmark: str) -> tuple[SkeletonArrays, SkeletonArrays]:
        """(train, test) subsets of a benchmark named in ``splits``."""
        if benchmark not in self.splits:
            raise ValueError(
                f"benchmark {benchmark!r} is not defined for this data; it has {sorted(self.splits)}"
            )
        mask = self.splits[benchmark]
        return self.take(mask), self.take(~mask)
