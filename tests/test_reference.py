"""The plain-PyTorch references against hand computations (they are the ground truth for the kernels)."""

from __future__ import annotations

import math

import pytest
import torch

from skelcl import reference as ref

DEG90 = math.pi / 2


@pytest.mark.parametrize(
    "angles, point, expected",
    [
        # Passive rotations: the axes turn anticlockwise, so coordinates turn clockwise.
        ((DEG90, 0, 0), (0, 1, 0), (0, 0, -1)),
        ((DEG90, 0, 0), (0, 0, 1), (0, 1, 0)),
        ((0, DEG90, 0), (1, 0, 0), (0, 0, 1)),
        ((0, DEG90, 0), (0, 0, 1), (-1, 0, 0)),
        ((0, 0, DEG90), (1, 0, 0), (0, -1, 0)),
        ((0, 0, DEG90), (0, 1, 0), (1, 0, 0)),
        ((0, 0, 0), (0.3, -2, 5), (0.3, -2, 5)),
    ],
)
def test_rotation_quarter_turns_move_known_points(angles, point, expected):
    r = ref.rotation_matrix(torch.tensor(angles, dtype=torch.float64))
    got = r @ torch.tensor(point, dtype=torch.float64)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-12, rtol=0)


def test_rotation_order_is_x_then_y_then_z():
    a, b, g = 0.3, -1.1, 2.0
    r = ref.rotation_matrix(torch.tensor([a, b, g], dtype=torch.float64))
    rx = ref.rotation_matrix(torch.tensor([a, 0, 0], dtype=torch.float64))
    ry = ref.rotation_matrix(torch.tensor([0, b, 0], dtype=torch.float64))
    rz = ref.rotation_matrix(torch.tensor([0, 0, g], dtype=torch.float64))
    torch.testing.assert_close(r, rx @ ry @ rz)
    assert not torch.allclose(r, rz @ ry @ rx)


def test_rotation_is_orthonormal_with_det_one():
    angles = torch.rand(64, 7, 3, dtype=torch.float64) * 20 - 10
    r = ref.rotation_matrix(angles)
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    torch.testing.assert_close(r @ r.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(64, 7, dtype=torch.float64))


def _sequence(n=3, t=6, v=5, m=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, t, v, m, generator=g, dtype=torch.float64)


def test_view_transform_keeps_padding_exactly_zero():
    x = _sequence()
    x[0, :, 4:] = 0  # short sequence
    x[1, :, :, :, 1] = 0  # no second person
    x[2, :, 2, :, 0] = 0  # person 0 missing in one frame
    angles = torch.rand(3, 3, dtype=torch.float64) * 6
    shift = torch.randn(3, 3, dtype=torch.float64)
    out = ref.view_transform(x, angles, shift, center_joint=1)
    absent = ~ref.present_mask(x)  # (N, T, M)
    assert absent.sum() > 0
    assert (out.permute(0, 2, 4, 1, 3)[absent] == 0).all()
    assert (out.permute(0, 2, 4, 1, 3)[~absent] != 0).any()


def test_centering_uses_first_frame_where_person0_is_present():
    x = _sequence(n=1, t=5)
    x[0, :, :2, :, 0] = 0  # person 0 appears at frame 2
    zero = torch.zeros(1, 3, dtype=torch.float64)
    out = ref.view_transform(x, zero, zero, center_joint=3)
    expected_center = x[0, :, 2, 3, 0]
    torch.testing.assert_close(out[0, :, 2, 3, 0], torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(out[0, :, 4, 0, 1], x[0, :, 4, 0, 1] - expected_center)


def test_zero_angles_and_shift_only_centre():
    x = _sequence()
    zero = torch.zeros(3, 3, dtype=torch.float64)
    out = ref.view_transform(x, zero, zero, center_joint=1)
    centre = x[:, :, 0, 1, 0]
    torch.testing.assert_close(out, x - centre[:, :, None, None, None])


def test_shift_is_subtracted_before_rotation():
    # One joint at the origin after centring; shift d, rotation R: expect R @ (-d).
    x = torch.zeros(1, 3, 1, 2, 1, dtype=torch.float64)
    x[0, :, 0, 1, 0] = torch.tensor([1.0, 2.0, 3.0])
    x[0, :, 0, 0, 0] = torch.tensor([1.0, 2.0, 4.0])
    angles = torch.tensor([[0.0, 0.0, DEG90]], dtype=torch.float64)
    d = torch.tensor([[0.0, 0.0, 2.0]], dtype=torch.float64)
    out = ref.view_transform(x, angles, d, center_joint=1)
    # joint 1 -> R @ (0,0,-2) = (0,0,-2); joint 0 -> R @ (0,0,-1) = (0,0,-1)
    torch.testing.assert_close(out[0, :, 0, 1, 0], torch.tensor([0.0, 0.0, -2.0], dtype=torch.float64))
    torch.testing.assert_close(out[0, :, 0, 0, 0], torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64))


