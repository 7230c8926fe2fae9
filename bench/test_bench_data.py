"""CPU benchmarks of the data path: raw .skeleton parsing, prepare-ntu, batch gathering, temporal sampling.

    PYTHONPATH=. pytest bench/test_bench_data.py --benchmark-only

Input files are generated in the NTU format at NTU's typical size (about 100 frames, one or two
bodies; the real dataset averages about 70 frames per file). Throughput (files/s, samples/s) is
recorded in each benchmark's ``extra_info``. NTU-60 has 56,880 files: at F files/s one process
prepares it in 56,880 / F seconds.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from skelcl.data import SkeletonArrays
from skelcl.data.loader import BatchLoader
from skelcl.data.ntu import NUM_JOINTS, format_skeleton, make_body, read_skeleton
from skelcl.data.prepare import prepare_ntu
from skelcl.data.temporal import sample_frames

NUM_FILES = 40


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ntu_raw")
    rng = np.random.default_rng(0)
    for k in range(NUM_FILES):
        frames = np.arange(int(rng.integers(80, 121)))
        bodies = [make_body(72057594037931101 + m, frames,
                            rng.normal(size=(len(frames), NUM_JOINTS, 3)) * [0.2, 0.6, 0.1] + [m, 0, 3], rng)
                  for m in range(1 + k % 2)]
        name = f"S001C{1 + k % 3:03d}P{1 + k % 40:03d}R001A{1 + k % 60:03d}"
        with open(folder / f"{name}.skeleton", "w", newline="") as f:
            f.write(format_skeleton(len(frames), bodies))
    return folder


def test_parse_skeleton_files(benchmark, raw_dir):
    paths = sorted(str(raw_dir / p) for p in os.listdir(raw_dir))

    def parse_all():
        return [read_skeleton(p) for p in paths]

    out = benchmark(parse_all)
    assert len(out) == NUM_FILES
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["files_per_s"] = NUM_FILES / benchmark.stats.stats.mean


@pytest.mark.parametrize("workers", [1, 2])
def test_prepare_ntu(benchmark, raw_dir, tmp_path, workers):
    counter = iter(range(10**6))

    def run():  # a fresh output folder each round, so that nothing is resumed
        out = tmp_path / f"out{next(counter)}"
        return prepare_ntu(raw_dir, out, "xsub60", workers=workers, progress=False)

    summary = benchmark.pedantic(run, rounds=3, iterations=1)
    assert summary.num_samples == NUM_FILES
    if benchmark.stats:  # None under --benchmark-disable
        benchmark.extra_info["files_per_s"] = NUM_FILES / benchmark.stats.stats.mean


@pytest.fixture(scope="module")
def memmapped(tmp_path_factory):
    n, t = 2048, 300
    path = tmp_path_factory.mktemp("mm") / "x.npy"
    x = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 3, t, NUM_JOINTS, 2))
    x[:] = np.random.default_rng(0).normal(size=(1, 3, t, NUM_JOINTS, 2)).astype(np.float32)
    x.flush()
    return SkeletonArrays(x=np.load(path, mmap_mode="r"), y=np.zeros(n, np.int64), length=np.full(n, t))


@pytest.mark.parametrize("gather", ["numpy", "torch"])
def test_batch_loader_epoch(benchmark, memmapped, gather):
    """One epoch of T = 300 batches from a memory map: NumPy's fancy index (CPU training) against
    torch's threaded row gather (what the loader does when it feeds a GPU)."""
    loader = BatchLoader(memmapped, 256, seed=0)
    loader.torch_gather = gather == "torch"

    def epoch():
        return sum(len(b[1]) for b in loader)

    seen = benchmark(epoch)
    if benchmark.stats:
        benchmark.extra_info["samples_per_s"] = seen / benchmark.stats.stats.mean


@pytest.fixture(scope="module")
def pyskl_like():
    """2,048 pyskl-style sequences of 40-300 frames, one or two persons: the keypoints as held."""
    rng = np.random.default_rng(1)
    return [rng.normal(size=(1 + (i % 3 == 0), int(rng.integers(40, 301)), NUM_JOINTS, 3)).astype(np.float32)
            for i in range(2048)]


@pytest.mark.parametrize("held", ["keypoints", "padded"])
def test_batch_loader_epoch_pyskl(benchmark, pyskl_like, held):
    """pyskl data: keypoints laid out into each batch as it is gathered (PaddedRows, what the loader
    uses: no padded copy in memory) against a padded (N, 3, 300, V, 2) array gathered by torch."""
    from skelcl.data import PaddedRows

    rows = PaddedRows(pyskl_like, 300)
    x = rows if held == "keypoints" else np.asarray(rows)
    data = SkeletonArrays(x=x, y=np.zeros(len(pyskl_like), np.int64))
    loader = BatchLoader(data, 256, seed=0)
    loader.torch_gather = True  # as when feeding a GPU

    def epoch():
        return sum(len(b[1]) for b in loader)

    seen = benchmark(epoch)
    if benchmark.stats:
        benchmark.extra_info["samples_per_s"] = seen / benchmark.stats.stats.mean


def test_sample_frames_batch(benchmark):
    x = torch.randn(256, 3, 300, NUM_JOINTS, 2)
    length = torch.randint(50, 301, (256,))
    gen = torch.Generator().manual_seed(0)
    out = benchmark(sample_frames, x, length, 50, generator=gen)
    assert out.shape == (256, 3, 50, NUM_JOINTS, 2)
