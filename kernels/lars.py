"""Triton kernels of the LARS step (``skelcl.optim.LARS`` on CUDA): every tensor of a bucket in two
launches, whatever their number and sizes.

A bucket is the tensors of one parameter group on one device with one dtype, the adapted ones first
(see skelcl/optim/lars.py). The kernels reach its weights ``w``, gradients ``g`` and momentum
buffers ``v`` through a table of data pointers uploaded with the step's hyper-parameters (one
host-to-device copy, no synchronisation), and cut the work into blocks of ``BLOCK`` elements that
each belong to one tensor. The block schedule depends only on the tensors' sizes and is built once.

1. ``_norms_kernel``, over the blocks of the adapted tensors: per block, the partial sums of ``w^2``
   and ``u^2`` with ``u = g + weight_decay * w``.
2. ``_update_kernel``, over all blocks: a block of an adapted tensor adds up its tensor's partial
   sums (in a fixed order: deterministic, and every block of a tensor gets the same norms), forms
   ``trust = trust_coefficient * ||w|| / (||u|| + eps)`` (1 where a norm is 0; with ``CLIP``,
   ``min(trust / lr, 1)``); a block of an excluded tensor takes ``trust = 1`` and ``u = g``. Then
   ``v <- momentum * v + trust * u`` and ``w <- w - lr * v`` (Nesterov: ``w <- w - lr * (trust * u +
   momentum * v)``).

Arithmetic is float32 (float64 for float64 tensors); ``w`` and ``v`` are stored in their dtype. The
hyper-parameters travel as float64 bit patterns in the table, so float64 steps lose nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import triton
import triton.language as tl
from skelcl.kernels import check_interpreter, on_device

check_interpreter()

__all__ = ["LarsSchedule", "lars_schedule", "lars_step_"]

BLOCK = 2048  # elements per program
BLOCK_P = 64  # partial sums read per loop iteration of the update kernel
_N_HYPER = 5  # lr, momentum, weight_decay, trust_coefficient, eps (float64 bit patterns)

_N_HYPER_C = tl.constexpr(_N_HYPER)
_TL_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64, torch.float16: tl.float16,
              torch.bfloat16: tl.bfloat16}


@triton.jit
def _tensor_ptr(table_ptr, which, t, n_tensors, DTYPE: tl.constexpr):
    """Pointer to the first element of tensor ``t`` of list ``which`` (0 w, 1 g, 2 v)."""
    return tl.load(table_ptr + _N_HYPER_C + which * n_tensors + t).to(tl.pointer_type(DTYPE))


@triton.jit
def _hyper(table_ptr, k, ACC: tl.constexpr):
    return tl.load(table_ptr + k).to(tl.float64, bitcast=True).to(ACC)


@triton.jit
def _norms_kernel(table_ptr, sched_ptr, partial_ptr, n_tensors, n_blocks,
                  DTYPE: tl.constexpr, BLOCK: tl.constexpr, ACC_F64: tl.constexpr):
    ACC = tl.float64 if ACC_F64 else tl.float32
    b = tl.program_id(0)
    t = tl.load(sched_ptr + b)  # schedule: block -> tensor, block -> offset, tensor -> numel
    start = tl.load(sched_ptr + n_blocks + b)
    numel = tl.load(sched_ptr + 2 * n_blocks + t)
    offs = start + tl.arange(0, BLOCK)
    mask = offs < numel
    w = tl.load(_tensor_ptr(table_ptr, 0, t, n_tensors, DTYPE) + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(_tensor_ptr(table_ptr, 1, t, n_tensors, DTYPE) + offs, mask=mask, other=0.0).to(ACC)
    u = g + _hyper(table_ptr, 2, ACC) * w
    tl.store(partial_ptr + 2 * b, tl.sum(w * w, 0))
    tl.store(partial_ptr + 2 * b + 1, tl.sum(u * u, 0))


@triton.jit
def _update_kernel(table_ptr, sched_ptr, partial_ptr, lr_ptr, n_tensors, n_blocks, n_adapted,
                   DTYPE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_P: tl.constexpr, ACC_F64: tl.constexpr,
                   LR_FROM_PTR: tl.constexpr, CLIP: tl.constexpr, NESTEROV: tl.constexpr):
    ACC = tl.float64 if ACC_F64 else tl.float32
    b = tl.program_id(0)
    t = tl.load(sched_ptr + b)
    start = tl.load(sched_ptr + n_blocks + b)
    numel = tl.load(sched_ptr + 2 * n_blocks + t)
    first = tl.load(sched_ptr + 2 * n_blocks + n_tensors + t)  # the tensor's first block
    count = tl.load(sched_ptr + 2 * n_blocks + 2 * n_tensors + t)  # its blocks with partials (0: excluded)
    if LR_FROM_PTR:
        lr = tl.load(lr_ptr).to(ACC)
    else:
        lr = _hyper(table_ptr, 0, ACC)
    momentum = _hyper(table_ptr, 1, ACC)
    adapted = t < n_adapted
    weight_decay = tl.where(adapted, _hyper(table_ptr, 2, ACC), 0.0)

    sum_w = tl.zeros([BLOCK_P], dtype=ACC)
    sum_u = tl.zeros([BLOCK_P], dtype=ACC)
    for i in range(0, count, BLOCK_P):
        j = i + tl.arange(0, BLOCK_P)
        m = j < count
        sum_w += tl.load(partial_ptr + 2 * (first + j), mask=m, other=0.0)
        sum_u += tl.load(partial_ptr + 2 * (first + j) + 1, mask=m, other=0.0)
    w_norm = tl.sqrt(tl.sum(sum_w, 0))
    u_norm = tl.sqrt(tl.sum(sum_u, 0))
    valid = (w_norm > 0) & (u_norm > 0)
    denominator = tl.where(valid, u_norm + _hyper(table_ptr, 4, ACC), 1.0)  # no 0/0, even unused
    trust = tl.where(valid, _hyper(table_ptr, 3, ACC) * w_norm / denominator, 1.0)
    if CLIP:
        trust = tl.minimum(trust / lr, 1.0)
    trust = tl.where(adapted, trust, 1.0)

    offs = start + tl.arange(0, BLOCK)
    mask = offs < numel
    w_ptr = _tensor_ptr(table_ptr, 0, t, n_tensors, DTYPE) + offs
    v_ptr = _tensor_ptr(table_ptr, 2, t, n_tensors, DTYPE) + offs
    w = tl.load(w_ptr, mask=mask, other=0.0).to(ACC)
    g = tl.load(_tensor_ptr(table_ptr, 1, t, n_tensors, DTYPE) + offs, mask=mask, other=0.0).to(ACC)
    v = tl.load(v_ptr, mask=mask, other=0.0).to(ACC)
    u = trust * (g + weight_decay * w)
    v = momentum * v + u
    if NESTEROV:
        w = w - lr * (u + momentum * v)
    else:
        w = w - lr * v
    tl.store(v_ptr, v.to(DTYPE), mask=mask)
    tl.store(w_ptr, w.to(DTYPE), mask=mask)


@dataclass
class LarsSchedule:
    """Where each block of a bucket's tensors starts, on the device (built once per bucket)."""

    numels: list[int]
    n_adapted: int
    n_blocks: int
    n_adapted_blocks: int
    sched: torch.Tensor  # int64: block->tensor, block->offset, tensor->numel, ->first block, ->partial count
    partial: torch.Tensor  # (n_adapted_blocks, 2) partial sums of w^2 and u^2

    @property
    def n_tensors(self) -> int:
        return len(self.numels)


