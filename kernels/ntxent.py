"""Triton kernels for the fused NT-Xent loss: no 2N x 2N matrix in memory, forward or backward.

Notation: the queries are the local rows ``q`` (``2 n_local`` of them: ``[z1; z2]`` of this process,
normalised); the keys are all ``M = 2 n_total`` normalised rows of the (possibly gathered) global
batch ``[Z1; Z2]``. A local row ``t`` has the global index ``offset + t`` (``t < n_local``) or
``n_total + offset + t - n_local``; its positive is the global row ``g +- n_total``.
In one process ``q`` and the keys are the same tensor and ``offset = 0``.

Logits are kept in base-2 units, ``t_ik = s_ik * log2(e) / tau``, so every exponential is one
``exp2``; the stored row log-sum-exp ``lse2`` is in the same units.

Backward: with ``p_ik = exp(s_ik / tau - lse_i)`` (k != i),
``dL/dzhat_j = (1 / (M tau)) [sum_k (p_jk + p_kj) zhat_k - 2 zhat_pos(j)]``. The weight
``p_jk + p_kj`` only needs ``lse_j`` and ``lse_k``, so one row pass over key tiles gives every row's
full gradient: no column pass, no atomics, and a fixed reduction order (deterministic).
The chain rule through ``zhat = z / |z|`` runs in the same kernel's epilogue.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl
from skelcl.kernels import check_interpreter, on_device

check_interpreter()

LOG2E = 1.0 / math.log(2.0)
LN2 = math.log(2.0)
MAX_DIM = 512

__all__ = ["normalize_rows", "ntxent_forward", "ntxent_backward", "operand_dtype", "MAX_DIM"]


@triton.jit
def _normalize_kernel(Z1, Z2, ZH, INV, SUMSQ, n, D, stride_1, stride_2, stride_h,
                      NORMALIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    # Rows [0, n) come from z1 and [n, 2n) from z2, so [z1; z2] is never concatenated separately.
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dcols = tl.arange(0, BLOCK_D)
    d_ok = dcols[None, :] < D
    in1 = rows < n
    in2 = (rows >= n) & (rows < 2 * n)
    x1 = tl.load(Z1 + rows[:, None] * stride_1 + dcols[None, :], mask=in1[:, None] & d_ok, other=0.0)
    x2 = tl.load(Z2 + (rows[:, None] - n) * stride_2 + dcols[None, :], mask=in2[:, None] & d_ok, other=0.0)
    x = x1.to(tl.float32) + x2.to(tl.float32)
    sumsq = tl.sum(x * x, axis=1)
    if NORMALIZE:
        inv = 1.0 / tl.maximum(tl.sqrt(sumsq), 1e-12)  # the eps of torch.nn.functional.normalize
    else:
        inv = tl.full([BLOCK_M], 1.0, tl.float32)
    ok = in1 | in2
    tl.store(ZH + rows[:, None] * stride_h + dcols[None, :], (x * inv[:, None]).to(ZH.dtype.element_ty),
             mask=ok[:, None] & d_ok)
    tl.store(INV + rows, inv, mask=ok)
    tl.store(SUMSQ + rows, sumsq, mask=ok)


@triton.jit
def _mm(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST: the interpreter (TRITON_INTERPRET=1) computes bf16 x bf16 dots wrongly; feed it fp32.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _global_rows(rows, n_local, offset, n_total):
    return tl.where(rows < n_local, offset + rows, n_total + offset + rows - n_local)


@triton.jit
def _key_tile(K, start, m_total, stride_k, dcols, d_ok, BLOCK_N: tl.constexpr):
    """Key rows [start, start + BLOCK_N): (their indices, which exist, the (BLOCK_N, BLOCK_D) tile)."""
    cols = start + tl.arange(0, BLOCK_N)
    col_ok = cols < m_total
    k = tl.load(K + cols[:, None] * stride_k + dcols[None, :], mask=col_ok[:, None] & d_ok, other=0.0)
    return cols, col_ok, k


@triton.jit
def _mask_own_and_ragged(x, fill, start, cols, col_ok, grow, m_total, g_lo, g_hi, BLOCK_N: tl.constexpr):
    """``x`` with ``fill`` at each row's own key and at missing keys. Only a tile that is ragged or
    overlaps the rows' own global indices [g_lo, g_hi] holds such entries; other tiles skip the select."""
    if (start + BLOCK_N > m_total) | ((start <= g_hi) & (start + BLOCK_N > g_lo)):
        x = tl.where(col_ok[None, :] & (cols[None, :] != grow[:, None]), x, fill)
    return x


