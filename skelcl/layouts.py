"""Skeleton layouts (joint graphs) as data: joints, bones, centre joint, left/right pairs.

All indices are 0-based. ``center`` is the joint used to normalise a sequence (body centre);
``graph_center`` is the root the ST-GCN spatial partitions are measured from. The two differ for
NTU: the original ST-GCN graph roots the NTU skeleton at joint 21 ("spine shoulder", index 20)
while the body centre is joint 2 ("middle of the spine", index 1). Keeping ST-GCN's root keeps
the adjacency equal to the one every public ST-GCN checkpoint was trained with.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Layout", "LAYOUTS", "get_layout"]


@dataclass(frozen=True)
class Layout:
    name: str
    num_joints: int
    edges: tuple[tuple[int, int], ...]
    center: int
    left_right: tuple[tuple[int, int], ...]
    graph_center: int

    def __post_init__(self):
        v = self.num_joints
        for what, pairs in (("edges", self.edges), ("left_right", self.left_right)):
            for a, b in pairs:
                if not (0 <= a < v and 0 <= b < v) or a == b:
                    raise ValueError(
                        f"layout {self.name}: {what} pair ({a}, {b}) is not two joints in [0, {v})")
        for what, j in (("center", self.center), ("graph_center", self.graph_center)):
            if not 0 <= j < v:
                raise ValueError(f"layout {self.name}: {what} {j} is not a joint in [0, {v})")

    def adjacency(self) -> torch.Tensor:
        """(V, V) float64 0/1 adjacency of the bones, symmetric, without self-loops."""
        a = torch.zeros(self.num_joints, self.num_joints, dtype=torch.float64)
        for i, j in self.edges:
            a[i, j] = a[j, i] = 1.0
        return a

    def hop_distance(self, max_hop: int = 1) -> torch.Tensor:
        """(V, V) float64 graph distance, ``inf`` beyond ``max_hop``."""
        if max_hop < 0:
            raise ValueError(f"max_hop must be >= 0, got {max_hop}")
        v = self.num_joints
        step = self.adjacency() + torch.eye(v, dtype=torch.float64)
        dist = torch.full((v, v), float("inf"), dtype=torch.float64)
        reach = torch.eye(v, dtype=torch.float64)
        for d in range(max_hop + 1):
            dist[(reach > 0) & torch.isinf(dist)] = d
            reach = reach @ step
        return dist

    def adjacency_partitions(self, max_hop: int = 1, center: int | None = None) -> torch.Tensor:
        """(3, V, V) float32 ST-GCN "spatial" partitions: root, centripetal, centrifugal.

        ``A[k, v, w]`` weighs input joint ``v`` into output joint ``w``. As in ST-GCN, the
        hop-limited adjacency (self-loops included) is column-normalised (each column divided by
        the degree of ``w``), then each entry goes to a partition by comparing the distances of
        ``v`` and ``w`` to the root, where distances are the same ``max_hop``-limited ones: two
        joints both farther than ``max_hop`` from the root count as equally far (root partition),
        exactly as in the original construction, so that trained checkpoints keep their meaning.
        """
        root = self.graph_center if center is None else center
        if not 0 <= root < self.num_joints:
            raise ValueError(f"center must be a joint in [0, {self.num_joints}), got {root}")
        if max_hop != 1:
            raise ValueError(f"max_hop must be 1 (three partitions), got {max_hop}")
        dist = self.hop_distance(max_hop)
        near = (dist <= max_hop).to(torch.float64)
        norm = near / near.sum(dim=0, keepdim=True)  # column-normalised
        to_root = dist[:, root]
        same = to_root[:, None] == to_root[None, :]  # [v, w]: v as far from the root as w
        farther = to_root[:, None] > to_root[None, :]  # v farther than w: flows towards the root
        hop0 = dist == 0
        parts = torch.zeros(3, self.num_joints, self.num_joints, dtype=torch.float64)
        parts[0] = torch.where(hop0, norm, 0.0)
        hop1 = dist == 1
        parts[1] = torch.where(hop1 & (same | farther), norm, 0.0)
        parts[2] = torch.where(hop1 & ~same & ~farther, norm, 0.0)
        return parts.to(torch.float32)


def _one_based(pairs):
    return tuple((a - 1, b - 1) for a, b in pairs)


# Kinect v2 (NTU RGB+D): 1 spine base, 2 spine mid, 3 neck, 4 head, 5-8 left arm, 9-12 right arm,
# 13-16 left leg, 17-20 right leg, 21 spine shoulder, 22-23 left hand tip/thumb, 24-25 right.
_NTU25 = Layout(
    name="ntu25",
    num_joints=25,
    edges=_one_based([
        (1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21), (10, 9),
        (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1), (18, 17), (19, 18),
        (20, 19), (22, 23), (23, 8), (24, 25), (25, 12),
    ]),
    center=1,
    left_right=_one_based([(5, 9), (6, 10), (7, 11), (8, 12), (13, 17), (14, 18), (15, 19), (16, 20),
                           (22, 24), (23, 25)]),
    graph_center=20,
)

# Kinect v1 (NW-UCLA, MSR Action3D, UTKinect): 1 hip centre, 2 spine, 3 shoulder centre, 4 head,
# 5-8 left arm, 9-12 right arm, 13-16 left leg, 17-20 right leg.
_KINECT20 = Layout(
    name="kinect20",
    num_joints=20,
    edges=_one_based([
        (1, 2), (2, 3), (3, 4), (3, 5), (5, 6), (6, 7), (7, 8), (3, 9), (9, 10), (10, 11), (11, 12),
        (1, 13), (13, 14), (14, 15), (15, 16), (1, 17), (17, 18), (18, 19), (19, 20),
    ]),
    center=1,
    left_right=_one_based([(5, 9), (6, 10), (7, 11), (8, 12), (13, 17), (14, 18), (15, 19), (16, 20)]),
    graph_center=2,
)

# COCO-17 (2D pose estimators): 0 nose, 1-4 eyes and ears, 5-10 arms, 11-16 legs. No spine joint:
# the nose is the root of the tree and the centre, as in common COCO graph setups.
_COCO17 = Layout(
    name="coco17",
    num_joints=17,
    edges=(
        (15, 13), (13, 11), (16, 14), (14, 12), (11, 5), (12, 6), (9, 7), (7, 5), (10, 8), (8, 6),
        (5, 0), (6, 0), (1, 0), (3, 1), (2, 0), (4, 2),
    ),
    center=0,
    left_right=((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16)),
    graph_center=0,
)

LAYOUTS: dict[str, Layout] = {lay.name: lay for lay in (_NTU25, _KINECT20, _COCO17)}


def get_layout(name: str | Layout) -> Layout:
    """Layout by name ("ntu25", "kinect20", "coco17"); a Layout passes through."""
    if isinstance(name, Layout):
        return name
    try:
        return LAYOUTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"layout must be one of {sorted(LAYOUTS)}, got {name!r}") from None
