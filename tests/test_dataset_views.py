"""RowSubset and RowConcat: lazy views of x that splitting and two-file datasets use instead of copies.

Every way the code indexes x (a row, a slice, index and mask arrays, with trailing indices) must
give what the same index gives on the materialised array; the loader must gather the same batches.
"""

from __future__ import annotations

import numpy as np
import pytest

from skelcl.data import PaddedRows, RowConcat, RowSubset, SkeletonArrays
from skelcl.data.loader import BatchLoader

ITEMS = [0, -1, slice(1, 4), slice(None, None, 2), np.array([4, 0, 2]), np.array([3]),
         (2, 1), (slice(0, 3), 0, slice(1, 3)), (np.array([1, 0]), slice(None), 2), (-2, slice(None), 0, 1),
         Ellipsis, (Ellipsis, 0), (1, Ellipsis, 1), (slice(1, 3), Ellipsis)]


def _rows(n, rng, t=4):
    return rng.normal(size=(n, 3, t, 5, 2)).astype(np.float32)


def _memmap(tmp_path, name, a):
    np.save(tmp_path / name, a)
    return np.load(tmp_path / name, mmap_mode="r")


@pytest.mark.parametrize("item", ITEMS, ids=repr)
def test_padded_rows_index_like_the_padded_array(item):
    """pyskl keypoints (M, T, V, C) of different lengths, persons and channels, laid out on read."""
    rng = np.random.default_rng(5)
    shapes = [(1, 3, 5, 3), (2, 4, 5, 3), (3, 2, 5, 2), (2, 1, 5, 3), (1, 4, 5, 2)]
    items = [rng.normal(size=s).astype(np.float32) for s in shapes]
    padded = np.zeros((5, 3, 4, 5, 2), np.float32)
    for i, kp in enumerate(items):
        kp = kp[:2]  # persons beyond the second are dropped
        padded[i, : kp.shape[3], : kp.shape[1], :, : kp.shape[0]] = kp.transpose(3, 1, 2, 0)
    rows = PaddedRows(items, frames=4)
    assert rows.shape == padded.shape and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[item], padded[item])
    np.testing.assert_array_equal(RowSubset(rows, [4, 1, 3, 0, 2])[item], padded[[4, 1, 3, 0, 2]][item])
    np.testing.assert_array_equal(np.asarray(rows), padded)
    np.testing.assert_array_equal(rows.copy(), padded)
    assert rows.astype(np.float64).dtype == np.float64 and rows.size == padded.size


@pytest.mark.parametrize("item", ITEMS, ids=repr)
def test_row_subset_and_concat_index_like_the_arrays_they_stand_for(tmp_path, item):
    rng = np.random.default_rng(0)
    a, b = _rows(4, rng), _rows(3, rng)
    concat = RowConcat([_memmap(tmp_path, "a.npy", a), _memmap(tmp_path, "b.npy", b)])
    whole = np.concatenate([a, b])
    np.testing.assert_array_equal(concat[item], whole[item])
    index = np.array([6, 1, 4, 0, 3])
    subset = RowSubset(concat, index)
    np.testing.assert_array_equal(subset[item], whole[index][item])
    mask = np.array([True, False, True, True, False])
    np.testing.assert_array_equal(subset[mask], whole[index][mask])


def test_views_report_shape_and_materialise(tmp_path):
    rng = np.random.default_rng(1)
    a, b = _rows(4, rng), _rows(3, rng)
    concat = RowConcat([_memmap(tmp_path, "a.npy", a), _memmap(tmp_path, "b.npy", b)])
    assert concat.shape == (7, 3, 4, 5, 2) and len(concat) == 7 and concat.ndim == 5
    np.testing.assert_array_equal(np.asarray(concat), np.concatenate([a, b]))
    subset = RowSubset(concat, [5, 2]).take(np.array([1]))  # a subset of a subset: indices compose
    assert subset.shape == (1, 3, 4, 5, 2) and subset.base is concat.parts[0]  # row 2 is in part a
    np.testing.assert_array_equal(np.asarray(subset), a[[2]])
    with pytest.raises(ValueError, match="row shape"):
        RowConcat([a, _rows(2, rng, t=5)])


