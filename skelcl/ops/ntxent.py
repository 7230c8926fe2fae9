"""Fused NT-Xent loss (paper Eq. 4-5) without the 2N x 2N similarity matrix.

``ntxent_loss(z1, z2)`` equals ``skelcl.reference.ntxent_loss``: cosine similarities of the 2N rows
``[z1; z2]`` over ``temperature``; anchor i's positive is row i +- N; its denominator runs over every
k != i, the positive included; the loss is the mean over the 2N anchors.

Backends (``backend=``):

* ``"triton"``: kernels in ``skelcl.kernels.ntxent`` (CUDA; CPU tensors under TRITON_INTERPRET=1).
  The forward keeps an online log-sum-exp over key tiles; the backward recomputes the similarities.
* ``"cpu"``: the same algorithm in chunked PyTorch, row blocks of about 2M logits (memory
  O(block x 2N)); any device, float64 too.
* ``"torch"``: the naive matrix formula with autograd (for checking; memory O(N^2)).
* ``"auto"``: Triton for CUDA tensors with D <= 512, the chunked path otherwise.

Both fused backends save only the normalised rows, their inverse norms and the 2N log-sum-exps (and
keep references to the caller's z1, z2), and reduce in a fixed order (no atomics), so
``deterministic=True`` needs no other code path.

Precision on the Triton backend: products accumulate in float32. bf16/fp16 rows are multiplied as
given. float32 rows use exact float32 products with ``allow_tf32=False``; with tf32 allowed (the
default) and ``normalize=True`` the unit rows are stored once as float16 for the products, which keeps
tf32's 10-bit mantissa at twice tf32's tensor-core rate (the loss and gradient then agree with float64
to about 1e-3 relative, as with tf32); the gradient's epilogue reads the raw float32 rows.

Distributed (``group`` given, or torch.distributed initialised with world size > 1): the global batch
is ``[Z1; Z2]`` with every rank's rows, rank 0 first. Each rank gathers the normalised rows, computes
the loss terms of its own anchors against all rows, and the loss is the global mean (the same value
on every rank). The backward needs only the gathered log-sum-exps (one 2N-vector gather in the
forward) to give each rank the exact gradient of the global loss w.r.t. its own z1 and z2, terms from
other ranks' anchors included; no gradient communication is needed.
"""

from __future__ import annotations

import math
import os

import torch
import torch.distributed as dist
from torch import Tensor

from skelcl.kernels import capturing

__all__ = ["ntxent_loss", "NonFiniteInputError", "BACKENDS"]

BACKENDS = ("auto", "triton", "cpu", "torch")


class NonFiniteInputError(ValueError):
    """z1 or z2 holds NaN or Inf (on some rank): the loss cannot be formed. A ValueError, so that
    callers checking arguments catch it; its own class lets a training loop tell a diverged model
    from a wrong call."""


_LN2 = math.log(2.0)
_LOG2E = 1.0 / _LN2
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_TRITON_DTYPES = (torch.float32, *_LOW_PRECISION)
_FUSED_DTYPES = (*_TRITON_DTYPES, torch.float64)


# ---------------------------------------------------------------------------------------------------
# Chunked PyTorch core (the "cpu" backend). Notation as in skelcl.kernels.ntxent; lse in nats.
# ---------------------------------------------------------------------------------------------------

