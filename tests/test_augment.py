"""skelcl.ops.view_augment / two_views against the float64 reference, on every backend."""

from __future__ import annotations

import warnings

import pytest
import torch

from skelcl import reference
from skelcl.ops import augment as aug
from skelcl.ops import two_views, view_augment

BACKENDS = ["torch", "cpu", pytest.param("triton", marks=pytest.mark.triton)]
HAS_CUDA = torch.cuda.is_available()
# Output rounding of each dtype, relative to the largest output value.
REL_TOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def device_of(backend: str) -> str:
    """Triton runs on CUDA when there is a GPU, else on CPU tensors through the interpreter."""
    return "cuda" if backend == "triton" and HAS_CUDA else "cpu"


def make_x(gen, n, t, v, m, *, dtype=torch.float64):
    """Random skeletons with every kind of padding the real data has."""
    x = torch.randn(n, 3, t, v, m, generator=gen, dtype=torch.float64) + 2.0
    if t > 3:
        x[0, :, -2:] = 0  # padded tail
    if m > 1:
        x[n - 1, :, :, :, 1] = 0  # no second person
        x[0, :, 1, :, 1] = 0  # second person missing in one frame
    if n > 1 and t > 2:
        x[1, :, :2, :, 0] = 0  # person 0 absent in the first frames: centre from frame 2
    if n > 2:
        x[2, :, :, :, 0] = 0  # person 0 never present: centre 0
    return x.to(dtype)


def make_params(gen, n, t, per_frame, per_frame_shift=True):
    shape = (n, t, 3) if per_frame else (n, 3)
    angles = (torch.rand(*shape, generator=gen, dtype=torch.float64) - 0.5) * 4 * torch.pi
    sshape = shape if per_frame_shift else (n, 3)
    shift = torch.randn(*sshape, generator=gen, dtype=torch.float64)
    return angles, shift


def assert_matches_reference(out, x, angles, shift, per_frame, center_joint=1):
    out, x, angles, shift = (a.cpu() for a in (out, x, angles, shift))
    expect = reference.view_transform(x.double(), angles.double(), shift.double(), center_joint=center_joint,
                                      per_frame=per_frame)
    assert out.dtype == x.dtype and out.shape == x.shape
    tol = REL_TOL[x.dtype] * max(1.0, float(expect.abs().amax())) if expect.numel() else 0.0
    torch.testing.assert_close(out.double(), expect, rtol=0, atol=tol)
    absent = ~reference.present_mask(x)[:, None, :, None, :].expand_as(x)
    assert (out[absent] == 0).all()  # padding stays exactly zero, in every dtype


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "n, t, v, m, per_frame", [(3, 7, 5, 2, False), (4, 5, 3, 1, True), (1, 9, 25, 2, True)]
)
def test_matches_reference(backend, dtype, n, t, v, m, per_frame, rng):
    x = make_x(rng, n, t, v, m, dtype=dtype).to(device_of(backend))
    angles, shift = make_params(rng, n, t, per_frame)
    out = view_augment(x, angles, shift, per_frame=per_frame, backend=backend)
    assert_matches_reference(out, x, angles, shift, per_frame)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4, 5, 2), (2, 3, 0, 5, 2), (2, 3, 4, 5, 0), (2, 3, 1, 1, 1),
                                   (1, 3, 3, 2, 3)])
def test_edge_shapes(backend, shape, rng):
    x = torch.randn(shape, generator=rng).to(device_of(backend))
    angles, shift = make_params(rng, shape[0], shape[2], per_frame=True)
    out = view_augment(x, angles, shift, per_frame=True, center_joint=0, backend=backend)
    assert_matches_reference(out, x, angles, shift, True, center_joint=0)
    x1, x2 = two_views(x, "paper-frame", seed=3, center_joint=0, backend=backend)
    assert x1.shape == x2.shape == x.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_x_and_other_centre(backend, rng):
    base = make_x(rng, 3, 11, 7, 2).permute(0, 2, 3, 4, 1).contiguous()  # (N, T, V, M, 3)
    x = base.to(device_of(backend)).permute(0, 4, 1, 2, 3)[:, :, ::2]  # (N, 3, 6, 7, 2), strided
    assert not x.is_contiguous()
    angles, shift = make_params(rng, 3, 6, per_frame=True, per_frame_shift=False)
    out = view_augment(x.float(), angles, shift, per_frame=True, center_joint=6, backend=backend)
    assert_matches_reference(out, x.float(), angles, shift, True, center_joint=6)
    out = view_augment(x, angles, shift, per_frame=True, center_joint=0, backend=backend)
    assert_matches_reference(out, x, angles, shift, True, center_joint=0)