def test_splitting_copies_no_sequence_and_keeps_memory_maps(tmp_path):
    rng = np.random.default_rng(2)
    x = _memmap(tmp_path, "x.npy", _rows(10, rng))
    data = SkeletonArrays(x=x, y=np.arange(10) % 3, length=np.full(10, 4),
                          splits={"b": np.arange(10) % 2 == 0})
    train, test = data.train_test("b")
    assert isinstance(train.x, RowSubset) and train.x.base is x and len(train) == 5
    np.testing.assert_array_equal(np.asarray(test.x), np.asarray(x)[1::2])
    assert train.y.tolist() == [0, 2, 1, 0, 2]


@pytest.mark.parametrize("gather", ["numpy", "torch"])
def test_loader_gathers_the_same_batches_from_views(tmp_path, gather):
    rng = np.random.default_rng(3)
    a, b = _rows(9, rng), _rows(8, rng)
    whole = np.concatenate([a, b])
    lazy = SkeletonArrays(x=RowConcat([_memmap(tmp_path, "a.npy", a), _memmap(tmp_path, "b.npy", b)]),
                          y=np.arange(17) % 4, splits={"s": np.arange(17) % 3 != 0})
    eager = SkeletonArrays(x=whole, y=np.arange(17) % 4, splits={"s": np.arange(17) % 3 != 0})
    for lazy_part, eager_part in zip(lazy.train_test("s"), eager.train_test("s")):
        for part in (lazy_part, eager_part):
            assert isinstance(part.x, RowSubset)
        got = BatchLoader(lazy_part, 3, seed=1, drop_last=False)
        want = BatchLoader(SkeletonArrays(x=np.asarray(eager_part.x), y=eager_part.y), 3, seed=1,
                           drop_last=False)
        got.torch_gather = want.torch_gather = gather == "torch"
        for (xg, yg, _), (xw, yw, _) in zip(got, want, strict=True):
            np.testing.assert_array_equal(xg.numpy(), xw.numpy())
            np.testing.assert_array_equal(yg.numpy(), yw.numpy())


def test_stgcn_train_and_val_files_stay_memory_mapped(tmp_path):
    import pickle

    from skelcl.data import load_dataset

    rng = np.random.default_rng(4)
    parts = {"train": _rows(3, rng), "val": _rows(2, rng)}
    for part, x in parts.items():
        x = np.pad(x, ((0, 0), (0, 0), (0, 0), (0, 20), (0, 0)))  # 25 joints
        parts[part] = x
        np.save(tmp_path / f"{part}_data_joint.npy", x)
        names = [f"S001C001P00{i + 1}R001A00{i + 1}.skeleton" for i in range(len(x))]
        with open(tmp_path / f"{part}_label.pkl", "wb") as f:
            pickle.dump((names, list(range(len(x)))), f)
    d = load_dataset(tmp_path)
    assert isinstance(d.x, RowConcat) and all(isinstance(p, np.memmap) for p in d.x.parts)
    np.testing.assert_array_equal(np.asarray(d.x), np.concatenate([parts["train"], parts["val"]]))
    train, test = d.train_test("given")
    np.testing.assert_array_equal(np.asarray(test.x), parts["val"])
    # each split lies in one file: its rows come straight from that memory map (torch's gather)
    assert test.x.base is d.x.parts[1] and test.x.index.tolist() == [0, 1]
    assert train.x.base is d.x.parts[0]
    mixed = d.take(np.array([4, 0]))
    assert mixed.x.base is d.x and mixed.x.index.tolist() == [4, 0]


def test_padded_rows_refuse_mismatched_sequences():
    with pytest.raises(ValueError, match="one V"):
        PaddedRows([np.zeros((1, 2, 5, 3), np.float32), np.zeros((1, 2, 4, 3), np.float32)], frames=4)
    with pytest.raises(ValueError, match="T_i <= 3"):
        PaddedRows([np.zeros((1, 4, 5, 3), np.float32)], frames=3)
