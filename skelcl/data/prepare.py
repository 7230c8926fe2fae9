"""``prepare-ntu``: raw NTU RGB+D ``.skeleton`` files -> a memory-mappable skelcl dataset.

Output directory (loaded by ``skelcl.data.load_dataset(out_dir)``):

- ``x.npy``      float32 (N, 3, T_max, 25, 2), absent (frame, person) slots exactly zero;
- ``y.npy``      int64 (N,) action label, 0-based (action A001 -> 0);
- ``name.npy``   (N,) sample names ``SsssCcccPpppRrrrAaaa``;
- ``length.npy`` int64 (N,) valid frames (frames after ``length`` are padding);
- ``meta.json``  benchmark, dataset, layout, T_max, counts and every skipped sample with its reason;
- ``parts/``     per-chunk results: a rerun reuses finished chunks (resumable), then re-assembles.

Samples on the published missing-skeleton list (302 for NTU-60, 535 for NTU-120) are skipped. For an
NTU-60 benchmark only setups 1-17 and actions 1-60 are taken from ``--raw``. A malformed file is
reported (path, line, problem) in ``meta.json`` and on stderr, and skipped; it never aborts the run.

Body selection (``select_bodies``), applied per file, in this order:

1. Length rule: a body seen in at most ``MIN_BODY_FRAMES`` (11) frames is noise (a short-lived
   false detection) and is dropped.
2. Spread rule: in a frame, a body whose joints' x-extent exceeds ``SPREAD_RATIO`` (0.8) times
   their y-extent is "flat" (people stand taller than wide; furniture and reflections detected as
   bodies do not). A body flat in at least ``FLAT_FRACTION`` (69.754 %) of its frames is dropped.
   These thresholds are the ones used by the 2s-AGCN / CTR-GCN denoising.
3. If the two rules drop every body, the body seen in the most frames is kept instead, so that a
   sample is never emptied by denoising.
4. Motion rank: motion = sum over joints and axes of the variance over time of the body's xyz,
   computed on its non-flat frames (all frames if none). The two bodies with the largest motion
   are kept; person 0 is the more active one, person 1 the other.
5. Timing: frames before the first and after the last frame holding a kept body are cut; the valid
   length is what remains (capped at ``max_frames``). Frames inside where a person is absent stay
   zero for that person.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from .ntu import NUM_JOINTS, SkeletonFile, read_skeleton
from .splits import (
    NTU60_MAX_SETUP,
    NTU60_NUM_ACTIONS,
    benchmark_dataset,
    is_ntu_name,
    missing_skeleton_samples,
    ntu_split,
    parse_ntu_names,
)

__all__ = [
    "MIN_BODY_FRAMES",
    "SPREAD_RATIO",
    "FLAT_FRACTION",
    "MAX_PERSONS",
    "select_bodies",
    "skeleton_to_array",
    "prepare_ntu",
    "PrepareSummary",
]

MIN_BODY_FRAMES = 11
SPREAD_RATIO = 0.8
FLAT_FRACTION = 0.69754
MAX_PERSONS = 2
CHUNK = 256  # files per resumable part


def _flat_frames(xyz: np.ndarray) -> np.ndarray:
    """(F,) bool: frames in which the body is wider (x) than SPREAD_RATIO times its height (y)."""
    spread = xyz.max(axis=1) - xyz.min(axis=1)  # (F, 3)
    return spread[:, 0] > SPREAD_RATIO * spread[:, 1]


def select_bodies(skel: SkeletonFile) -> list[int]:
    """Indices into ``skel.bodies`` of the kept bodies, person 0 first (see the module docstring)."""
    bodies = skel.bodies
    if not bodies:
        return []
    kept = []
    for i, b in enumerate(bodies):
        if len(b.frames) <= MIN_BODY_FRAMES:
            continue
        if _flat_frames(b.xyz).mean() >= FLAT_FRACTION:
            continue
        kept.append(i)
    if not kept:
        kept = [max(range(len(bodies)), key=lambda i: len(bodies[i].frames))]  # first longest
    motion = {}
    for i in kept:
        xyz = bodies[i].xyz.astype(np.float64)
        flat = _flat_frames(bodies[i].xyz)
        if (~flat).any():
            xyz = xyz[~flat]
        motion[i] = float(xyz.var(axis=0).sum()) if len(xyz) > 1 else 0.0
    # stable: ties keep first-appearance order
    ranked = sorted(kept, key=lambda i: -motion[i])
    return ranked[:MAX_PERSONS]


def skeleton_to_array(skel: SkeletonFile, max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """(3, T, 25, 2) float32 array of the selected bodies and its valid length T."""
    chosen = [skel.bodies[i] for i in select_bodies(skel)]
    if not chosen:
        raise ValueError(f"{skel.path}: no body in any frame")
    first = min(int(b.frames.min()) for b in chosen)
    last = max(int(b.frames.max()) for b in chosen)
    length = last - first + 1
    if max_frames is not None:
        length = min(length, max_frames)
    out = np.zeros((3, length, NUM_JOINTS, MAX_PERSONS), dtype=np.float32)
    for m, b in enumerate(chosen):
        t = b.frames - first
        keep = t < length
        out[..., m][:, t[keep]] = b.xyz[keep].transpose(2, 0, 1)  # (3, F, 25)
    return out, length


def _sample_name(path: str) -> str:
    return os.path.basename(path).split(".")[0]


def _process_chunk(args) -> tuple[str, dict]:
    """Parse one chunk of files into ``parts/part_XXXXX.npz`` (written atomically)."""
    part_path, paths, max_frames = args
    names, arrays, lengths, skipped = [], [], [], []
    for p in paths:
        try:
            skel = read_skeleton(p)
            arr, length = skeleton_to_array(skel, max_frames)
        except ValueError as e:
            skipped.append({"name": _sample_name(p), "path": p, "reason": str(e)})
            continue
        names.append(_sample_name(p))
        arrays.append(arr)
        lengths.append(length)
    t_max = max([a.shape[1] for a in arrays], default=0)
    x = np.zeros((len(arrays), 3, t_max, NUM_JOINTS, MAX_PERSONS), dtype=np.float32)
    for i, a in enumerate(arrays):
        x[i, :, : a.shape[1]] = a
    tmp = part_path + ".tmp.npz"
    np.savez(tmp, x=x, name=np.array(names, dtype="U20"), length=np.array(lengths, dtype=np.int64),
             skipped=np.array(json.dumps(skipped)))
    os.replace(tmp, part_path)
    return part_path, {"done": len(names), "skipped": skipped}


@dataclass
class PrepareSummary:
    out_dir: str
    num_samples: int
    num_skipped_missing: int  # on the published missing-skeleton list
    skipped: list[dict]  # malformed or empty files: name, path, reason
    seconds: float


def _list_raw(raw_dir: str, benchmark: str) -> tuple[list[str], int]:
    if not os.path.isdir(raw_dir):
        raise ValueError(f"raw: {raw_dir!r} is not a directory")
    dataset = benchmark_dataset(benchmark)
    missing = missing_skeleton_samples(dataset)
    paths, n_missing = [], 0
    for entry in sorted(os.listdir(raw_dir)):
        if not entry.endswith(".skeleton"):
            continue
        name = _sample_name(entry)
        if not is_ntu_name(name):
            continue
        if dataset == "ntu60":
            f = parse_ntu_names([name])
            if f["setup"][0] > NTU60_MAX_SETUP or f["action"][0] > NTU60_NUM_ACTIONS:
                continue
        if name in missing:
            n_missing += 1
            continue
        paths.append(os.path.join(raw_dir, entry))
    if not paths:
        raise ValueError(f"raw: {raw_dir!r} holds no NTU .skeleton files for {benchmark}")
    return paths, n_missing


def prepare_ntu(raw_dir, out_dir, benchmark: str, *, workers: int = 1, max_frames: int = 300,
                progress: bool = True) -> PrepareSummary:
    """Convert ``raw_dir``'s .skeleton files to a skelcl dataset in ``out_dir`` (module docstring)."""
    start = time.perf_counter()
    raw_dir, out_dir = os.fspath(raw_dir), os.fspath(out_dir)
    benchmark_dataset(benchmark)  # validates the name
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    paths, n_missing = _list_raw(raw_dir, benchmark)
    parts_dir = os.path.join(out_dir, "parts")
    os.makedirs(parts_dir, exist_ok=True)

    # the chunking is a pure function of the sorted file list, so a rerun finds the same parts
    jobs, part_files = [], []
    for k in range(0, len(paths), CHUNK):
        chunk = paths[k : k + CHUNK]
        # the name hashes the chunk's files with their sizes and modification times, so a changed
        # --raw, or a file repaired or replaced since the last run, never reuses a stale part
        stamps = [f"{p} {st.st_size} {st.st_mtime_ns}" for p, st in zip(chunk, map(os.stat, chunk))]
        digest = hashlib.sha1("\n".join(stamps).encode()).hexdigest()[:16]
        part = os.path.join(parts_dir, f"part_{k // CHUNK:05d}_{digest}_{max_frames}.npz")
        part_files.append(part)
        if not os.path.exists(part):
            jobs.append((part, chunk, max_frames))
    bar = _progress(total=len(paths), initial=len(paths) - sum(len(j[1]) for j in jobs), enabled=progress)
    if workers == 1 or len(jobs) <= 1:
        for job in jobs:
            _process_chunk(job)
            bar.update(len(job[1]))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for (_, chunk, _), _done in zip(jobs, pool.map(_process_chunk, jobs)):
                bar.update(len(chunk))
    bar.close()

    # assemble: two passes over the parts so that x is written straight into the memory map
    names, lengths, skipped = [], [], []
    for pf in part_files:
        with np.load(pf) as z:
            names.append(z["name"])
            lengths.append(z["length"])
            skipped.extend(json.loads(str(z["skipped"])))
    names = np.concatenate(names)
    lengths = np.concatenate(lengths)
    n = len(names)
    t_max = int(lengths.max()) if n else 0
    x = np.lib.format.open_memmap(os.path.join(out_dir, "x.npy.tmp"), mode="w+", dtype=np.float32,
                                  shape=(n, 3, t_max, NUM_JOINTS, MAX_PERSONS))
    i = 0
    for pf in part_files:
        with np.load(pf) as z:
            xp = z["x"]
            x[i : i + len(xp), :, : xp.shape[2]] = xp
            i += len(xp)
    x.flush()
    del x
    os.replace(os.path.join(out_dir, "x.npy.tmp"), os.path.join(out_dir, "x.npy"))
    y = parse_ntu_names(names)["action"] - 1 if n else np.zeros(0, np.int64)
    np.save(os.path.join(out_dir, "y.npy"), y.astype(np.int64))
    np.save(os.path.join(out_dir, "name.npy"), names.astype("U20"))
    np.save(os.path.join(out_dir, "length.npy"), lengths.astype(np.int64))
    dataset = benchmark_dataset(benchmark)
    train = ntu_split(names, benchmark) if n else np.zeros(0, bool)
    meta = {
        "format": "skelcl-prepared",
        "version": 1,
        "benchmark": benchmark,
        "dataset": dataset,
        "layout": "ntu25",
        "num_classes": NTU60_NUM_ACTIONS if dataset == "ntu60" else 120,
        "num_samples": n,
        "num_train": int(train.sum()),
        "num_test": int(n - train.sum()),
        "t_max": t_max,
        "max_frames": max_frames,
        "num_skipped_missing": n_missing,
        "skipped": skipped,
    }
    with open(os.path.join(out_dir, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(out_dir, "meta.json.tmp"), os.path.join(out_dir, "meta.json"))
    for s in skipped:
        print(f"skipped {s['reason']}", file=sys.stderr)
    return PrepareSummary(out_dir, n, n_missing, skipped, time.perf_counter() - start)


class _NoBar:
    def update(self, n):
        pass

    def close(self):
        pass


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="file", desc="prepare-ntu", file=sys.stderr)