@triton.jit
def _fwd_kernel(Q, K, LSE2, LOSS, n_local, offset, n_total, D, stride_q, stride_k, scale2,
                FIXED_MAX: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < 2 * n_local
    grow = _global_rows(rows, n_local, offset, n_total)
    g_lo = tl.min(tl.where(row_ok, grow, 2147483647), axis=0)
    g_hi = tl.max(tl.where(row_ok, grow, -1), axis=0)
    m_total = 2 * n_total
    dcols = tl.arange(0, BLOCK_D)
    d_ok = dcols[None, :] < D
    q = tl.load(Q + rows[:, None] * stride_q + dcols[None, :], mask=row_ok[:, None] & d_ok, other=0.0)

    # The positive's logit first: the fixed-reference forward measures every logit against it.
    gpos = tl.where(grow < n_total, grow + n_total, grow - n_total)
    kp = tl.load(K + gpos[:, None] * stride_k + dcols[None, :], mask=row_ok[:, None] & d_ok, other=0.0)
    pos2 = tl.sum(q.to(tl.float32) * kp.to(tl.float32), axis=1) * scale2

    l_i = tl.zeros([BLOCK_M], tl.float32)
    if FIXED_MAX:
        # Unit rows: every logit lies in [-scale2, scale2] (up to rounding) and scale2 <= 60. Against
        # the reference m = max(pos2, scale2 - 60), each t - m lies in [-120, 60]: exp2 neither
        # overflows nor leaves the normal floats, so no running maximum and no rescaling are needed.
        # With m = pos2 (the usual case) the loss term log2(l) keeps full precision as it nears 0.
        m_ref = tl.maximum(pos2, scale2 - 60.0)
        for start in range(0, m_total, BLOCK_N):
            cols, col_ok, k = _key_tile(K, start, m_total, stride_k, dcols, d_ok, BLOCK_N)
            t = _mm(q, tl.trans(k), None, PRECISION, UPCAST) * scale2 - m_ref[:, None]
            t = _mask_own_and_ragged(t, float("-inf"), start, cols, col_ok, grow, m_total, g_lo, g_hi, BLOCK_N)
            l_i += tl.sum(tl.exp2(t), axis=1)
        log_l = tl.log2(l_i)
        lse2 = m_ref + log_l
        loss2 = (m_ref - pos2) + log_l
    else:
        # A finite start for the running max: a tile where a row sees only masked keys then adds 0.
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
        for start in range(0, m_total, BLOCK_N):
            cols, col_ok, k = _key_tile(K, start, m_total, stride_k, dcols, d_ok, BLOCK_N)
            t = _mm(q, tl.trans(k), None, PRECISION, UPCAST) * scale2
            t = _mask_own_and_ragged(t, float("-inf"), start, cols, col_ok, grow, m_total, g_lo, g_hi, BLOCK_N)
            m_new = tl.maximum(m_i, tl.max(t, axis=1))
            l_i = l_i * tl.exp2(m_i - m_new) + tl.sum(tl.exp2(t - m_new[:, None]), axis=1)
            m_i = m_new
        lse2 = m_i + tl.log2(l_i)
        loss2 = lse2 - pos2
    tl.store(LSE2 + rows, lse2, mask=row_ok)
    tl.store(LOSS + rows, loss2 * 0.6931471805599453, mask=row_ok)


@triton.jit
def _softmax_pair_weights(t, lse_r, lse_c, r_lo, r_hi, r_scale, col_ok, shortcut_limit):
    """``p_jk + p_kj = exp2(t - lse_r) + exp2(t - lse_c)``, with one exp2 per element where it is safe.

    ``exp2(t - lse_c) = exp2(t - lse_r) * exp2(lse_r - r_hi) * exp2(r_hi - lse_c)``: the last two
    factors cost one exp2 per row and per column, so the tile needs one exp2 per element instead of
    two (the exponential unit, not the matrix units, bounds this kernel). The product is used only
    when every |lse_r - lse_c| in the tile is <= shortcut_limit (60, base 2), so that no factor
    overflows and a first term that underflows can only hide a second term below 2^-66. Otherwise (very low
    temperatures, unnormalised rows) the tile takes both exponentials.
    """
    c_lo = tl.min(tl.where(col_ok, lse_c, float("inf")), axis=0)
    c_hi = tl.max(tl.where(col_ok, lse_c, float("-inf")), axis=0)
    if (r_hi - c_lo <= shortcut_limit) & (c_hi - r_lo <= shortcut_limit):
        e = tl.exp2(t - lse_r[:, None])
        c_scale = tl.where(col_ok, tl.exp2(r_hi - lse_c), 0.0)
        ratio = r_scale[:, None] * c_scale[None, :]  # exp2(lse_r - lse_c)
        w = e + e * ratio
    else:
        w = tl.exp2(t - lse_r[:, None]) + tl.exp2(t - lse_c[None, :])
    return w


@triton.jit
def _bwd_kernel(Q, K, LSE2_ALL, Z1, Z2, INV, GOUT, DZ, n_local, offset, n_total, D, stride_q, stride_k,
                stride_1, stride_2, stride_dz, scale2, coef, shortcut_limit, NORMALIZE: tl.constexpr, PRECISION: tl.constexpr,
                UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < 2 * n_local
    grow = _global_rows(rows, n_local, offset, n_total)
    m_total = 2 * n_total
    dcols = tl.arange(0, BLOCK_D)
    d_ok = dcols[None, :] < D
    q = tl.load(Q + rows[:, None] * stride_q + dcols[None, :], mask=row_ok[:, None] & d_ok, other=0.0)
    g_lo = tl.min(tl.where(row_ok, grow, 2147483647), axis=0)
    g_hi = tl.max(tl.where(row_ok, grow, -1), axis=0)
    lse_r = tl.load(LSE2_ALL + grow, mask=row_ok, other=0.0)
    r_lo = tl.min(tl.where(row_ok, lse_r, float("inf")), axis=0)
    r_hi = tl.max(tl.where(row_ok, lse_r, float("-inf")), axis=0)
    # exp2(lse_r - r_hi): in [2^-120, 1] wherever a tile takes the one-exponential path.
    r_scale = tl.where(row_ok, tl.exp2(tl.maximum(lse_r - r_hi, -126.0)), 0.0)

    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start in range(0, m_total, BLOCK_N):
        cols, col_ok, k = _key_tile(K, start, m_total, stride_k, dcols, d_ok, BLOCK_N)
        lse_c = tl.load(LSE2_ALL + cols, mask=col_ok, other=0.0)
        t = _mm(q, tl.trans(k), None, PRECISION, UPCAST) * scale2
        # p_jk + p_kj: the row's own softmax plus the key row's softmax at this anchor.
        w = _softmax_pair_weights(t, lse_r, lse_c, r_lo, r_hi, r_scale, col_ok, shortcut_limit)
        w = _mask_own_and_ragged(w, 0.0, start, cols, col_ok, grow, m_total, g_lo, g_hi, BLOCK_N)
        acc = _mm(w.to(k.dtype), k, acc, PRECISION, UPCAST)

    gpos = tl.where(grow < n_total, grow + n_total, grow - n_total)
    kp = tl.load(K + gpos[:, None] * stride_k + dcols[None, :], mask=row_ok[:, None] & d_ok, other=0.0)
    g = (acc - 2.0 * kp.to(tl.float32)) * (coef * tl.load(GOUT).to(tl.float32))
    if NORMALIZE:
        # d(z/|z|) = (I - zhat zhat^T) / |z|, with zhat from the raw rows in float32 (Q may hold
        # them rounded to 16 bits for the products).
        in1 = rows < n_local
        in2 = (rows >= n_local) & row_ok
        x1 = tl.load(Z1 + rows[:, None] * stride_1 + dcols[None, :], mask=in1[:, None] & d_ok, other=0.0)
        x2 = tl.load(Z2 + (rows[:, None] - n_local) * stride_2 + dcols[None, :], mask=in2[:, None] & d_ok,
                     other=0.0)
        inv = tl.load(INV + rows, mask=row_ok, other=0.0)
        zhat = (x1.to(tl.float32) + x2.to(tl.float32)) * inv[:, None]
        radial = tl.sum(zhat * g, axis=1)
        g = (g - zhat * radial[:, None]) * inv[:, None]
    tl.store(DZ + rows[:, None] * stride_dz + dcols[None, :], g.to(DZ.dtype.element_ty),
             mask=row_ok[:, None] & d_ok)


def _block_d(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


Config = tuple[int, int, int, int]  # (BLOCK_M, BLOCK_N, num_warps, num_stages)


# Measured winners that override the defaults below, keyed by (BLOCK_D, operand bytes, backward);
# a benchmark's tile sweep fills it in-process before timing the public op.
TUNED: dict[tuple[int, int, bool], Config] = {}


def _config(dim: int, dtype: torch.dtype, backward: bool) -> Config:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): flash-attention-like tiles, smaller for wide rows.

    ``dtype`` is the dtype of the product operands. The backward holds a (BLOCK_M, D) float32
    accumulator next to the query tile, so with 4-byte operands it takes half the rows to stay
    within the register file.
    """
    bd = _block_d(dim)
    tuned = TUNED.get((bd, dtype.itemsize, backward))
    if tuned is not None:
        return tuned
    if bd <= 128:
        if dtype == torch.float32:  # exact float32 products (allow_tf32=False)
            return (64, 64, 4, 2) if backward else (128, 64, 8, 3)
        # 16-bit operands: the fastest of bench/gpu_ntxent.py's two sweeps on an H200 at 2N = 65,536
        return (64, 128, 4, 2) if backward else (128, 64, 4, 4)
    if bd <= 256:
        return 64, 64, 8, 2
    return 64, 32, 8, 2


def _upcast(dtype: torch.dtype) -> bool:
    return dtype in (torch.bfloat16, torch.float16) and os.environ.get("TRITON_INTERPRET") == "1"


def _precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    return "tf32" if (allow_tf32 or dtype != torch.float32) else "ieee"


def operand_dtype(dtype: torch.dtype, normalize: bool, allow_tf32: bool) -> torch.dtype:
    """The dtype the similarity products read.

    float32 rows that may use tf32 and are normalised are stored once in float16 for the products:
    float16 keeps tf32's 10-bit mantissa, its range covers unit rows, and its tensor-core products
    run at twice tf32's rate with half the bytes to load. Everything else keeps the input dtype.
    """
    if dtype == torch.float32 and allow_tf32 and normalize:
        return torch.float16
    return dtype


def normalize_rows(z1: torch.Tensor, z2: torch.Tensor, normalize: bool = True,
                   out_dtype: torch.dtype | None = None):
    """``[z1; z2]`` row-normalised -> (zhat (2n, D) in ``out_dtype`` (default z1's), inv_norm (2n,),
    sumsq (2n,) fp32)."""
    n, dim = z1.shape
    zh = torch.empty((2 * n, dim), dtype=out_dtype or z1.dtype, device=z1.device)
    inv = torch.empty(2 * n, dtype=torch.float32, device=z1.device)
    sumsq = torch.empty(2 * n, dtype=torch.float32, device=z1.device)
    block_m = 32 if _block_d(dim) <= 128 else 8
    grid = (triton.cdiv(2 * n, block_m),)
    with on_device(z1):
        _normalize_kernel[grid](z1, z2, zh, inv, sumsq, n, dim, z1.stride(0), z2.stride(0), zh.stride(0),
                                NORMALIZE=normalize, BLOCK_M=block_m, BLOCK_D=_block_d(dim), num_warps=4)
    return zh, inv, sumsq


# Largest |lse_r - lse_c| (base 2) for which the backward takes one exponential per weight.
SHORTCUT_LIMIT = 60.0
# Largest log2(e) / temperature for which the forward of unit rows uses the fixed maximum.
FIXED_MAX_LIMIT = 60.0


def ntxent_forward(q: torch.Tensor, keys: torch.Tensor, n_local: int, offset: int, n_total: int,
                   temperature: float, allow_tf32: bool = True, config: Config | None = None,
                   normalized: bool = False, fixed_max: bool | None = None):
    """Per local row: (lse in base-2 logit units, loss term in nats), both (2 n_local,) float32.

    ``normalized``: the rows are unit vectors, so every logit is at most 1 / temperature and, for
    temperature >= 0.024, the log-sum-exp needs no running maximum (``fixed_max`` forces either way,
    for benchmarks). ``config``: (BLOCK_M, BLOCK_N, num_warps, num_stages) instead of the tuned default.
    """
    dim = q.shape[1]
    lse2 = torch.empty(2 * n_local, dtype=torch.float32, device=q.device)
    loss = torch.empty_like(lse2)
    scale2 = LOG2E / temperature
    if fixed_max is None:
        fixed_max = normalized and scale2 <= FIXED_MAX_LIMIT
    bm, bn, warps, stages = config or _config(dim, q.dtype, backward=False)
    grid = (triton.cdiv(2 * n_local, bm),)
    with on_device(q):
        _fwd_kernel[grid](q, keys, lse2, loss, n_local, offset, n_total, dim, q.stride(0), keys.stride(0),
                          scale2, FIXED_MAX=fixed_max, PRECISION=_precision(q.dtype, allow_tf32),
                          UPCAST=_upcast(q.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_block_d(dim), num_warps=warps,
                          num_stages=stages)
    return lse2, loss


def ntxent_backward(q: torch.Tensor, keys: torch.Tensor, lse2_all: torch.Tensor, z1: torch.Tensor,
                    z2: torch.Tensor, inv_norm: torch.Tensor, grad_out: torch.Tensor, n_local: int,
                    offset: int, n_total: int, temperature: float, normalize: bool = True,
                    allow_tf32: bool = True, config: Config | None = None,
                    shortcut_limit: float = SHORTCUT_LIMIT) -> torch.Tensor:
    """Gradient of the global mean loss w.r.t. the local raw rows ``[z1; z2]``: (2 n_local, D) in z1's dtype.

    ``q``/``keys`` are the normalised rows in the operand dtype; z1, z2 the raw local rows (the
    normalisation's chain rule reads them in float32). ``shortcut_limit``: see
    ``_softmax_pair_weights`` (a negative value always takes two exponentials, for benchmarks).
    """
    dim = q.shape[1]
    dz = torch.empty((2 * n_local, dim), dtype=z1.dtype, device=q.device)
    bm, bn, warps, stages = config or _config(dim, q.dtype, backward=True)
    grid = (triton.cdiv(2 * n_local, bm),)
    coef = 1.0 / (2 * n_total * temperature)
    with on_device(q):
        _bwd_kernel[grid](q, keys, lse2_all, z1, z2, inv_norm, grad_out, dz, n_local, offset, n_total, dim,
                          q.stride(0), keys.stride(0), z1.stride(0), z2.stride(0), dz.stride(0),
                          LOG2E / temperature, coef, float(min(shortcut_limit, SHORTCUT_LIMIT)),
                          NORMALIZE=normalize, PRECISION=_precision(q.dtype, allow_tf32),
                          UPCAST=_upcast(q.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=_block_d(dim),
                          num_warps=warps, num_stages=stages)
    return dz
