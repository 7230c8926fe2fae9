"""What the loaders refuse, and how they say it: bad labels, malformed label pickles, non-finite
coordinates, empty splits; and what they now read: pyskl's plain and per-fold splits, raw folders
holding samples of the missing-skeleton list, the class count of NTU data."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from skelcl.data import load_dataset

NAMES = ["S001C001P001R001A001", "S001C002P002R001A005", "S001C003P003R001A007"]


def _x(n=3, t=6, v=25, m=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 3, t, v, m)).astype(np.float32)


def _stgcn(tmp_path, labels_obj, x=None):
    """An ST-GCN folder with train_data_joint.npy and ``labels_obj`` pickled as train_label.pkl."""
    np.save(tmp_path / "train_data_joint.npy", _x() if x is None else x)
    with open(tmp_path / "train_label.pkl", "wb") as f:
        pickle.dump(labels_obj, f)
    return str(tmp_path / "train_label.pkl")


def _pyskl(tmp_path, labels=(0, 1, 2), split=None, keypoints=None, names=None):
    names = names or [f"clip{i}" for i in range(len(labels))]
    ann = []
    for i, (name, label) in enumerate(zip(names, labels)):
        kp = np.ones((1, 4, 17, 2), np.float32) if keypoints is None else keypoints[i]
        ann.append({"frame_dir": name, "label": label, "keypoint": kp, "total_frames": kp.shape[1]})
    with open(tmp_path / "a.pkl", "wb") as f:
        pickle.dump({"split": split or {}, "annotations": ann}, f)
    return str(tmp_path / "a.pkl")


# ---------------------------------------------------------------------------------------------------
# labels


@pytest.mark.parametrize("labels, match", [
    ([0.0, 1.5, 2.0], r"labels\[1\] = 1.5 is not a whole number"),
    ([0, -1, 2], r"labels\[1\] = -1 is negative"),
    ([0.0, 2.0, float("nan")], r"labels\[2\] = nan is not a whole number"),
])
def test_stgcn_rejects_bad_labels_naming_file_and_index(tmp_path, labels, match):
    label_file = _stgcn(tmp_path, (NAMES, labels))
    with pytest.raises(ValueError, match=match) as info:
        load_dataset(tmp_path)
    assert label_file in str(info.value)


def test_integral_float_labels_are_taken(tmp_path):
    _stgcn(tmp_path, (NAMES, [0.0, 4.0, 6.0]))
    assert load_dataset(tmp_path).y.tolist() == [0, 4, 6]
    np.savez(tmp_path / "d.npz", x=_x(), y=np.array([3.0, 0.0, 1.0]))
    assert load_dataset(tmp_path / "d.npz").y.tolist() == [3, 0, 1]


def test_pyskl_rejects_a_fractional_label_naming_the_sample(tmp_path):
    path = _pyskl(tmp_path, labels=(0, 2.7, 1))
    match = r"annotations\[1\] \('clip1'\): label 2.7 is not a whole number"
    with pytest.raises(ValueError, match=match) as info:
        load_dataset(path)
    assert path in str(info.value)
    assert load_dataset(_pyskl(tmp_path, labels=(0, 2.0, 1))).y.tolist() == [0, 2, 1]


@pytest.mark.parametrize("y, match", [
    (np.array([2.5, 0, 1]), r"y\[0\] = 2.5 is not a whole number"),
    (np.array([0, 1, -3]), r"y\[2\] = -3 is negative"),
])
def test_skelcl_npz_rejects_bad_labels(tmp_path, y, match):
    np.savez(tmp_path / "d.npz", x=_x(), y=y)
    with pytest.raises(ValueError, match=match) as info:
        load_dataset(tmp_path / "d.npz")
    assert str(tmp_path / "d.npz") in str(info.value)


@pytest.mark.parametrize("row, match", [
    (np.zeros(60), r"y_train\[1\] .*0 entries equal to 1"),
    (np.eye(60)[3] + np.eye(60)[7], r"y_train\[1\] .*2 entries equal to 1"),
    (np.eye(60)[3] * 0.9, r"y_train\[1\] .*0 entries equal to 1"),
])
def test_ctrgcn_rejects_rows_that_are_not_one_hot(tmp_path, row, match):
    y = np.eye(60)[[1, 2, 3]]
    y[1] = row
    np.savez(tmp_path / "c.npz", x_train=np.ones((3, 4, 150), np.float32), y_train=y)
    with pytest.raises(ValueError, match=match) as info:
        load_dataset(tmp_path / "c.npz")
    assert str(tmp_path / "c.npz") in str(info.value)


def test_ctrgcn_integer_labels_are_checked_too(tmp_path):
    np.savez(tmp_path / "c.npz", x_train=np.ones((2, 4, 150), np.float32), y_train=np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match=r"y_train\[1\] = 0.5 is not a whole number"):
        load_dataset(tmp_path / "c.npz")


# ---------------------------------------------------------------------------------------------------
# ST-GCN label pickles: every malformed one names the file and says what is wrong


@pytest.mark.parametrize("obj, match", [
    ((NAMES[:2], [0, 1, 2]), "2 sample names but 3 labels"),
    (([0, 1, 2], NAMES), r"swapped.*\(labels, names\)"),
    (dict(zip(NAMES, [0, 1, 2])), "a dict"),
    ({"names": NAMES, "labels": [0, 1, 2]}, "a dict"),
    ((NAMES, [0, 1, 2], "extra"), "a tuple of 3 items"),
    ([1, 2], "sample names must be a list of strings"),
    ((NAMES, ["a", "b", "c"]), r"labels\[0\] = 'a' is not a number"),
    ((NAMES[:2], [0, 1]), "2 labels for 3 samples"),
])
def test_malformed_label_pickles_say_what_is_wrong_with_which_file(tmp_path, obj, match):
    label_file = _stgcn(tmp_path, obj)
    with pytest.raises(ValueError, match=match) as info:
        load_dataset(tmp_path)
    message = str(info.value)
    assert label_file in message
    assert "name has" not in message and "invalid literal" not in message


def test_unreadable_label_pickle_names_the_expected_structure(tmp_path):
    label_file = _stgcn(tmp_path, (NAMES, [0, 1, 2]))
    with open(label_file, "wb") as f:
        f.write(b"not a pickle")
    with pytest.raises(ValueError, match=r"sample_names: list\[str\], labels: list\[int\]") as info:
        load_dataset(tmp_path)
    assert label_file in str(info.value)


# ---------------------------------------------------------------------------------------------------
# the class count


def test_save_npz_keeps_num_classes(tmp_path):
    from skelcl.data import SkeletonArrays, save_npz

    subset = SkeletonArrays(x=_x(n=2), y=np.array([0, 57]), num_classes=60)  # no name: nothing to infer from
    save_npz(tmp_path / "s.npz", subset)
    assert load_dataset(tmp_path / "s.npz").num_classes == 60


def test_npz_without_num_classes_still_loads(tmp_path):
    np.savez(tmp_path / "old.npz", x=_x(), y=np.array([0, 1, 2]))
    assert load_dataset(tmp_path / "old.npz").num_classes == 3
    np.savez(tmp_path / "ntu.npz", x=_x(), y=np.array([0, 4, 6]), name=np.array(NAMES))
    assert load_dataset(tmp_path / "ntu.npz").num_classes == 60


@pytest.mark.parametrize("names, labels, expected", [
    (NAMES, [0, 4, 6], 60),  # NTU-60 actions: all 60 classes, whichever the subset holds
    (NAMES[:2] + ["S018C001P050R001A093"], [0, 4, 92], 120),  # an action past 60: NTU-120
    (NAMES, [0, 1, 2], 3),  # labels that are not the names' actions: they mean something else
    (["a", "b", "c"], [0, 4, 6], 7),  # not NTU names: max + 1
])
def test_stgcn_class_count_comes_from_ntu_names(tmp_path, names, labels, expected):
    _stgcn(tmp_path, (names, labels))
    assert load_dataset(tmp_path).num_classes == expected


def test_pyskl_class_count_comes_from_ntu_names(tmp_path):
    assert load_dataset(_pyskl(tmp_path, labels=(0, 4, 6), names=NAMES)).num_classes == 60
    assert load_dataset(_pyskl(tmp_path, labels=(0, 4, 6))).num_classes == 7


def test_raw_folder_class_count_is_the_datasets(tmp_path):
    _raw_file(tmp_path, "S001C001P001R001A003")
    _raw_file(tmp_path, "S001C002P002R001A007")
    assert load_dataset(tmp_path).num_classes == 60
    _raw_file(tmp_path, "S018C001P050R001A093")
    assert load_dataset(tmp_path).num_classes == 120


def _raw_file(folder, name, frames=15, bodies=True, seed=0):
    """A one-person ``.skeleton`` file (or one with 0 bodies in every frame)."""
    from skelcl.data.ntu import NUM_JOINTS, format_skeleton, make_body

    rng = np.random.default_rng(seed)
    xyz = rng.normal(size=(frames, NUM_JOINTS, 3)) * [0.1, 1, 0.1]
    body = [make_body(1, np.arange(frames), xyz, rng)] if bodies else []
    (folder / f"{name}.skeleton").write_text(format_skeleton(frames, body))


# ---------------------------------------------------------------------------------------------------
# pyskl split keys


@pytest.mark.parametrize("split, name", [
    ({"train": ["clip0", "clip2"], "val": ["clip1", "clip3"]}, "given"),  # GYM, Kinetics
    ({"train": ["clip0", "clip2"], "test": ["clip1", "clip3"]}, "given"),
    ({"xsub_train": ["clip0", "clip2"], "xsub_val": ["clip1", "clip3"]}, "xsub"),  # NTU
    ({"train1": ["clip0", "clip2"], "test1": ["clip1", "clip3"],  # UCF101 / HMDB51 folds
      "train2": ["clip1", "clip3"], "test2": ["clip0", "clip2"]}, "fold1"),
])
def test_pyskl_split_keys_become_benchmarks(tmp_path, split, name):
    d = load_dataset(_pyskl(tmp_path, labels=(0, 1, 2, 3), split=split))
    train, test = d.train_test(name)
    assert train.name.tolist() == ["clip0", "clip2"] and test.name.tolist() == ["clip1", "clip3"]
    if "train2" in split:
        assert sorted(d.splits) == ["fold1", "fold2"]
        assert d.splits["fold2"].tolist() == [False, True, False, True]


def test_unknown_pyskl_benchmark_lists_the_available_ones(tmp_path):
    d = load_dataset(_pyskl(tmp_path, split={"train1": ["clip0"], "test1": ["clip1", "clip2"],
                                             "train2": ["clip1"], "test2": ["clip0", "clip2"]}))
    with pytest.raises(ValueError, match=r"benchmark 'xsub' is not defined.*\['fold1', 'fold2'\]"):
        d.train_test("xsub")


# ---------------------------------------------------------------------------------------------------
# raw .skeleton folders

LISTED = "S001C002P005R002A008"  # on the published NTU-60 missing-skeleton list


def test_raw_folder_skips_listed_samples_and_says_so(tmp_path, capsys):
    from skelcl.data.splits import missing_skeleton_samples

    assert LISTED in missing_skeleton_samples("ntu60")
    _raw_file(tmp_path, "S001C001P001R001A003")
    _raw_file(tmp_path, LISTED, bodies=False)  # 0 bodies in every frame: what such files hold
    d = load_dataset(tmp_path)
    assert d.name.tolist() == ["S001C001P001R001A003"] and d.y.tolist() == [2]
    assert "skipped 1 sample" in capsys.readouterr().err


def test_raw_folder_of_listed_samples_only_is_an_error(tmp_path):
    _raw_file(tmp_path, LISTED, bodies=False)
    with pytest.raises(ValueError, match="missing-skeleton list") as info:
        load_dataset(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_raw_folder_still_fails_on_an_unlisted_bad_file(tmp_path):
    _raw_file(tmp_path, "S001C001P001R001A003")
    _raw_file(tmp_path, "S001C001P001R001A004", bodies=False)
    with pytest.raises(ValueError, match="S001C001P001R001A004.skeleton: no body in any frame"):
        load_dataset(tmp_path)
    bad = tmp_path / "S001C001P001R001A004.skeleton"
    bad.write_text("2\r\n1\r\n72057594037931101 0 1 1 0 0 0 0.01 -0.02 2\r\n24\r\n")
    with pytest.raises(ValueError, match=r"S001C001P001R001A004.skeleton:4: joint count is 24") as info:
        load_dataset(tmp_path)
    assert str(bad) in str(info.value)


# ---------------------------------------------------------------------------------------------------
# empty splits

EMPTY_TEST = r"benchmark 'xsub60' leaves 2 training and 0 test sequences; both must be non-empty"


def _all_train_raw_folder(folder):
    """Two NTU-60 samples of training performers: x-sub leaves no test sequence."""
    _raw_file(folder, "S001C001P001R001A003")
    _raw_file(folder, "S001C002P002R001A007")
    return str(folder)


def test_evaluate_cli_says_the_test_split_is_empty(tmp_path, monkeypatch):
    from skelcl import evaluate

    state = {"config": {"data": "synthetic", "benchmark": "xview", "frames": 8}}
    monkeypatch.setattr(evaluate, "load_checkpoint", lambda path: state)
    raw = _all_train_raw_folder(tmp_path)
    with pytest.raises(ValueError, match=EMPTY_TEST):
        evaluate.main(["--checkpoint", "unused.pt", "--data", raw, "--benchmark", "xsub60"])


def test_split_check_is_the_one_training_makes(tmp_path):
    from skelcl.data.splits import split_train_test
    from skelcl.train import TrainConfig, _load_data

    raw = _all_train_raw_folder(tmp_path)
    with pytest.raises(ValueError, match=EMPTY_TEST):
        split_train_test(load_dataset(raw), "xsub60")
    with pytest.raises(ValueError, match=EMPTY_TEST):
        _load_data(TrainConfig(data=raw, benchmark="xsub60"))


def test_evaluate_encoder_refuses_an_empty_set():
    import torch

    from skelcl.data import SkeletonArrays
    from skelcl.evaluate import evaluate_encoder

    data = SkeletonArrays(x=_x(), y=np.array([0, 1, 2]))
    empty = data.take(np.zeros(len(data), bool))
    with pytest.raises(ValueError, match="test set is empty"):
        evaluate_encoder(torch.nn.Identity(), data, empty, frames=4)


# ---------------------------------------------------------------------------------------------------
# NaN and Inf: memory-mapped files are checked as batches are gathered, in-memory sources at load


def _batches(data, **kw):
    from skelcl.data.loader import BatchLoader

    torch_gather = kw.pop("torch_gather", False)
    loader = BatchLoader(data, kw.pop("batch_size", 2), shuffle=False, drop_last=False, **kw)
    loader.torch_gather = torch_gather
    return list(loader)


def _stgcn_pair_with(tmp_path, bad_value):
    """ST-GCN train (3 samples) and val (2 samples) files; row 1 of the val file holds ``bad_value``."""
    train, val = _x(seed=1), _x(n=2, seed=2)
    val[1, 2, 3, 4, 0] = bad_value
    np.save(tmp_path / "train_data_joint.npy", train)
    np.save(tmp_path / "val_data_joint.npy", val)
    with open(tmp_path / "train_label.pkl", "wb") as f:
        pickle.dump((NAMES, [0, 4, 6]), f)
    with open(tmp_path / "val_label.pkl", "wb") as f:
        pickle.dump((["S001C001P004R001A002", "S001C002P005R001A003"], [1, 2]), f)
    return str(tmp_path / "val_data_joint.npy")


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("prefetch, torch_gather", [(0, False), (2, False), (2, True)])
def test_non_finite_rows_of_a_memory_map_are_named_when_gathered(tmp_path, bad_value, prefetch, torch_gather):
    val_file = _stgcn_pair_with(tmp_path, bad_value)
    data = load_dataset(tmp_path)  # lazy: a full scan of a multi-GB memory map is not done up front
    with pytest.raises(ValueError, match=r"NaN or Inf") as info:
        _batches(data, prefetch=prefetch, torch_gather=torch_gather)
    message = str(info.value)
    assert val_file in message and "row 1 of" in message and "S001C002P005R001A003" in message


def test_non_finite_rows_are_named_in_a_split_part(tmp_path):
    val_file = _stgcn_pair_with(tmp_path, np.nan)
    _, test = load_dataset(tmp_path).train_test("given")  # the val file's rows, as a subset
    with pytest.raises(ValueError, match=r"S001C002P005R001A003.*row 1 of") as info:
        _batches(test, batch_size=1, torch_gather=True)
    assert val_file in str(info.value)
    clean, _ = load_dataset(tmp_path).train_test("given")
    assert len(_batches(clean)) == 2  # the train file alone is clean


def test_non_finite_rows_in_memory_name_the_sample(tmp_path):
    from skelcl.data import SkeletonArrays

    x = _x()
    x[2, 0, 0, 0, 0] = np.nan
    data = SkeletonArrays(x=x, y=np.array([0, 4, 6]), name=np.array(NAMES))
    with pytest.raises(ValueError, match=r"'S001C003P003R001A007' \(row 2 of the loaded data\)"):
        _batches(data, prefetch=0)


def test_uncompressed_skelcl_npz_is_checked_when_gathered(tmp_path):
    x = _x()
    x[1, 1, 1, 1, 1] = np.inf
    np.savez(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2]))
    data = load_dataset(tmp_path / "d.npz")
    with pytest.raises(ValueError, match=r"row 1 of") as info:
        _batches(data, prefetch=0)
    assert str(tmp_path / "d.npz") in str(info.value)


def test_compressed_skelcl_npz_is_checked_at_load(tmp_path):
    x = _x()
    x[2, 0, 5, 0, 1] = np.nan
    np.savez_compressed(tmp_path / "d.npz", x=x, y=np.array([0, 1, 2]), name=np.array(NAMES))
    with pytest.raises(ValueError, match=r"x\[2\] \('S001C003P003R001A007'\) holds NaN or Inf") as info:
        load_dataset(tmp_path / "d.npz")
    assert str(tmp_path / "d.npz") in str(info.value)


def test_pyskl_keypoints_are_checked_at_load(tmp_path):
    kps = [np.ones((1, 4, 17, 2), np.float32) for _ in range(3)]
    kps[1][0, 2, 3, 1] = np.nan
    path = _pyskl(tmp_path, keypoints=kps)
    match = r"annotations\[1\] \('clip1'\): 'keypoint' holds NaN or Inf"
    with pytest.raises(ValueError, match=match) as info:
        load_dataset(path)
    assert path in str(info.value)


def test_ctrgcn_arrays_are_checked_as_they_are_converted(tmp_path):
    x_test = np.ones((2, 4, 150), np.float32)
    x_test[1, 3, 100] = -np.inf
    np.savez(tmp_path / "c.npz", x_train=np.ones((3, 4, 150), np.float32), y_train=np.eye(60)[[0, 1, 2]],
             x_test=x_test, y_test=np.eye(60)[[3, 4]])
    with pytest.raises(ValueError, match=r"x_test\[1\] holds NaN or Inf") as info:
        load_dataset(tmp_path / "c.npz")
    assert str(tmp_path / "c.npz") in str(info.value)


def test_feature_extraction_names_the_bad_sample(tmp_path):
    import torch

    from skelcl.evaluate import extract_features

    _stgcn_pair_with(tmp_path, np.nan)
    data = load_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"S001C002P005R001A003.*row 1 of .*val_data_joint.npy"):
        extract_features(torch.nn.Flatten(), data, frames=4, batch_size=2, device="cpu")


def test_stgcn_file_read_into_memory_is_checked_at_load(tmp_path):
    x = _x().astype(np.float64)  # not float32: converted, so held in memory
    x[2, 0, 0, 0, 0] = np.nan
    _stgcn(tmp_path, (NAMES, [0, 4, 6]), x=x)
    with pytest.raises(ValueError, match=r"_joint.npy': row 2 \('S001C003P003R001A007'\) holds NaN"):
        load_dataset(tmp_path)
