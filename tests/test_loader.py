"""BatchLoader: contents, order, exact resume, rank partition, prefetch thread behaviour."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pytest
import torch

from skelcl.data import SkeletonArrays
from skelcl.data.loader import BatchLoader


def _data(n=23, t=4, memmap_dir=None):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3, t, 5, 2)).astype(np.float32)
    if memmap_dir is not None:
        path = memmap_dir / "x.npy"
        np.save(path, x)
        x = np.load(path, mmap_mode="r")
    return SkeletonArrays(x=x, y=rng.integers(0, 7, n), length=rng.integers(1, t + 1, n))


@pytest.mark.parametrize("source", ["memmap", "array", "float64", "fortran"])
def test_every_kind_of_x_gives_the_same_batches(tmp_path, source):
    """Float32 C-contiguous arrays and read-only memory maps are gathered by torch (one copy, no
    warning about the read-only map); other dtypes and layouts by NumPy: the same batches."""
    data = _data(memmap_dir=tmp_path if source == "memmap" else None)
    want = np.asarray(data.x)
    if source == "float64":
        data.x = want.astype(np.float64)
    elif source == "fortran":
        data.x = np.asfortranarray(want)
    loader = BatchLoader(data, 5, seed=3)
    loader.torch_gather = True  # as with a GPU to feed
    assert (loader._source() is not None) == (source in ("memmap", "array"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches = list(loader)
    for (x, _, _), idx in zip(batches, loader.batch_indices(0)):
        np.testing.assert_array_equal(x.numpy(), want[idx])


@pytest.mark.parametrize("prefetch", [0, 2])
def test_batches_hold_the_indexed_samples(tmp_path, prefetch):
    data = _data(memmap_dir=tmp_path)
    loader = BatchLoader(data, 5, seed=3, prefetch=prefetch)
    assert len(loader) == 4
    batches = list(loader)
    expected = loader.batch_indices(0)
    assert len(batches) == 4
    for (x, y, lengths), idx in zip(batches, expected):
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and lengths.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), np.asarray(data.x)[idx])
        np.testing.assert_array_equal(y.numpy(), data.y[idx])
        np.testing.assert_array_equal(lengths.numpy(), data.length[idx])
    seen = np.concatenate(expected)
    assert len(np.unique(seen)) == 20  # a permutation, the last 3 dropped


def test_order_depends_on_seed_and_epoch_only():
    data = _data()
    a = BatchLoader(data, 4, seed=1)
    b = BatchLoader(data, 4, seed=1, prefetch=0)
    np.testing.assert_array_equal(a.indices(3), b.indices(3))
    assert not np.array_equal(a.indices(0), a.indices(1))
    assert not np.array_equal(a.indices(0), BatchLoader(data, 4, seed=2).indices(0))
    plain = BatchLoader(data, 4, shuffle=False)
    np.testing.assert_array_equal(plain.indices(5), np.arange(23))  # the sampler order; batching drops 3


def test_no_drop_last_covers_everything():
    loader = BatchLoader(_data(), 5, drop_last=False, shuffle=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 5 and len(batches[-1][0]) == 3
    assert torch.cat([b[1] for b in batches]).tolist() == _data().y.tolist()


def test_exact_resume():
    data = _data()
    loader = BatchLoader(data, 3, seed=9)
    loader.set_epoch(2)
    full = [b[1].tolist() for b in loader]
    loader.set_epoch(2)
    it = iter(loader)
    head = [next(it)[1].tolist() for _ in range(3)]
    state = loader.state_dict()
    it.close()  # stops the prefetch thread
    assert state == {"epoch": 2, "batch": 3, "seed": 9}
    fresh = BatchLoader(data, 3, seed=9)
    fresh.load_state_dict(state)
    tail = [b[1].tolist() for b in fresh]
    assert head + tail == full
    assert [b[1].tolist() for b in fresh.iter_from(2, 5)] == full[5:]
    with pytest.raises(ValueError, match="seed"):
        BatchLoader(data, 3, seed=1).load_state_dict(state)


@pytest.mark.parametrize("drop_last", [True, False])
def test_rank_partition(drop_last):
    data = _data(n=23)
    world = 3
    loaders = [BatchLoader(data, 2, seed=4, rank=r, world_size=world, drop_last=drop_last)
               for r in range(world)]
    assert len({len(ld) for ld in loaders}) == 1
    parts = [ld.indices(1) for ld in loaders]
    assert len({len(p) for p in parts}) == 1
    flat = np.concatenate(parts)
    if drop_last:  # 21 distinct samples, none on two ranks
        assert len(flat) == 21 and len(np.unique(flat)) == 21
    else:  # padded to 24 by wrapping, every sample present
        assert len(flat) == 24 and set(flat.tolist()) == set(range(23))
    # unshuffled, the partition is exactly torch's DistributedSampler's
    from torch.utils.data.distributed import DistributedSampler

    for r in range(world):
        ours = BatchLoader(data, 2, shuffle=False, rank=r, world_size=world, drop_last=drop_last).indices(0)
        theirs = DistributedSampler(range(23), num_replicas=world, rank=r, shuffle=False, drop_last=drop_last)
        assert ours.tolist() == list(theirs)


def test_early_break_stops_the_thread():
    loader = BatchLoader(_data(n=200), 2, prefetch=1)
    before = threading.active_count()
    for i, _ in enumerate(loader):
        if i == 1:
            break
    assert threading.active_count() == before


def test_closing_with_the_queue_full_at_the_end_does_not_hang():
    # 4 batches, prefetch 2: after 2 are taken the producer fills the queue with the last two and
    # then waits to hand over the end marker; closing the iterator must still stop it.
    loader = BatchLoader(_data(n=8), 2, shuffle=False, prefetch=2)
    it = iter(loader)
    next(it), next(it)
    time.sleep(0.3)  # let the producer reach the end marker
    closer = threading.Thread(target=it.close, daemon=True)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "closing the loader hung on the producer thread"


def test_producer_errors_reach_the_caller():
    class Broken(np.ndarray):
        def __getitem__(self, item):
            raise RuntimeError("disk gone")

    data = _data()
    data.x = data.x.view(Broken)
    with pytest.raises(RuntimeError, match="disk gone"):
        list(BatchLoader(data, 4))


def test_device_argument_and_bad_arguments():
    x, y, lengths = next(iter(BatchLoader(_data(), 4, device="cpu")))
    assert x.device.type == "cpu" and x.shape == (4, 3, 4, 5, 2)
    with pytest.raises(ValueError, match="batch_size"):
        BatchLoader(_data(), 0)
    with pytest.raises(ValueError, match="rank"):
        BatchLoader(_data(), 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="too few"):
        BatchLoader(_data(n=5), 8)
    with pytest.raises(ValueError, match="start_batch"):
        next(BatchLoader(_data(), 4).iter_from(0, 99))


def test_missing_lengths_default_to_t():
    data = _data()
    data.length = None
    _, _, lengths = next(iter(BatchLoader(data, 4)))
    assert lengths.tolist() == [4, 4, 4, 4]
