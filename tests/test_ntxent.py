"""Fused NT-Xent (skelcl.ops.ntxent_loss) against the float64 reference: loss and both gradients."""

from __future__ import annotations

import math

import pytest
import torch

from skelcl import reference as ref
from skelcl.losses import NTXentLoss
from skelcl.ops import NonFiniteInputError, ntxent_loss
from skelcl.ops import ntxent as ntxent_mod

# Relative tolerances (error / largest reference magnitude) per input dtype: bf16 inputs give bf16
# gradients (8-bit mantissa) and the Triton backward multiplies the softmax weights in bf16.
TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2.5e-2}


def _inputs(n, d, rng, dtype):
    """Fresh random rows, rounded to ``dtype`` first so the reference sees exactly the same numbers."""
    z1 = torch.randn(n, d, generator=rng, dtype=torch.float64).to(dtype)
    z2 = torch.randn(n, d, generator=rng, dtype=torch.float64).to(dtype)
    return z1, z2


def _reference(z1, z2, tau):
    a = z1.detach().double().clone().requires_grad_()
    b = z2.detach().double().clone().requires_grad_()
    loss = ref.ntxent_loss(a, b, tau)
    loss.backward()
    return loss.detach(), a.grad, b.grad


def _ours(z1, z2, tau, device, **kw):
    a = z1.detach().to(device).clone().requires_grad_()
    b = z2.detach().to(device).clone().requires_grad_()
    loss = ntxent_loss(a, b, tau, **kw)
    loss.backward()
    return loss.detach().cpu(), a.grad.cpu(), b.grad.cpu()


def _assert_close(got, want, dtype, what):
    got, want = got.double(), want.double()
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    scale = max(want.abs().max().item(), 1e-3)
    err = (got - want).abs().max().item()
    assert err <= TOL[dtype] * scale, f"{what}: max error {err:.3g} vs scale {scale:.3g}"


def _compare(z1, z2, tau, device, **kw):
    loss, g1, g2 = _ours(z1, z2, tau, device, **kw)
    want, w1, w2 = _reference(z1, z2, tau)
    assert loss.dtype == z1.dtype
    # The loss is returned in the input dtype: allow its rounding on top of the compute tolerance.
    loss_tol = max(TOL[z1.dtype], torch.finfo(z1.dtype).eps) * max(abs(want.item()), 1.0) * 2
    assert abs(loss.double().item() - want.item()) <= loss_tol, (loss.item(), want.item())
    _assert_close(g1, w1, z1.dtype, "dL/dz1")
    _assert_close(g2, w2, z1.dtype, "dL/dz2")


# --- chunked PyTorch path ("cpu") -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tau", [0.05, 0.1, 0.5])
@pytest.mark.parametrize("d", [16, 100, 128, 256])
@pytest.mark.parametrize("n", [1, 3, 64, 257])
def test_cpu_matches_reference(n, d, tau, dtype, rng):
    z1, z2 = _inputs(n, d, rng, dtype)
    _compare(z1, z2, tau, "cpu", backend="cpu")


def test_cpu_float64_is_exact(rng):
    z1, z2 = _inputs(37, 24, rng, torch.float64)
    _compare(z1, z2, 0.07, "cpu", backend="cpu")


def test_cpu_many_row_blocks(rng, monkeypatch):
    # 16-row blocks: 514 rows -> 33 blocks, the last one ragged.
    monkeypatch.setattr(ntxent_mod, "_BLOCK_ELEMS", 64)
    z1, z2 = _inputs(257, 20, rng, torch.float32)
    _compare(z1, z2, 0.1, "cpu", backend="cpu")


def test_cpu_large_batch(rng):
    z1, z2 = _inputs(1024, 32, rng, torch.float32)
    _compare(z1, z2, 0.1, "cpu", backend="cpu")


def test_torch_backend_matches_reference(rng):
    z1, z2 = _inputs(9, 16, rng, torch.float64)
    _compare(z1, z2, 0.2, "cpu", backend="torch")


# --- Triton kernels (CUDA, or the interpreter on CPU: small sizes) ------------------------------


@pytest.mark.triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    "n,d,tau",
    [(1, 16, 0.1), (3, 100, 0.05), (64, 128, 0.5), (33, 16, 0.1), (5, 256, 0.05), (2, 512, 0.5)],
)
def test_triton_matches_reference(n, d, tau, dtype, triton_device, rng):
    z1, z2 = _inputs(n, d, rng, dtype)
    _compare(z1, z2, tau, triton_device, backend="triton", allow_tf32=False)


