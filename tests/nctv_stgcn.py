"""Straightforward ST-GCN in the original (N, C, T, V) layout and key names: the test oracle.

Written the plain way (1x1 Conv2d producing K*C_out channels, einsum with the adjacency, NCTV
activations throughout) so that the channels-last model in skelcl.models can be checked against
it, and its state dicts have the original ST-GCN keys (``st_gcn_networks.{i}.gcn.conv.*``,
``tcn.{0,2,3}``, ``residual.{0,1}``, ``edge_importance.{i}``, ``fcn``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NCTVGraphConv(nn.Module):
    def __init__(self, c_in, c_out, k):
        super().__init__()
        self.k = k
        self.conv = nn.Conv2d(c_in, c_out * k, kernel_size=1)

    def forward(self, x, a):
        x = self.conv(x)
        n, kc, t, v = x.shape
        x = x.view(n, self.k, kc // self.k, t, v)
        return torch.einsum("nkctv,kvw->nctw", x, a).contiguous()


class NCTVBlock(nn.Module):
    def __init__(self, c_in, c_out, k, tk=9, stride=1, dropout=0.0, residual=True):
        super().__init__()
        self.gcn = NCTVGraphConv(c_in, c_out, k)
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
            nn.Conv2d(c_out, c_out, (tk, 1), (stride, 1), ((tk - 1) // 2, 0)),
            nn.BatchNorm2d(c_out),
            nn.Dropout(dropout),
        )
        if not residual:
            self.residual = lambda x: 0
        elif c_in == c_out and stride == 1:
            self.residual = lambda x: x
        else:
            self.residual = nn.Sequential(nn.Conv2d(c_in, c_out, 1, (stride, 1)), nn.BatchNorm2d(c_out))

    def forward(self, x, a):
        res = self.residual(x)
        x = self.gcn(x, a)
        return F.relu(self.tcn(x) + res)


class NCTVSTGCN(nn.Module):
    def __init__(self, adjacency, in_channels=3, widths=(64, 64, 64, 64, 128, 128, 128, 256, 256, 256),
                 num_classes=None, tk=9, dropout=0.0):
        super().__init__()
        self.register_buffer("A", adjacency.clone().float())
        k, v = adjacency.shape[0], adjacency.shape[1]
        self.data_bn = nn.BatchNorm1d(in_channels * v)
        chans = (in_channels, *widths)
        blocks = []
        for i in range(len(widths)):
            stride = 2 if i > 0 and widths[i] > widths[i - 1] else 1
            blocks.append(NCTVBlock(chans[i], chans[i + 1], k, tk, stride, 0.0 if i == 0 else dropout, i > 0))
        self.st_gcn_networks = nn.ModuleList(blocks)
        self.edge_importance = nn.ParameterList(nn.Parameter(torch.ones(k, v, v)) for _ in widths)
        self.fcn = nn.Conv2d(widths[-1], num_classes, 1) if num_classes else None

    def forward(self, x):
        n, c, t, v, m = x.shape
        x = x.permute(0, 4, 3, 1, 2).contiguous().view(n * m, v * c, t)
        x = self.data_bn(x)
        x = x.view(n, m, v, c, t).permute(0, 1, 3, 4, 2).contiguous().view(n * m, c, t, v)
        for block, importance in zip(self.st_gcn_networks, self.edge_importance):
            x = block(x, self.A * importance)
        x = F.avg_pool2d(x, x.shape[2:]).view(n, m, -1, 1, 1).mean(dim=1)
        if self.fcn is None:
            return x.flatten(1)
        return self.fcn(x).flatten(1)
