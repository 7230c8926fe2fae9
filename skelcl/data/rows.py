"""Lazy stand-ins for a dataset's x (N, 3, T, V, M): rows read, or built, when they are indexed.

Splitting a dataset, joining files and padding sequences of different lengths would otherwise copy
every sequence, which for NTU-sized data at 300 frames is 10-20 GB. Each class here indexes like the
array it stands for (a row, a slice, index or mask arrays, then trailing indices) and turns into that
array with ``np.asarray``.

- ``RowSubset(base, index)``: rows ``index`` of ``base`` (what ``SkeletonArrays.take`` gives);
- ``RowConcat(parts)``: arrays stacked along rows (ST-GCN's train and val files, memory-mapped);
- ``PaddedRows(keypoints, frames)``: pyskl-style keypoints (M, T, V, C) of any length, laid out and
  zero-padded to (3, frames, V, 2) row by row.

``row_origin(x, i)`` says where row ``i`` of any of them comes from (a file and its row), for errors.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LazyRows", "RowSubset", "RowConcat", "PaddedRows", "row_origin"]


class LazyRows:
    """Common part: ``shape``, ``dtype``, ``ndim``, ``len()``, ``nbytes``, indexing through
    ``_rows(picked)`` (a 1-D array of row numbers -> those rows), and ``np.asarray``."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def copy(self) -> np.ndarray:
        """Every row, as one array."""
        return np.asarray(self)

    def astype(self, dtype) -> np.ndarray:
        return np.asarray(self).astype(dtype, copy=False)

    def _rows(self, picked: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def read_into(self, picked: np.ndarray, out: np.ndarray) -> None:
        """Rows ``picked`` (row numbers) written into ``out`` (a batch being gathered)."""
        out[...] = self._rows(picked)

    def __getitem__(self, item):
        rows, rest = (item[0], item[1:]) if isinstance(item, tuple) else (item, ())
        if rows is Ellipsis:  # x[..., k]: every row, and the Ellipsis still spans the middle axes
            rows, rest = slice(None), (Ellipsis,) + rest
        elif rows is None:
            raise IndexError(f"{type(self).__name__} does not take np.newaxis before the row index")
        picked = np.arange(len(self))[rows]
        if np.ndim(picked) == 0:  # a single row drops the row axis
            out = self._rows(picked.reshape(1))[0]
            return out[rest] if rest else out
        out = self._rows(picked)
        return out[(slice(None),) + rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self._rows(np.arange(len(self)))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype})"


class RowConcat(LazyRows):
    """Arrays of equal row shape stacked along rows without a copy: ``concat[i]`` reads the row
    from the part that holds it."""

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

    def _rows(self, picked: np.ndarray) -> np.ndarray:
        out = np.empty((len(picked),) + self.shape[1:], dtype=self.dtype)
        which = np.searchsorted(self.starts, picked, side="right") - 1
        for part in np.unique(which):
            here = which == part
            out[here] = self.parts[part][picked[here] - self.starts[part]]
        return out


class RowSubset(LazyRows):
    """Rows ``index`` of ``base`` (an array, a memory map or another lazy view), read when indexed:
    ``subset[i]`` is ``base[index[i]]``."""

    def __init__(self, base, index):
        self.base = base
        self.index = np.asarray(index, dtype=np.int64)
        self.shape = (len(self.index),) + tuple(base.shape[1:])
        self.dtype = base.dtype

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

    def _rows(self, picked: np.ndarray) -> np.ndarray:
        return np.asarray(self.base[self.index[picked]])

    def read_into(self, picked: np.ndarray, out: np.ndarray) -> None:
        if isinstance(self.base, LazyRows):  # e.g. PaddedRows: built straight into ``out``
            self.base.read_into(self.index[picked], out)
        else:
            super().read_into(picked, out)


class PaddedRows(LazyRows):
    """pyskl's keypoints (M, T_i, V, C), C = 2 or 3, of any length, read as (3, frames, V, persons)
    float32 rows: coordinates first and persons last; persons beyond ``persons`` dropped; a missing
    person, frame or third coordinate zero. Only the keypoints are held, not a padded copy."""

    def __init__(self, keypoints: list[np.ndarray], frames: int, persons: int = 2):
        if not keypoints:
            raise ValueError("PaddedRows needs at least one sequence")
        joints = {kp.shape[2] for kp in keypoints}
        fits = all(kp.ndim == 4 and kp.shape[1] <= frames and kp.shape[3] <= 3 for kp in keypoints)
        if len(joints) != 1 or not fits:
            raise ValueError(f"keypoints must be (M, T_i <= {frames}, V, C <= 3) with one V, got joint "
                             f"counts {sorted(joints)}")
        self.keypoints = keypoints
        self.persons = persons
        self.shape = (len(keypoints), 3, frames, joints.pop(), persons)
        self.dtype = np.dtype(np.float32)

    def _rows(self, picked: np.ndarray) -> np.ndarray:
        out = np.empty((len(picked),) + self.shape[1:], dtype=np.float32)
        self.read_into(picked, out)
        return out

    def read_into(self, picked: np.ndarray, out: np.ndarray) -> None:
        out.fill(0)  # one pass over the batch; then each sequence's own values
        for row, i in zip(out, picked):
            kp = self.keypoints[i][: self.persons]
            row[: kp.shape[3], : kp.shape[1], :, : kp.shape[0]] = kp.transpose(3, 1, 2, 0)


def row_origin(x, i: int) -> tuple[str | None, int]:
    """(file, row in it) that row ``i`` of ``x`` is read from, followed through RowSubset and
    RowConcat: what an error about a bad row can name. The file is None for rows held in memory
    (the row is then the one of the innermost array)."""
    i = int(i)
    while isinstance(x, (RowSubset, RowConcat)):
        if isinstance(x, RowSubset):
            x, i = x.base, int(x.index[i])
        else:
            part = int(np.searchsorted(x.starts, i, side="right") - 1)
            x, i = x.parts[part], i - int(x.starts[part])
    return (x.filename if isinstance(x, np.memmap) else None), i
