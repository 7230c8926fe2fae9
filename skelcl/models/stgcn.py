"""ST-GCN (Yan et al. 2018) with channels-last activations.

Activations live as ``(N*M, V, T, C)`` contiguous (joints before frames, channels last), which is
PyTorch's channels_last memory format for the ``(N*M, C, V, T)`` view, so every convolution and
batch norm below runs on a view and no activation is copied between layers.

- The temporal convolution is a ``(1, k)`` conv2d over T, the innermost spatial dimension of that
  view (the original ``(k, 1)`` weight, viewed). oneDNN computes its weight gradient faster this
  way than with T as the outer spatial dimension (``(N*M, T, V, C)`` layout).
- The spatial graph convolution ``out[w] = sum_k sum_v A_k[v, w] (W_k x[v] + b_k)`` mixes the
  joints first: one batched product per sequence with the ``(K*W, V)`` matrix ``A[k, v, w]`` over
  all frames and channels at once, giving ``(N*M, K, W, T, C_in)``; then one GEMM over
  ``(k, c_in)`` maps to ``C_out`` (on CPU a depth-K conv3d on the channels_last_3d view, elsewhere a
  linear layer), and the bias enters as its mixed form ``sum_k (sum_v A_k[v, w]) b_k`` per
  ``(w, c)``. Mixing first works on the narrower side when a block widens and on 3 channels in
  the first block. On CPU (outside autocast) a custom autograd function never holds the mixed
  activations (K times the input) for more than a few sequences at a time, computes the weight
  gradient one partition at a time, and mixes with a sparse C++ kernel (csrc/graph_mix.cpp) on the
  non-zeros of the layout's partitions. Elsewhere the mixing is a dense batched product, chosen by
  ``PORTABLE_MIX`` (or per model, ``set_portable_mix``): the matrix as it is, transposed and padded
  for aligned GEMM operands, or the sparse Triton kernels of kernels/graph_mix.py.

Parameters keep the shapes of the original convolutions (1x1 ones squeezed), so
``skelcl.models.convert_stgcn_state_dict`` maps original checkpoints one to one.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skelcl.layouts import Layout, get_layout
from skelcl.models.batchnorm import BatchNorm2d

__all__ = ["STGCN", "STGCNBlock", "GraphConv", "default_strides", "set_portable_mix", "stgcn_widths"]

FULL_WIDTHS = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)


def stgcn_widths(depth: int = 10, width_multiplier: float = 1.0, base: int = 64) -> tuple[int, ...]:
    """Block widths of an ST-GCN of ``depth`` blocks in three stages (base, 2x, 4x channels).

    Stages split as in the original 4-3-3; ``depth=10, width_multiplier=1`` gives the original
    64-64-64-64-128-128-128-256-256-256, ``width_multiplier=0.25`` the 16...64 network that
    SkeletonCLR and AimCLR pretrain.
    """
    if depth < 3:
        raise ValueError(f"depth must be >= 3 (three stages), got {depth}")
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    later = depth // 3
    first = depth - 2 * later
    stage = [max(1, round(base * width_multiplier * f)) for f in (1, 2, 4)]
    return tuple([stage[0]] * first + [stage[1]] * later + [stage[2]] * later)


def default_strides(widths: Sequence[int]) -> tuple[int, ...]:
    """Temporal stride 2 at every block that widens the network (blocks 5 and 8 of the original)."""
    return tuple(1 if i == 0 or widths[i] <= widths[i - 1] else 2 for i in range(len(widths)))


def _cpu(x: Tensor) -> bool:
    """On CPU, channel GEMMs run as oneDNN convolutions rather than F.linear (on the 2-core AMD EPYC
    test machine MKL's sgemm reached 130-165 GF/s for these shapes, oneDNN's convolutions 200-260)."""
    return x.device.type == "cpu"


def _cpu_fast_path(x: Tensor) -> bool:
    """Hand-written backward (GraphConv) for CPU tensors outside autocast (inside it, ops cast their
    inputs and the plain autograd path keeps the dtypes consistent)."""
    return _cpu(x) and not torch.is_autocast_enabled("cpu")


def _conv_grad(grad: Tensor, inp: Tensor, weight: Tensor, which: int) -> Tensor:
    """Gradient of an unpadded, unit-stride, bias-free convolution w.r.t. its input (``which=0``) or
    weight (``which=1``); only the shape and dtype of ``weight`` matter for the latter."""
    ones, zeros = [1] * (inp.dim() - 2), [0] * (inp.dim() - 2)
    return torch.ops.aten.convolution_backward(grad, inp, weight, None, ones, zeros, ones, False, zeros, 1,
                                               (which == 0, which == 1, False))[which]


# The mixed activations (K times the size of a block's input) are processed in chunks of sequences
# of about _CHUNK_BYTES, unless those of the whole batch fit in _WHOLE_BYTES.
_CHUNK_BYTES, _WHOLE_BYTES = 8 << 20, 16 << 20


def _chunks(b: int, bytes_per_sequence: int) -> list[tuple[int, int]]:
    if b * bytes_per_sequence <= _WHOLE_BYTES:
        return [(0, b)]
    step = max(1, _CHUNK_BYTES // max(1, bytes_per_sequence))
    return [(lo, min(b, lo + step)) for lo in range(0, b, step)]


_GRAPH_MIX: list = []  # [True/False] once the build of csrc/graph_mix.cpp was tried


def load_cpu_kernels() -> bool:
    """Build (or load from the cache) the C++ joint-mixing kernel now. The CPU path loads it on first
    use; call this before ``torch.compile`` so that the loading is not traced. True when available."""
    return _graph_mix_available()


@torch._dynamo.assume_constant_result  # a build cannot be traced: run eagerly while compiling
def _graph_mix_available() -> bool:
    if not _GRAPH_MIX:
        from skelcl._cpp import load_extension

        ok = load_extension("skelcl_graph_mix", ("graph_mix.cpp",)) is not None
        if ok:  # shapes only, for torch.compile's tracing
            torch.library.register_fake("skelcl::graph_mix_")(lambda out, x, rowptr, col, val: None)
            torch.library.register_fake("skelcl::graph_mix_val_grad")(
                lambda g, x, rowptr, col: x.new_empty(col.shape[0]))
        _GRAPH_MIX.append(ok)
    return _GRAPH_MIX[0]


def _csr_rowptr(rows: Tensor, n_rows: int) -> Tensor:
    counts = torch.bincount(rows, minlength=n_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class _Csr(NamedTuple):
    """Where a ``(R, V)`` boolean pattern is true, in CSR form (row-major ``rows``, ``cols``,
    ``rowptr``), and the transpose's CSR (``t_rowptr``, ``t_col``); ``by_col`` reorders values of
    the former into the latter."""

    rows: Tensor
    cols: Tensor
    rowptr: Tensor
    by_col: Tensor
    t_rowptr: Tensor
    t_col: Tensor

    @classmethod
    def of(cls, pattern: Tensor) -> _Csr:
        n_rows, n_cols = pattern.shape
        rows, cols = pattern.nonzero(as_tuple=True)  # row-major order
        by_col = torch.argsort(cols * n_rows + rows)
        return cls(rows, cols, _csr_rowptr(rows, n_rows), by_col, _csr_rowptr(cols[by_col], n_cols),
                   rows[by_col].contiguous())


class _JointMixer:
    """Mixes joints with the ``(R, V)`` matrix ``mix``: ``(b, V, L) -> (b, R, L)``, its transpose for
    the input gradient, and the gradient w.r.t. ``mix``.

    Sparse (skeleton graphs: 73 non-zeros of 1,875 for NTU-25 with 3 partitions): the C++ kernels
    in csrc/graph_mix.cpp with the matrix in CSR form, a few scaled row copies per output row. Dense
    (no compiler, dtypes other than float32/float64, or a matrix more than a quarter full): batched
    products, whose inner dimension V is too short to run near peak.
    """

    def __init__(self, mix: Tensor, csr: _Csr | None):
        """``csr``: the entries of ``mix`` that may be non-zero (the others get no gradient), or None
        to mix densely."""
        self.mix = mix
        n_rows, n_cols = mix.shape
        self.sparse = (csr is not None and mix.dtype in (torch.float32, torch.float64)
                       and _graph_mix_available() and 4 * csr.rows.numel() <= n_rows * n_cols)
        if self.sparse:
            self.rows, self.cols, self.rowptr, self.t_rowptr, self.t_col = (
                csr.rows, csr.cols, csr.rowptr, csr.t_rowptr, csr.t_col)
            self.val = mix[csr.rows, csr.cols].contiguous()
            self.t_val = self.val[csr.by_col].contiguous()

    def __call__(self, x3: Tensor) -> Tensor:
        """(b, V, L) -> (b, R, L)."""
        if not self.sparse:
            return torch.bmm(self.mix.expand(x3.shape[0], *self.mix.shape), x3)
        out = x3.new_empty(x3.shape[0], self.mix.shape[0], x3.shape[2])
        torch.ops.skelcl.graph_mix_(out, x3.contiguous(), self.rowptr, self.cols, self.val)
        return out

    def by_partition(self, x3: Tensor, k: int) -> Tensor:
        """(b, V, L) -> (K, b, W, L): the same rows as ``self(x3)``, each partition contiguous (the
        layout a per-partition weight gradient reads without a copy)."""
        b, n_cols, length = x3.shape
        w = self.mix.shape[0] // k
        out = x3.new_empty(k, b, w, length)
        if not self.sparse:
            for i in range(k):
                torch.bmm(self.mix[i * w:(i + 1) * w].expand(b, w, n_cols), x3, out=out[i])
            return out
        torch.ops.skelcl.graph_mix_(out, x3.contiguous(), self.rowptr, self.cols, self.val)  # one pass
        return out

    def transpose_into(self, g3: Tensor, out: Tensor) -> None:
        """out (b, V, L) = mix^T applied to g3 (b, R, L)."""
        if not self.sparse:
            torch.bmm(self.mix.t().expand(g3.shape[0], *self.mix.t().shape), g3, out=out)
        else:
            torch.ops.skelcl.graph_mix_(out, g3.contiguous(), self.t_rowptr, self.t_col, self.t_val)

    def grad(self, g3: Tensor, x3: Tensor) -> Tensor:
        """Gradient of sum(g3 * mixer(x3)) w.r.t. the matrix: (R, V) when dense, the non-zeros'
        values (nnz,) when sparse (``dense_grad`` turns the sum of these into the matrix)."""
        if not self.sparse:
            return torch.bmm(g3, x3.transpose(1, 2)).sum(0)
        return torch.ops.skelcl.graph_mix_val_grad(g3.contiguous(), x3.contiguous(), self.rowptr, self.cols)

    def dense_grad(self, grad: Tensor) -> Tensor:
        if not self.sparse:
            return grad
        return torch.zeros_like(self.mix).index_put_((self.rows, self.cols), grad)


class _MixProjectCPU(torch.autograd.Function):
    """GraphConv on CPU: ``(B, V, T, C_in)``, mixing matrix ``(K*W, V)``, weight ``(K*C_out, C_in)``,
    mixed bias ``(W, C_out)`` or None -> ``(B, W, T, C_out)``. Same function as the portable path in
    GraphConv.forward, computed differently:

    - the mixed activations ``(b, K, W, T, C_in)`` (K times the size of the input) exist only a few
      sequences (about 8 MB) at a time: mixed and projected chunk by chunk in the forward, mixed
      again in the backward instead of being saved. At width 64 this saves about a third of the
      encoder's activation memory, keeps those buffers in cache and reused, and avoids the 61-64 MB
      allocations that glibc maps and the kernel page-faults afresh every step;
    - weight gradient: K 1x1-conv weight gradients, one per partition (oneDNN is about 1.2-1.4x
      faster at this than the depth-K conv3d weight gradient), on activations mixed again
      partition by partition, so that each is contiguous and oneDNN does not copy it;
    - input gradient: the conv3d's input gradient needs only the shape of its input, so the mixed
      activations are not recomputed for it;
    - bias gradient: sum over T, then over B (about 2x faster than autograd's single ``sum`` over
      both for the broadcast add).
    """

    @staticmethod
    def forward(ctx, x: Tensor, mix: Tensor, weight: Tensor, bias: Tensor | None, k: int,
                csr: _Csr | None) -> Tensor:
        x = x.contiguous()  # a no-op between blocks (float64 convs may hand back NCHW outputs)
        b, v, t, c_in = x.shape
        kw, c_out = mix.shape[0], weight.shape[0] // k
        w_joints = kw // k
        x3 = x.view(b, v, t * c_in)
        w3 = weight.view(k, c_out, c_in).permute(1, 2, 0).reshape(c_out, c_in, k, 1, 1)
        chunks = _chunks(b, kw * t * c_in * x.element_size())
        # Without the support's pattern only the current values matter, unless mix needs a gradient
        # everywhere (then it is mixed densely).
        if csr is None and not ctx.needs_input_grad[1]:
            csr = _Csr.of(mix != 0)
        mixer = _JointMixer(mix, csr)
        outs = []
        for lo, hi in chunks:
            xa = mixer(x3[lo:hi])  # (b, K, W, T, C_in) in memory
            outs.append(F.conv3d(xa.view(hi - lo, k, w_joints, t, c_in).permute(0, 4, 1, 2, 3), w3))
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (B, C_out, 1, W, T) channels_last_3d
        if bias is not None:
            out.add_(bias.t().reshape(c_out, 1, w_joints, 1))  # in place on the conv output, not a view
        ctx.save_for_backward(x, mix, w3)
        ctx.k, ctx.has_bias, ctx.mixer = k, bias is not None, mixer
        return out.permute(0, 2, 3, 4, 1).view(b, w_joints, t, c_out)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, mix, w3 = ctx.saved_tensors
        need_x, need_mix, need_w, need_b = ctx.needs_input_grad[:4]
        k = ctx.k
        b, v, t, c_in = x.shape
        kw, c_out = mix.shape[0], w3.shape[0]
        w_joints = kw // k
        grad = grad.contiguous()  # (B, W, T, C_out)
        x3 = x.view(b, v, t * c_in)
        g3 = grad.view(b, 1, w_joints, t, c_out).permute(0, 4, 1, 2, 3)  # as the conv3d output
        g2 = grad.permute(0, 3, 1, 2)  # (B, C_out, W, T) channels_last, as a 1x1 conv output
        w1 = w3[:, :, 0]  # shape (C_out, C_in, 1, 1): only its shape and dtype are read
        mixer = ctx.mixer
        grad_x = torch.empty_like(x3) if need_x else None
        grad_mix = grad_w = grad_b = None
        for lo, hi in _chunks(b, kw * t * c_in * x.element_size()) if need_x or need_mix or need_w else ():
            n = hi - lo
            if need_w:
                xk = mixer.by_partition(x3[lo:hi], k).view(k, n, w_joints, t, c_in)
                g_lo = g2[lo:hi]
                part = torch.cat([_conv_grad(g_lo, xk[i].permute(0, 3, 1, 2), w1, 1) for i in range(k)])
                grad_w = part if grad_w is None else grad_w.add_(part)
            if need_x or need_mix:
                input_like = x.new_empty(n, k, w_joints, t, c_in).permute(0, 4, 1, 2, 3)  # shape only
                gxa = _conv_grad(g3[lo:hi], input_like, w3, 0)
                gxa = gxa.permute(0, 2, 3, 4, 1).reshape(hi - lo, kw, t * c_in)  # a view (channels_last_3d)
                if need_x:
                    mixer.transpose_into(gxa, grad_x[lo:hi])
                if need_mix:
                    part = mixer.grad(gxa, x3[lo:hi])
                    grad_mix = part if grad_mix is None else grad_mix.add_(part)
        grad_mix = None if grad_mix is None else mixer.dense_grad(grad_mix)
        grad_w = None if grad_w is None else grad_w.view(k * c_out, c_in)
        grad_x = None if grad_x is None else grad_x.view(b, v, t, c_in)
        if ctx.has_bias and need_b:
            grad_b = grad.sum(2).sum(0)
        return grad_x, grad_mix, grad_w, grad_b, None, None


# How the portable path (GPUs, and CPU under autocast) mixes joints:
#   "bmm"     a batched product with the (K*W, V) matrix as it is;
#   "aligned" the same product with the matrix stored transposed and its K*W rows padded to a
#             multiple of 8, so that no GEMM operand has a leading dimension of 25 or 75 (which keeps
#             cuBLAS on alignment-1 kernels); the permute to (B, W, T, K*C) is fused into it;
#   "sparse"  the sparse Triton kernels of kernels/graph_mix.py on the partitions' non-zeros.
# All three are tested against each other. On an H100 and an H200 (bench/RESULTS.md) "sparse" is the
# fastest wherever the step's launches are replayed from CUDA graphs (8-24 % more throughput than "bmm"
# at widths 16 and 64); in eager mode its extra launches make it lose on most hosts. Hence "bmm" by
# default, and skelcl.train picks "sparse" for --compile reduce-overhead on a GPU.
# The environment variable SKELCL_PORTABLE_MIX sets it for a whole run; set_portable_mix, per model.
PORTABLE_MIX = os.environ.get("SKELCL_PORTABLE_MIX", "bmm")
PORTABLE_MIX_CHOICES = ("bmm", "aligned", "sparse")


def set_portable_mix(model: nn.Module, mix: str | None) -> int:
    """Mix the joints the ``mix`` way (one of ``PORTABLE_MIX_CHOICES``) in every GraphConv inside
    ``model``, whatever wraps it; None returns them to the module-wide ``PORTABLE_MIX``. Returns how
    many graph convolutions were set (0 for a model without any, such as SkeletonResNet). Only the
    portable path (GPUs, CPU autocast) reads it: the CPU kernels always mix sparsely."""
    if mix is not None and mix not in PORTABLE_MIX_CHOICES:
        raise ValueError(f"mix must be one of {PORTABLE_MIX_CHOICES} or None, got {mix!r}")
    convs = [m for m in model.modules() if isinstance(m, GraphConv)]
    for conv in convs:
        conv.portable_mix = mix
    return len(convs)


def _triton_mix_usable(x: Tensor, mix: str) -> bool:
    if mix != "sparse":
        return False
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        return False
    if not (x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _check_portable_mix(mix: str) -> None:
    if mix not in PORTABLE_MIX_CHOICES:
        raise ValueError(f"the joint mixing (GraphConv.portable_mix, or stgcn.PORTABLE_MIX from the "
                         f"environment's SKELCL_PORTABLE_MIX) must be one of {PORTABLE_MIX_CHOICES}, "
                         f"got {mix!r}")


_ZEROS: dict = {}  # (rows, cols, dtype, device) -> a zero block that is never written


def _zeros(rows: int, cols: int, like: Tensor) -> Tensor:
    """A constant zero block, made once per shape, dtype and device (under torch.compile, made in
    the graph, where the compiler folds it)."""
    if torch.compiler.is_compiling():
        return like.new_zeros(rows, cols)
    key = (rows, cols, like.dtype, like.device)
    block = _ZEROS.get(key)
    if block is None:
        block = _ZEROS[key] = like.new_zeros(rows, cols)
    return block


class _MixAligned(torch.autograd.Function):
    """``(b, V, T*C)`` mixed by the ``(K*W, V)`` matrix ``mix`` -> ``(b, W, T, K*C)``, the layout the
    channel GEMM reads (partition-major channels).

    The product runs as ``bmm(mix_t.T, x3)`` with ``mix_t`` a contiguous ``(V, R)`` matrix, R = K*W
    rounded up to a multiple of 8 (zero rows): every operand is then contiguous along a dimension of
    8-element multiples (R, or T*C), the input gradient is ``bmm(mix_t, g)`` and the matrix gradient
    ``bmm(x3, g^T)`` with an (V, R) result; the backward writes the incoming gradient into the padded
    row order once instead of through a slice's zero-filled copy.
    """

    @staticmethod
    def forward(ctx, x3: Tensor, mix: Tensor, k: int, t: int) -> Tensor:
        b, v, length = x3.shape
        rows = mix.shape[0]
        w, c = rows // k, length // t
        padded = -(-rows // 8) * 8
        mix_t = torch.cat([mix.t(), _zeros(v, padded - rows, x3)], 1)  # one launch per step
        out = torch.bmm(mix_t.t().expand(b, padded, v), x3)
        ctx.save_for_backward(x3, mix_t)
        ctx.dims = (k, w, t, c, rows)
        return out[:, :rows].view(b, k, w, t, c).permute(0, 2, 3, 1, 4).reshape(b, w, t, k * c)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x3, mix_t = ctx.saved_tensors
        k, w, t, c, rows = ctx.dims
        b, v, length = x3.shape
        g = x3.new_empty(b, mix_t.shape[1], length)
        g[:, rows:].zero_()
        g[:, :rows].view(b, k, w, t, c).copy_(grad.reshape(b, w, t, k, c).permute(0, 3, 1, 2, 4))
        grad_x = grad_mix = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.bmm(mix_t.expand(b, *mix_t.shape), g)
        if ctx.needs_input_grad[1]:
            per_sequence = torch.bmm(x3, g.transpose(1, 2))  # (b, V, R)
            grad_mix = per_sequence.sum(0, dtype=torch.promote_types(x3.dtype, torch.float32))[:, :rows].t()
        return grad_x, grad_mix, None, None


class _SparseMixTriton(torch.autograd.Function):
    """``(b, V, L)`` -> ``(b, R, L)`` mixed by the ``(R, V)`` matrix ``mix`` on the non-zeros ``csr``
    of its support, with the Triton kernels; gradients w.r.t. the input and ``mix`` (on the support).
    While torch.compile traces, the kernels are called through their torch.library ops, which it
    keeps opaque; the index tensors are saved as tensors so that the traced backward gets them.
    """

    @staticmethod
    def forward(ctx, x3: Tensor, mix: Tensor, csr: _Csr) -> Tensor:
        mix_op, _ = _sparse_mix_kernels()
        x3 = x3.contiguous()
        val = mix[csr.rows, csr.cols].to(x3.dtype).contiguous()
        ctx.save_for_backward(x3, val, *csr)
        ctx.mix_shape, ctx.mix_dtype = mix.shape, mix.dtype
        return mix_op(x3, csr.rowptr, csr.cols, val)

    @staticmethod
    def backward(ctx, grad: Tensor):
        mix_op, val_grad_op = _sparse_mix_kernels()
        x3, val, *indices = ctx.saved_tensors
        csr = _Csr(*indices)
        grad = grad.contiguous().to(x3.dtype)
        grad_x = grad_mix = None
        if ctx.needs_input_grad[0]:
            grad_x = mix_op(grad, csr.t_rowptr, csr.t_col, val[csr.by_col].contiguous())
        if ctx.needs_input_grad[1]:
            grad_val = val_grad_op(grad, x3, csr.rows, csr.cols).to(ctx.mix_dtype)
            grad_mix = grad_val.new_zeros(ctx.mix_shape).index_put_((csr.rows, csr.cols), grad_val)
        return grad_x, grad_mix, None


def _sparse_mix_kernels():
    """(mixing, value gradient): the Triton launchers, or their torch.library ops while compiling."""
    from skelcl.kernels import graph_mix as kernels

    if torch.compiler.is_compiling():
        return torch.ops.skelcl.graph_mix_triton, torch.ops.skelcl.graph_mix_val_grad_triton
    return kernels.graph_mix, kernels.graph_mix_val_grad


class GraphConv(nn.Module):
    """Spatial graph convolution over K adjacency partitions on ``(B, V, T, C)`` activations.

    ``weight`` is ``(K*C_out, C_in)`` and ``bias`` ``(K*C_out,)`` with row ``k*C_out + c``, the
    layout of the original ``Conv2d(C_in, K*C_out, 1)``. ``portable_mix``: how the portable path
    mixes the joints (None: the module-wide ``PORTABLE_MIX``; see ``set_portable_mix``).
    """

    def __init__(self, in_channels: int, out_channels: int, num_partitions: int, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.num_partitions = in_channels, out_channels, num_partitions
        self.weight = nn.Parameter(torch.empty(num_partitions * out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(num_partitions * out_channels)) if bias else None
        self.portable_mix: str | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as the 1x1 Conv2d it replaces.
        bound = 1.0 / self.in_channels**0.5
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, adjacency: Tensor, support: Tensor | _Csr | None = None) -> Tensor:
        """x ``(B, V, T, C_in)``, adjacency ``(K, V, W)`` -> ``(B, W, T, C_out)``.

        ``support`` (shaped like adjacency, optional): a tensor that is zero wherever adjacency is
        zero for every value of what it depends on (the layout's partitions A when adjacency is
        A * edge importance), or its pattern as STGCN builds it once. On CPU (and on a GPU with
        the "sparse" mixing) the joints are then mixed with a sparse kernel and the
        gradient w.r.t. adjacency is computed on the support only.
        """
        b, v, t, c_in = x.shape
        k, c_out = self.num_partitions, self.out_channels
        w_joints = adjacency.shape[-1]
        adjacency = adjacency.to(x.dtype)
        mix = adjacency.transpose(1, 2).reshape(k * w_joints, v)  # row k*W + w: A[k, :, w]
        # sum_v A_k[v, w] (W_k x[v] + b_k) = W_k (sum_v A_k[v, w] x[v]) + (sum_v A_k[v, w]) b_k
        bias = None if self.bias is None else adjacency.sum(1).t() @ self.bias.view(k, c_out)  # (W, C_out)
        if _cpu_fast_path(x):
            csr = None if support is None else self._support_csr(support, k, w_joints, v)
            return _MixProjectCPU.apply(x, mix, self.weight, bias, k, csr)
        how = getattr(self, "portable_mix", None) or PORTABLE_MIX  # a model pickled before the attribute
        _check_portable_mix(how)
        x3 = x.reshape(b, v, t * c_in)
        if how == "aligned":
            # autocast does not reach into an autograd.Function's backward: give it one dtype
            dev = x.device.type
            dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
            xa = _MixAligned.apply(x3.to(dtype), mix.to(dtype), k, t)
        else:
            if support is not None and _triton_mix_usable(x, how):
                xa = _SparseMixTriton.apply(x3, mix, self._support_csr(support, k, w_joints, v))
            else:
                # bmm with the matrix broadcast (batch stride 0): torch.matmul would fold the batch
                # into a 2-D product over x3's transpose and copy both that transpose and its result.
                xa = torch.bmm(mix.expand(b, *mix.shape), x3)
            xa = xa.view(b, k, w_joints, t, c_in)
            xa = xa.permute(0, 2, 3, 1, 4).reshape(b, w_joints, t, k * c_in)
        weight = self.weight.view(k, c_out, c_in).transpose(0, 1).reshape(c_out, k * c_in)
        out = F.linear(xa, weight)
        return out if bias is None else out + bias.view(w_joints, 1, c_out)

    def _support_csr(self, support: Tensor | _Csr, k: int, w_joints: int, v: int) -> _Csr:
        """The CSR of the support's mixing pattern, built once per support tensor (on a GPU ``nonzero``
        reads back to the host; afterwards nothing does, so a step can be captured in a CUDA graph),
        or the pattern itself when the caller built it (STGCN does, once). The cache is tied to the
        tensor object (a weak reference: a new tensor at a freed one's address is not mistaken for
        it) and to its version and view: an in-place change or another view rebuilds the pattern.
        Changes through ``.data`` are not seen."""
        if isinstance(support, _Csr):
            return support
        view = (support._version, support.stride(), support.storage_offset(), tuple(support.shape))
        cached = getattr(self, "_csr_cache", None)
        if cached is None or cached[0]() is not support or cached[1] != view:
            pattern = (support != 0).transpose(1, 2).reshape(k * w_joints, v)
            cached = (weakref.ref(support), view, _Csr.of(pattern))
            self._csr_cache = cached
        return cached[2]

    def __getstate__(self):
        state = self.__dict__.copy()
        state.pop("_csr_cache", None)  # holds a weak reference (not picklable); rebuilt on the next call
        return state

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, partitions={self.num_partitions}"


class ResidualProjection(nn.Module):
    """1x1 convolution (stride over T) + BN for a residual whose shape changes.

    ``(B, V, T, C_in)`` -> ``(B, C_out, V, T')`` in channels_last memory format, ready to add to the
    block output."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.linear = nn.Linear(in_channels, out_channels)
        self.bn = BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        w = self.linear.weight
        if _cpu(x):  # oneDNN 1x1 convolution
            y = F.conv2d(x.permute(0, 3, 1, 2), w.view(*w.shape, 1, 1), self.linear.bias, (1, self.stride))
        else:
            y = F.linear(x[:, :, :: self.stride], w, self.linear.bias).permute(0, 3, 1, 2)
        return self.bn(y)


class STGCNBlock(nn.Module):
    """Graph conv -> BN -> ReLU -> (k x 1) temporal conv -> BN -> dropout, + residual, ReLU.

    Takes and returns ``(B, V, T, C)`` activations."""

    def __init__(self, in_channels: int, out_channels: int, num_partitions: int, temporal_kernel: int = 9,
                 stride: int = 1, dropout: float = 0.0, residual: bool = True):
        super().__init__()
        if temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be a positive odd number, got {temporal_kernel}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.dropout = dropout
        self.graph_conv = GraphConv(in_channels, out_channels, num_partitions)
        self.bn_graph = BatchNorm2d(out_channels)
        # Holds the original (k, 1) weight; forward applies it as (1, k) over the (B, C, V, T) view.
        self.temporal_conv = nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), (stride, 1),
                                       ((temporal_kernel - 1) // 2, 0))
        self.bn_temporal = BatchNorm2d(out_channels)
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = ResidualProjection(in_channels, out_channels, stride)

    def forward(self, x: Tensor, adjacency: Tensor, support: Tensor | _Csr | None = None) -> Tensor:
        y = self.graph_conv(x, adjacency, support).permute(0, 3, 1, 2)  # (B, C, V, T), channels_last
        y = F.relu(self.bn_graph(y), inplace=True)
        conv = self.temporal_conv
        w = conv.weight.view(*conv.weight.shape[:2], 1, -1)  # (k, 1) kernel as (1, k)
        y = F.conv2d(y, w, conv.bias, (1, conv.stride[0]), (0, conv.padding[0]))
        y = self.bn_temporal(y)
        if self.dropout > 0:
            y = F.dropout(y, self.dropout, self.training)
        # In place on the BN/dropout output itself (their backward does not read it), never on a view
        # of it: an in-place op on a view makes autograd copy the whole gradient in the backward.
        if isinstance(self.residual, nn.Identity):
            y = y.add_(x.permute(0, 3, 1, 2))
        elif self.residual is not None:
            y = y.add_(self.residual(x))
        return F.relu(y, inplace=True).permute(0, 2, 3, 1)


def _rebuild_support(module: STGCN, incompatible_keys) -> None:
    """load_state_dict post-hook: the CSR buffers follow the loaded ``A``."""
    module._register_support()


class STGCN(nn.Module):
    """ST-GCN encoder (or classifier with ``num_classes``) on ``(N, C, T, V, M)`` input.

    ``forward`` returns ``(N, out_dim)`` features pooled over frames and joints and averaged over
    persons, or ``(N, num_classes)`` logits when ``num_classes`` is given. Dropout is not applied
    in the first block, as in the original. ``num_persons`` is the most persons M accepted (fewer
    are fine: persons are averaged); None accepts any M.
    """

    def __init__(self, layout: str | Layout = "ntu25", in_channels: int = 3,
                 widths: Sequence[int] | None = None,
                 temporal_kernel: int = 9, dropout: float = 0.0, num_classes: int | None = None,
                 num_persons: int | None = 2, strides: Sequence[int] | None = None,
                 edge_importance: bool = True):
        super().__init__()
        self.layout = get_layout(layout)
        widths = tuple(FULL_WIDTHS if widths is None else widths)
        if not widths or any(int(w) != w or w < 1 for w in widths):
            raise ValueError(f"widths must be a non-empty sequence of positive ints, got {widths}")
        strides = default_strides(widths) if strides is None else tuple(strides)
        if len(strides) != len(widths):
            raise ValueError(f"strides must have one entry per block ({len(widths)}), got {len(strides)}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        self.in_channels, self.num_persons = in_channels, num_persons
        self.widths, self.strides = widths, strides
        self.register_buffer("A", self.layout.adjacency_partitions())
        k, v = self.A.shape[0], self.A.shape[1]
        self._register_support()
        self.register_load_state_dict_post_hook(_rebuild_support)
        self.data_bn = nn.BatchNorm1d(in_channels * v)
        chans = (in_channels, *widths)
        self.blocks = nn.ModuleList(
            STGCNBlock(chans[i], chans[i + 1], k, temporal_kernel, strides[i],
                       dropout=0.0 if i == 0 else dropout, residual=i > 0)
            for i in range(len(widths))
        )
        self.edge_importance = (
            nn.ParameterList(nn.Parameter(torch.ones(k, v, v)) for _ in widths) if edge_importance else None
        )
        self.out_dim = widths[-1] if num_classes is None else num_classes
        self.feature_dim = widths[-1]
        self.head = nn.Linear(widths[-1], num_classes) if num_classes is not None else None

    def _register_support(self) -> None:
        """The mixing pattern of ``A`` (where every block's adjacency may be non-zero) in CSR form, as
        non-persistent buffers: built here, eagerly, and moved with the model, so that the forward
        pass computes no index tensors (under torch.compile with CUDA graphs, index tensors made
        inside a graph and cached would be overwritten by its next replay). Rebuilt when a state
        dict brings another ``A``; after changing ``A`` any other way (in place, or assigning the
        buffer), call this method again, or the sparse mixings keep the old pattern."""
        a = self.A
        if a.is_meta:  # a model made on the meta device: the layout's partitions give the pattern
            with torch.device("cpu"):
                a = self.layout.adjacency_partitions()
        k, v, w = a.shape
        csr = _Csr.of((a != 0).transpose(1, 2).reshape(k * w, v))
        for name, value in csr._asdict().items():
            self.register_buffer(f"_support_{name}", value.to(self.A.device), persistent=False)

    def _support(self) -> _Csr:
        return _Csr(*(getattr(self, f"_support_{name}") for name in _Csr._fields))

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"x must have shape (N, C, T, V, M), got {tuple(x.shape)}")
        _, c, t, v, m = x.shape
        if c != self.in_channels:
            raise ValueError(f"x must have C={self.in_channels} channels (dim 1), got {c}")
        if v != self.layout.num_joints:
            raise ValueError(
                f"x must have V={self.layout.num_joints} joints (dim 3) for {self.layout.name}, got {v}")
        if self.num_persons is not None and not 1 <= m <= self.num_persons:
            raise ValueError(f"x must have 1 to M={self.num_persons} persons (dim 4), got {m}")
        if t < 1:
            raise ValueError("x must have at least one frame (dim 2)")

    def features(self, x: Tensor) -> Tensor:
        """(N, C, T, V, M) -> (N, feature_dim) pooled features, before any head."""
        self._check_input(x)
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 2, 3, 1).reshape(n * m * t, v * c)  # (N*M*T, V*C): one copy
        x = self.data_bn(x).view(n * m, t, v, c).transpose(1, 2).contiguous()  # (N*M, V, T, C): one copy
        support = self._support()
        for i, block in enumerate(self.blocks):
            adjacency = self.A if self.edge_importance is None else self.A * self.edge_importance[i]
            x = block(x, adjacency, support)
        return x.mean(dim=(1, 2)).view(n, m, -1).mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        return h if self.head is None else self.head(h)
