"""SkeletonResNet: a 2D ResNet that reads a skeleton sequence as an image.

The xyz coordinates are the image channels and frames x joints the pixel grid; persons are folded
into the batch and their pooled features averaged over all M slots, an absent (all-zero) person
included, as ST-GCN does. The stem keeps full resolution (a 3x3 conv,
no max-pool) because the grid is small (e.g. 50 x 25); the four stages halve it three times.
All convolutions run in channels_last memory format.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from skelcl.models.batchnorm import BatchNorm2d

__all__ = ["SkeletonResNet", "BasicBlock", "RESNET_STAGE_BLOCKS"]

RESNET_STAGE_BLOCKS = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False)
    return nn.Sequential(conv, BatchNorm2d(c_out))


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(c_in, c_out, 3, stride)
        self.conv2 = _conv_bn(c_out, c_out, 3, 1)
        self.shortcut = _conv_bn(c_in, c_out, 1, stride) if stride != 1 or c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv2(F.relu(self.conv1(x), inplace=True))
        return F.relu(y + self.shortcut(x), inplace=True)


class SkeletonResNet(nn.Module):
    """ResNet-``depth`` (10, 18 or 34) on ``(N, C, T, V, M)``; ``forward`` -> ``(N, out_dim)``.

    Stage widths are ``width * (1, 2, 4, 8)``; ``out_dim = 8 * width`` (or ``num_classes``).
    """

    def __init__(self, depth: int = 18, width: int = 64, in_channels: int = 3, num_classes: int | None = None,
                 num_persons: int | None = 2, num_joints: int | None = None):
        super().__init__()
        if depth not in RESNET_STAGE_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(RESNET_STAGE_BLOCKS)}, got {depth}")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be >= 1 or None, got {num_classes}")
        self.in_channels, self.num_persons, self.num_joints = in_channels, num_persons, num_joints
        self.stem = _conv_bn(in_channels, width, 3, 1)
        layers, c = [], width
        for stage, blocks in enumerate(RESNET_STAGE_BLOCKS[depth]):
            c_out = width * 2**stage
            for b in range(blocks):
                layers.append(BasicBlock(c, c_out, 2 if stage > 0 and b == 0 else 1))
                c = c_out
        self.layers = nn.Sequential(*layers)
        self.feature_dim = c
        self.out_dim = c if num_classes is None else num_classes
        self.head = nn.Linear(c, num_classes) if num_classes is not None else None
        self.to(memory_format=torch.channels_last)

    def features(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"x must have shape (N, C, T, V, M), got {tuple(x.shape)}")
        n, c, t, v, m = x.shape
        if c != self.in_channels:
            raise ValueError(f"x must have C={self.in_channels} channels (dim 1), got {c}")
        if self.num_joints is not None and v != self.num_joints:
            raise ValueError(f"x must have V={self.num_joints} joints (dim 3), got {v}")
        if self.num_persons is not None and not 1 <= m <= self.num_persons:
            raise ValueError(f"x must have 1 to M={self.num_persons} persons (dim 4), got {m}")
        # (N, C, T, V, M) -> (N*M, C, T, V) in channels_last: one copy.
        x = x.permute(0, 4, 2, 3, 1).reshape(n * m, t, v, c).permute(0, 3, 1, 2)
        x = F.relu(self.stem(x), inplace=True)
        x = self.layers(x)
        return x.mean(dim=(2, 3)).view(n, m, -1).mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.features(x)
        return h if self.head is None else self.head(h)
