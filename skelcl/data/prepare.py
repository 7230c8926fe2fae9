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

Body selection (``select_bodies``), applied per file. A body is one Kinect tracking id; bodies are
taken in order of first appearance. The thresholds and the order of the rules follow the NTU
denoising of the CTR-GCN preprocessing (``get_raw_skes_data.py`` / ``get_raw_denoised_data.py``);
2s-AGCN's preprocessing instead keeps the two bodies of largest energy.

1. Length rule: a body seen in at most ``MIN_BODY_FRAMES`` (11) frames is noise (a short-lived
   false detection) and is dropped. If that drops every body, the body seen in the most frames is
   kept instead, so that a sample is never emptied by denoising (CTR-GCN only denoises files with
   several bodies, so a file's only body is always kept there too).
2. If exactly one body remains, it is kept and the rules below do not apply.
3. Spread rule: in a frame, a body whose joints' x-extent exceeds ``SPREAD_RATIO`` (0.8) times
   their y-extent is "flat" (people stand taller than wide; furniture and reflections detected as
   bodies do not). A body flat in at least ``FLAT_FRACTION`` (69.754 %) of its frames is dropped.
   The bodies are visited in order of first appearance and the rule stops dropping as soon as one
   body remains.
4. Motion rank: motion = sum over x, y, z of the variance of the body's joint positions pooled over
   all its joints and frames (so a body's extent counts as well as its movement). A body that
   survived the spread rule with some flat frames gets min(motion, the same measure on its
   non-flat frames). Bodies are ranked by motion, largest first; ties keep first-appearance order.
   (skelcl sums in float64, CTR-GCN in float32: only near-equal motions can order differently.)
5. Person slots: person 0 takes the first-ranked body. Each further body, in rank order, joins
   person 0 if its frame span [first, last] does not overlap person 0's span, else person 1 under
   the same test against person 1's span, else it is dropped; a joined body widens its person's
   span to cover both. This keeps an actor whose tracking id changed mid-clip in one slot. Two
   details are kept exactly as CTR-GCN has them: spans count as overlapping only when
   min(last) - max(first) > 0, so spans sharing one frame do not, and in that frame the
   later-ranked body's joints replace the earlier one's; person 1's span starts at the file's first
   frame holding a body (CTR-GCN sets it to [0, 0] before person 1's first body), so person 1 then
   takes a further body only if it starts at or after person 1's last frame so far. A body with
   holes in its frames is placed frame by frame (CTR-GCN packs its frames one after another from
   its first frame).
6. Timing: frames before the first and after the last frame holding a kept body are cut; the valid
   length is what remains (capped at ``max_frames``). Frames inside where a person is absent stay
   zero for that person, and frames inside with no kept body at all stay zero for both, so frame
   indices stay those of the file: the CTR-GCN preprocessing instead drops frames holding no body
   and, after the selection, frames where both actors are missing.

Each part's name hashes ``SELECTION_VERSION`` with its files, so parts made by another version of
the selection are never reused; parts this run does not use are deleted once the dataset is written.
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
    "SELECTION_VERSION",
    "select_bodies",
    "skeleton_to_array",
    "prepare_ntu",
    "PrepareSummary",
]

MIN_BODY_FRAMES = 11
SPREAD_RATIO = 0.8
FLAT_FRACTION = 0.69754
MAX_PERSONS = 2
# raise whenever select_bodies / skeleton_to_array change what they output: part names hash it, so a
# rerun in an existing --out never reuses parts made by an older selection (2: CTR-GCN person slots)
SELECTION_VERSION = 2
CHUNK = 256  # files per resumable part


def _flat_frames(xyz: np.ndarray) -> np.ndarray:
    """(F,) bool: frames in which the body is wider (x) than SPREAD_RATIO times its height (y)."""
    spread = (xyz.max(axis=1) - xyz.min(axis=1)).astype(np.float64)  # (F, 3)
    return spread[:, 0] > SPREAD_RATIO * spread[:, 1]


def _motion(xyz: np.ndarray) -> float:
    """Sum over x, y, z of the variance of the (F, 25, 3) positions pooled over joints and frames."""
    return float(xyz.reshape(-1, 3).astype(np.float64).var(axis=0).sum())


def select_bodies(skel: SkeletonFile) -> list[list[int]]:
    """Kept bodies per person slot: indices into ``skel.bodies``, person 0's list first, each list in
    the order its bodies are written (see the module docstring); [] for a file without bodies."""
    bodies = skel.bodies
    if not bodies:
        return []
    alive = [i for i, b in enumerate(bodies) if len(b.frames) > MIN_BODY_FRAMES]
    if not alive:
        alive = [max(range(len(bodies)), key=lambda i: len(bodies[i].frames))]  # first longest
    if len(alive) == 1:
        return [alive]
    motion = {i: _motion(bodies[i].xyz) for i in alive}
    for i in list(alive):
        if len(alive) == 1:  # the spread rule never removes the last body
            break
        flat = _flat_frames(bodies[i].xyz)
        if not flat.any():
            continue
        if flat.mean() >= FLAT_FRACTION:
            alive.remove(i)
        else:
            motion[i] = min(motion[i], _motion(bodies[i].xyz[~flat]))
    ranked = sorted(alive, key=lambda i: -motion[i])  # stable: ties keep first-appearance order

    def span(i: int) -> tuple[int, int]:
        return int(bodies[i].frames.min()), int(bodies[i].frames.max())

    slots = [[ranked[0]], []]
    clip_start = min(int(b.frames.min()) for b in bodies)
    # person 1's span starts at the clip's first frame, as CTR-GCN's [0, 0] does (module docstring)
    spans = [span(ranked[0]), (clip_start, clip_start)]
    for i in ranked[1:]:
        first, last = span(i)
        for m, (s0, s1) in enumerate(spans):
            if min(s1, last) - max(s0, first) <= 0:  # sharing one frame is not overlapping
                slots[m].append(i)
                spans[m] = (min(s0, first), max(s1, last))
                break
    return [s for s in slots if s]


def skeleton_to_array(skel: SkeletonFile, max_frames: int | None = None) -> tuple[np.ndarray, int]:
    """(3, T, 25, 2) float32 array of the selected bodies and its valid length T."""
    slots = [[skel.bodies[i] for i in slot] for slot in select_bodies(skel)]
    if not slots:
        raise ValueError(f"{skel.path}: no body in any frame")
    first = min(int(b.frames.min()) for slot in slots for b in slot)
    last = max(int(b.frames.max()) for slot in slots for b in slot)
    length = last - first + 1
    if max_frames is not None:
        length = min(length, max_frames)
    out = np.zeros((3, length, NUM_JOINTS, MAX_PERSONS), dtype=np.float32)
    for m, slot in enumerate(slots):
        for b in slot:  # in order: in a frame two bodies of one slot share, the later one stays
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
        # the name hashes the selection version and the chunk's files with their sizes and
        # modification times, so a newer selection, a changed --raw, or a file repaired or replaced
        # since the last run never reuses a stale part
        stamps = [f"{p} {st.st_size} {st.st_mtime_ns}" for p, st in zip(chunk, map(os.stat, chunk))]
        key = "\n".join([f"selection {SELECTION_VERSION}", *stamps])
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
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
        "selection_version": SELECTION_VERSION,
        "num_skipped_missing": n_missing,
        "skipped": skipped,
    }
    with open(os.path.join(out_dir, "meta.json.tmp"), "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(os.path.join(out_dir, "meta.json.tmp"), os.path.join(out_dir, "meta.json"))
    # parts of older selections or inputs can never be reused by this --out; as large as x.npy in all
    in_use = {os.path.basename(pf) for pf in part_files}
    for entry in os.listdir(parts_dir):
        if entry.startswith("part_") and entry.endswith(".npz") and entry not in in_use:
            os.remove(os.path.join(parts_dir, entry))
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
