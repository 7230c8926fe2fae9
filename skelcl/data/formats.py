"""Loaders: every supported data source -> ``SkeletonArrays``.

``load_dataset(spec)`` recognises, in this order:

- ``"synthetic"``: the built-in procedural dataset (``skelcl.data.synthetic.load_synthetic``);
- a directory made by ``prepare-ntu`` (``meta.json`` + ``x.npy``), memory-mapped;
- a directory holding ST-GCN arrays ``{train,val}_data*.npy`` + ``{train,val}_label.pkl``, or one of
  those ``.npy`` files: train and val are concatenated, ``splits["given"]`` marks the train part;
- a directory of raw NTU ``.skeleton`` files (parsed on the fly: meant for small sets); samples on
  the published missing-skeleton list are skipped (their count is said on stderr), any other file
  that cannot be read fails the load, naming it;
- a ``.npz``: skelcl's own (``x``, ``y`` ...; ``x`` memory-mapped when stored uncompressed) or
  CTR-GCN's (``x_train`` (N, T, 150), one-hot ``y_train``; converted in chunks read from the file,
  so the conversion needs memory for its result only);
- a ``.pkl``/``.pickle``: a pyskl annotation file (``split`` + ``annotations``). Its split keys
  become benchmarks: ``xsub_train``/``xsub_val`` -> ``xsub`` (NTU), ``train``/``val`` (or ``test``)
  -> ``given`` (GYM, Kinetics), ``train1``/``test1`` ... -> ``fold1`` ... (UCF101, HMDB51).

skelcl ``.npz`` keys: ``x`` (N, 3, T, V, M) float32, ``y`` int; optional ``name``, ``subject``,
``view``, ``setup``, ``length``, ``split`` ('train'/'test' strings -> ``splits["given"]``),
``layout`` and ``num_classes``. Whenever sample names are NTU names, the NTU benchmarks that apply
are added to splits, and, when a file does not give it, the class count is the dataset's (60 or 120,
``splits.ntu_num_classes``) rather than the largest label + 1.

Labels must be whole numbers >= 0 (one-hot rows: exactly one 1); anything else is refused, naming
the file and the first bad sample, as a cast would silently change it.

pyskl keypoints (M, T, V, C) become (3, T, V, 2) rows, laid out when read (``skelcl.data.rows.
PaddedRows``: no padded copy is held): persons beyond the second are dropped, a missing second
person is zero; 2D keypoints (C = 2) get a zero third channel, so they lie in the z = 0 plane
(rotations about x and y then foreshorten them, as a camera would a flat figure). ``keypoint_score``
is not used.

NaN and Inf are refused, naming the file and the sample: memory-mapped arrays (prepared folders,
ST-GCN ``.npy``, uncompressed ``.npz``) as ``BatchLoader`` gathers each batch (a full scan of many GB
at load would be slow), everything read into memory (pyskl keypoints, CTR-GCN's converted arrays,
compressed ``.npz``) at load.

The layout is inferred from V (25 ntu25, 20 kinect20, 17 coco17) unless ``layout`` is given.
Missing per-sample lengths are inferred as 1 + the last frame with any non-zero value.
"""

from __future__ import annotations

import glob
import json
import numbers
import os
import pickle
import re
import sys
import zipfile
from collections.abc import Callable

import numpy as np

from .dataset import SkeletonArrays
from .rows import PaddedRows, RowConcat
from .splits import (
    BENCHMARKS,
    missing_skeleton_samples,
    ntu_num_classes,
    ntu_split,
    ntu_splits,
    parse_ntu_names,
)

__all__ = ["LAYOUT_BY_JOINTS", "load_dataset", "save_npz", "infer_lengths", "infer_layout"]

LAYOUT_BY_JOINTS = {25: "ntu25", 20: "kinect20", 17: "coco17"}


