"""Batch iteration for training: whole batches gathered with one fancy index, no per-sample Python.

The order is a pure function of (seed, epoch): every rank draws the same permutation and keeps
every ``world_size``-th index from ``rank`` on (the ``DistributedSampler`` partition), so ranks see
disjoint samples and a run can resume at any (epoch, batch). A background thread gathers the next
``prefetch`` batches (into pinned memory when a GPU is present) while the caller computes; the copy
to ``device`` is asynchronous from pinned memory.

Every gathered batch is checked for NaN and Inf: memory-mapped datasets are not scanned when loaded
(a full pass over many GB), so a bad sample is caught here, named with its file and row, rather than
as non-finite features or a NaN loss many steps later.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator

import numpy as np
import torch

from .dataset import SkeletonArrays
from .rows import LazyRows, RowSubset, row_origin

__all__ = ["BatchLoader"]

_DONE = object()


class BatchLoader:
    """Iterate ``(x, y, lengths)`` batches: float32 (B, 3, T, V, M), int64 (B,), int64 (B,)."""

    def __init__(self, data: SkeletonArrays, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, rank: int = 0, world_size: int = 1, device=None, pin_memory: bool = True,
                 prefetch: int = 2):
        if not isinstance(data, SkeletonArrays):
            raise ValueError(f"data must be a SkeletonArrays, got {type(data).__name__}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if prefetch < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.data = data
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device) if device is not None else None
        # pinning needs an accelerator; without one, plain memory is the same thing
        self.pin_memory = pin_memory and torch.cuda.is_available()
        self.prefetch = prefetch
        self.torch_gather = False  # gather with torch even without a GPU (tests, benchmarks)
        self.epoch = 0
        self._start_batch = 0  # set by load_state_dict: where the next __iter__ resumes
        self._next_batch = 0  # batches of the current epoch already handed out
        n = len(data)
        if data.length is not None:
            self._lengths = np.asarray(data.length, dtype=np.int64)
        else:
            self._lengths = np.full(n, data.x.shape[2], dtype=np.int64)
        # the per-rank sample count, as DistributedSampler computes it
        if drop_last and n % world_size:
            self._per_rank = n // world_size
        else:
            self._per_rank = -(-n // world_size)
        if self._per_rank == 0 or (drop_last and self._per_rank < self.batch_size):
            raise ValueError(f"data has {n} samples: too few for batch_size={batch_size} on "
                             f"world_size={world_size} with drop_last={drop_last}")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._start_batch = 0
        self._next_batch = 0

    def __len__(self) -> int:
        if self.drop_last:
            return self._per_rank // self.batch_size
        return -(-self._per_rank // self.batch_size)

    def indices(self, epoch: int) -> np.ndarray:
        """This rank's sample indices for ``epoch``, in order."""
        n = len(self.data)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        else:
            order = np.arange(n)
        total = self._per_rank * self.world_size
        if total > n:  # pad by wrapping around, as DistributedSampler does
            order = np.concatenate([order, np.resize(order, total - n)])
        order = order[:total]
        return order[self.rank :: self.world_size]

    def batch_indices(self, epoch: int) -> list[np.ndarray]:
        idx = self.indices(epoch)
        return [idx[s : s + self.batch_size] for s in range(0, len(self) * self.batch_size, self.batch_size)]

    def state_dict(self) -> dict:
        """Where iteration stands: resuming from it repeats no batch and skips none."""
        return {"epoch": self.epoch, "batch": self._next_batch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(f"state was saved with seed {state['seed']}, this loader has seed {self.seed}")
        self.epoch = int(state["epoch"])
        self._start_batch = int(state["batch"])
        self._next_batch = self._start_batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        start, self._start_batch = self._start_batch, 0
        return self.iter_from(self.epoch, start)

    def iter_from(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, ...]]:
        """Batches ``start_batch, start_batch + 1, ...`` of ``epoch``."""
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self.epoch = int(epoch)
        self._next_batch = start_batch
        batches = self.batch_indices(epoch)[start_batch:]
        if self.prefetch == 0:
            for idx in batches:
                batch = self._to_device(self._gather(idx))
                self._next_batch += 1  # counted when handed out: a checkpoint taken now resumes after it
                yield batch
            return
        q: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def hand_over(item) -> bool:
            """Put ``item`` on the queue unless the consumer has gone; False once it has."""
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            # Every put, the end marker and errors included, gives up once the consumer stops,
            # so closing the iterator early never leaves this thread blocked on a full queue.
            try:
                for idx in batches:
                    if not hand_over(self._gather(idx)):
                        return
                hand_over(_DONE)
            except BaseException as e:  # handed to the consumer, which re-raises it
                hand_over(e)

        worker = threading.Thread(target=produce, name="skelcl-batch-loader", daemon=True)
        worker.start()
        try:
            while True:
                item = q.get()
                if item is _DONE:
                    break
                if isinstance(item, BaseException):
                    raise item
                batch = self._to_device(item)
                self._next_batch += 1
                yield batch
        finally:
            stop.set()
            worker.join()

    def _source(self) -> tuple[torch.Tensor, np.ndarray | None] | None:
        """(rows, row map): ``data.x``'s rows as a tensor sharing their memory, and for a ``RowSubset``
        which of them the subset's row i is; when the rows are a float32 C-contiguous NumPy array or
        memory map. None otherwise (other types, subclasses that may index their own way included)."""
        if not hasattr(self, "_x_tensor"):
            x, row_map = self.data.x, None
            if isinstance(x, RowSubset):
                x, row_map = x.base, x.index
            source = None
            if type(x) in (np.ndarray, np.memmap) and x.dtype == np.float32 and x.flags.c_contiguous:
                with warnings.catch_warnings():  # a read-only memory map: it is only ever read
                    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                    source = (torch.from_numpy(x), row_map)
            self._x_tensor = source
        return self._x_tensor

    def _gather(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = (len(idx),) + tuple(self.data.x.shape[1:])
        x = torch.empty(shape, dtype=torch.float32, pin_memory=self.pin_memory)
        # With a GPU to feed, the host's cores are free: torch gathers the rows in one copy straight
        # into the pinned batch, over its threads (2.1-2.4x NumPy's two copies here for T = 300
        # batches). Training on the CPU keeps NumPy's single thread beside the compute: two OpenMP
        # teams at once would oversubscribe the cores.
        source = self._source() if self.pin_memory or self.torch_gather else None
        if source is not None:
            rows, row_map = source
            picked = idx if row_map is None else row_map[idx]
            torch.index_select(rows, 0, torch.from_numpy(np.ascontiguousarray(picked, dtype=np.int64)), out=x)
        elif isinstance(self.data.x, LazyRows):  # built row by row straight into the batch
            self.data.x.read_into(np.asarray(idx, dtype=np.int64), x.numpy())
        else:
            # sorted reads are sequential on a memory map; the inverse permutation restores the order
            order = np.argsort(idx, kind="stable")
            x.numpy()[order] = self.data.x[idx[order]]
        self._check_finite(x, idx)
        y = torch.from_numpy(np.ascontiguousarray(self.data.y[idx], dtype=np.int64))
        lengths = torch.from_numpy(self._lengths[idx])
        return x, y, lengths

    def _check_finite(self, x: torch.Tensor, idx: np.ndarray) -> None:
        """A ValueError naming the batch's samples that hold NaN or Inf (file, row, name)."""
        values = x.numpy()  # NumPy's single thread: no OpenMP team beside the training step's
        if np.isfinite(values).all():
            return
        bad = np.flatnonzero(~np.isfinite(values.reshape(len(idx), -1)).all(axis=1))
        raise ValueError(f"NaN or Inf in the coordinates of {self._describe(int(idx[bad[0]]))} ({len(bad)} "
                         f"of the {len(idx)} samples gathered in this batch); fix or drop them at the source")

    def _describe(self, i: int) -> str:
        """Sample ``i`` of the data as a user can find it: its name and the file row it is read from."""
        path, row = row_origin(self.data.x, i)
        where = f"row {row} of {path!r}" if path else f"row {row} of the loaded data"
        name = self.data.name[i] if self.data.name is not None else None
        return f"sample {str(name)!r} ({where})" if name is not None else f"the sample at {where}"

    def _to_device(self, batch):
        if self.device is None:
            return batch
        return tuple(t.to(self.device, non_blocking=self.pin_memory) for t in batch)
