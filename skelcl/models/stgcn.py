"""ST-GCN (Yan et al. 2018) with channels-last activations.

Activations live as ``(N*M, T, V, C)`` contiguous: 1x1 convolutions are GEMMs over the last
dimension, the temporal convolution is a (k, 1) conv2d on the ``(N*M, C, T, V)`` view, which is
exactly PyTorch's channels_last memory format, so no copies are made between layers.

The spatial graph convolution ``out[w] = sum_k sum_v A_k[v, w] (W_k x[v] + b_k)`` runs as one
GEMM over the channels for all K partitions at once (``C_in -> K*C_out``), then one batched
product with the ``(W, V*K)`` matrix ``A[k, v, w]`` that mixes joints and sums partitions.

Parameters keep the shapes of the original 1x1 convolutions (squeezed), so
``skelcl.models.convert_stgcn_state_dict`` maps original checkpoints one to one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skelcl.layouts import Layout, get_layout

__all__ = ["STGCN", "STGCNBlock", "GraphConv", "default_strides", "stgcn_widths"]

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


class GraphConv(nn.Module):
    """Spatial graph convolution over K adjacency partitions on ``(B, T, V, C)`` activations.

    ``weight`` is ``(K*C_out, C_in)`` and ``bias`` ``(K*C_out,)`` with row ``k*C_out + c``, the
    layout of the original ``Conv2d(C_in, K*C_out, 1)``.
    """

    def __init__(self, in_channels: int, out_channels: int, num_partitions: int, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.num_partitions = in_channels, out_channels, num_partitions
        self.weight = nn.Parameter(torch.empty(num_partitions * out_channels, in_channels))
        self.bias = nn.Parameter(torch.empty(num_partitions * out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same initialisation as the 1x1 Conv2d it replaces.
        bound = 1.0 / self.in_channels**0.5
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        b, t, v, _ = x.shape
        k, c_out = self.num_partitions, self.out_channels
        w_joints = adjacency.shape[-1]
        # One GEMM for all partitions: (B*T*V, C_in) @ (C_in, K*C_out); viewed as (B*T, V*K, C_out)
        # its rows are (v, k) pairs, so mixing joints and summing partitions is one more product
        # with the (W, V*K) matrix A[k, v, w], shared by every (b, t). bmm with that matrix
        # expanded (stride 0) needs no copy of the activations, unlike matmul/einsum here.
        y = F.linear(x, self.weight, self.bias).view(b * t, v * k, c_out)
        mix = adjacency.permute(2, 1, 0).reshape(w_joints, v * k).to(y.dtype)  # cast before expanding
        return torch.bmm(mix.expand(b * t, w_joints, v * k), y).view(b, t, w_joints, c_out)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, partitions={self.num_partitions}"


def _bn_channels_last(bn: nn.Module, x: Tensor) -> Tensor:
    """Apply a BatchNorm2d to ``(B, T, V, C)`` through its channels_last ``(B, C, T, V)`` view."""
    return bn(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _channels_last_contiguous(x: Tensor) -> Tensor:
    """``(B, C, T, V)`` result of a conv/BN back to a contiguous ``(B, T, V, C)``: free when it is
    already in channels_last memory format, one copy otherwise (some backends return NCHW)."""
    return x.permute(0, 2, 3, 1).contiguous()


class ResidualProjection(nn.Module):
    """1x1 convolution (stride over T) + BN for a residual whose shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.linear = nn.Linear(in_channels, out_channels)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :: self.stride]
        return _bn_channels_last(self.bn, self.linear(x))


class STGCNBlock(nn.Module):
    """Graph conv -> BN -> ReLU -> (k x 1) temporal conv -> BN -> dropout, + residual, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, num_partitions: int, temporal_kernel: int = 9,
                 stride: int = 1, dropout: float = 0.0, residual: bool = True):
        super().__init__()
        if temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"temporal_kernel must be a positive odd number, got {temporal_kernel}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.dropout = dropout
        self.graph_conv = GraphConv(in_channels, out_channels, num_partitions)
        self.bn_graph = nn.BatchNorm2d(out_channels)
        self.temporal_conv = nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), (stride, 1),
                                       ((temporal_kernel - 1) // 2, 0))
        self.bn_temporal = nn.BatchNorm2d(out_channels)
        if not residual:
            self.residual = None
        elif in_channels == out_channels and stride == 1:
            self.residual = nn.Identity()
        else:
            self.residual = ResidualProjection(in_channels, out_channels, stride)

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        y = self.graph_conv(x, adjacency)
        y = F.relu(self.bn_graph(y.permute(0, 3, 1, 2)), inplace=True)
        y = self.bn_temporal(self.temporal_conv(y))
        y = _channels_last_contiguous(y)
        if self.dropout > 0:
            y = F.dropout(y, self.dropout, self.training)
        if self.residual is not None:
            y = y + self.residual(x)
        return F.relu(y, inplace=True)


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
        x = self.data_bn(x).view(n * m, t, v, c)
        for i, block in enumerate(self.blocks):
            adjacency = self.A if self.edge_importance is None else self.A * self.edge_importance[i]
            x = block(x, adjacency)
        return x.mean(dim=(1, 2)).view(n, m, -1).mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        return h if self.head is None else self.head(h)