def lars_schedule(numels: list[int], n_adapted: int, dtype: torch.dtype, device) -> LarsSchedule:
    """The block schedule of tensors with ``numels`` elements, of which the first ``n_adapted`` are
    adapted (their blocks, first, get partial sums)."""
    if dtype not in _TL_DTYPES:
        raise ValueError(f"LARS kernels: unsupported dtype {dtype}")
    blocks = [-(-n // BLOCK) for n in numels]
    first = np.concatenate([[0], np.cumsum(blocks)[:-1]]).astype(np.int64) if numels else np.zeros(0, np.int64)
    block_tensor = np.repeat(np.arange(len(numels), dtype=np.int64), blocks)
    block_offset = (np.arange(len(block_tensor), dtype=np.int64) - first[block_tensor]) * BLOCK
    counts = np.asarray([b if i < n_adapted else 0 for i, b in enumerate(blocks)], dtype=np.int64)
    n_blocks = len(block_tensor)
    sched = np.concatenate([block_tensor, block_offset, np.asarray(numels, dtype=np.int64), first, counts])
    n_adapted_blocks = int(sum(blocks[:n_adapted]))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    return LarsSchedule(list(numels), n_adapted, n_blocks, n_adapted_blocks,
                        torch.from_numpy(sched).to(device), torch.empty(n_adapted_blocks, 2, dtype=acc, device=device))


def lars_step_(schedule: LarsSchedule, params: list[torch.Tensor], grads: list[torch.Tensor],
               bufs: list[torch.Tensor], lr, momentum: float, weight_decay: float, trust_coefficient: float,
               eps: float, clip: bool, nesterov: bool) -> None:
    """One LARS step on ``params`` (dense tensors of one dtype and device, laid out alike with their
    ``grads`` and ``bufs``), in place. ``lr``: a number, or a 0-dim tensor on the device."""
    p0 = params[0]
    n = schedule.n_tensors
    table = np.empty(_N_HYPER + 3 * n, dtype=np.int64)
    lr_is_tensor = isinstance(lr, torch.Tensor)
    table[:_N_HYPER] = np.asarray([0.0 if lr_is_tensor else float(lr), momentum, weight_decay,
                                   trust_coefficient, eps], dtype=np.float64).view(np.int64)
    table[_N_HYPER:_N_HYPER + n] = list(map(torch.Tensor.data_ptr, params))
    table[_N_HYPER + n:_N_HYPER + 2 * n] = list(map(torch.Tensor.data_ptr, grads))
    table[_N_HYPER + 2 * n:] = list(map(torch.Tensor.data_ptr, bufs))
    # From pageable memory, non_blocking: the copy is staged at once and nothing waits for the device.
    table_dev = torch.from_numpy(table).to(p0.device, non_blocking=True)
    dtype, acc_f64 = _TL_DTYPES[p0.dtype], p0.dtype == torch.float64
    with on_device(p0):
        if schedule.n_adapted_blocks:
            _norms_kernel[(schedule.n_adapted_blocks,)](
                table_dev, schedule.sched, schedule.partial, n, schedule.n_blocks,
                DTYPE=dtype, BLOCK=BLOCK, ACC_F64=acc_f64, num_warps=4)
        if schedule.n_blocks:
            lr_ptr = lr if lr_is_tensor else schedule.partial  # any tensor when unused
            _update_kernel[(schedule.n_blocks,)](
                table_dev, schedule.sched, schedule.partial, lr_ptr, n, schedule.n_blocks, schedule.n_adapted,
                DTYPE=dtype, BLOCK=BLOCK, BLOCK_P=BLOCK_P, ACC_F64=acc_f64, LR_FROM_PTR=lr_is_tensor,
                CLIP=bool(clip), NESTEROV=bool(nesterov), num_warps=4)