@pytest.mark.triton
def test_triton_float16(triton_device, rng):
    z1, z2 = _inputs(7, 40, rng, torch.float16)
    loss, g1, g2 = _ours(z1, z2, 0.1, triton_device, backend="triton")
    want, w1, w2 = _reference(z1, z2, 0.1)
    assert abs(loss.double().item() - want.item()) < 1e-2
    _assert_close(g1, w1, torch.bfloat16, "dL/dz1")  # fp16 is at least as precise as bf16
    _assert_close(g2, w2, torch.bfloat16, "dL/dz2")


@pytest.mark.triton
@pytest.mark.parametrize("n,d,tau", [(9, 100, 0.1), (70, 128, 0.05)])
def test_triton_float32_with_tf32_products(n, d, tau, triton_device, rng):
    """The default for float32 (allow_tf32=True): products of unit rows rounded to a 10-bit mantissa."""
    z1, z2 = _inputs(n, d, rng, torch.float32)
    loss, g1, g2 = _ours(z1, z2, tau, triton_device, backend="triton")
    want, w1, w2 = _reference(z1, z2, tau)
    assert loss.dtype == torch.float32
    assert abs(loss.item() - want.item()) <= 2e-3 * max(want.item(), 1.0)
    for got, ref_grad in ((g1, w1), (g2, w2)):
        scale = ref_grad.abs().max().item()
        assert (got.double() - ref_grad).abs().max().item() <= 3e-3 * scale


@pytest.mark.triton
@pytest.mark.parametrize(
    "dtype,normalize,allow_tf32,operand",
    [(torch.float32, True, True, torch.float16), (torch.float32, True, False, torch.float32),
     (torch.float32, False, True, torch.float32), (torch.bfloat16, True, True, torch.bfloat16),
     (torch.float16, True, True, torch.float16)],
)
def test_triton_operand_dtype(dtype, normalize, allow_tf32, operand, triton_device):
    """Only normalised float32 rows with tf32 allowed are stored as float16 for the products."""
    kernels = ntxent_mod._kernels()
    assert kernels.operand_dtype(dtype, normalize, allow_tf32) == operand
    z = torch.randn(3, 8, dtype=dtype, device=triton_device)
    zh, inv, _ = kernels.normalize_rows(z, z, normalize, kernels.operand_dtype(dtype, normalize, allow_tf32))
    assert zh.dtype == operand and zh.shape == (6, 8) and inv.dtype == torch.float32


@pytest.mark.triton
def test_triton_backward_wide_lse_spread(triton_device, rng):
    """Log-sum-exps that differ by far more than 60 (base 2) within a tile: the backward takes two
    exponentials per weight there instead of one (which would overflow), and still matches."""
    z1, z2 = _inputs(24, 16, rng, torch.float32)
    z1[:6] *= 8.0  # unnormalised: these rows' logits (and log-sum-exps) are ~64x the others'
    z2[:6] *= 8.0
    a, b = z1.double().requires_grad_(), z2.double().requires_grad_()
    z = torch.cat([a, b])
    logits = (z @ z.T / 0.5).fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(24, 48), torch.arange(0, 24)])
    want = torch.nn.functional.cross_entropy(logits, target)
    want.backward()
    loss, g1, g2 = _ours(z1, z2, 0.5, triton_device, backend="triton", normalize=False, allow_tf32=False)
    assert abs(loss.item() - want.item()) <= 2e-5 * max(want.item(), 1.0)
    _assert_close(g1, a.grad, torch.float32, "dL/dz1")
    _assert_close(g2, b.grad, torch.float32, "dL/dz2")


