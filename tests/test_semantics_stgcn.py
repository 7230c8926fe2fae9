"""skelcl.models.STGCN + convert_stgcn_state_dict against a copy of the original ST-GCN.

``OriginalModel`` below follows the public st-gcn repository (Yan et al. 2018): ``net/utils/graph.py``
(layout 'ntu-rgb+d', strategy 'spatial', max_hop 1, dilation 1) and ``net/st_gcn.py`` (Model, st_gcn,
ConvTemporalGraphical), with the same module and parameter names so that its ``state_dict`` has the
original keys. The only change: the block widths are an argument (the original hard-codes
64-64-64-64-128-128-128-256-256-256, the default here), so the quarter-width network is tested too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from skelcl.models import STGCN, convert_stgcn_state_dict

# --------------------------------------------------------------------------------------------------
# net/utils/graph.py


def get_hop_distance(num_node, edge, max_hop=1):
    a = np.zeros((num_node, num_node))
    for i, j in edge:
        a[j, i] = 1
        a[i, j] = 1
    hop_dis = np.zeros((num_node, num_node)) + np.inf
    transfer_mat = [np.linalg.matrix_power(a, d) for d in range(max_hop + 1)]
    arrive_mat = np.stack(transfer_mat) > 0
    for d in range(max_hop, -1, -1):
        hop_dis[arrive_mat[d]] = d
    return hop_dis


def normalize_digraph(a):
    dl = np.sum(a, 0)
    num_node = a.shape[0]
    dn = np.zeros((num_node, num_node))
    for i in range(num_node):
        if dl[i] > 0:
            dn[i, i] = dl[i] ** (-1)
    return np.dot(a, dn)


class Graph:
    def __init__(self, layout="ntu-rgb+d", strategy="spatial", max_hop=1, dilation=1):
        assert layout == "ntu-rgb+d" and strategy == "spatial"
        self.max_hop, self.dilation = max_hop, dilation
        self.num_node = 25
        self_link = [(i, i) for i in range(self.num_node)]
        neighbor_1base = [(1, 2), (2, 21), (3, 21), (4, 3), (5, 21), (6, 5), (7, 6), (8, 7), (9, 21),
                          (10, 9), (11, 10), (12, 11), (13, 1), (14, 13), (15, 14), (16, 15), (17, 1),
                          (18, 17), (19, 18), (20, 19), (22, 23), (23, 8), (24, 25), (25, 12)]
        neighbor_link = [(i - 1, j - 1) for (i, j) in neighbor_1base]
        self.edge = self_link + neighbor_link
        self.center = 21 - 1
        self.hop_dis = get_hop_distance(self.num_node, self.edge, max_hop=max_hop)
        valid_hop = range(0, self.max_hop + 1, self.dilation)
        adjacency = np.zeros((self.num_node, self.num_node))
        for hop in valid_hop:
            adjacency[self.hop_dis == hop] = 1
        normalize_adjacency = normalize_digraph(adjacency)
        a_list = []
        for hop in valid_hop:
            a_root = np.zeros((self.num_node, self.num_node))
            a_close = np.zeros((self.num_node, self.num_node))
            a_further = np.zeros((self.num_node, self.num_node))
            for i in range(self.num_node):
                for j in range(self.num_node):
                    if self.hop_dis[j, i] == hop:
                        if self.hop_dis[j, self.center] == self.hop_dis[i, self.center]:
                            a_root[j, i] = normalize_adjacency[j, i]
                        elif self.hop_dis[j, self.center] > self.hop_dis[i, self.center]:
                            a_close[j, i] = normalize_adjacency[j, i]
                        else:
                            a_further[j, i] = normalize_adjacency[j, i]
            if hop == 0:
                a_list.append(a_root)
            else:
                a_list.append(a_root + a_close)
                a_list.append(a_further)
        self.A = np.stack(a_list)


# --------------------------------------------------------------------------------------------------
# net/utils/tgcn.py and net/st_gcn.py


class ConvTemporalGraphical(nn.Module):
    def __init__(self, in_channels, out_channels, kernel_size, t_kernel_size=1, t_stride=1, t_padding=0,
                 t_dilation=1, bias=True):
        super().__init__()
        self.kernel_size = kernel_size
        self.conv = nn.Conv2d(in_channels, out_channels * kernel_size, kernel_size=(t_kernel_size, 1),
                              padding=(t_padding, 0), stride=(t_stride, 1), dilation=(t_dilation, 1),
                              bias=bias)

    def forward(self, x, a):
        assert a.size(0) == self.kernel_size
        x = self.conv(x)
        n, kc, t, v = x.size()
        x = x.view(n, self.kernel_size, kc // self.kernel_size, t, v)
        x = torch.einsum("nkctv,kvw->nctw", (x, a))
        return x.contiguous(), a


class st_gcn(nn.Module):  # noqa: N801 (the original's name)
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, dropout=0, residual=True):
        super().__init__()
        assert len(kernel_size) == 2 and kernel_size[0] % 2 == 1
        padding = ((kernel_size[0] - 1) // 2, 0)
        self.gcn = ConvTemporalGraphical(in_channels, out_channels, kernel_size[1])
        self.tcn = nn.Sequential(
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, (kernel_size[0], 1), (stride, 1), padding),
            nn.BatchNorm2d(out_channels),
            nn.Dropout(dropout, inplace=True),
        )
        if not residual:
            self.residual = lambda x: 0
        elif in_channels == out_channels and stride == 1:
            self.residual = lambda x: x
        else:
            self.residual = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=(stride, 1)),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x, a):
        res = self.residual(x)
        x, a = self.gcn(x, a)
        x = self.tcn(x) + res
        return self.relu(x), a


class OriginalModel(nn.Module):
    def __init__(self, in_channels, num_class, graph_args, edge_importance_weighting,
                 widths=(64, 64, 64, 64, 128, 128, 128, 256, 256, 256), **kwargs):
        super().__init__()
        self.graph = Graph(**graph_args)
        a = torch.tensor(self.graph.A, dtype=torch.float32, requires_grad=False)
        self.register_buffer("A", a)
        spatial_kernel_size = a.size(0)
        temporal_kernel_size = 9
        kernel_size = (temporal_kernel_size, spatial_kernel_size)
        self.data_bn = nn.BatchNorm1d(in_channels * a.size(1))
        kwargs0 = {k: v for k, v in kwargs.items() if k != "dropout"}
        strides = [1, 1, 1, 1, 2, 1, 1, 2, 1, 1]
        chans = (in_channels, *widths)
        self.st_gcn_networks = nn.ModuleList(
            [st_gcn(in_channels, widths[0], kernel_size, 1, residual=False, **kwargs0)]
            + [st_gcn(chans[i], chans[i + 1], kernel_size, strides[i], **kwargs) for i in range(1, 10)]
        )
        if edge_importance_weighting:
            self.edge_importance = nn.ParameterList(
                [nn.Parameter(torch.ones(self.A.size())) for _ in self.st_gcn_networks])
        else:
            self.edge_importance = [1] * len(self.st_gcn_networks)
        self.fcn = nn.Conv2d(widths[-1], num_class, kernel_size=1)

    def forward(self, x):
        n, c, t, v, m = x.size()
        x = x.permute(0, 4, 3, 1, 2).contiguous()
        x = x.view(n * m, v * c, t)
        x = self.data_bn(x)
        x = x.view(n, m, v, c, t)
        x = x.permute(0, 1, 3, 4, 2).contiguous()
        x = x.view(n * m, c, t, v)
        for gcn, importance in zip(self.st_gcn_networks, self.edge_importance):
            x, _ = gcn(x, self.A * importance)
        x = F.avg_pool2d(x, x.size()[2:])
        x = x.view(n, m, -1, 1, 1).mean(dim=1)
        x = self.fcn(x)
        return x.view(x.size(0), -1)


# --------------------------------------------------------------------------------------------------

QUARTER = (16, 16, 16, 16, 32, 32, 32, 64, 64, 64)


def randomize_(model: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "edge_importance" in name:
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) * 1.5 + 0.25)
            elif name.endswith("weight") and p.dim() == 1:  # BN scale
                p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5)
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (1.5 / fan_in) ** 0.5)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn(b.shape, generator=gen, dtype=b.dtype) * 0.3)
            elif name.endswith("running_var"):
                b.copy_(torch.rand(b.shape, generator=gen, dtype=b.dtype) + 0.5)


def make_input(gen, n=3, t=12, m=2):
    x = torch.randn(n, 3, t, 25, m, generator=gen, dtype=torch.float64)
    x[0, :, -3:] = 0  # padded tail
    if m > 1:
        x[1, :, :, :, 1] = 0  # one person only
    return x


def build_pair(gen, widths, num_class=7, dropout=0.0):
    orig = OriginalModel(3, num_class, {"layout": "ntu-rgb+d", "strategy": "spatial"}, True, widths=widths,
                         dropout=dropout).double()
    randomize_(orig, gen)
    ours = STGCN(widths=widths, num_classes=num_class, dropout=dropout).double()
    missing, unexpected = ours.load_state_dict(convert_stgcn_state_dict(orig.state_dict()), strict=True)
    assert not missing and not unexpected
    return orig, ours


def test_graph_equals_original():
    ours = STGCN(widths=QUARTER)
    torch.testing.assert_close(ours.A.double(), torch.from_numpy(Graph().A), rtol=0, atol=1e-7)


def test_state_dict_keys_are_the_originals():
    gen = torch.Generator().manual_seed(0)
    orig, ours = build_pair(gen, QUARTER)
    converted = convert_stgcn_state_dict(orig.state_dict())
    assert set(converted) == set(ours.state_dict())
    # an SkeletonCLR-style prefix is found and stripped
    wrapped = {f"encoder_q.{k}": v for k, v in orig.state_dict().items()}
    assert set(convert_stgcn_state_dict(wrapped)) == set(converted)


@pytest.mark.parametrize("widths,t,m", [(QUARTER, 12, 2), (QUARTER, 9, 1), (None, 7, 2)])
def test_eval_outputs_match_original(widths, t, m):
    gen = torch.Generator().manual_seed(1 + t)
    widths_ = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256) if widths is None else widths
    orig, ours = build_pair(gen, widths_, dropout=0.5)
    orig.eval()
    ours.eval()
    x = make_input(gen, t=t, m=m)
    with torch.no_grad():
        want = orig(x.clone())
        got = ours(x.clone())
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))


FULL = (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)


@pytest.mark.parametrize("widths,dtype,t", [(QUARTER, torch.float64, 12), (FULL, torch.float64, 6),
                                            (QUARTER, torch.float32, 11)])
def test_train_mode_outputs_gradients_and_running_stats_match_original(widths, dtype, t):
    # float32: a seed whose pre-activations all keep clear of ReLU's kink (another seed has one at
    # -3e-7 in float64 that float32 rounding puts on the other side, changing one gradient path)
    gen = torch.Generator().manual_seed(5 if dtype == torch.float64 else 8)
    orig, ours = build_pair(gen, widths)
    orig.to(dtype).train()
    ours.to(dtype).train()
    rtol = 1e-8 if dtype == torch.float64 else 2e-4
    x = make_input(gen, n=2 if widths == FULL else 3, t=t).to(dtype)
    xo = x.clone().requires_grad_()
    xs = x.clone().requires_grad_()
    want = orig(xo)
    got = ours(xs)
    scale = float(want.detach().abs().max())
    torch.testing.assert_close(got.detach(), want.detach(), rtol=rtol, atol=rtol * scale)
    weight = torch.randn(want.shape, generator=gen, dtype=torch.float64).to(dtype)
    (want * weight).sum().backward()
    (got * weight).sum().backward()
    torch.testing.assert_close(xs.grad, xo.grad, rtol=rtol, atol=rtol * float(xo.grad.abs().max()))
    grads = convert_stgcn_state_dict({**{k: p.grad for k, p in orig.named_parameters()},
                                      "data_bn.running_mean": orig.data_bn.running_mean}, strict=True)
    for key, p in ours.named_parameters():
        g = grads[key]
        # biases in front of a training-mode BN have gradients that are rounding noise
        atol = max(1e-12 if dtype == torch.float64 else 1e-5, rtol * float(g.abs().max()))
        torch.testing.assert_close(p.grad, g, rtol=rtol, atol=atol, msg=lambda s, key=key: f"{key}: {s}")
    # BN running statistics after one training forward (momentum 0.1, unbiased variance)
    conv_state = convert_stgcn_state_dict(orig.state_dict())
    for key, b in ours.state_dict().items():
        if "running" in key or "num_batches" in key:
            torch.testing.assert_close(b, conv_state[key], rtol=rtol, atol=rtol * 1e-2,
                                       msg=lambda s, key=key: f"{key}: {s}")


def test_without_edge_importance():
    gen = torch.Generator().manual_seed(6)
    orig = OriginalModel(3, 5, {"layout": "ntu-rgb+d", "strategy": "spatial"}, False, widths=QUARTER).double()
    randomize_(orig, gen)
    ours = STGCN(widths=QUARTER, num_classes=5, edge_importance=False).double()
    ours.load_state_dict(convert_stgcn_state_dict(orig.state_dict()))
    x = make_input(gen)
    torch.testing.assert_close(ours.eval()(x).detach(), orig.eval()(x).detach(), rtol=1e-9, atol=1e-10)


def test_features_are_pooled_before_the_head():
    """Without a head, the features are the original's pooled, person-averaged 256-d vector."""
    gen = torch.Generator().manual_seed(9)
    orig, _ = build_pair(gen, QUARTER)
    orig.eval()
    enc = STGCN(widths=QUARTER).double().eval()
    state = convert_stgcn_state_dict(orig.state_dict())
    enc.load_state_dict({k: v for k, v in state.items() if not k.startswith("head.")})
    x = make_input(gen)
    with torch.no_grad():
        h = enc(x)
        logits = orig(x)
    torch.testing.assert_close(F.linear(h, orig.fcn.weight.flatten(1), orig.fcn.bias), logits,
                               rtol=1e-9, atol=1e-9 * float(logits.abs().max()))


