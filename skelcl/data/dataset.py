"""The in-memory (or memory-mapped) form every data source is loaded into."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

__all__ = ["SkeletonArrays", "RowSubset", "RowConcat"]


class RowConcat:
    """Arrays of equal row shape stacked along rows without a copy (ST-GCN's train and val files,
    memory-mapped): ``concat[i]`` reads the row from the part that holds it."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = list(parts)
        shapes = {tuple(p.shape[1:]) for p in self.parts}
        dtypes = {p.dtype for p in self.parts}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise ValueError(f"parts must share row shape and dtype, got {sorted(shapes)} and "
                             f"{sorted(map(str, dtypes))}")
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.starts[-1]),) + shapes.pop()
        self.dtype = dtypes.pop()
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, item):
        rows, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
        picked = np.arange(len(self))[rows]
        if np.ndim(picked) == 0:
            part = int(np.searchsorted(self.starts, picked, side="right")) - 1
            out = self.parts[part][int(picked - self.starts[part])]
            return out[rest] if rest else out
        out = np.empty((len(picked),) + self.shape[1:], dtype=self.dtype)
        which = np.searchsorted(self.starts, picked, side="right") - 1
        for part in np.unique(which):
            here = which == part
            out[here] = self.parts[part][picked[here] - self.starts[part]]
        return out[(slice(None),) + rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate(self.parts)
        return out if dtype is None else out.astype(dtype, copy=False)


class RowSubset:
    """Rows ``index`` of a (memory-mapped) array, read only when indexed: ``subset[i]`` is
    ``base[index[i]]``. What ``SkeletonArrays.take`` gives for memory-mapped data, so that splitting a
    dataset larger than memory into train and test copies nothing."""

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)
        self.shape = (len(self.index),) + tuple(base.shape[1:])
        self.dtype = base.dtype
        self.ndim = base.ndim

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __getitem__(self, item):
        rows, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
        picked = self.index[rows]
        out = self.base[picked]
        if not rest:
            return out
        # a single row drops the row axis; a slice or an array of rows keeps it
        return out[rest if np.ndim(picked) == 0 else (slice(None),) + rest]

    @classmethod
    def of(cls, base, index) -> RowSubset:
        """Rows ``index`` of ``base``, with the simplest base: a subset of a subset takes the inner
        base, and rows that all lie in one part of a RowConcat take that part (ST-GCN's train or val
        file: the loader then gathers from one memory map, with torch)."""
        index = np.asarray(index, dtype=np.int64)
        if isinstance(base, RowSubset):
            return cls.of(base.base, base.index[index])
        if isinstance(base, RowConcat) and len(index):
            part = np.searchsorted(base.starts, index, side="right") - 1
            if part.min() == part.max():
                return cls(base.parts[int(part[0])], index - base.starts[int(part[0])])
        return cls(base, index)

    def take(self, index) -> RowSubset:
        return RowSubset.of(self.base, self.index[index])

    def __array__(self, dtype=None, copy=None):
        out = self.base[self.index]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"RowSubset({len(self)} of {len(self.base)} rows of a {type(self.base).__name__})"


@dataclass
class SkeletonArrays:
    """A labelled set of skeleton sequences.

    x:        (N, 3, T, V, M) float32; may be a np.memmap, a RowConcat of memory maps or a RowSubset
              of either, which are read when indexed; absent (frame, person) slots are zero.
    y:        (N,) int64 class labels in [0, num_classes).
    layout:   joint-graph name understood by ``skelcl.layouts`` ("ntu25", "kinect20", "coco17").
    splits:   benchmark name -> (N,) bool array, True for training samples ("xsub", "xview",
              "xsub60", "xview60", "xsub120", "xset120", or "given" for a user-supplied split).
    The optional per-sample arrays are None when a source does not carry them.
    """

    x: np.ndarray | RowSubset | RowConcat
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
            if f.name == "x" and isinstance(value, (np.ndarray, RowConcat, RowSubset)):
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
