"""Triton kernel of the view/distance augmentation: K views of a batch, x read once.

One program handles one sequence ``n`` and ``T_ITERS`` blocks of ``BLOCK_T`` frames, each as a
``(BLOCK_T, BLOCK_V, BLOCK_M)`` tile per channel. It finds the body centre (person 0's centre
joint at the first frame person 0 is present) by scanning frames from the start, which stops
after the first block for almost every real sequence, then writes every view of its tile.
Strides are passed in, so a non-contiguous x is read in place.

Arithmetic is float32 (float64 when x is float64); the output has x's dtype.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from skelcl.kernels import check_interpreter, on_device

check_interpreter()

__all__ = ["view_augment_triton"]


@triton.jit
def _view_augment_kernel(
    x_ptr, ang_ptr, shift_ptr, out_ptr,
    N, T, V, M, center_joint,
    sxn, sxc, sxt, sxv, sxm,  # x strides (elements)
    sak, san, sat,  # angle strides; sat = 0 for one camera per sequence
    ssk, ssn, sst,  # shift strides; sst = 0 for one translation per sequence
    K: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_M: tl.constexpr,
    SCAN_T: tl.constexpr, T_ITERS: tl.constexpr, ACC_F64: tl.constexpr, IDX64: tl.constexpr,
):
    ACC = tl.float64 if ACC_F64 else tl.float32
    IDX = tl.int64 if IDX64 else tl.int32  # offsets within one sequence
    # 1-D grid (no 65,535 limit on N): program -> (sequence, block of frames).
    n_tblocks = tl.cdiv(T, BLOCK_T * T_ITERS)
    pid = tl.program_id(0)
    pid_t = pid % n_tblocks
    n = (pid // n_tblocks).to(tl.int64)
    x_n = x_ptr + n * sxn

    # Body centre: first frame where any joint of person 0 is non-zero.
    vs = tl.arange(0, BLOCK_V)
    ts_scan = tl.arange(0, SCAN_T)
    t_start = pid * 0  # int32 tensors, so the loop-carried types are fixed
    first = t_start + T
    while (first == T) & (t_start < T):
        tt = t_start + ts_scan
        mask = (tt[:, None] < T) & (vs[None, :] < V)
        off = tt[:, None].to(IDX) * sxt + vs[None, :] * sxv
        nz = tl.zeros([SCAN_T, BLOCK_V], dtype=tl.int32)
        for c in tl.static_range(3):
            xc = tl.load(x_n + c * sxc + off, mask=mask, other=0.0)
            nz = nz | (xc != 0).to(tl.int32)
        present = tl.max(nz, axis=1) > 0
        first = tl.min(tl.where(present, tt, T), axis=0)
        t_start += SCAN_T
    found = first < T
    t0 = tl.where(found, first, 0).to(tl.int64)
    c_off = x_n + t0 * sxt + center_joint * sxv
    c0 = tl.where(found, tl.load(c_off).to(ACC), 0.0)
    c1 = tl.where(found, tl.load(c_off + sxc).to(ACC), 0.0)
    c2 = tl.where(found, tl.load(c_off + 2 * sxc).to(ACC), 0.0)

    # This program's T_ITERS tiles of BLOCK_T frames: the centre search above is shared by them.
    ms = tl.arange(0, BLOCK_M)
    v3 = vs[None, :, None]
    m3 = ms[None, None, :]
    VM = V * M
    TVM = T * VM
    dt = out_ptr.dtype.element_ty
    for it in range(T_ITERS):
        ts = (pid_t * T_ITERS + it) * BLOCK_T + tl.arange(0, BLOCK_T)
        t3 = ts[:, None, None]
        mask = (t3 < T) & (v3 < V) & (m3 < M)
        x_off = t3.to(IDX) * sxt + v3 * sxv + m3 * sxm
        x0 = tl.load(x_n + x_off, mask=mask, other=0.0)
        x1 = tl.load(x_n + sxc + x_off, mask=mask, other=0.0)
        x2 = tl.load(x_n + 2 * sxc + x_off, mask=mask, other=0.0)
        nz = ((x0 != 0) | (x1 != 0) | (x2 != 0)).to(tl.int32)
        keep = tl.max(nz, axis=1)[:, None, :] > 0  # (BLOCK_T, 1, BLOCK_M): slot present
        x0 = x0.to(ACC)
        x1 = x1.to(ACC)
        x2 = x2.to(ACC)

        o_off = t3.to(IDX) * VM + v3 * M + m3
        t_ok = ts < T
        for k in tl.static_range(K):
            a_p = ang_ptr + k * sak + n * san + ts.to(tl.int64) * sat
            s_p = shift_ptr + k * ssk + n * ssn + ts.to(tl.int64) * sst
            ang_a = tl.load(a_p, mask=t_ok, other=0.0).to(ACC)
            ang_b = tl.load(a_p + 1, mask=t_ok, other=0.0).to(ACC)
            ang_g = tl.load(a_p + 2, mask=t_ok, other=0.0).to(ACC)
            ca = tl.cos(ang_a)
            sa = tl.sin(ang_a)
            cb = tl.cos(ang_b)
            sb = tl.sin(ang_b)
            cg = tl.cos(ang_g)
            sg = tl.sin(ang_g)
            # R = Rx(a) Ry(b) Rz(g), multiplied out; one per frame of the tile, shape (BLOCK_T, 1, 1).
            r00 = (cb * cg)[:, None, None]
            r01 = (cb * sg)[:, None, None]
            r02 = (-sb)[:, None, None]
            r10 = (sa * sb * cg - ca * sg)[:, None, None]
            r11 = (sa * sb * sg + ca * cg)[:, None, None]
            r12 = (sa * cb)[:, None, None]
            r20 = (ca * sb * cg + sa * sg)[:, None, None]
            r21 = (ca * sb * sg - sa * cg)[:, None, None]
            r22 = (ca * cb)[:, None, None]
            d0 = (tl.load(s_p, mask=t_ok, other=0.0).to(ACC) + c0)[:, None, None]
            d1 = (tl.load(s_p + 1, mask=t_ok, other=0.0).to(ACC) + c1)[:, None, None]
            d2 = (tl.load(s_p + 2, mask=t_ok, other=0.0).to(ACC) + c2)[:, None, None]
            a = x0 - d0
            b = x1 - d1
            c = x2 - d2
            y0 = tl.where(keep, r00 * a + r01 * b + r02 * c, 0.0)
            y1 = tl.where(keep, r10 * a + r11 * b + r12 * c, 0.0)
            y2 = tl.where(keep, r20 * a + r21 * b + r22 * c, 0.0)
            out_n = out_ptr + (k * N + n) * 3 * TVM
            tl.store(out_n + o_off, y0.to(dt), mask=mask)
            tl.store(out_n + TVM + o_off, y1.to(dt), mask=mask)
            tl.store(out_n + 2 * TVM + o_off, y2.to(dt), mask=mask)


def view_augment_triton(x: torch.Tensor, angles: torch.Tensor, shift: torch.Tensor, center_joint: int,
                        wrap=None, *, tile: int = 128, t_iters: int = 1, scan_t: int = 2,
                        num_warps: int = 1, out: torch.Tensor | None = None) -> torch.Tensor:
    """K views of x (N, 3, T, V, M) in one launch -> (K, N, 3, T, V, M).

    angles (K, N, Ta, 3), shift (K, N, Ts, 3) with Ta, Ts in {1, T}; float32 (float64 for
    float64 x). Inputs are assumed validated by ``skelcl.ops.augment``. ``wrap`` is applied to the
    kernel before launch (``torch.library.wrap_triton`` inside a ``triton_op``). Tuning: ``tile``
    elements per channel per tile, ``t_iters`` tiles per program, ``scan_t`` frames per step of
    the centre search. ``out``: a contiguous (K, N, 3, T, V, M) tensor of x's dtype to write into.
    The defaults were the fastest of a sweep on an H200 (N=256, T=300 and
    N=1024, T=64; V=25, M=2): small tiles, one warp, about 4 elements per thread per channel.
    """
    n_seq, _, n_frames, n_joints, n_persons = x.shape
    n_views = angles.shape[0]
    # the kernel reads each (alpha, beta, gamma) and (dx, dy, dz) as 3 adjacent values
    angles, shift = angles.contiguous(), shift.contiguous()
    shape = (n_views, n_seq, 3, n_frames, n_joints, n_persons)
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    elif tuple(out.shape) != shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {x.dtype} tensor of shape {shape}")
    if out.numel() == 0:
        return out
    block_v = triton.next_power_of_2(n_joints)
    block_m = triton.next_power_of_2(n_persons)
    block_t = max(1, min(triton.next_power_of_2(n_frames), tile // (block_v * block_m)))
    t_iters = max(1, min(t_iters, triton.cdiv(n_frames, block_t)))
    scan_t = max(1, min(triton.next_power_of_2(n_frames), scan_t))
    sat = angles.stride(2) if angles.shape[2] > 1 else 0
    sst = shift.stride(2) if shift.shape[2] > 1 else 0
    grid = (triton.cdiv(n_frames, block_t * t_iters) * n_seq,)
    seq_span = sum((size - 1) * abs(step) for size, step in zip(x.shape[1:], x.stride()[1:])) + 1
    kernel = _view_augment_kernel if wrap is None else wrap(_view_augment_kernel)
    with on_device(x):
        kernel[grid](
            x, angles, shift, out,
            n_seq, n_frames, n_joints, n_persons, center_joint,
            *x.stride(),
            angles.stride(0), angles.stride(1), sat,
            shift.stride(0), shift.stride(1), sst,
            K=n_views, BLOCK_T=block_t, BLOCK_V=block_v, BLOCK_M=block_m, SCAN_T=scan_t, T_ITERS=t_iters,
            ACC_F64=x.dtype == torch.float64,
            IDX64=max(seq_span, 3 * n_frames * n_joints * n_persons) >= 2**31,
            num_warps=num_warps,
        )
    return out