@pytest.mark.triton
@pytest.mark.parametrize("offset_rank", [0, 2])
def test_triton_kernel_paths_small_tiles(offset_rank, triton_device, rng):
    """16 x 16 tiles over 2 x 35 keys: unmasked, diagonal and ragged key tiles; the fixed-maximum and
    running-maximum forwards and the one- and two-exponential backwards all equal the chunked path.
    ``offset_rank`` 2 is one rank of five (7 rows each) seeing the whole batch as keys."""
    kernels = ntxent_mod._kernels()
    n_total, n_local = 35, 7
    offset = offset_rank * n_local
    z = torch.randn(2 * n_total, 24, generator=rng, dtype=torch.float64).to(torch.float32)
    keys = torch.nn.functional.normalize(z, dim=1)
    if offset_rank == 0:
        n_local = n_total
    local = torch.arange(offset, offset + n_local)
    mine = torch.cat([local, n_total + local])
    raw = z[mine]
    q = keys[mine]
    want_lse, want_terms = ntxent_mod._chunked_forward(q.double(), keys.double(), n_local, offset, n_total,
                                                       0.1)
    dev = lambda t: t.to(triton_device).contiguous()  # noqa: E731
    for fixed in (True, False):
        lse2, terms = kernels.ntxent_forward(dev(q), dev(keys), n_local, offset, n_total, 0.1, False,
                                             config=(16, 16, 4, 1), normalized=True, fixed_max=fixed)
        assert torch.allclose(lse2.cpu().double() * math.log(2.0), want_lse, rtol=0, atol=2e-5), fixed
        assert torch.allclose(terms.cpu().double(), want_terms, rtol=0, atol=2e-5), fixed
    lse_all, _ = ntxent_mod._chunked_forward(keys.double(), keys.double(), n_total, 0, n_total, 0.1)
    inv = raw.double().norm(dim=1).reciprocal()
    one = torch.tensor(1.0, dtype=torch.float64)
    want = ntxent_mod._chunked_backward(q.double(), keys.double(), lse_all, inv, one, n_local, offset,
                                        n_total, 0.1)
    lse2_all = dev((lse_all / math.log(2.0)).float())
    for limit in (60.0, -1.0):
        got = kernels.ntxent_backward(dev(q), dev(keys), lse2_all, dev(raw[:n_local]), dev(raw[n_local:]),
                                      dev(inv.float()), dev(torch.tensor(1.0)), n_local, offset, n_total, 0.1,
                                      allow_tf32=False, config=(16, 16, 4, 1), shortcut_limit=limit)
        err = (got.cpu().double() - want).abs().max().item()
        assert err <= 2e-5 * want.abs().max().item(), (limit, err)


@pytest.mark.triton
def test_triton_noncontiguous_rows(triton_device, rng):
    z1, z2 = _inputs(6, 32, rng, torch.float32)
    wide1 = torch.zeros(6, 64, dtype=torch.float32)
    wide1[:, ::2] = z1  # a strided view: D stride 2
    # allow_tf32=False: on a GPU the default tf32 products are only good to ~1e-3
    strided = wide1[:, ::2].to(triton_device)
    loss = ntxent_loss(strided, z2.to(triton_device), 0.1, backend="triton", allow_tf32=False)
    assert abs(loss.item() - ref.ntxent_loss(z1.double(), z2.double(), 0.1).item()) < 1e-5


# --- numerics --------------------------------------------------------------------------------------


def _backends():
    return ["cpu", pytest.param("triton", marks=pytest.mark.triton)]


@pytest.mark.parametrize("backend", _backends())
def test_low_temperature_and_collinear_rows(backend, rng):
    device = "cuda" if torch.cuda.is_available() and backend == "triton" else "cpu"
    z1, _ = _inputs(12, 32, rng, torch.float32)
    z2 = 3.0 * z1  # every positive pair collinear: cosine exactly 1
    z1[5] = z1[4]  # and two identical anchors
    _compare(z1, z2, 0.01, device, backend=backend, allow_tf32=False)


@pytest.mark.parametrize("backend", _backends())
def test_all_rows_identical(backend):
    device = "cuda" if torch.cuda.is_available() and backend == "triton" else "cpu"
    z = torch.full((6, 16), 0.25)
    loss, g1, g2 = _ours(z, z.clone(), 0.05, device, backend=backend)
    # Every similarity is 1: each anchor's loss is log(2N - 1), and the gradient vanishes.
    assert abs(loss.item() - math.log(11)) < 1e-4
    assert g1.abs().max() < 1e-4 and g2.abs().max() < 1e-4


@pytest.mark.parametrize("backend", _backends())
def test_deterministic_repeats_bitwise(backend, rng):
    device = "cuda" if torch.cuda.is_available() and backend == "triton" else "cpu"
    z1, z2 = _inputs(40, 48, rng, torch.float32)
    first = _ours(z1, z2, 0.1, device, backend=backend, deterministic=True)
    second = _ours(z1, z2, 0.1, device, backend=backend, deterministic=True)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpu", "torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_normalize_false_uses_raw_dot_products(backend, rng):
    device = "cuda" if torch.cuda.is_available() and backend == "triton" else "cpu"
    z1, z2 = _inputs(5, 16, rng, torch.float32)
    z1, z2 = 0.3 * z1, 0.3 * z2
    a = z1.double().requires_grad_()
    b = z2.double().requires_grad_()
    z = torch.cat([a, b])
    logits = (z @ z.T / 0.2).fill_diagonal_(float("-inf"))
    want = torch.nn.functional.cross_entropy(logits, torch.tensor([5, 6, 7, 8, 9, 0, 1, 2, 3, 4]))
    want.backward()
    loss, g1, g2 = _ours(z1, z2, 0.2, device, backend=backend, normalize=False, allow_tf32=False)
    assert abs(loss.item() - want.item()) < 1e-5
    _assert_close(g1, a.grad, torch.float32, "dL/dz1")
    _assert_close(g2, b.grad, torch.float32, "dL/dz2")


