"""Layouts and the ST-GCN spatial partitions, checked against a literal re-statement of ST-GCN's
graph construction (hop distances by matrix powers, per-entry loops)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from skelcl.layouts import LAYOUTS, Layout, get_layout


def _stgcn_partitions(num_node, edges, center, max_hop=1):
    a = np.zeros((num_node, num_node))
    for i, j in edges:
        a[i, j] = a[j, i] = 1
    a_loop = a + np.eye(num_node)
    hop = np.full((num_node, num_node), np.inf)
    transfer = [np.linalg.matrix_power(a_loop, d) for d in range(max_hop + 1)]
    for d in range(max_hop, -1, -1):
        hop[transfer[d] > 0] = d
    adjacency = np.zeros((num_node, num_node))
    for d in range(max_hop + 1):
        adjacency[hop == d] = 1
    norm = adjacency / adjacency.sum(axis=0, keepdims=True)
    parts = []
    for d in range(max_hop + 1):
        root, close, further = (np.zeros((num_node, num_node)) for _ in range(3))
        for i in range(num_node):
            for j in range(num_node):
                if hop[j, i] == d:
                    if hop[j, center] == hop[i, center]:
                        root[j, i] = norm[j, i]
                    elif hop[j, center] > hop[i, center]:
                        close[j, i] = norm[j, i]
                    else:
                        further[j, i] = norm[j, i]
        if d == 0:
            parts.append(root)
        else:
            parts += [root + close, further]
    return np.stack(parts)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_partitions_match_stgcn_construction(name):
    lay = get_layout(name)
    got = lay.adjacency_partitions()
    assert got.shape == (3, lay.num_joints, lay.num_joints) and got.dtype == torch.float32
    expect = _stgcn_partitions(lay.num_joints, lay.edges, lay.graph_center)
    np.testing.assert_allclose(got.numpy(), expect, rtol=1e-6, atol=0)
    # Column-normalised: every output joint's incoming weights sum to one over all partitions.
    np.testing.assert_allclose(got.sum(dim=(0, 1)).numpy(), 1.0, rtol=1e-6)
    other = lay.adjacency_partitions(center=lay.center)
    expect_other = _stgcn_partitions(lay.num_joints, lay.edges, lay.center)
    np.testing.assert_allclose(other.numpy(), expect_other, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_is_a_connected_tree_with_mirrored_pairs(name):
    lay = get_layout(name)
    assert len(lay.edges) == lay.num_joints - 1
    assert torch.isfinite(lay.hop_distance(max_hop=lay.num_joints)).all()  # connected
    flat = [j for pair in lay.left_right for j in pair]
    assert len(flat) == len(set(flat))
    degree = lay.adjacency().sum(0)
    for a, b in lay.left_right:  # mirrored joints have the same number of bones
        assert degree[a] == degree[b]


def test_known_facts():
    ntu = get_layout("ntu25")
    assert ntu.num_joints == 25 and ntu.center == 1 and ntu.graph_center == 20
    assert (0, 1) in ntu.edges and (4, 8) in ntu.left_right
    assert get_layout("kinect20").num_joints == 20 and get_layout("coco17").num_joints == 17
    assert get_layout(ntu) is ntu


def test_bad_input_raises():
    with pytest.raises(ValueError, match="layout"):
        get_layout("ntu26")
    with pytest.raises(ValueError, match="edges"):
        Layout("bad", 3, ((0, 3),), 0, (), 0)
    with pytest.raises(ValueError, match="center"):
        Layout("bad", 3, ((0, 1),), 5, (), 0)
    with pytest.raises(ValueError, match="center"):
        get_layout("ntu25").adjacency_partitions(center=30)
    with pytest.raises(ValueError, match="max_hop"):
        get_layout("ntu25").adjacency_partitions(max_hop=2)
