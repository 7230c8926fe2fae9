"""Layouts, SkeletonResNet, the projection head, the view samplers and checkpoint conversion, checked
against independent statements of what they should compute: official joint lists written by name,
hand-worked partitions, a functional NCHW ResNet, sampling statistics and exact camera geometry."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from nctv_stgcn import NCTVSTGCN

from skelcl.layouts import Layout, get_layout
from skelcl.models import STGCN, ContrastiveModel, SkeletonResNet, convert_stgcn_state_dict
from skelcl.reference import rotation_matrix
from skelcl.views import PRESETS, ViewSampler, get_sampler

# --------------------------------------------------------------------------------------------------
# Layouts, by joint name


def _pairs(pairs) -> set[frozenset]:
    return {frozenset(p) for p in pairs}


NTU_NAMES = [
    "spine base", "spine mid", "neck", "head",
    "left shoulder", "left elbow", "left wrist", "left hand",
    "right shoulder", "right elbow", "right wrist", "right hand",
    "left hip", "left knee", "left ankle", "left foot",
    "right hip", "right knee", "right ankle", "right foot",
    "spine shoulder", "left hand tip", "left thumb", "right hand tip", "right thumb",
]
# The bones of the ST-GCN NTU graph (hand tip - thumb - hand, as in every public ST-GCN).
NTU_BONES = [
    ("spine base", "spine mid"), ("spine mid", "spine shoulder"), ("spine shoulder", "neck"),
    ("neck", "head"), ("spine base", "left hip"), ("spine base", "right hip"),
    *[(f"{s} {a}", f"{s} {b}") for s in ("left", "right") for a, b in
      (("hip", "knee"), ("knee", "ankle"), ("ankle", "foot"), ("shoulder", "elbow"), ("elbow", "wrist"),
       ("wrist", "hand"), ("hand", "thumb"), ("thumb", "hand tip"))],
    ("spine shoulder", "left shoulder"), ("spine shoulder", "right shoulder"),
]
KINECT1_NAMES = [
    "hip center", "spine", "shoulder center", "head",
    "left shoulder", "left elbow", "left wrist", "left hand",
    "right shoulder", "right elbow", "right wrist", "right hand",
    "left hip", "left knee", "left ankle", "left foot",
    "right hip", "right knee", "right ankle", "right foot",
]
KINECT1_BONES = [
    ("hip center", "spine"), ("spine", "shoulder center"), ("shoulder center", "head"),
    ("shoulder center", "left shoulder"), ("shoulder center", "right shoulder"),
    ("hip center", "left hip"), ("hip center", "right hip"),
    *[(f"{s} {a}", f"{s} {b}") for s in ("left", "right") for a, b in
      (("hip", "knee"), ("knee", "ankle"), ("ankle", "foot"), ("shoulder", "elbow"), ("elbow", "wrist"),
       ("wrist", "hand"))],
]
COCO_NAMES = [
    "nose", "left eye", "right eye", "left ear", "right ear", "left shoulder", "right shoulder",
    "left elbow", "right elbow", "left wrist", "right wrist", "left hip", "right hip",
    "left knee", "right knee", "left ankle", "right ankle",
]
# The usual COCO tree for graph networks: the nose joins the face and both shoulders.
COCO_BONES = [
    ("nose", "left eye"), ("nose", "right eye"), ("left eye", "left ear"), ("right eye", "right ear"),
    ("nose", "left shoulder"), ("nose", "right shoulder"),
    *[(f"{s} {a}", f"{s} {b}") for s in ("left", "right") for a, b in
      (("shoulder", "elbow"), ("elbow", "wrist"), ("shoulder", "hip"), ("hip", "knee"), ("knee", "ankle"))],
]


def _mirror_pairs(names):
    return {(names.index(n), names.index("right" + n[4:])) for n in names if n.startswith("left ")}


@pytest.mark.parametrize(
    "name, names, bones, center, graph_center",
    [
        ("ntu25", NTU_NAMES, NTU_BONES, "spine mid", "spine shoulder"),
        ("kinect20", KINECT1_NAMES, KINECT1_BONES, "spine", "shoulder center"),
        ("coco17", COCO_NAMES, COCO_BONES, "nose", "nose"),
    ],
)
def test_layouts_follow_the_official_joint_lists(name, names, bones, center, graph_center):
    lay = get_layout(name)
    assert lay.num_joints == len(names)
    assert _pairs(lay.edges) == _pairs((names.index(a), names.index(b)) for a, b in bones)
    assert set(lay.left_right) == _mirror_pairs(names)  # (left, right), every mirrored joint
    assert names[lay.center] == center and names[lay.graph_center] == graph_center


def test_partitions_worked_by_hand():
    # Path 0-1-2-3-4 rooted at 1. Distances to the root, limited to one hop: 1, 0, 1, inf, inf.
    # Columns are divided by (degree + 1) of the output joint w: 2, 3, 3, 3, 2.
    lay = Layout("path", 5, ((0, 1), (1, 2), (2, 3), (3, 4)), 1, (), 1)
    a = lay.adjacency_partitions().double()
    want = torch.zeros(3, 5, 5, dtype=torch.float64)
    want[0] = torch.diag(torch.tensor([1 / 2, 1 / 3, 1 / 3, 1 / 3, 1 / 2], dtype=torch.float64))
    # [v, w]: input v weighs into output w; partition 1 when v is not nearer the root than w
    # (both beyond the hop limit counts as equally far), partition 2 when v is nearer.
    entries = [(0, 1, 1), (1, 0, 2), (2, 1, 1), (1, 2, 2), (3, 2, 1), (2, 3, 2), (3, 4, 1), (4, 3, 1)]
    for v, w, part in entries:
        want[part, v, w] = 1 / (2 if w in (0, 4) else 3)
    torch.testing.assert_close(a, want, rtol=0, atol=1e-7)
    # NTU, rooted at the spine shoulder (index 20, degree 4): its self weight is 1/5 and its four
    # neighbours feed it through partition 1; it feeds them through partition 2.
    ntu = get_layout("ntu25").adjacency_partitions().double()
    assert ntu[0, 20, 20] == pytest.approx(1 / 5)
    for nb in (1, 2, 4, 8):
        assert ntu[1, nb, 20] == pytest.approx(1 / 5) and ntu[2, nb, 20] == 0
        assert ntu[2, 20, nb] > 0 and ntu[1, 20, nb] == 0


# --------------------------------------------------------------------------------------------------
# SkeletonResNet and the projection head


def _bn(x, bn, train):
    mean, var = (None, None) if train else (bn.running_mean, bn.running_var)
    return F.batch_norm(x, mean, var, bn.weight, bn.bias, training=train, eps=bn.eps)


def _conv_bn(seq, x, train):
    conv, bn = seq
    return _bn(F.conv2d(x, conv.weight.contiguous(), None, conv.stride, conv.padding), bn, train)


def _resnet_reference(model, x, train):
    """ResNet on the image (C, H=T, W=V) of every (sequence, person), NCHW, then persons averaged."""
    n, c, t, v, m = x.shape
    y = x.permute(0, 4, 1, 2, 3).reshape(n * m, c, t, v)
    y = F.relu(_conv_bn(model.stem, y, train))
    for blk in model.layers:
        out = _conv_bn(blk.conv2, F.relu(_conv_bn(blk.conv1, y, train)), train)
        short = y if isinstance(blk.shortcut, torch.nn.Identity) else _conv_bn(blk.shortcut, y, train)
        y = F.relu(out + short)
    h = y.mean(dim=(2, 3)).view(n, m, -1).mean(dim=1)
    return h if model.head is None else F.linear(h, model.head.weight, model.head.bias)


@pytest.mark.parametrize("depth, num_classes, train", [(10, None, False), (10, 6, True), (18, None, True)])
def test_resnet_is_a_2d_resnet_over_frames_by_joints(depth, num_classes, train):
    gen = torch.Generator().manual_seed(depth + int(train))
    model = SkeletonResNet(depth=depth, width=4, num_classes=num_classes).double().train(train)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.weight.data.uniform_(0.5, 1.5, generator=gen)
            mod.bias.data.uniform_(-0.5, 0.5, generator=gen)
            mod.running_mean.uniform_(-0.2, 0.2, generator=gen)
            mod.running_var.uniform_(0.5, 2.0, generator=gen)
    x = torch.randn(3, 3, 13, 25, 2, generator=gen, dtype=torch.float64)
    x[1, ..., 1] = 0  # second person absent
    got = model(x)
    want = _resnet_reference(model, x, train)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    widths = [blk.conv1[0].out_channels for blk in model.layers]
    strides = [blk.conv1[0].stride for blk in model.layers]
    per_stage = {10: 1, 18: 2}[depth]
    assert widths == [w for w in (4, 8, 16, 32) for _ in range(per_stage)]
    assert strides == [(2, 2) if i % per_stage == 0 and i > 0 else (1, 1) for i in range(len(strides))]


def test_projection_is_a_two_layer_mlp_and_encode_returns_h():
    gen = torch.Generator().manual_seed(3)
    enc = SkeletonResNet(depth=10, width=2).double().eval()
    model = ContrastiveModel(enc, proj_dim=5, hidden=7).double().eval()
    x = torch.randn(2, 3, 6, 25, 2, generator=gen, dtype=torch.float64)
    h = model.encode(x)
    torch.testing.assert_close(h, enc(x))
    assert h.shape == (2, 16)
    l1, l2 = [mod for mod in model.projector if isinstance(mod, torch.nn.Linear)]
    assert (l1.in_features, l1.out_features, l2.out_features) == (16, 7, 5)
    want = (h @ l1.weight.t() + l1.bias).clamp_min(0) @ l2.weight.t() + l2.bias
    torch.testing.assert_close(model(x), want)
    assert ContrastiveModel(enc).hidden == 16  # hidden defaults to the encoder width


# --------------------------------------------------------------------------------------------------
# View samplers


def _draw(sampler, n, t=1, seed=0):
    return get_sampler(sampler).sample(n, t, generator=torch.Generator().manual_seed(seed))


def _in_camera(angles, shift):
    return torch.einsum("...ij,...j->...i", rotation_matrix(angles.double()), shift.double())


def _assert_uniform_counts(values, allowed, tol=0.012):
    counts = torch.stack([(values - a).abs().lt(1e-5).sum() for a in allowed]).double() / values.numel()
    assert counts.sum() == pytest.approx(1.0)
    assert (counts - 1 / len(allowed)).abs().max() < tol, counts


def test_paper_sampler_distributions():
    n = 30000
    angles, shift = _draw("paper", n)
    degrees = torch.rad2deg(angles.double())
    for axis in range(3):
        _assert_uniform_counts(degrees[:, axis], [0, 60, 120, 180, 240, 300])
    # the three angles are drawn independently: 36 equally likely (alpha, beta) pairs
    pair = degrees[:, 0].round() * 1000 + degrees[:, 1].round()
    _assert_uniform_counts(pair, [a * 1000 + b for a in range(0, 360, 60) for b in range(0, 360, 60)],
                           tol=0.006)
    cam = _in_camera(angles, shift)  # d along the virtual camera's z axis: R d = (0, 0, m * 0.5)
    assert cam[:, :2].abs().max() < 1e-5
    _assert_uniform_counts(cam[:, 2] / 0.5, range(6))


def test_continuous_sampler_distributions():
    n = 30000
    ranges = ((-10.0, 30.0), (0.0, 90.0), (-180.0, 180.0))
    sampler = ViewSampler(angles="continuous", alpha_range_deg=ranges[0], beta_range_deg=ranges[1],
                          gamma_range_deg=ranges[2], distance="continuous", unit=0.25)
    angles, shift = _draw(sampler, n, seed=1)
    degrees = torch.rad2deg(angles.double())
    for axis, (lo, hi) in enumerate(ranges):
        d = degrees[:, axis]
        assert lo <= d.min() and d.max() <= hi
        assert d.mean() == pytest.approx((lo + hi) / 2, abs=0.02 * (hi - lo))
        assert d.var() == pytest.approx((hi - lo) ** 2 / 12, rel=0.04)
        below = (d < lo + 0.25 * (hi - lo)).double().mean()
        assert below == pytest.approx(0.25, abs=0.015)
    m = _in_camera(angles, shift)[:, 2] / 0.25
    assert 0 <= m.min() and m.max() <= 5 + 1e-5
    assert m.mean() == pytest.approx(2.5, abs=0.05) and m.var() == pytest.approx(25 / 12, rel=0.04)


def test_random_direction_is_isotropic():
    n = 30000
    sampler = get_sampler("paper", direction="random", distance="fixed", distance_fixed=3.0, unit=0.5)
    _, shift = _draw(sampler, n, seed=2)
    torch.testing.assert_close(shift.norm(dim=-1), torch.full((n,), 1.5), rtol=0, atol=1e-5)
    u = shift.double() / 1.5
    assert u.mean(0).abs().max() < 0.02
    torch.testing.assert_close(u.t() @ u / n, torch.eye(3, dtype=torch.float64) / 3, rtol=0, atol=0.015)


def test_fixed_angles_and_distances_exact():
    sampler = ViewSampler(random_angles=(False, False, False), fixed_angles_deg=(0.0, 90.0, 0.0),
                          distance="fixed", distance_fixed=2.0)
    angles, shift = _draw(sampler, 4)
    torch.testing.assert_close(angles, torch.tensor([[0.0, math.pi / 2, 0.0]]).expand(4, 3))
    # a 90 degree yaw turns the new viewing axis onto the old x axis: d = 2 * 0.5 * (1, 0, 0)
    torch.testing.assert_close(shift, torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 3), rtol=0, atol=1e-6)
    _, shift = _draw(get_sampler(sampler, direction="world-z"), 4)
    torch.testing.assert_close(shift, torch.tensor([[0.0, 0.0, 1.0]]).expand(4, 3))
    # one angle held, the others from the degree set
    held = get_sampler("paper", random_angles=(True, False, True), fixed_angles_deg=(0.0, 45.0, 0.0))
    angles, _ = _draw(held, 2000, t=3)
    assert angles.shape == (2000, 3)
    torch.testing.assert_close(torch.rad2deg(angles[:, 1]), torch.full((2000,), 45.0))
    _assert_uniform_counts(torch.rad2deg(angles[:, 0].double()), [0, 60, 120, 180, 240, 300], tol=0.04)


def test_frame_level_draws_every_frame_independently():
    angles, shift = _draw(PRESETS["paper-frame"], 400, t=12, seed=4)
    assert angles.shape == shift.shape == (400, 12, 3)
    cam = _in_camera(angles, shift)
    assert cam[..., :2].abs().max() < 1e-5
    _assert_uniform_counts(cam[..., 2] / 0.5, range(6), tol=0.03)
    # consecutive frames share their camera only by chance: 1 / 6**4 for three angles and distance
    same = ((angles[:, 1:] == angles[:, :-1]).all(-1) & (shift[:, 1:] == shift[:, :-1]).all(-1))
    assert same.double().mean() < 0.01


@pytest.mark.parametrize("n, t, frame_level", [(1, 1, False), (1, 1, True), (3, 2, False)])
def test_draws_do_not_share_memory_with_later_draws(n, t, frame_level):
    sampler = get_sampler("distance-only", fixed_angles_deg=(10.0, 20.0, 30.0), frame_level=frame_level)
    angles, shift = sampler.sample(n, t)
    angles.add_(1.0)  # a caller may change its own draw in place
    shift.add_(1.0)
    again, _ = sampler.sample(n, t)
    want = torch.deg2rad(torch.tensor([10.0, 20.0, 30.0]))
    torch.testing.assert_close(again, want.expand_as(again))


# --------------------------------------------------------------------------------------------------
# Checkpoint conversion


@pytest.mark.parametrize("layout", ["kinect20", "coco17"])
def test_converted_checkpoints_of_other_layouts_in_a_training_wrapper(layout):
    gen = torch.Generator().manual_seed(11)
    lay = get_layout(layout)
    widths = (8, 8, 16, 16)
    ref = NCTVSTGCN(lay.adjacency_partitions(), widths=widths, num_classes=5).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0.0, 0.3, generator=gen)
        for mod in ref.modules():
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.running_mean.uniform_(-0.3, 0.3, generator=gen)
                mod.running_var.uniform_(0.5, 2.0, generator=gen)
    # a DataParallel model's keys inside a training checkpoint
    ckpt = {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()}, "epoch": 3}
    ours = STGCN(layout=layout, widths=widths, num_classes=5).double()
    ours.load_state_dict(convert_stgcn_state_dict(ckpt))
    x = torch.randn(2, 3, 9, lay.num_joints, 2, generator=gen, dtype=torch.float64)
    x[0, ..., 1] = 0
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref.eval()(x), rtol=1e-9, atol=1e-10)