# About 2M floats per (block x 2N) temporary: 8 MiB in float32, whatever the batch.
_BLOCK_ELEMS = 1 << 21


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _block_rows(m_total: int) -> int:
    return max(16, min(1024, _BLOCK_ELEMS // max(m_total, 1)))


def _chunked_global_rows(n_local: int, offset: int, n_total: int, device) -> torch.Tensor:
    t = torch.arange(2 * n_local, device=device)
    return torch.where(t < n_local, offset + t, n_total + offset + t - n_local)


def _chunked_normalize(z1: torch.Tensor, z2: torch.Tensor, normalize: bool = True):
    """``[z1; z2]`` -> (zhat (2n, D) in the compute dtype, inv_norm (2n,), sumsq (2n,))."""
    z = torch.cat([z1, z2]).to(_compute_dtype(z1.dtype))
    sumsq = (z * z).sum(dim=1)
    if normalize:
        inv = sumsq.sqrt().clamp_min(1e-12).reciprocal()  # the eps of torch.nn.functional.normalize
        z.mul_(inv[:, None])
    else:
        inv = torch.ones_like(sumsq)
    return z, inv, sumsq


def _chunked_forward(q: torch.Tensor, keys: torch.Tensor, n_local: int, offset: int, n_total: int,
            temperature: float):
    """Per local row: (lse in nats, loss term), both (2 n_local,) in the compute dtype."""
    m_local, m_total = 2 * n_local, 2 * n_total
    grow = _chunked_global_rows(n_local, offset, n_total, q.device)
    gpos = (grow + n_total) % m_total
    lse = torch.empty(m_local, dtype=q.dtype, device=q.device)
    block = _block_rows(m_total)
    keys_t = keys.T
    for a in range(0, m_local, block):
        b = min(a + block, m_local)
        s = torch.mm(q[a:b], keys_t).mul_(1.0 / temperature)
        s[torch.arange(b - a, device=q.device), grow[a:b]] = float("-inf")  # k = i is not a negative
        # logsumexp by hand, in place: torch.logsumexp is several times slower on CPU here.
        row_max = s.amax(dim=1)
        lse[a:b] = s.sub_(row_max[:, None]).exp_().sum(dim=1).log_().add_(row_max)
    pos = (q * keys[gpos]).sum(dim=1) / temperature
    return lse, lse - pos


def _chunked_backward(q: torch.Tensor, keys: torch.Tensor, lse_all: torch.Tensor, inv_norm: torch.Tensor,
             grad_out: torch.Tensor, n_local: int, offset: int, n_total: int, temperature: float,
             normalize: bool = True) -> torch.Tensor:
    """Gradient of the global mean loss w.r.t. the local raw rows ``[z1; z2]``, (2 n_local, D)."""
    m_local, m_total = 2 * n_local, 2 * n_total
    grow = _chunked_global_rows(n_local, offset, n_total, q.device)
    gpos = (grow + n_total) % m_total
    coef = grad_out.to(q.dtype) / (m_total * temperature)
    dz = torch.empty_like(q)
    block = _block_rows(m_total)
    keys_t = keys.T
    lse_cols = lse_all[None, :]
    for a in range(0, m_local, block):
        b = min(a + block, m_local)
        s = torch.mm(q[a:b], keys_t).mul_(1.0 / temperature)
        w = torch.sub(s, lse_all[grow[a:b], None]).exp_()  # p_jk: this row's softmax
        w.add_(s.sub_(lse_cols).exp_())  # + p_kj: each key row's softmax at this anchor
        w[torch.arange(b - a, device=q.device), grow[a:b]] = 0.0
        dz[a:b] = torch.mm(w, keys)
    g = dz.sub_(keys[gpos], alpha=2.0).mul_(coef)
    if normalize:
        # d(z/|z|) = (I - zhat zhat^T) / |z|
        g.sub_(q * (q * g).sum(dim=1, keepdim=True)).mul_(inv_norm[:, None])
    return g


# ---------------------------------------------------------------------------------------------------
# Backend adapters: one contract for both fused backends (lse in nats, gradient in the compute dtype).
# ---------------------------------------------------------------------------------------------------


def _kernels():
    from skelcl.kernels import ntxent  # imports triton: only when the Triton backend runs

    return ntxent


def _rows_contiguous(z: Tensor) -> Tensor:
    """The Triton kernels step through rows by stride(0) and need unit stride along D."""
    return z if z.stride(-1) == 1 else z.contiguous()


def _normalize(backend: str, z1: Tensor, z2: Tensor, normalize: bool, allow_tf32: bool):
    """-> (zhat (2N, D) in the dtype the products read, inv_norm (2N,), sumsq (2N,))."""
    if backend == "triton":
        kernels = _kernels()
        out_dtype = kernels.operand_dtype(z1.dtype, normalize, allow_tf32)
        return kernels.normalize_rows(_rows_contiguous(z1), _rows_contiguous(z2), normalize, out_dtype)
    return _chunked_normalize(z1, z2, normalize)


def _forward(backend, q, keys, n_local, offset, n_total, temperature, allow_tf32, normalize):
    if backend == "triton":
        lse2, terms = _kernels().ntxent_forward(q, keys, n_local, offset, n_total, temperature, allow_tf32,
                                                normalized=normalize)
        return lse2 * _LN2, terms
    return _chunked_forward(q, keys, n_local, offset, n_total, temperature)


def _backward(backend, q, keys, lse_all, z1, z2, inv, grad, n_local, offset, n_total, temperature, normalize,
              allow_tf32) -> Tensor:
    """d loss / d [z1; z2] (2 n_local, D) in z1's dtype; z1, z2 are the raw local rows."""
    if backend == "triton":
        lse2 = (lse_all.float() * _LOG2E).contiguous()
        return _kernels().ntxent_backward(q, keys, lse2, _rows_contiguous(z1), _rows_contiguous(z2), inv,
                                          grad.reshape(()).contiguous(), n_local, offset, n_total,
                                          temperature, normalize, allow_tf32)
    dz = _chunked_backward(q, keys, lse_all, inv, grad, n_local, offset, n_total, temperature, normalize)
    return dz.to(z1.dtype)


def _nonfinite_message(sumsq: Tensor, n: int) -> str | None:
    """One reduction over the 2N row norms: NaN or Inf anywhere in a row makes its sum of squares so.
    Skipped while a CUDA graph is captured (no read-back then): a NaN input gives a NaN loss."""
    if capturing(sumsq) or bool(torch.isfinite(sumsq).all()):
        return None
    which = "z1" if not bool(torch.isfinite(sumsq[:n]).all()) else "z2"
    return f"{which} contains NaN or Inf (or values so large that their squares overflow)"


# ---------------------------------------------------------------------------------------------------
# Single process: torch.library custom ops, so the loss works under torch.compile (opaque op + fake).
# ---------------------------------------------------------------------------------------------------


@torch.library.custom_op("skelcl::ntxent_fwd", mutates_args=())
def _ntxent_fwd(z1: Tensor, z2: Tensor, temperature: float, normalize: bool, backend: str,
                allow_tf32: bool, check_finite: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """-> (loss, zhat (2N, D), inv_norm (2N,), lse (2N,)); the last three are saved for backward."""
    n = z1.shape[0]
    zh, inv, sumsq = _normalize(backend, z1, z2, normalize, allow_tf32)
    problem = _nonfinite_message(sumsq, n) if check_finite else None
    if problem:
        raise NonFiniteInputError(problem)
    lse, terms = _forward(backend, zh, zh, n, 0, n, temperature, allow_tf32, normalize)
    return (terms.sum() / (2 * n)).to(z1.dtype), zh, inv, lse


@_ntxent_fwd.register_fake
def _ntxent_fwd_fake(z1, z2, temperature, normalize, backend, allow_tf32, check_finite):
    n, dim = z1.shape
    if backend == "triton":
        zdt, vdt = _kernels().operand_dtype(z1.dtype, normalize, allow_tf32), torch.float32
    else:
        zdt = vdt = _compute_dtype(z1.dtype)
    return (z1.new_empty(()), z1.new_empty((2 * n, dim), dtype=zdt), z1.new_empty(2 * n, dtype=vdt),
            z1.new_empty(2 * n, dtype=vdt))


@torch.library.custom_op("skelcl::ntxent_bwd", mutates_args=())
def _ntxent_bwd(grad: Tensor, zh: Tensor, z1: Tensor, z2: Tensor, inv: Tensor, lse: Tensor,
                temperature: float, normalize: bool, backend: str, allow_tf32: bool) -> Tensor:
    """-> d loss / d [z1; z2], (2N, D) in z1's dtype."""
    n = z1.shape[0]
    return _backward(backend, zh, zh, lse, z1, z2, inv, grad, n, 0, n, temperature, normalize, allow_tf32)


@_ntxent_bwd.register_fake
def _ntxent_bwd_fake(grad, zh, z1, z2, inv, lse, temperature, normalize, backend, allow_tf32):
    return z1.new_empty((2 * z1.shape[0], z1.shape[1]))


def _setup_context(ctx, inputs, output):
    z1, z2, temperature, normalize, backend, allow_tf32, _check_finite = inputs
    _, zh, inv, lse = output
    ctx.save_for_backward(zh, z1, z2, inv, lse)  # z1, z2 are the caller's tensors: no extra memory
    ctx.args = (temperature, normalize, backend, allow_tf32)


def _ntxent_fwd_backward(ctx, grad_loss, *_unused):
    zh, z1, z2, inv, lse = ctx.saved_tensors
    dz = _ntxent_bwd(grad_loss, zh, z1, z2, inv, lse, *ctx.args)
    n = z1.shape[0]
    return dz[:n], dz[n:], None, None, None, None, None


_ntxent_fwd.register_autograd(_ntxent_fwd_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------------
# Several processes: global negatives, exact gradients.
# ---------------------------------------------------------------------------------------------------


def _gather_rows(t: Tensor, group) -> list[Tensor]:
    """all_gather of equal-shaped tensors; 16-bit floats travel as bytes (not every backend has them)."""
    wire = t.contiguous().view(torch.uint8) if t.dtype in _LOW_PRECISION else t.contiguous()
    out = [torch.empty_like(wire) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, wire, group=group)
    return [o.view(t.dtype) for o in out] if t.dtype in _LOW_PRECISION else out


def _check_ranks_agree(z1: Tensor, problem: str | None, temperature: float, normalize: bool, backend: str,
                       group) -> None:
    """One small gather compares, on every rank alike, what the ranks must share (batch size, D, dtype,
    backend, normalize, temperature) and their NaN/Inf flags, so that either all ranks raise or none
    does: a lone raise, or mismatched collectives later, would hang or abort the others."""
    n, d = z1.shape
    mine = [n, problem is not None, d, _FUSED_DTYPES.index(z1.dtype), BACKENDS.index(backend), normalize,
            temperature]
    info = torch.tensor(mine, dtype=torch.float64, device=z1.device)
    infos = torch.stack(_gather_rows(info, group)).cpu()
    if problem:
        raise NonFiniteInputError(problem)
    if bool(infos[:, 1].any()):
        bad = infos[:, 1].nonzero().flatten().tolist()
        raise NonFiniteInputError(f"z1 or z2 contains NaN or Inf on rank(s) {bad}")
    shared = ((0, "batch size N", int), (2, "feature size D", int),
              (3, "dtype", lambda v: str(_FUSED_DTYPES[int(v)])), (4, "backend", lambda v: BACKENDS[int(v)]),
              (5, "normalize", bool), (6, "temperature", float))
    for col, what, shown in shared:
        if bool((infos[:, col] != infos[0, col]).any()):
            values = [shown(v) for v in infos[:, col].tolist()]
            raise ValueError(f"ntxent_loss with a group needs the same {what} on every rank, got {values} "
                             "(by rank)")
    if n == 0:
        raise ValueError("z1 and z2 are an empty batch (N = 0) on every rank: the loss needs N >= 1")


class _GlobalNTXent(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z1, z2, temperature, normalize, backend, allow_tf32, group, check_finite):
        n = z1.shape[0]
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        if n:
            zh, inv, sumsq = _normalize(backend, z1, z2, normalize, allow_tf32)
        if check_finite:
            problem = _nonfinite_message(sumsq, n) if n else None
            _check_ranks_agree(z1, problem, temperature, normalize, backend, group)

        n_total, offset = world * n, rank * n
        keys = torch.cat(_gather_rows(zh[:n], group) + _gather_rows(zh[n:], group))  # [Z1; Z2]
        lse, terms = _forward(backend, zh, keys, n, offset, n_total, temperature, allow_tf32, normalize)
        lse_all = torch.cat(_gather_rows(lse[:n], group) + _gather_rows(lse[n:], group))
        total = terms.sum().reshape(1)
        dist.all_reduce(total, group=group)
        ctx.save_for_backward(zh, z1, z2, inv, keys, lse_all)
        ctx.args = (n, offset, n_total, temperature, normalize, backend, allow_tf32)
        return (total[0] / (2 * n_total)).to(z1.dtype)

    @staticmethod
    def backward(ctx, grad_loss):
        zh, z1, z2, inv, keys, lse_all = ctx.saved_tensors
        n, offset, n_total, temperature, normalize, backend, allow_tf32 = ctx.args
        dz = _backward(backend, zh, keys, lse_all, z1, z2, inv, grad_loss, n, offset, n_total, temperature,
                       normalize, allow_tf32)
        return dz[:n], dz[n:], None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------------
# Naive formula (backend="torch") and the public entry point.
# ---------------------------------------------------------------------------------------------------


def _naive(z1: Tensor, z2: Tensor, temperature: float, normalize: bool, check_finite: bool = True) -> Tensor:
    n = z1.shape[0]
    z = torch.cat([z1, z2])
    if check_finite and not bool(torch.isfinite(z).all()):
        which = "z1" if not bool(torch.isfinite(z1).all()) else "z2"
        raise NonFiniteInputError(f"{which} contains NaN or Inf")
    if normalize:
        z = torch.nn.functional.normalize(z, dim=1)
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return torch.nn.functional.cross_entropy(logits, positive)


def _triton_usable(t: Tensor) -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"


def _validate(z1, z2, temperature, backend, allow_empty: bool = False) -> str:
    """Checks the arguments; returns the concrete backend."""
    for name, z in (("z1", z1), ("z2", z2)):
        if not isinstance(z, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(z).__name__}")
        if z.dim() != 2:
            raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(z.shape)}")
    if z1.shape[1] != z2.shape[1]:
        raise ValueError(f"z1 and z2 must have the same feature size D, got {z1.shape[1]} and {z2.shape[1]}")
    if z1.shape[0] != z2.shape[0]:
        raise ValueError(f"z1 and z2 must have the same batch size N, got {z1.shape[0]} and {z2.shape[0]}")
    if z1.shape[0] == 0 and not allow_empty:  # with a group, checked with the other ranks instead
        raise ValueError("z1 and z2 are an empty batch (N = 0): the loss needs N >= 1")
    if z1.shape[1] == 0:
        raise ValueError("z1 and z2 have D = 0 features")
    if z1.dtype != z2.dtype:
        raise ValueError(f"z1 and z2 must have the same dtype, got {z1.dtype} and {z2.dtype}")
    if z1.device != z2.device:
        raise ValueError(f"z1 and z2 must be on the same device, got {z1.device} and {z2.device}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a positive number, got {temperature!r}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and > 0, got {temperature}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        fits = z1.dtype in _TRITON_DTYPES and z1.shape[1] <= 512
        backend = "triton" if (z1.is_cuda and fits and _triton_usable(z1)) else "cpu"
    allowed = {"triton": _TRITON_DTYPES, "cpu": _FUSED_DTYPES, "torch": _FUSED_DTYPES}[backend]
    if z1.dtype not in allowed:
        raise ValueError(f"z1 and z2 have dtype {z1.dtype}; backend {backend!r} accepts {list(allowed)}")
    if backend == "triton":
        if z1.shape[1] > 512:
            raise ValueError(f"backend 'triton' supports D <= 512, got D = {z1.shape[1]} (use backend='cpu')")
        if not _triton_usable(z1):
            raise ValueError("backend 'triton' needs triton and CUDA tensors (or TRITON_INTERPRET=1 on CPU)")
    return backend


def _resolve_group(group):
    """The process group to spread the batch over, or None for a single process."""
    if group is None:
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return None
        return dist.group.WORLD
    return group if dist.get_world_size(group) > 1 else None


def ntxent_loss(z1: Tensor, z2: Tensor, temperature: float = 0.1, *, normalize: bool = True,
                backend: str = "auto", group=None, allow_tf32: bool = True,
                deterministic: bool = False, check_finite: bool = True) -> Tensor:
    """NT-Xent over the 2N rows of ``[z1; z2]``, without the 2N x 2N matrix; a scalar in z1's dtype.

    z1, z2: (N, D) float32, float16 or bfloat16 (float64 on the "cpu" and "torch" backends), the two
    views' projections; row i of z1 and row i of z2 are a positive pair. ``normalize=False`` skips the
    L2 normalisation (dot products instead of cosines: pass unit rows). ``allow_tf32`` lets float32
    similarities use 10-bit-mantissa products on the GPU (see the module docstring); False keeps them
    exact. ``deterministic`` is accepted for clarity: every fused path
    already reduces in a fixed order. ``group``: see the module docstring.

    ``check_finite`` (default True): raise NonFiniteInputError when z1 or z2 holds NaN or Inf (with a
    group, on every rank alike, and ranks that differ in N, D, dtype, backend, ``normalize`` or the
    temperature raise ValueError, as does N = 0 on any rank). On a GPU
    the check reads one value back, so the host waits for the forward pass to finish; training loops
    that watch the loss value anyway can pass False: non-finite inputs then give a NaN loss. With a
    group, False also skips the check between ranks (every rank must pass the same N, D and settings).
    """
    group = _resolve_group(group)
    # With a group and the check, an empty batch on one rank is refused on every rank alike.
    backend = _validate(z1, z2, temperature, backend, allow_empty=group is not None and bool(check_finite))
    temperature = float(temperature)
    del deterministic  # both fused backends are deterministic (fixed reduction order, no atomics)
    if backend == "torch":
        if group is not None:
            raise ValueError("backend 'torch' is single-process; use backend 'cpu' or 'triton' with a group")
        return _naive(z1, z2, temperature, normalize, bool(check_finite))
    if group is not None:
        return _GlobalNTXent.apply(z1, z2, temperature, bool(normalize), backend, bool(allow_tf32), group,
                                   bool(check_finite))
    return _ntxent_fwd(z1, z2, temperature, bool(normalize), backend, bool(allow_tf32), bool(check_finite))[0]