def load_dataset(spec, *, layout: str | None = None, synthetic_kwargs: dict | None = None) -> SkeletonArrays:
    """Load ``spec`` (see the module docstring); a bad path or format raises ValueError."""
    if isinstance(spec, str) and spec == "synthetic":
        from .synthetic import load_synthetic  # imported here: only this source needs it

        data = load_synthetic(**(synthetic_kwargs or {}))
        if layout is not None:
            data.layout = layout
        return data
    if synthetic_kwargs:
        raise ValueError(f"synthetic_kwargs only apply to spec='synthetic', not {spec!r}")
    path = os.fspath(spec)
    if not os.path.exists(path):
        raise ValueError(f"dataset spec {path!r}: no such file or directory (and not 'synthetic')")
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "meta.json")):
            return _load_prepared(path, layout)
        if glob.glob(os.path.join(path, "train_data*.npy")) or glob.glob(os.path.join(path, "val_data*.npy")):
            return _load_stgcn(path, layout)
        if glob.glob(os.path.join(path, "*.skeleton")):
            return _load_raw_dir(path, layout)
        raise ValueError(
            f"dataset directory {path!r}: not a prepare-ntu output (meta.json), ST-GCN arrays "
            "({train,val}_data*.npy) or a folder of .skeleton files"
        )
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        return _load_npz(path, layout)
    if ext == ".npy":
        return _load_stgcn(path, layout)
    if ext in (".pkl", ".pickle"):
        return _load_pyskl(path, layout)
    raise ValueError(f"dataset file {path!r}: unknown format (expected .npz, .npy or .pkl)")


def infer_layout(num_joints: int, layout: str | None, source: str) -> str:
    if layout is not None:
        return layout
    if num_joints not in LAYOUT_BY_JOINTS:
        raise ValueError(f"{source}: cannot infer the joint layout from V={num_joints}; pass layout=")
    return LAYOUT_BY_JOINTS[num_joints]


