"""NTU RGB+D benchmark rules, derived from sample names ``SsssCcccPpppRrrrAaaa``.

Names carry setup (S), camera (C), performer (P), replication (R) and action (A, 1-based). The
four standard benchmarks (DESIGN.md section 2) are functions of those fields only.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

import numpy as np

__all__ = [
    "BENCHMARKS",
    "NTU60_TRAIN_SUBJECTS",
    "NTU120_TRAIN_SUBJECTS",
    "XVIEW_TRAIN_CAMERAS",
    "NTU60_MAX_SETUP",
    "NTU60_NUM_ACTIONS",
    "NTU120_NUM_ACTIONS",
    "parse_ntu_names",
    "is_ntu_name",
    "ntu_split",
    "ntu_splits",
    "benchmark_dataset",
    "ntu_num_classes",
    "split_train_test",
    "missing_skeleton_samples",
]

BENCHMARKS = ("xsub60", "xview60", "xsub120", "xset120")

NTU60_TRAIN_SUBJECTS = frozenset(
    (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
)
NTU120_TRAIN_SUBJECTS = NTU60_TRAIN_SUBJECTS | frozenset(
    (45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86, 89,
     91, 92, 93, 94, 95, 97, 98, 100, 103)
)
XVIEW_TRAIN_CAMERAS = frozenset((2, 3))  # camera 1 is the test view
# NTU-120 x-set: even setup ids train, odd ones test
NTU60_MAX_SETUP = 17  # NTU RGB+D 60 is setups 1-17, actions 1-60
NTU60_NUM_ACTIONS = 60
NTU120_NUM_ACTIONS = 120

_NAME = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")


def is_ntu_name(name: str) -> bool:
    return _NAME.fullmatch(str(name)) is not None


def parse_ntu_names(names) -> dict[str, np.ndarray]:
    """Fields of NTU names as int64 arrays: setup, camera, performer, replication, action (1-based)."""
    names = [str(n) for n in np.asarray(names, dtype=object).reshape(-1)]
    out = np.zeros((len(names), 5), dtype=np.int64)
    for i, name in enumerate(names):
        m = _NAME.fullmatch(name)
        if m is None:
            raise ValueError(f"names[{i}] = {name!r} is not an NTU name of the form SsssCcccPpppRrrrAaaa")
        out[i] = [int(g) for g in m.groups()]
    keys = ("setup", "camera", "performer", "replication", "action")
    return {k: out[:, j] for j, k in enumerate(keys)}


def ntu_split(names, benchmark: str) -> np.ndarray:
    """(N,) bool mask, True for the training samples of ``benchmark`` (one of BENCHMARKS)."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    f = parse_ntu_names(names)
    if benchmark == "xsub60":
        return np.isin(f["performer"], sorted(NTU60_TRAIN_SUBJECTS))
    if benchmark == "xsub120":
        return np.isin(f["performer"], sorted(NTU120_TRAIN_SUBJECTS))
    if benchmark == "xview60":
        return np.isin(f["camera"], sorted(XVIEW_TRAIN_CAMERAS))
    return f["setup"] % 2 == 0  # xset120


def benchmark_dataset(benchmark: str) -> str:
    """"ntu60" or "ntu120": the dataset a benchmark is defined on."""
    if benchmark not in BENCHMARKS:
        raise ValueError(f"benchmark must be one of {BENCHMARKS}, got {benchmark!r}")
    return "ntu60" if benchmark.endswith("60") else "ntu120"


def ntu_splits(names) -> dict[str, np.ndarray]:
    """Every benchmark that applies to these names: the NTU-60 pair when all samples are from NTU-60
    (setups 1-17, actions 1-60), else the NTU-120 pair. Empty when a name is not an NTU name."""
    names = np.asarray(names, dtype=object).reshape(-1)
    if len(names) == 0 or not all(is_ntu_name(n) for n in names):
        return {}
    f = parse_ntu_names(names)
    ntu60 = f["setup"].max() <= NTU60_MAX_SETUP and f["action"].max() <= NTU60_NUM_ACTIONS
    chosen = ("xsub60", "xview60") if ntu60 else ("xsub120", "xset120")
    return {b: ntu_split(names, b) for b in chosen}


def split_train_test(data, benchmark: str):
    """``data.train_test(benchmark)`` (a ``SkeletonArrays``), refused with a ValueError when either
    part is empty: training and evaluation would otherwise fail later on an empty array. An unknown
    benchmark's error lists the ones ``data`` has."""
    train, test = data.train_test(benchmark)
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"benchmark {benchmark!r} leaves {len(train)} training and {len(test)} "
                         "test sequences; both must be non-empty")
    return train, test


def ntu_num_classes(names, labels=None) -> int | None:
    """The class count of the NTU dataset ``names`` come from: 60 when every action is an NTU-60 one,
    else 120. None when a name is not an NTU name, or when ``labels`` (0-based) are given and are not
    the actions - 1: such labels mean something else, and their count is not the dataset's."""
    names = np.asarray(names, dtype=object).reshape(-1)
    if len(names) == 0 or not all(is_ntu_name(n) for n in names):
        return None
    action = parse_ntu_names(names)["action"]
    if labels is not None and not np.array_equal(np.asarray(labels), action - 1):
        return None
    return NTU60_NUM_ACTIONS if action.max() <= NTU60_NUM_ACTIONS else NTU120_NUM_ACTIONS


@cache
def missing_skeleton_samples(dataset: str) -> frozenset[str]:
    """The published names of samples with missing or incomplete skeletons: 302 in "ntu60", 535 in
    "ntu120" (a superset of the NTU-60 list). Training and testing must ignore them."""
    files = {"ntu60": "ntu60_missing_skeletons.txt", "ntu120": "ntu120_missing_skeletons.txt"}
    if dataset not in files:
        raise ValueError(f"dataset must be 'ntu60' or 'ntu120', got {dataset!r}")
    text = resources.files("skelcl.data").joinpath("resources", files[dataset]).read_text()
    return frozenset(s for s in (ln.strip() for ln in text.splitlines()) if s and not s.startswith("#"))