def test_grad_output_scales_the_gradient(rng):
    z1, z2 = _inputs(8, 16, rng, torch.float32)
    a = z1.clone().requires_grad_()
    (3.5 * ntxent_loss(a, z2, 0.1, backend="cpu")).backward()
    _, w1, _ = _reference(z1, z2, 0.1)
    _assert_close(a.grad, 3.5 * w1, torch.float32, "3.5 dL/dz1")


def test_module_equals_function(rng):
    z1, z2 = _inputs(10, 16, rng, torch.float32)
    module = NTXentLoss(temperature=0.2, backend="cpu")
    assert torch.equal(module(z1, z2), ntxent_loss(z1, z2, 0.2, backend="cpu"))
    assert "temperature=0.2" in repr(module)


def test_custom_op_registration(rng):
    z1, z2 = _inputs(4, 8, rng, torch.float32)
    torch.library.opcheck(torch.ops.skelcl.ntxent_fwd.default, (z1, z2, 0.1, True, "cpu", True, True))


@pytest.mark.slow
def test_torch_compile_cpu(rng):
    z1, z2 = _inputs(6, 16, rng, torch.float32)
    compiled = torch.compile(lambda a, b: ntxent_loss(a, b, 0.1, backend="cpu"), fullgraph=True)
    a = z1.clone().requires_grad_()
    compiled(a, z2).backward()
    _, w1, _ = _reference(z1, z2, 0.1)
    _assert_close(a.grad, w1, torch.float32, "compiled dL/dz1")


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "z1,z2,kw,match",
    [
        (torch.randn(4, 8), torch.randn(4, 9), {}, "feature size D"),
        (torch.randn(4, 8), torch.randn(5, 8), {}, "batch size N"),
        (torch.randn(4, 8, 2), torch.randn(4, 8, 2), {}, "z1 must be 2-D"),
        (torch.randn(4, 8), torch.randn(8), {}, "z2 must be 2-D"),
        (torch.randn(0, 8), torch.randn(0, 8), {}, "empty batch"),
        (torch.randn(4, 8), torch.randn(4, 8), {"temperature": 0.0}, "temperature"),
        (torch.randn(4, 8), torch.randn(4, 8), {"temperature": -1.0}, "temperature"),
        (torch.randn(4, 8), torch.randn(4, 8), {"temperature": float("nan")}, "temperature"),
        (torch.randn(4, 8), torch.randn(4, 8), {"backend": "cuda"}, "backend"),
        (torch.randn(4, 8), torch.randn(4, 8).double(), {}, "same dtype"),
        (torch.randn(4, 8).int(), torch.randn(4, 8).int(), {}, "dtype"),
        (torch.randn(4, 8).double(), torch.randn(4, 8).double(), {"backend": "triton"}, "accepts"),
        (torch.randn(4, 600), torch.randn(4, 600), {"backend": "triton"}, "D <= 512"),
    ],
)
def test_bad_input_raises_value_error(z1, z2, kw, match):
    kw = dict(kw)
    tau = kw.pop("temperature", 0.1)
    with pytest.raises(ValueError, match=match):
        ntxent_loss(z1, z2, tau, **kw)


@pytest.mark.parametrize("backend", ["cpu", "torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("which", ["z1", "z2"])
def test_nonfinite_input_names_the_tensor(backend, bad, which, request):
    device = request.getfixturevalue("triton_device") if backend == "triton" else "cpu"
    z = {"z1": torch.randn(3, 8, device=device), "z2": torch.randn(3, 8, device=device)}
    z[which][1, 2] = bad
    with pytest.raises(NonFiniteInputError, match=f"{which} contains NaN or Inf") as raised:
        ntxent_loss(z["z1"], z["z2"], 0.1, backend=backend)
    assert isinstance(raised.value, ValueError)  # callers that check arguments catch it too
    # check_finite=False: no check (no read-back on a GPU); the loss itself is NaN
    assert torch.isnan(ntxent_loss(z["z1"], z["z2"], 0.1, backend=backend, check_finite=False))
