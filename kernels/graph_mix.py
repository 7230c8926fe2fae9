"""Triton kernels of the spatial graph convolution's joint mixing with a sparse matrix (CSR).

Same operations as csrc/graph_mix.cpp (the CPU kernels):

- ``graph_mix(x, rowptr, col, val)``: ``out[b, r, :] = sum_{j in row r} val[j] * x[b, col[j], :]``
  for ``x`` ``(B, V, L)``, ``out`` ``(B, R, L)``; the transpose of the mixing (input gradient) is
  the same call with the transposed CSR;
- ``graph_mix_val_grad(g, x, rows, col)``: ``sum_{b, l} g[b, rows[j], l] * x[b, col[j], l]`` per
  non-zero ``j`` (the gradient w.r.t. ``val``).

Skeleton graphs have one to four non-zeros per row (NTU-25 with three partitions: 73 of 1,875),
so the mixing is a few scaled row reads per output row: memory-bound, where a dense batched
product over V = 25 runs on unaligned, small-K GEMM kernels. One program writes one
``BLOCK_L`` piece of one output row; arithmetic is float32 (float64 for float64 inputs); outputs
take the input's dtype. The value gradient writes one partial sum per (non-zero, block of
sequences) and the caller sums them in a fixed order, so it is deterministic.

Both are also registered as torch.library ops (``torch.ops.skelcl.graph_mix_triton`` and
``torch.ops.skelcl.graph_mix_val_grad_triton``), which torch.compile keeps opaque: callers use them
while compiling and the plain functions (a few microseconds cheaper per call) otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from skelcl.kernels import check_interpreter, on_device

check_interpreter()

__all__ = ["graph_mix", "graph_mix_val_grad"]


@triton.jit
def _mix_kernel(x_ptr, out_ptr, rowptr_ptr, col_ptr, val_ptr, V, R, L,
                BLOCK_L: tl.constexpr, ACC_F64: tl.constexpr):
    ACC = tl.float64 if ACC_F64 else tl.float32
    row = tl.program_id(0).to(tl.int64)  # b * R + r
    b, r = row // R, row % R
    offs = tl.program_id(1) * BLOCK_L + tl.arange(0, BLOCK_L)
    mask = offs < L
    j0 = tl.load(rowptr_ptr + r)
    j1 = tl.load(rowptr_ptr + r + 1)
    acc = tl.zeros([BLOCK_L], dtype=ACC)
    for j in range(j0, j1):
        c = tl.load(col_ptr + j)
        v = tl.load(val_ptr + j).to(ACC)
        acc += v * tl.load(x_ptr + (b * V + c) * L + offs, mask=mask, other=0.0).to(ACC)
    tl.store(out_ptr + row * L + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _val_grad_kernel(g_ptr, x_ptr, rows_ptr, col_ptr, partial_ptr, B, V, R, L, NNZ,
                     SEQ_PER_PROGRAM: tl.constexpr, BLOCK_L: tl.constexpr, ACC_F64: tl.constexpr):
    ACC = tl.float64 if ACC_F64 else tl.float32
    j = tl.program_id(0)
    block = tl.program_id(1)
    r = tl.load(rows_ptr + j).to(tl.int64)
    c = tl.load(col_ptr + j).to(tl.int64)
    acc = tl.zeros([BLOCK_L], dtype=ACC)
    for i in range(SEQ_PER_PROGRAM):
        b = block.to(tl.int64) * SEQ_PER_PROGRAM + i
        length = tl.where(b < B, L, 0)  # a missing last sequence reads nothing
        for l0 in range(0, L, BLOCK_L):
            offs = l0 + tl.arange(0, BLOCK_L)
            mask = offs < length
            gv = tl.load(g_ptr + (b * R + r) * L + offs, mask=mask, other=0.0).to(ACC)
            xv = tl.load(x_ptr + (b * V + c) * L + offs, mask=mask, other=0.0).to(ACC)
            acc += gv * xv
    tl.store(partial_ptr + block * NNZ + j, tl.sum(acc, axis=0))


_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_floating(x: torch.Tensor) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"graph mixing takes {[str(d) for d in _FLOAT_DTYPES]} activations, got {x.dtype}")


def _block_l(length: int) -> int:
    return min(1024, max(16, triton.next_power_of_2(length)))


def graph_mix(x: torch.Tensor, rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` (B, V, L); CSR ``rowptr`` (R+1,), ``col`` (nnz,) int64, ``val`` (nnz,) -> (B, R, L).
    The kernel steps through dense rows: inputs are made contiguous here, and ``out`` must be."""
    _check_floating(x)
    x, rowptr, col, val = (t.contiguous() for t in (x, rowptr, col, val))
    b, v, length = x.shape
    rows = rowptr.numel() - 1
    if out is None:
        out = x.new_empty(b, rows, length)
    elif not out.is_contiguous() or out.shape != (b, rows, length) or out.dtype != x.dtype:
        raise ValueError(f"out must be a contiguous ({b}, {rows}, {length}) {x.dtype} tensor, got "
                         f"{tuple(out.shape)} {out.dtype}, contiguous={out.is_contiguous()}")
    if b * rows == 0 or length == 0:
        return out
    block = _block_l(length)
    grid = (b * rows, triton.cdiv(length, block))
    with on_device(x):
        _mix_kernel[grid](x, out, rowptr, col, val, v, rows, length, BLOCK_L=block,
                          ACC_F64=x.dtype == torch.float64)
    return out