def test_per_frame_angles_match_per_sequence_when_constant():
    x = _sequence()
    angles = torch.rand(3, 3, dtype=torch.float64) * 6
    shift = torch.randn(3, 3, dtype=torch.float64)
    seq = ref.view_transform(x, angles, shift)
    per_frame_angles, per_frame_shift = angles[:, None].expand(3, 6, 3), shift[:, None].expand(3, 6, 3)
    frm = ref.view_transform(x, per_frame_angles, per_frame_shift, per_frame=True)
    torch.testing.assert_close(seq, frm)


def test_view_transform_preserves_bone_lengths():
    x = _sequence()
    angles, shift = torch.rand(3, 3, dtype=torch.float64) * 6, torch.randn(3, 3, dtype=torch.float64)
    out = ref.view_transform(x, angles, shift)
    bone = lambda seq: (seq[:, :, :, 0] - seq[:, :, :, 2]).norm(dim=1)  # joints 0-2 of every slot
    torch.testing.assert_close(bone(out), bone(x))


def test_view_transform_rejects_bad_shapes():
    x = _sequence()
    with pytest.raises(ValueError, match="angles"):
        ref.view_transform(x, torch.zeros(2, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="center_joint"):
        ref.view_transform(x, torch.zeros(3, 3), torch.zeros(3, 3), center_joint=5)


def test_ntxent_tiny_example_by_hand():
    # N = 2, D = 2: z = [e1, e2 | e1, -e2] after normalisation (scales must not matter).
    z1 = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    z2 = torch.tensor([[0.5, 0.0], [0.0, -3.0]], dtype=torch.float64)
    tau = 0.5
    e = math.exp
    # anchor 0 (e1): others e2 (0), e1 (1, positive), -e2 (0)
    l0 = -math.log(e(1 / tau) / (e(0) + e(1 / tau) + e(0)))
    # anchor 1 (e2): others e1 (0), e1 (0), -e2 (-1, positive)
    l1 = -math.log(e(-1 / tau) / (e(0) + e(0) + e(-1 / tau)))
    # anchor 2 (e1): e1 (1, positive), e2 (0), -e2 (0) -> same as l0; anchor 3 (-e2) same as l1
    expected = (2 * l0 + 2 * l1) / 4
    got = ref.ntxent_loss(z1, z2, tau)
    assert abs(got.item() - expected) < 1e-12


def test_ntxent_is_symmetric_and_scale_invariant():
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    z2 = torch.randn(7, 5, generator=g, dtype=torch.float64)
    a = ref.ntxent_loss(z1, z2, 0.2)
    torch.testing.assert_close(a, ref.ntxent_loss(z2, z1, 0.2))
    torch.testing.assert_close(a, ref.ntxent_loss(3 * z1, 0.5 * z2, 0.2))


def test_ntxent_single_pair_is_zero():
    # With N = 1 the only other sample is the positive itself: log(1) = 0.
    z = torch.randn(1, 4, dtype=torch.float64)
    loss = ref.ntxent_loss(z, torch.randn(1, 4, dtype=torch.float64), 0.1)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_lars_reference_first_step_by_hand():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0, 0.0, 0.0], dtype=torch.float64).reshape(2, 2))
    b = torch.nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    w.grad = torch.tensor([[0.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    b.grad = torch.tensor([0.5, 0.5], dtype=torch.float64)
    opt = ref.LARSReference([w, b], lr=0.1, momentum=0.9, weight_decay=0.0, trust_coefficient=0.01)
    opt.step()
    # ||w|| = 5, ||g|| = 1 -> trust 0.05; step = lr * trust * g
    torch.testing.assert_close(w.data, torch.tensor([[3.0, 4.0], [-0.003, -0.004]], dtype=torch.float64))
    # the bias is excluded: a plain SGD step
    torch.testing.assert_close(b.data, torch.tensor([0.95, -1.05], dtype=torch.float64))
