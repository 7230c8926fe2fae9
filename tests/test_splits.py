"""NTU benchmark membership rules and the shipped missing-skeleton lists."""

from __future__ import annotations

import numpy as np
import pytest

from skelcl.data.splits import (
    NTU60_TRAIN_SUBJECTS,
    NTU120_TRAIN_SUBJECTS,
    missing_skeleton_samples,
    ntu_split,
    ntu_splits,
    parse_ntu_names,
)


def _name(s=1, c=1, p=1, r=1, a=1):
    return f"S{s:03d}C{c:03d}P{p:03d}R{r:03d}A{a:03d}"


def test_parse_fields():
    f = parse_ntu_names(["S017C002P103R002A120", _name()])
    assert f["setup"].tolist() == [17, 1] and f["camera"].tolist() == [2, 1]
    assert f["performer"].tolist() == [103, 1] and f["replication"].tolist() == [2, 1]
    assert f["action"].tolist() == [120, 1]


def test_bad_name_and_benchmark():
    with pytest.raises(ValueError, match="S01C001"):
        parse_ntu_names(["S01C001P001R001A001"])
    with pytest.raises(ValueError, match="benchmark"):
        ntu_split([_name()], "xsub")


def test_subject_lists():
    assert len(NTU60_TRAIN_SUBJECTS) == 20 and len(NTU120_TRAIN_SUBJECTS) == 53
    assert NTU60_TRAIN_SUBJECTS < NTU120_TRAIN_SUBJECTS


def test_xsub_rules():
    names = [_name(p=p) for p in range(1, 107)]
    m60 = ntu_split(names, "xsub60")
    m120 = ntu_split(names, "xsub120")
    assert np.flatnonzero(m60).tolist() == [p - 1 for p in sorted(NTU60_TRAIN_SUBJECTS)]
    assert m60[[0, 1, 3, 4, 37]].all() and not m60[[2, 5, 38, 44]].any()  # P001, P002, P004, P005, P038
    assert m120[[44, 102]].all() and not m120[[43, 103, 105]].any()  # P045, P103 train; P044, P104 test


def test_xview_and_xset_rules():
    names = [_name(s=s, c=c) for s in (1, 2, 17, 18, 32) for c in (1, 2, 3)]
    view = ntu_split(names, "xview60").reshape(5, 3)
    assert (view == [False, True, True]).all()
    setup = ntu_split(names, "xset120").reshape(5, 3)
    assert (setup[:, 0] == [False, True, False, True, True]).all()


def test_applicable_benchmarks():
    assert set(ntu_splits([_name(s=17, a=60), _name()])) == {"xsub60", "xview60"}
    assert set(ntu_splits([_name(s=18, a=1), _name()])) == {"xsub120", "xset120"}
    assert set(ntu_splits([_name(a=61)])) == {"xsub120", "xset120"}
    assert ntu_splits(["walk_01"]) == {}


def test_missing_lists_have_the_published_counts():
    m60 = missing_skeleton_samples("ntu60")
    m120 = missing_skeleton_samples("ntu120")
    assert len(m60) == 302 and len(m120) == 535
    assert m60 < m120
    assert "S001C002P005R002A008" in m60 and "S032C003P067R002A077" in m120
    f = parse_ntu_names(sorted(m120 - m60))
    assert f["setup"].min() >= 18
    with pytest.raises(ValueError, match="dataset"):
        missing_skeleton_samples("ntu90")