@pytest.mark.triton
@pytest.mark.parametrize("tile, t_iters, scan_t", [(128, 1, 2), (64, 3, 1), (32, 8, 16), (2048, 1, 4)])
def test_triton_tilings_match_reference(tile, t_iters, scan_t, rng):
    from skelcl.kernels.augment import view_augment_triton

    x = make_x(rng, 3, 37, 5, 2, dtype=torch.float32)
    x[1, :, :9, :, 0] = 0  # centre found only after several search steps
    angles, shift = make_params(rng, 3, 37, per_frame=True, per_frame_shift=False)
    a = torch.stack([angles, angles.flip(0)]).float()  # (2, N, T, 3)
    s = torch.stack([shift, -shift]).float()[:, :, None]  # (2, N, 1, 3)
    dev = device_of("triton")
    out = torch.full((2, *x.shape), float("nan"), device=dev)  # unwritten elements stay NaN and fail
    view_augment_triton(x.to(dev), a.to(dev), s.to(dev), 1, tile=tile, t_iters=t_iters, scan_t=scan_t,
                        out=out)
    for k in range(2):
        assert_matches_reference(out[k], x, a[k], s[k, :, 0], True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backward_matches_reference_autograd(backend, rng):
    x = make_x(rng, 3, 6, 4, 2)
    angles, shift = make_params(rng, 3, 6, per_frame=True, per_frame_shift=False)
    grad = torch.randn(x.shape, generator=rng, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        xr = x.detach().clone().requires_grad_()
        reference.view_transform(xr, angles, shift, per_frame=True).backward(grad)
        dev = device_of(backend)
        xo = x.detach().to(dev, dtype).clone().requires_grad_()
        view_augment(xo, angles, shift, per_frame=True, backend=backend).backward(grad.to(dev, dtype))
        assert xo.grad.dtype == dtype
        torch.testing.assert_close(xo.grad.double().cpu(), xr.grad, rtol=0, atol=REL_TOL[dtype] * 50)


@pytest.mark.parametrize("backend", ["cpu", pytest.param("triton", marks=pytest.mark.triton)])
def test_gradcheck(backend, rng):
    x = make_x(rng, 3, 4, 2, 2).to(device_of(backend))
    present = x != 0  # perturb only present entries: the present mask is piecewise constant
    angles, shift = make_params(rng, 3, 4, per_frame=False)
    fn = lambda d: view_augment(torch.where(present, d, 0.0), angles, shift, backend=backend)
    assert torch.autograd.gradcheck(fn, (x.clone().requires_grad_(),), fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_geometric_properties(backend, rng):
    x = make_x(rng, 4, 6, 5, 2)
    angles, shift = make_params(rng, 4, 6, per_frame=True)
    out = view_augment(x.to(device_of(backend)), angles, shift, per_frame=True, backend=backend).cpu()
    # Bone lengths (any joint pair of one person in one frame) are preserved.
    bone = lambda y: (y[:, :, :, 0] - y[:, :, :, 3]).norm(dim=1)
    keep = reference.present_mask(x)
    torch.testing.assert_close(bone(out)[keep], bone(x)[keep])
    # The inverse transform x = R^T y + c + d recovers x in every present slot.
    rot = reference.rotation_matrix(angles)  # (N, T, 3, 3)
    centre = reference.body_center(x, 1)
    offset = (centre[:, None] + shift).permute(0, 2, 1)[..., None, None]  # (N, 3, T, 1, 1)
    back = torch.einsum("ntji,njtvm->nitvm", rot, out) + offset
    torch.testing.assert_close(torch.where(keep[:, None, :, None, :], back, 0.0), x)
    # Zero angles and shift: centring only.
    zero = torch.zeros(4, 3, dtype=torch.float64)
    out = view_augment(x.to(device_of(backend)), zero, zero, backend=backend).cpu()
    centred = torch.where(keep[:, None, :, None, :], x - centre[:, :, None, None, None], 0.0)
    torch.testing.assert_close(out, centred)


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_views_equal_two_single_views(backend):
    gen = torch.Generator().manual_seed(5)
    dev = device_of(backend)
    x = make_x(gen, 3, 5, 4, 2, dtype=torch.float32).to(dev)
    for sampler in ("paper", "paper-frame"):
        x1, x2 = two_views(x, sampler, seed=7, backend=backend)
        again = two_views(x, sampler, seed=7, backend=backend)
        assert torch.equal(x1, again[0]) and torch.equal(x2, again[1])
        from skelcl.views import get_sampler

        g = torch.Generator(device=dev).manual_seed(7)
        a, s = get_sampler(sampler).sample(6, 5, device=dev, generator=g)
        (a1, a2), (s1, s2) = a.chunk(2), s.chunk(2)
        pf = get_sampler(sampler).frame_level
        assert_matches_reference(x1, x, a1, s1, pf)
        assert_matches_reference(x2, x, a2, s2, pf)
        assert not torch.equal(x1, x2)
    n1, n2 = two_views(x, "none", generator=torch.Generator(device=dev).manual_seed(0), backend=backend)
    zero = torch.zeros(3, 3)
    assert torch.equal(n1, n2)
    torch.testing.assert_close(n1.cpu(), view_augment(x.cpu(), zero, zero, backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_frame", [False, True])
def test_non_contiguous_angles_and_shift(backend, per_frame, rng):
    """Parameters may come as any view: transposed (last stride not 1) or every other row."""
    x = make_x(rng, 3, 5, 4, 2).to(device_of(backend))
    angles, shift = make_params(rng, 6, 5, per_frame=per_frame)
    angles_t = angles.mT.contiguous().mT  # same values, stride 1 along N or T, not along xyz
    assert not angles_t.is_contiguous()
    for a, s in ((angles_t[::2], shift[::2]), (angles[::2], shift.mT.contiguous().mT[1::2])):
        out = view_augment(x, a.to(x.device), s.to(x.device), per_frame=per_frame, backend=backend)
        assert_matches_reference(out, x, a, s, per_frame)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_float64_values_count_as_present(backend, rng):
    """Presence is "not exactly zero" in x's own precision: 1e-50 is a joint, not padding."""
    x = make_x(rng, 2, 4, 3, 2).to(device_of(backend))
    x[0, :, 0, :, 0] = 1e-50  # person 0's first frame: tiny but present, so the centre comes from it
    angles, shift = make_params(rng, 2, 4, per_frame=False)
    out = view_augment(x, angles.to(x.device), shift.to(x.device), backend=backend)
    assert_matches_reference(out, x, angles, shift, False)


def test_numpy_integer_center_joint(rng):
    np = pytest.importorskip("numpy")
    x = make_x(rng, 2, 4, 3, 2)
    angles, shift = make_params(rng, 2, 4, per_frame=False)
    out = view_augment(x, angles, shift, center_joint=np.int64(2), backend="torch")
    assert_matches_reference(out, x, angles, shift, False, center_joint=2)
    with pytest.raises(ValueError, match="center_joint must be an int"):
        view_augment(x, angles, shift, center_joint=2.0)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(x=torch.zeros(2, 3, 4, 5)), "x must be"),
        (dict(x=torch.zeros(2, 2, 4, 5, 2)), "x must be"),
        (dict(x=torch.zeros(2, 3, 4, 5, 2, dtype=torch.int64)), "x must be"),
        (dict(angles=torch.zeros(3, 3)), "angles"),
        (dict(angles=torch.zeros(2, 4, 3)), "angles"),
        (dict(shift=torch.zeros(2, 2)), "shift"),
        (dict(angles=torch.tensor([[0.0, float("nan"), 0.0]] * 2)), "angles contains NaN"),
        (dict(shift=torch.tensor([[0.0, float("inf"), 0.0]] * 2)), "shift contains NaN or Inf"),
        (dict(center_joint=5), "center_joint"),
        (dict(center_joint=-1), "center_joint"),
        (dict(backend="gpu"), "backend"),
    ],
)
def test_bad_input_raises(kwargs, word):
    args = dict(x=torch.ones(2, 3, 4, 5, 2), angles=torch.zeros(2, 3), shift=torch.zeros(2, 3))
    args.update(kwargs)
    x, angles, shift = args.pop("x"), args.pop("angles"), args.pop("shift")
    with pytest.raises(ValueError, match=word):
        view_augment(x, angles, shift, **args)


def test_two_views_bad_input():
    x = torch.ones(2, 3, 4, 5, 2)
    with pytest.raises(ValueError, match="name_or_sampler"):
        two_views(x, "sideways")
    with pytest.raises(ValueError, match="generator or seed"):
        two_views(x, "paper", seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="x must be"):
        two_views(x[0], "paper")


def test_nan_in_x_stays_in_its_sequence(rng):
    x = make_x(rng, 3, 4, 3, 2, dtype=torch.float32)
    x[1, 0, 2, 1, 0] = float("nan")
    angles, shift = make_params(rng, 3, 4, per_frame=False)
    out = view_augment(x, angles, shift, backend="cpu")
    assert torch.isfinite(out[0]).all() and torch.isfinite(out[2]).all()


def test_cpu_falls_back_to_reference_with_a_warning(monkeypatch, rng):
    import skelcl._cpp

    def no_build(name, sources):
        warnings.warn("could not build", RuntimeWarning, stacklevel=2)
        return None

    monkeypatch.setattr(skelcl._cpp, "load_extension", no_build)
    monkeypatch.delitem(aug._REGISTERED, "cpu", raising=False)
    x = make_x(rng, 2, 4, 3, 2, dtype=torch.float32)
    angles, shift = make_params(rng, 2, 4, per_frame=False)
    with pytest.warns(RuntimeWarning, match="could not build"):
        out = view_augment(x, angles, shift, backend="cpu")
    assert_matches_reference(out, x, angles, shift, False)
    monkeypatch.delitem(aug._REGISTERED, "cpu")


def test_torch_compile_fullgraph_through_cpu_op(rng):
    x = make_x(rng, 3, 5, 4, 2, dtype=torch.float32)
    angles, shift = make_params(rng, 3, 5, per_frame=False)
    angles, shift = angles.float(), shift.float()
    if aug._cpu_op() is None:
        pytest.skip("the C++ extension could not be built")
    fn = lambda x, a, s: view_augment(x, a, s, backend="cpu").square().sum()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    xc = x.clone().requires_grad_()
    loss = compiled(xc, angles, shift)
    loss.backward()
    xe = x.clone().requires_grad_()
    fn(xe, angles, shift).backward()
    torch.testing.assert_close(loss, fn(x, angles, shift))
    torch.testing.assert_close(xc.grad, xe.grad)


_FIRST_CALL_COMPILED = """
import torch
from skelcl.ops import view_augment
gen = torch.Generator().manual_seed(0)
x = torch.randn(2, 3, 5, 25, 2, generator=gen)
a, s = torch.rand(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
f = torch.compile(lambda x, a, s: view_augment(x, a, s, backend="cpu"), fullgraph=True, backend="aot_eager")
err = (f(x, a, s) - view_augment(x, a, s, backend="torch")).abs().max().item()
print("max error", err)
assert err < 1e-5
"""


def test_torch_compile_traces_a_first_call(fresh_python):
    """In a fresh process, the first call of the op may be inside the compiled function: the C++
    build and op registration run eagerly while dynamo traces."""
    if aug._cpu_op() is None:
        pytest.skip("the C++ extension could not be built")
    fresh_python(_FIRST_CALL_COMPILED)


@pytest.mark.slow
def test_torch_compile_inductor_through_cpu_op(rng):
    if aug._cpu_op() is None:
        pytest.skip("the C++ extension could not be built")
    x = make_x(rng, 3, 5, 4, 2, dtype=torch.float32)
    angles, shift = (p.float() for p in make_params(rng, 3, 5, per_frame=False))
    fn = lambda x, a, s: view_augment(x, a, s, backend="cpu") * 2.0
    out = torch.compile(fn, fullgraph=True)(x, angles, shift)
    torch.testing.assert_close(out, fn(x, angles, shift))


@pytest.mark.cuda
def test_cuda_two_views_triton_matches_reference():
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = make_x(torch.Generator().manual_seed(1), 37, 61, 25, 2, dtype=torch.float32).cuda()
    x1, x2 = two_views(x, "paper-frame", generator=gen)
    gen = torch.Generator(device="cuda").manual_seed(0)
    from skelcl.views import get_sampler

    sampler = get_sampler("paper-frame")
    (a1, a2), (s1, s2) = (p.chunk(2) for p in sampler.sample(74, 61, device="cuda", generator=gen))
    assert_matches_reference(x1, x, a1.double(), s1.double(), True)
    assert_matches_reference(x2, x, a2.double(), s2.double(), True)
    fn = torch.compile(lambda x, a, s: view_augment(x, a, s, backend="triton"), fullgraph=True)
    a, s = a1[:, 0].contiguous(), s1[:, 0].contiguous()
    torch.testing.assert_close(fn(x, a, s), view_augment(x, a, s, backend="triton"))