def infer_lengths(x: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(N,) int64: 1 + index of the last frame with any non-zero value (0 for an all-zero sample)."""
    n, _, t = x.shape[:3]
    out = np.zeros(n, dtype=np.int64)
    for s in range(0, n, chunk):  # chunked: x may be a memory map larger than RAM
        present = (np.asarray(x[s : s + chunk]) != 0).any(axis=(1, 3, 4))  # (n, T)
        last = t - np.argmax(present[:, ::-1], axis=1)
        out[s : s + chunk] = np.where(present.any(axis=1), last, 0)
    return out


def _with_name_splits(splits: dict, names) -> dict:
    if names is not None:
        for key, mask in ntu_splits(names).items():
            splits.setdefault(key, mask)
    return splits


def _ntu_fields(names):
    """subject, view, setup arrays for NTU names (None when the names are not NTU names)."""
    try:
        f = parse_ntu_names(names)
    except ValueError:
        return None, None, None
    return f["performer"], f["camera"], f["setup"]


def _load_prepared(path: str, layout: str | None) -> SkeletonArrays:
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        x = np.load(os.path.join(path, "x.npy"), mmap_mode="r")
        y = np.load(os.path.join(path, "y.npy"))
        names = np.load(os.path.join(path, "name.npy"))
        length = np.load(os.path.join(path, "length.npy"))
    except (OSError, ValueError) as e:
        raise ValueError(f"prepared dataset {path!r} is incomplete or unreadable: {e}") from e
    subject, view, setup = _ntu_fields(names)
    splits = _with_name_splits({}, names)
    if meta.get("benchmark") in BENCHMARKS and len(names):
        # the benchmark asked for, even when the files happen to be NTU-60 ones only (xset120 of S001-S017)
        splits.setdefault(meta["benchmark"], ntu_split(names, meta["benchmark"]))
    return SkeletonArrays(
        x=x, y=y, layout=layout or meta.get("layout", "ntu25"), num_classes=meta.get("num_classes"),
        name=names, subject=subject, view=view, setup=setup, length=length, splits=splits,
    )


def _check_finite_rows(x, source: str, key: str | None = None, names=None, offset: int = 0,
                       chunk: int = 1024) -> None:
    """A ValueError naming ``source`` and the first row of ``x`` that holds NaN or Inf, as
    ``key[row]`` (``row N`` without a key; rows numbered from ``offset``) and ``names[row]``; read in
    chunks, as ``x`` may be larger than memory."""
    for s in range(0, len(x), chunk):
        rows = np.asarray(x[s : s + chunk])
        finite = np.isfinite(rows.reshape(len(rows), -1)).all(axis=1)
        if not finite.all():
            r = s + int(np.argmin(finite))
            where = f"{key}[{offset + r}]" if key else f"row {offset + r}"
            name = f" ({str(names[r])!r})" if names is not None else ""
            raise ValueError(f"{source}: {where}{name} holds NaN or Inf")


def _stgcn_pair(path: str) -> tuple[list[tuple[str, str, bool]], str]:
    """[(data.npy, label.pkl, is_train)] for an ST-GCN directory or one of its data files."""
    if os.path.isdir(path):
        folder, suffix = path, None
    else:
        folder, base = os.path.split(path)
        folder = folder or "."
        for part in ("train", "val"):
            if base.startswith(part + "_data"):
                suffix = base[len(part) + len("_data"):]  # e.g. "_joint.npy"
                break
        else:
            raise ValueError(f"ST-GCN data file {path!r}: name must be train_data*.npy or val_data*.npy")
    found = []
    for part in ("train", "val"):
        if suffix is not None:
            candidates = [os.path.join(folder, f"{part}_data{suffix}")]
        else:  # prefer the joint stream when several streams sit side by side
            candidates = sorted(glob.glob(os.path.join(folder, f"{part}_data*.npy")),
                                key=lambda p: (not p.endswith("_joint.npy"), not p.endswith("_data.npy"), p))
        data = next((c for c in candidates if os.path.isfile(c)), None)
        if data is None:
            continue
        label = os.path.join(folder, f"{part}_label.pkl")
        if not os.path.isfile(label):
            raise ValueError(f"ST-GCN data {data!r}: label file {label!r} is missing")
        found.append((data, label, part == "train"))
    if not found:
        raise ValueError(f"ST-GCN data {path!r}: no {{train,val}}_data*.npy found")
    return found, folder


def _load_stgcn(path: str, layout: str | None) -> SkeletonArrays:
    found, _ = _stgcn_pair(path)
    xs, ys, names, train = [], [], [], []
    for data, label, is_train in found:
        x = np.load(data, mmap_mode="r")
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"ST-GCN data {data!r}: expected (N, 3, T, V, M), got shape {x.shape}")
        if x.dtype != np.float32:  # the API promises float32; only a non-float32 file is read into memory
            x = np.asarray(x, dtype=np.float32)
        sample_names, labels = _read_label_pickle(label)
        if len(labels) != len(x):
            problem = f"{len(labels)} labels for {len(x)} samples in {data!r}"
            raise ValueError(f"ST-GCN label file {label!r}: {problem}")
        part_names = np.asarray([n.split(".")[0] for n in sample_names])
        if not isinstance(x, np.memmap):  # read into memory: checked now (a memory map, per batch)
            _check_finite_rows(x, f"ST-GCN data {data!r}", names=part_names)
        xs.append(x)
        ys.append(labels)
        names.append(part_names)
        train.append(np.full(len(x), is_train))
    # both parts stay memory-mapped: a RowConcat reads each row from the file that holds it
    x = xs[0] if len(xs) == 1 else RowConcat(xs)
    names, y = np.concatenate(names), np.concatenate(ys)
    subject, view, setup = _ntu_fields(names)
    return SkeletonArrays(
        x=x, y=y, layout=infer_layout(x.shape[3], layout, path), num_classes=ntu_num_classes(names, y),
        name=names, subject=subject, view=view, setup=setup, length=infer_lengths(x),
        splits=_with_name_splits({"given": np.concatenate(train)}, names),
    )


_LABEL_PICKLE = "expected a pickle of (sample_names: list[str], labels: list[int])"


def _load_label_pickle(path: str):
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except UnicodeDecodeError:  # written by Python 2 (NumPy arrays inside): what its feeders retry with
            f.seek(0)
            return pickle.load(f, encoding="latin1")


def _read_label_pickle(path: str) -> tuple[list[str], np.ndarray]:
    """(sample names, int64 labels) of an ST-GCN label pickle; any other content raises a ValueError
    that names the file and says what it holds instead."""
    source = f"ST-GCN label file {path!r}"
    try:
        obj = _load_label_pickle(path)
    except Exception as e:  # a pickle can fail in many ways; all mean the same to the user
        raise ValueError(f"{source} cannot be unpickled ({e}); {_LABEL_PICKLE}") from e
    problem = _label_pickle_problem(obj)
    if problem:
        raise ValueError(f"{source}: {problem}; {_LABEL_PICKLE}")
    names, labels = obj
    return [str(n) for n in names], _int_labels(labels, source, "labels")


def _is_text(value) -> bool:
    return isinstance(value, (str, np.str_))


def _label_pickle_problem(obj) -> str | None:
    """What keeps ``obj`` from being a (names, labels) pair, or None."""
    if isinstance(obj, dict):  # unpacking one would take its first two keys for names and labels
        keys = ", ".join(map(repr, list(obj)[:4])) + (", ..." if len(obj) > 4 else "")
        return f"it holds a dict (keys {keys}), not a (names, labels) pair"
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        size = f" of {len(obj)} items" if isinstance(obj, (tuple, list)) else ""
        return f"it holds a {type(obj).__name__}{size}, not a (names, labels) pair"
    names, labels = obj
    if not _is_sequence(names):
        return f"sample names must be a list of strings, found {_show(names)}"
    if not _is_sequence(labels):
        return f"labels must be a list of integers, found {_show(labels)}"
    if len(names) and not _is_text(names[0]) and len(labels) and _is_text(labels[0]):
        return "the pair looks swapped: it is (labels, names)"
    odd = next((i for i, n in enumerate(names) if not _is_text(n)), None)
    if odd is not None:
        return f"sample names must be a list of strings, names[{odd}] is {names[odd]!r}"
    if len(names) != len(labels):
        return f"it has {len(names)} sample names but {len(labels)} labels"
    return None


def _show(value) -> str:
    text = repr(value)
    return f"a {type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def _is_sequence(value) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) and np.ndim(value) == 1


def _int_labels(values, source: str, key: str, where: Callable[[int], str] | None = None) -> np.ndarray:
    """``values`` as (N,) int64 class labels. A label that is not a whole number >= 0 (3.0 is one;
    1.5, -1 and NaN are not) raises a ValueError naming ``source`` and the first bad label, as
    ``where(i)`` words it (default ``key[i] =``): a cast would silently truncate it."""
    where = where or (lambda i: f"{key}[{i}] =")
    y = np.asarray(values)
    if y.ndim != 1:
        raise ValueError(f"{source}: {key} must hold one label per sample, got shape {y.shape}")
    if y.dtype.kind not in "biuf":
        for i, v in enumerate(y.tolist()):
            if not isinstance(v, numbers.Real):
                raise ValueError(f"{source}: {where(i)} {v!r} is not a number")
        y = y.astype(np.float64)
    problem = _label_problem(y)
    if problem is not None:
        i, what = problem
        raise ValueError(f"{source}: {where(i)} {y[i].item()!r} {what}")
    return y.astype(np.int64)


def _label_problem(y: np.ndarray) -> tuple[int, str] | None:
    """(index, problem) of the first label that is not a class index, or None."""
    if y.dtype.kind == "f":
        fractional = ~np.isfinite(y) | (y != np.round(y))
        if fractional.any():
            return int(np.argmax(fractional)), "is not a whole number"
    negative = y < 0
    if negative.any():
        return int(np.argmax(negative)), "is negative"
    return None


def _one_hot_labels(y: np.ndarray, source: str, key: str) -> np.ndarray:
    """Class indices of one-hot rows (N, classes); a row that is not exactly one 1 and zeros raises
    a ValueError naming ``key[i]``: argmax would make an all-zero row class 0 and a two-hot row its
    first class."""
    ones = (y == 1).sum(axis=1)
    others = ((y != 0) & (y != 1)).sum(axis=1)
    bad = (ones != 1) | (others != 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{source}: {key}[{i}] is not a one-hot row: it has {ones[i]} entries equal to 1 "
                         f"and {others[i]} other non-zero entries (expected exactly one 1, zeros elsewhere)")
    return y.argmax(axis=1).astype(np.int64)


def _npz_member(z, path: str, key: str) -> np.ndarray:
    """Array ``key`` of the open ``.npz`` ``z``: memory-mapped, read-only, when it is stored
    uncompressed (``np.savez``, which CTR-GCN's and skelcl's files use), else loaded.

    A large member is then read from the file as it is used instead of all at once, so converting
    it needs memory for the result only."""
    name = key + ".npy"
    try:
        info = z.zip.getinfo(name)
        if info.compress_type != zipfile.ZIP_STORED:
            return z[key]
        with open(path, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)  # the member's local header: its name and extra field lengths vary
            if local[:4] != b"PK\x03\x04":
                return z[key]
            start = info.header_offset + 30 + int.from_bytes(local[26:28], "little") + \
                int.from_bytes(local[28:30], "little")
            f.seek(start)
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                return z[key]
            offset = f.tell()
        if dtype.hasobject or 0 in shape:
            return z[key]
        order = "F" if fortran else "C"
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
    except (KeyError, OSError, ValueError):
        return z[key]  # not a plain member: the regular reader, with its own error


def _load_npz(path: str, layout: str | None) -> SkeletonArrays:
    try:
        z = np.load(path, allow_pickle=False)
        keys = set(z.files)
    except Exception as e:
        raise ValueError(f"npz file {path!r} cannot be read: {e}") from e
    with z:
        if {"x", "y"} <= keys:
            return _load_skelcl_npz(z, path, layout)
        if {"x_train", "y_train"} <= keys:
            return _load_ctrgcn(z, path, layout)
    raise ValueError(
        f"npz file {path!r}: expected keys x, y (skelcl) or x_train, y_train (CTR-GCN); has {sorted(keys)}"
    )


def _load_skelcl_npz(z, path: str, layout: str | None) -> SkeletonArrays:
    x = _npz_member(z, path, "x")  # memory-mapped as written by save_npz (float32, uncompressed)
    if x.dtype != np.float32:
        x = np.asarray(x, dtype=np.float32)
    if x.ndim != 5 or x.shape[1] != 3:
        raise ValueError(f"skelcl npz {path!r}: x must be (N, 3, T, V, M), got shape {x.shape}")
    if layout is None and "layout" in z.files:
        layout = str(z["layout"])
    opt = {k: (z[k] if k in z.files else None) for k in ("name", "subject", "view", "setup", "length")}
    if opt["name"] is not None:
        opt["name"] = opt["name"].astype(str)
        subject, view, setup = _ntu_fields(opt["name"])
        for key, value in (("subject", subject), ("view", view), ("setup", setup)):
            if opt[key] is None:
                opt[key] = value
    if not isinstance(x, np.memmap):  # held in memory (compressed): checked now, not per batch
        _check_finite_rows(x, f"skelcl npz {path!r}", "x", opt["name"])
    splits = {}
    if "split" in z.files:
        split = z["split"].astype(str)
        bad = ~np.isin(split, ["train", "test"])
        if bad.any():
            raise ValueError(f"skelcl npz {path!r}: split must hold 'train'/'test', found {split[bad][0]!r}")
        splits["given"] = split == "train"
    if opt["length"] is None:
        opt["length"] = infer_lengths(x)
    y = _int_labels(z["y"], f"skelcl npz {path!r}", "y")
    if "num_classes" in z.files:
        num_classes = int(z["num_classes"])
    else:  # written before save_npz kept it
        num_classes = None if opt["name"] is None else ntu_num_classes(opt["name"], y)
    return SkeletonArrays(
        x=x, y=y, layout=infer_layout(x.shape[3], layout, path), num_classes=num_classes,
        **{k: v for k, v in opt.items()}, splits=_with_name_splits(splits, opt["name"]),
    )


def _load_ctrgcn(z, path: str, layout: str | None) -> SkeletonArrays:
    parts = []  # (name, (N, T, 2*V*3) array, labels)
    for part in ("train", "test"):
        if f"x_{part}" not in z.files:
            continue
        x = _npz_member(z, path, f"x_{part}")
        if x.ndim != 3 or x.shape[2] % (3 * 2) != 0:
            raise ValueError(f"CTR-GCN npz {path!r}: x_{part} must be (N, T, 2*V*3), got shape {x.shape}")
        n = x.shape[0]
        if f"y_{part}" not in z.files:
            raise ValueError(f"CTR-GCN npz {path!r}: has x_{part} but no y_{part}")
        y = z[f"y_{part}"]
        if len(y) != n or y.ndim not in (1, 2):
            raise ValueError(f"CTR-GCN npz {path!r}: y_{part} must be ({n},) labels or ({n}, classes) "
                             f"one-hot, got shape {y.shape}")
        source, key = f"CTR-GCN npz {path!r}", f"y_{part}"
        labels = _one_hot_labels(y, source, key) if y.ndim == 2 else _int_labels(y, source, key)
        parts.append((part, x, labels))
    v = {x.shape[2] // 6 for _, x, _ in parts}
    if len(v) > 1:
        raise ValueError(f"CTR-GCN npz {path!r}: x_train and x_test have different joint counts {sorted(v)}")
    total, t_max, v = sum(len(x) for _, x, _ in parts), max(x.shape[1] for _, x, _ in parts), v.pop()
    # One (N, C, T, V, M) result, filled in chunks of sequences straight from the (memory-mapped)
    # parts: the memory needed is the result's, not three copies of it.
    out = np.zeros((total, 3, t_max, v, 2), dtype=np.float32)
    lo = 0
    for part, x, _ in parts:
        n, t = x.shape[:2]
        for s in range(0, n, 1024):
            chunk = np.asarray(x[s : s + 1024])
            _check_finite_rows(chunk, f"CTR-GCN npz {path!r}", f"x_{part}", offset=s)
            # (N, T, M*V*C) with M outermost and C innermost -> (N, C, T, V, M)
            people = chunk.reshape(len(chunk), t, 2, v, 3)
            out[lo + s : lo + s + len(chunk), :, :t] = people.transpose(0, 4, 1, 3, 2)
        lo += n
    num_classes = z["y_train"].shape[1] if z["y_train"].ndim == 2 else None
    train = np.concatenate([np.full(len(x), part == "train") for part, x, _ in parts])
    return SkeletonArrays(
        x=out, y=np.concatenate([y for _, _, y in parts]), layout=infer_layout(v, layout, path),
        num_classes=num_classes, length=infer_lengths(out), splits={"given": train},
    )


def _load_pyskl(path: str, layout: str | None) -> SkeletonArrays:
    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except Exception as e:
        raise ValueError(f"pickle {path!r} cannot be read: {e}") from e
    if not isinstance(obj, dict) or "annotations" not in obj:
        raise ValueError(f"pickle {path!r}: expected a pyskl annotation dict with 'split' and 'annotations'")
    ann = obj["annotations"]
    if not ann:
        raise ValueError(f"pyskl file {path!r}: 'annotations' is empty")
    kps = []
    for i, a in enumerate(ann):
        missing = [k for k in ("keypoint", "label") if not isinstance(a, dict) or k not in a]
        if missing:
            keys = " or ".join(map(repr, missing))
            raise ValueError(f"pyskl file {path!r}: annotations[{i}] has no {keys}")
        kp = np.asarray(a["keypoint"], dtype=np.float32)
        if kp.ndim != 4 or kp.shape[3] not in (2, 3):
            raise ValueError(f"pyskl file {path!r}: annotations[{i}]['keypoint'] must be (M, T, V, 2|3), "
                             f"got shape {kp.shape}")
        if not np.isfinite(kp).all():  # small and in memory: checked now, naming the clip
            where = f"annotations[{i}] ({str(a.get('frame_dir', i))!r})"
            raise ValueError(f"pyskl file {path!r}: {where}: 'keypoint' holds NaN or Inf")
        kps.append(kp)
    v = kps[0].shape[2]
    if any(kp.shape[2] != v for kp in kps):
        raise ValueError(f"pyskl file {path!r}: samples have different joint counts")
    t_max = max(kp.shape[1] for kp in kps)
    # laid out and padded row by row when read: no (N, 3, 300, V, 2) copy of the keypoints
    x = PaddedRows(kps, t_max)
    names = np.asarray([str(a.get("frame_dir", i)) for i, a in enumerate(ann)])
    # total_frames, but never past the frames the sample's keypoints hold (the rest is padding)
    held = [kp.shape[1] for kp in kps]
    lengths = np.asarray([min(int(a.get("total_frames", t)), t) for a, t in zip(ann, held)], dtype=np.int64)
    splits = {}
    for key, members in (obj.get("split") or {}).items():
        benchmark = _pyskl_benchmark(str(key))
        if benchmark is not None:  # its val/test list is the rest
            splits[benchmark] = np.isin(names, np.asarray(list(members), dtype=str))
    subject, view, setup = _ntu_fields(names)
    y = _int_labels([a["label"] for a in ann], f"pyskl file {path!r}", "label",
                    where=lambda i: f"annotations[{i}] ({str(names[i])!r}): label")
    return SkeletonArrays(
        x=x, y=y, layout=infer_layout(v, layout, path), num_classes=ntu_num_classes(names, y),
        name=names, subject=subject, view=view, setup=setup, length=lengths,
        splits=_with_name_splits(splits, names),
    )


def _pyskl_benchmark(key: str) -> str | None:
    """skelcl's benchmark name for a pyskl split key that lists training samples, else None:
    ``xsub_train`` -> ``xsub`` (NTU), ``train`` -> ``given`` (GYM, Kinetics: train/val, as ST-GCN's
    and CTR-GCN's own train/test parts are named), ``train1`` -> ``fold1`` (UCF101, HMDB51 folds)."""
    if key.endswith("_train"):
        return key[: -len("_train")]
    if key == "train":
        return "given"
    fold = re.fullmatch(r"train(\d+)", key)
    return f"fold{fold.group(1)}" if fold else None


def _load_raw_dir(path: str, layout: str | None) -> SkeletonArrays:
    from .ntu import read_skeleton
    from .prepare import MAX_PERSONS, skeleton_to_array

    files = _raw_files(path)
    arrays, names = [], []
    for f in files:
        arr, _ = skeleton_to_array(read_skeleton(f))  # errors name the file (and line)
        arrays.append(arr)
        names.append(os.path.basename(f).split(".")[0])
    t_max = max(a.shape[1] for a in arrays)
    x = np.zeros((len(arrays), 3, t_max, arrays[0].shape[2], MAX_PERSONS), dtype=np.float32)
    for i, a in enumerate(arrays):
        x[i, :, : a.shape[1]] = a
    names = np.asarray(names)
    try:
        y = parse_ntu_names(names)["action"] - 1
    except ValueError as e:
        raise ValueError(f"raw directory {path!r}: labels come from NTU file names: {e}") from e
    subject, view, setup = _ntu_fields(names)
    return SkeletonArrays(
        x=x, y=y, layout=layout or "ntu25", num_classes=ntu_num_classes(names), name=names,
        subject=subject, view=view, setup=setup,
        length=np.asarray([a.shape[1] for a in arrays], dtype=np.int64), splits=_with_name_splits({}, names),
    )


def _raw_files(path: str) -> list[str]:
    """The folder's ``.skeleton`` files less those on the published missing-skeleton list (their
    skeletons are missing or broken: a file with no body in any frame would abort the load), with
    how many were skipped said on stderr."""
    # NTU-120's list is NTU-60's plus NTU-120-only samples, so it serves folders of either dataset
    missing = missing_skeleton_samples("ntu120")
    files = sorted(glob.glob(os.path.join(path, "*.skeleton")))
    kept = [f for f in files if os.path.basename(f).split(".")[0] not in missing]
    skipped = len(files) - len(kept)
    if not kept:
        raise ValueError(f"raw directory {path!r}: all {skipped} .skeleton files are on the published "
                         "missing-skeleton list")
    if skipped:
        print(f"{path}: skipped {skipped} sample(s) on the published NTU RGB+D missing-skeleton list",
              file=sys.stderr)
    return kept


def save_npz(path, data: SkeletonArrays, *, split: np.ndarray | None = None) -> None:
    """Write ``data`` as a skelcl ``.npz``; ``split`` (bool train mask) is stored as 'train'/'test'."""
    arrays = {"x": np.asarray(data.x, dtype=np.float32), "y": np.asarray(data.y, dtype=np.int64),
              "layout": np.array(data.layout)}
    if data.num_classes is not None:  # a subset's labels may not reach the last class
        arrays["num_classes"] = np.array(int(data.num_classes))
    for key in ("name", "subject", "view", "setup", "length"):
        value = getattr(data, key)
        if value is not None:
            arrays[key] = np.asarray(value) if key != "name" else np.asarray(value, dtype=str)
    if split is not None:
        arrays["split"] = np.where(np.asarray(split, dtype=bool), "train", "test")
    np.savez(path, **arrays)
