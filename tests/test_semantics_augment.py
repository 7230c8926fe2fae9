"""view_augment / two_views / ViewSampler against a small NumPy implementation of the design notes.

Written from the design notes alone (not from skelcl.reference): normalise on person 0's centre joint
in the first frame where person 0 is present, then ``v' = R (v - d)`` with the passive matrices
``R = Rx(alpha) Ry(beta) Rz(gamma)``; all-zero (frame, person) slots stay exactly zero.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skelcl.ops import two_views, view_augment
from skelcl.views import get_sampler

BACKENDS = ["torch", "cpu", pytest.param("triton", marks=pytest.mark.triton)]
HAS_CUDA = torch.cuda.is_available()


def _device(backend):
    return "cuda" if backend == "triton" and HAS_CUDA else "cpu"


def np_rotation(alpha, beta, gamma):
    ca, sa = math.cos(alpha), math.sin(alpha)
    cb, sb = math.cos(beta), math.sin(beta)
    cg, sg = math.cos(gamma), math.sin(gamma)
    rx = np.array([[1, 0, 0], [0, ca, sa], [0, -sa, ca]])
    ry = np.array([[cb, 0, -sb], [0, 1, 0], [sb, 0, cb]])
    rz = np.array([[cg, sg, 0], [-sg, cg, 0], [0, 0, 1]])
    return rx @ ry @ rz


def np_view(x, angles, shift, center_joint=1):
    """x (N, 3, T, V, M); angles (N, 3) or (N, T, 3); shift (N, 3) or (N, T, 3). Loops, float64."""
    x = np.asarray(x, dtype=np.float64)
    angles, shift = np.asarray(angles, np.float64), np.asarray(shift, np.float64)
    n_seq, _, n_frames, _, n_persons = x.shape
    out = np.zeros_like(x)
    for n in range(n_seq):
        centre = np.zeros(3)
        for t in range(n_frames):
            if np.any(x[n, :, t, :, 0] != 0):
                centre = x[n, :, t, center_joint, 0].copy()
                break
        for t in range(n_frames):
            a = angles[n, t] if angles.ndim == 3 else angles[n]
            d = shift[n, t] if shift.ndim == 3 else shift[n]
            rot = np_rotation(*a)
            for m in range(n_persons):
                joints = x[n, :, t, :, m]  # (3, V)
                if not np.any(joints != 0):
                    continue  # padding stays zero
                out[n, :, t, :, m] = rot @ (joints - centre[:, None] - d[:, None])
    return out


def make_x(gen, n=4, t=6, v=5, m=2):
    x = torch.randn(n, 3, t, v, m, generator=gen, dtype=torch.float64) + 1.5
    x[0, :, -2:] = 0  # padded tail
    x[0, :, 2, :, 1] = 0  # second person missing in one frame
    x[1, :, :3, :, 0] = 0  # person 0 appears only at frame 3: the centre comes from there
    x[1, :, 3, 1, 0] = 0  # ... and its centre joint there is exactly zero (a present slot)
    x[2, :, :, :, 1] = 0  # no second person
    x[3, :, 1, 2, 0] = 0  # one zero joint in a present slot: it is transformed, not kept
    return x


def _tol(dtype):
    return {torch.float64: 1e-12, torch.float32: 1e-5}[dtype]


def test_numpy_model_on_hand_values():
    """Quarter turns: Rz(90) (1,0,0) = (0,-1,0), Rx(90) (0,1,0) = (0,0,-1), Ry(90) (1,0,0) = (0,0,1)."""
    h = math.pi / 2
    np.testing.assert_allclose(np_rotation(0, 0, h) @ [1, 0, 0], [0, -1, 0], atol=1e-15)
    np.testing.assert_allclose(np_rotation(h, 0, 0) @ [0, 1, 0], [0, 0, -1], atol=1e-15)
    np.testing.assert_allclose(np_rotation(0, h, 0) @ [1, 0, 0], [0, 0, 1], atol=1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis,point,want", [
    (2, (1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    (0, (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
    (1, (1.0, 0.0, 0.0), (0.0, 0.0, 1.0)),
    (1, (0.0, 0.0, 1.0), (-1.0, 0.0, 0.0)),
])
def test_single_axis_quarter_turns(backend, axis, point, want):
    """A joint one unit from the centre, a 90-degree passive rotation about one axis, no translation."""
    dev = _device(backend)
    x = torch.zeros(1, 3, 1, 2, 1, dtype=torch.float64)
    x[0, :, 0, 1, 0] = torch.tensor([0.3, -0.2, 0.7], dtype=torch.float64)  # centre joint (index 1)
    x[0, :, 0, 0, 0] = x[0, :, 0, 1, 0] + torch.tensor(point, dtype=torch.float64)
    angles = torch.zeros(1, 3, dtype=torch.float64)
    angles[0, axis] = math.pi / 2
    dtype = torch.float32 if backend == "triton" else torch.float64
    out = view_augment(x.to(dev, dtype), angles.to(dev), torch.zeros(1, 3, dtype=torch.float64, device=dev),
                       backend=backend).cpu().double()
    torch.testing.assert_close(out[0, :, 0, 0, 0], torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-6)
    torch.testing.assert_close(out[0, :, 0, 1, 0], torch.zeros(3, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_order_rx_ry_rz_and_shift_before_rotation(backend):
    """R = Rx Ry Rz (not Rz Ry Rx), and d is subtracted before rotating: v' = R (v - c - d)."""
    dev = _device(backend)
    x = torch.zeros(1, 3, 1, 2, 1, dtype=torch.float64)
    x[0, :, 0, 1, 0] = torch.tensor([1.0, 2.0, 3.0])
    x[0, :, 0, 0, 0] = torch.tensor([2.0, 2.0, 3.0])  # (1, 0, 0) from the centre
    h = math.pi / 2
    angles = torch.tensor([[h, h, 0.0]], dtype=torch.float64)  # Rx(90) Ry(90) (1,0,0) = Rx(90) (0,0,1)
    shift = torch.tensor([[0.0, 0.0, 0.5]], dtype=torch.float64)
    dtype = torch.float32 if backend == "triton" else torch.float64
    out = view_augment(x.to(dev, dtype), angles.to(dev), shift.to(dev), backend=backend).cpu().double()
    # v - c - d = (1, 0, -0.5); Ry(90): (x, y, z) -> (-z, y, x) = (0.5, 0, 1); Rx(90): (x, y, z) -> (x, z, -y)
    torch.testing.assert_close(out[0, :, 0, 0, 0], torch.tensor([0.5, 1.0, 0.0], dtype=torch.float64),
                               rtol=0, atol=1e-6)
    # The centre joint sits at -R d.
    rd = torch.tensor(np_rotation(h, h, 0.0) @ [0.0, 0.0, 0.5])
    torch.testing.assert_close(out[0, :, 0, 1, 0], -rd, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
# A per-frame shift needs per_frame=True.
@pytest.mark.parametrize("per_frame, shift_per_frame", [(False, False), (True, False), (True, True)])
def test_matches_numpy_model(backend, per_frame, shift_per_frame):
    gen = torch.Generator().manual_seed(7 + 2 * per_frame + shift_per_frame)
    dev = _device(backend)
    x = make_x(gen)
    n, _, t = x.shape[:3]
    angles = (torch.rand(*((n, t, 3) if per_frame else (n, 3)), generator=gen, dtype=torch.float64) - 0.5) * 7
    shift = torch.randn(*((n, t, 3) if shift_per_frame else (n, 3)), generator=gen, dtype=torch.float64)
    want = torch.from_numpy(np_view(x.numpy(), angles.numpy(), shift.numpy()))
    for dtype in ((torch.float32,) if backend == "triton" else (torch.float64, torch.float32)):
        out = view_augment(x.to(dev, dtype), angles.to(dev), shift.to(dev), per_frame=per_frame,
                           backend=backend).cpu()
        assert out.dtype == dtype and out.shape == x.shape
        torch.testing.assert_close(out.double(), want, rtol=0, atol=_tol(dtype) * float(want.abs().max()))
        absent = (x == 0).all(dim=3, keepdim=True).all(dim=1, keepdim=True).expand_as(x)
        assert (out[absent] == 0).all() and not (out[~absent] == 0).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_centre_joint(backend):
    gen = torch.Generator().manual_seed(3)
    dev = _device(backend)
    x = make_x(gen)
    angles = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    shift = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    want = torch.from_numpy(np_view(x.numpy(), angles.numpy(), shift.numpy(), center_joint=3))
    out = view_augment(x.to(dev, torch.float32), angles.to(dev), shift.to(dev), center_joint=3,
                       backend=backend).cpu()
    torch.testing.assert_close(out.double(), want, rtol=0, atol=1e-5 * float(want.abs().max()))


def test_default_centre_is_ntu_spine_mid():
    """Default centre joint is NTU's 1-based joint 2 (index 1)."""
    gen = torch.Generator().manual_seed(5)
    x = make_x(gen, v=25)
    angles = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    shift = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    want = torch.from_numpy(np_view(x.numpy(), angles.numpy(), shift.numpy(), center_joint=1))
    torch.testing.assert_close(view_augment(x, angles, shift, backend="torch"), want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_sequence_stays_zero(backend):
    dev = _device(backend)
    x = torch.zeros(2, 3, 3, 4, 2, dtype=torch.float32, device=dev)
    x[1] = 1.0
    out = view_augment(x, torch.ones(2, 3, device=dev), torch.ones(2, 3, device=dev), backend=backend)
    assert (out[0] == 0).all()


def _drawn(sampler, n, t, seed, device="cpu"):
    """The 2N cameras ``two_views(..., seed=seed)`` draws for x on ``device`` (from a generator on
    that device: CPU and CUDA generators give different numbers for one seed)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    angles, shift = get_sampler(sampler).sample(2 * n, t, device=device, generator=gen)
    return angles.cpu().double(), shift.cpu().double()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", ["paper", "paper-frame"])
def test_two_views_are_the_numpy_views_of_the_drawn_cameras(backend, sampler):
    """two_views(x, sampler, seed) = the views of the 2N cameras the sampler draws from that seed."""
    gen = torch.Generator().manual_seed(11)
    x = make_x(gen)
    n, _, t = x.shape[:3]
    dev = _device(backend)
    angles, shift = _drawn(sampler, n, t, seed=99, device=dev)
    x1, x2 = two_views(x.to(dev, torch.float32), sampler, seed=99, backend=backend)
    xs = x.to(torch.float32).double().numpy()
    for view, rows in ((x1, slice(0, n)), (x2, slice(n, 2 * n))):
        want = torch.from_numpy(np_view(xs, angles[rows].numpy(), shift[rows].numpy()))
        torch.testing.assert_close(view.cpu().double(), want, rtol=0, atol=2e-5 * float(want.abs().max()))


@pytest.mark.parametrize("sampler", ["paper", "paper-frame"])
def test_paper_sampler_sets(sampler):
    """Angles in {0, 60, ..., 300} degrees; d = m * 0.5 * (virtual camera's z axis), m in {0, ..., 5}."""
    angles, shift = _drawn(sampler, 400, 3, seed=1)
    deg = torch.rad2deg(angles)
    allowed = torch.tensor([0.0, 60.0, 120.0, 180.0, 240.0, 300.0], dtype=torch.float64)
    assert ((deg[..., None] - allowed).abs().amin(-1) < 1e-4).all()
    for i in range(3):  # each angle takes all six values, independently
        assert len(torch.unique(torch.round(deg[..., i]))) == 6
    flat_a, flat_s = angles.reshape(-1, 3), shift.reshape(-1, 3)
    # R d = (0, 0, m * unit): the skeleton moves straight along the new camera's viewing axis.
    rd = torch.stack([torch.from_numpy(np_rotation(*a.tolist()) @ s.numpy()) for a, s in zip(flat_a, flat_s)])
    torch.testing.assert_close(rd[:, :2], torch.zeros_like(rd[:, :2]), rtol=0, atol=1e-5)
    m = rd[:, 2] / 0.5
    assert ((m - m.round()).abs() < 1e-4).all()
    assert set(m.round().long().tolist()) == {0, 1, 2, 3, 4, 5}
    if sampler == "paper-frame":
        assert angles.shape == (800, 3, 3) and not (angles[:, 0] == angles[:, 1]).all()


def test_continuous_and_fixed_angles():
    s = get_sampler("paper", angles="continuous", distance="continuous", random_angles=(True, False, True),
                    fixed_angles_deg=(0.0, 30.0, 0.0), direction="random")
    angles, shift = s.sample(2000, generator=torch.Generator().manual_seed(0))
    deg = torch.rad2deg(angles.double())
    assert (deg[:, 1] - 30.0).abs().max() < 1e-4  # the held angle
    for i in (0, 2):
        assert deg[:, i].min() >= -180 and deg[:, i].max() <= 180
        assert deg[:, i].min() < -170 and deg[:, i].max() > 170
        assert len(torch.unique(deg[:, i])) > 1900  # continuous, not from a set
    length = shift.double().norm(dim=1)
    assert length.max() <= 2.5 + 1e-5 and length.max() > 2.4 and len(torch.unique(length)) > 1900
    # random directions: not all along any one axis
    assert (shift[:, 0].abs() > 0.1).any() and (shift[:, 1].abs() > 0.1).any()


def test_distance_only_holds_angles_at_zero():
    angles, shift = _drawn("distance-only", 300, 1, seed=4)
    assert (angles == 0).all()
    assert (shift[:, :2] == 0).all()  # the camera axis with no rotation is z
    assert set((shift[:, 2] / 0.5).round().long().tolist()) == {0, 1, 2, 3, 4, 5}


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_input_gradient_matches_finite_differences(backend):
    """The centre is a function of x too: d(view)/dx includes minus the centre joint's share."""
    gen = torch.Generator().manual_seed(21)
    x = make_x(gen, n=4, t=5, v=3, m=2)
    angles = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    shift = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    xg = x.clone().requires_grad_()
    (view_augment(xg, angles, shift, backend=backend) * weight).sum().backward()
    xn, an, sn, wn = x.numpy(), angles.numpy(), shift.numpy(), weight.numpy()
    present = (x != 0).any(dim=3, keepdim=True).any(dim=1, keepdim=True).expand_as(x)
    h = 1e-6
    for idx in zip(*np.nonzero(present.numpy())):
        plus, minus = xn.copy(), xn.copy()
        plus[idx] += h
        minus[idx] -= h
        fd = ((np_view(plus, an, sn) - np_view(minus, an, sn)) * wn).sum() / (2 * h)
        assert abs(float(xg.grad[idx]) - fd) < 1e-6, (idx, float(xg.grad[idx]), fd)
    assert (xg.grad[~present] == 0).all()


def test_reference_functions_directly():
    from skelcl import reference

    gen = torch.Generator().manual_seed(31)
    angles = (torch.rand(7, 3, generator=gen, dtype=torch.float64) - 0.5) * 8
    want = torch.stack([torch.from_numpy(np_rotation(*a.tolist())) for a in angles])
    torch.testing.assert_close(reference.rotation_matrix(angles), want, rtol=0, atol=1e-14)
    x = make_x(gen)
    centre = reference.body_center(x, 1)
    torch.testing.assert_close(centre[1], x[1, :, 3, 1, 0])  # person 0 first present at frame 3
    torch.testing.assert_close(centre[0], x[0, :, 0, 1, 0])
    shift = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(reference.view_transform(x, angles[:4], shift),
                               torch.from_numpy(np_view(x.numpy(), angles[:4].numpy(), shift.numpy())),
                               rtol=0, atol=1e-12)
