"""skelcl.optim.LARS and warmup_cosine against an independent per-parameter implementation.

The definition (SimCLR's, as the LARS issue states it), per tensor w with gradient g:
``g <- g + wd * w``; ``trust = eta * ||w|| / (||g|| + eps)``, 1 where either norm is 0; with clip
(LARC) ``trust <- min(trust / lr, 1)``; ``u = trust * g``; ``v <- m * v + u``;
``w <- w - lr * v`` (nesterov: ``w - lr * (u + m * v)``). Excluded tensors (1-D, when
``exclude_bias_and_norm``) get neither weight decay nor the trust ratio.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from skelcl.optim import LARS, warmup_cosine
from skelcl.reference import LARSReference


class PlainLARS:
    """Per-parameter loop with Python floats for the norms: the obvious way."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=1e-6, trust_coefficient=1e-3, eps=0.0,
                 exclude_bias_and_norm=True, clip=False, nesterov=False):
        self.params = list(params)
        self.lr, self.m, self.wd, self.eta, self.eps = lr, momentum, weight_decay, trust_coefficient, eps
        self.exclude, self.clip, self.nesterov = exclude_bias_and_norm, clip, nesterov
        self.v = [None] * len(self.params)

    @torch.no_grad()
    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            g = p.grad.detach().clone()
            if not (self.exclude and p.ndim == 1):
                g = g + self.wd * p
                w_norm = math.sqrt(float((p * p).sum()))
                g_norm = math.sqrt(float((g * g).sum()))
                trust = self.eta * w_norm / (g_norm + self.eps) if w_norm > 0 and g_norm > 0 else 1.0
                if self.clip:
                    trust = min(trust / self.lr, 1.0)
                g = trust * g
            self.v[i] = g.clone() if self.v[i] is None else self.m * self.v[i] + g
            p -= self.lr * (g + self.m * self.v[i] if self.nesterov else self.v[i])


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        # no conv bias: in front of a training-mode BN its gradient is rounding noise, which the
        # normalisation can amplify into differences that say nothing about the optimiser
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.bias2d = nn.Parameter(torch.randn(4, 2) * 0.1)  # 2-D, so adapted even when it acts as a bias
        self.fc = nn.Linear(4, 5)
        self.zero_w = nn.Parameter(torch.zeros(5, 5))  # ||w|| = 0 at the start
        self.dead = nn.Parameter(torch.randn(3, 2))  # raw gradient 0 (||g|| = 0 when weight_decay = 0)
        self.scale = nn.Parameter(torch.tensor(1.5))  # 0-dim: adapted, not excluded

    def forward(self, x):
        h = torch.tanh(self.bn(self.conv(x))).mean(dim=(2, 3)) + self.bias2d.sum(1)
        y = self.fc(h) * self.scale
        return y + y @ self.zero_w + 0.0 * self.dead.sum()


def _run(config, steps=20, lr=0.2, seed=0, fused=True):
    torch.manual_seed(seed)
    net = Net().double()
    twin = copy.deepcopy(net)
    if fused == "reference":
        ours = LARSReference(net.parameters(), lr=lr, **config)
    else:
        ours = LARS(net.parameters(), lr=lr, **config)
        ours._fused_cpu = fused  # False: the torch._foreach path (the one CUDA takes)
    plain = PlainLARS(twin.parameters(), lr=lr, **config)
    gen = torch.Generator().manual_seed(seed + 1)
    for step in range(steps):
        x = torch.randn(6, 3, 5, 5, generator=gen, dtype=torch.float64)
        target = torch.randn(6, 5, generator=gen, dtype=torch.float64)
        for model, opt in ((net, ours), (twin, plain)):
            for p in model.parameters():
                p.grad = None
            ((model(x) - target) ** 2).mean().backward()
            opt.step()
        for (name, a), b in zip(net.named_parameters(), twin.parameters()):
            where = f"step {step}, {name}"
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda s, w=where: f"{w}: {s}")
    return net


CONFIGS = {
    "default": {},
    "no-exclusion": dict(exclude_bias_and_norm=False),
    "nesterov": dict(nesterov=True, weight_decay=1e-3),
    "clip": dict(clip=True, trust_coefficient=0.02),
    "clip-nesterov-eps": dict(clip=True, nesterov=True, eps=1e-3, trust_coefficient=0.5),
    "no-momentum": dict(momentum=0.0, weight_decay=0.1, trust_coefficient=0.05),
    "no-decay": dict(weight_decay=0.0, trust_coefficient=0.02),
    "no-decay-clip": dict(weight_decay=0.0, clip=True, trust_coefficient=0.02),
}