def graph_mix_val_grad(g: torch.Tensor, x: torch.Tensor, rows: torch.Tensor, col: torch.Tensor) -> torch.Tensor:
    """``g`` (B, R, L), ``x`` (B, V, L) (made contiguous here); ``rows``, ``col`` (nnz,) -> (nnz,) in
    x's dtype (float32 partial sums for 16-bit inputs)."""
    _check_floating(x)
    g, x, rows, col = (t.contiguous() for t in (g, x, rows, col))
    b, v, length = x.shape
    nnz = col.numel()
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if nnz == 0 or b == 0:
        return torch.zeros(nnz, dtype=x.dtype, device=x.device)
    seq_per_program = max(1, triton.cdiv(b, 64))  # at most 64 partial sums per non-zero
    blocks = triton.cdiv(b, seq_per_program)
    partial = torch.empty(blocks, nnz, dtype=acc_dtype, device=x.device)
    block = min(_block_l(length), 512)
    with on_device(x):
        _val_grad_kernel[(nnz, blocks)](g, x, rows, col, partial, b, v, g.shape[1], length, nnz,
                                        SEQ_PER_PROGRAM=seq_per_program, BLOCK_L=block,
                                        ACC_F64=x.dtype == torch.float64)
    return partial.sum(0).to(x.dtype)


# Opaque to torch.compile (it neither traces the launches nor needs them traceable), with shapes for
# its fake tensors.
@torch.library.custom_op("skelcl::graph_mix_triton", mutates_args=())
def _graph_mix_op(x: torch.Tensor, rowptr: torch.Tensor, col: torch.Tensor, val: torch.Tensor) -> torch.Tensor:
    return graph_mix(x, rowptr, col, val)


@_graph_mix_op.register_fake
def _(x, rowptr, col, val):
    return x.new_empty(x.shape[0], rowptr.shape[0] - 1, x.shape[2])


@torch.library.custom_op("skelcl::graph_mix_val_grad_triton", mutates_args=())
def _graph_mix_val_grad_op(g: torch.Tensor, x: torch.Tensor, rows: torch.Tensor,
                           col: torch.Tensor) -> torch.Tensor:
    return graph_mix_val_grad(g, x, rows, col)


@_graph_mix_val_grad_op.register_fake
def _(g, x, rows, col):
    return x.new_empty(col.shape[0])