def test_skeletonclr_style_checkpoint():
    """MoCo checkpoints hold encoder_q. and encoder_k. copies, a queue, and an MLP or Linear ``fc`` head."""
    gen = torch.Generator().manual_seed(12)
    orig, _ = build_pair(gen, QUARTER)
    body = {k: v for k, v in orig.state_dict().items() if not k.startswith("fcn.")}
    mlp_head = {"fc.0.weight": torch.randn(64, 64), "fc.0.bias": torch.randn(64),
                "fc.2.weight": torch.randn(128, 64), "fc.2.bias": torch.randn(128)}
    ckpt = {"queue": torch.randn(128, 32), "queue_ptr": torch.zeros(1)}
    for prefix in ("encoder_q.", "encoder_k."):
        ckpt.update({prefix + k: v for k, v in {**body, **mlp_head}.items()})
    with pytest.raises(ValueError, match="prefix"):
        convert_stgcn_state_dict(ckpt)  # two encoders: which one is ambiguous
    with pytest.raises(ValueError, match="strict"):
        convert_stgcn_state_dict(ckpt, prefix="encoder_q.")  # the MLP head is not ST-GCN
    enc = STGCN(widths=QUARTER).double()
    enc.load_state_dict(convert_stgcn_state_dict(ckpt, prefix="encoder_q.", strict=False))
    # A Linear ``fc`` head (SkeletonCLR's linear-evaluation model) becomes the Linear head.
    linear = {**body, "fc.weight": torch.randn(60, 64, dtype=torch.float64),
              "fc.bias": torch.randn(60, dtype=torch.float64)}
    clf = STGCN(widths=QUARTER, num_classes=60).double()
    clf.load_state_dict(convert_stgcn_state_dict(linear))
    x = make_input(gen)
    with torch.no_grad():
        want = F.linear(enc.eval()(x), linear["fc.weight"], linear["fc.bias"])
        torch.testing.assert_close(clf.eval()(x), want)