@pytest.mark.parametrize("fused", [True, False, "reference"], ids=["fused", "foreach", "reference"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_plain_loop_float64(name, fused):
    _run(CONFIGS[name], fused=fused)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
@pytest.mark.parametrize("lr", [0.3, 2.5])
def test_clip_with_large_and_small_lr(lr, fused):
    _run(dict(clip=True, trust_coefficient=0.05), lr=lr, steps=8, fused=fused)


def test_first_step_by_hand():
    """One 2x2 weight, one bias: the first update is -lr * trust * (g + wd w) and -lr * g."""
    w = nn.Parameter(torch.tensor([[3.0, 0.0], [0.0, 4.0]], dtype=torch.float64))
    b = nn.Parameter(torch.tensor([1.0, -1.0], dtype=torch.float64))
    w.grad = torch.tensor([[0.0, 0.6], [0.8, 0.0]], dtype=torch.float64)  # ||g|| = 1, ||w|| = 5
    b.grad = torch.tensor([0.5, 0.25], dtype=torch.float64)
    opt = LARS([w, b], lr=2.0, weight_decay=0.0, trust_coefficient=0.1)
    opt.step()
    # trust = 0.1 * 5 / 1 = 0.5
    torch.testing.assert_close(w.detach(), torch.tensor([[3.0, -0.6], [-0.8, 4.0]], dtype=torch.float64))
    torch.testing.assert_close(b.detach(), torch.tensor([0.0, -1.5], dtype=torch.float64))


def test_weight_decay_enters_the_norm():
    """||g + wd w||, not ||g|| + wd ||w|| (timm / solo-learn): the two differ here."""
    w = nn.Parameter(torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    w.grad = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=1.0, trust_coefficient=1.0)
    opt.step()
    u = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # g + wd w, norm sqrt(2); trust = 1 / sqrt(2)
    torch.testing.assert_close(w.detach(), torch.tensor([[1.0, 0.0]], dtype=torch.float64) - u / math.sqrt(2))


def test_zero_norms_give_trust_one():
    w0 = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    w0.grad = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    g0 = nn.Parameter(torch.ones(2, 2, dtype=torch.float64))
    g0.grad = torch.zeros(2, 2, dtype=torch.float64)
    opt = LARS([w0, g0], lr=0.5, momentum=0.9, weight_decay=0.0, trust_coefficient=1e-3)
    opt.step()
    torch.testing.assert_close(w0.detach(), -0.5 * w0.grad)
    torch.testing.assert_close(g0.detach(), torch.ones(2, 2, dtype=torch.float64))


def test_warmup_cosine_drives_lars():
    """The schedule's lr is the one each step uses (lr multiplies v at the update, as defined)."""
    torch.manual_seed(3)
    net = Net().double()
    twin = copy.deepcopy(net)
    base, warm, total = 0.8, 3, 10
    opt = LARS(net.parameters(), lr=base, clip=True, trust_coefficient=0.05)
    sched = warmup_cosine(opt, base_lr=base, warmup_steps=warm, total_steps=total, final_lr=0.01)

    def expected_lr(s):
        if s < warm:
            return base * (s + 1) / warm
        if s >= total:
            return 0.01
        return 0.01 + (base - 0.01) * 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm)))

    plain = PlainLARS(twin.parameters(), lr=base, clip=True, trust_coefficient=0.05)
    gen = torch.Generator().manual_seed(4)
    for step in range(12):
        assert abs(opt.param_groups[0]["lr"] - expected_lr(step)) < 1e-15
        plain.lr = expected_lr(step)
        x = torch.randn(4, 3, 5, 5, generator=gen, dtype=torch.float64)
        for model, o in ((net, opt), (twin, plain)):
            for p in model.parameters():
                p.grad = None
            model(x).square().mean().backward()
            o.step()
        sched.step()
        for a, b in zip(net.parameters(), twin.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert abs(expected_lr(warm - 1) - base) < 1e-15  # the last warm-up step reaches base_lr
