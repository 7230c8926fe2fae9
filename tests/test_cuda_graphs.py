"""The GPU pieces can be captured in a CUDA graph and replayed: no host reads, no host-side state.

A whole training step replayed from a graph enqueues one launch instead of hundreds, which is what
a small-width encoder step is bound by on a GPU. These tests capture each piece (NT-Xent forward and
backward, the view augmentation, a LARS step, an ST-GCN train step), replay it on fresh inputs
copied into the captured tensors, and compare with the same work run eagerly. CUDA only.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from skelcl.models import STGCN
from skelcl.ops import ntxent_loss, view_augment
from skelcl.optim import LARS

pytestmark = pytest.mark.cuda


def capture(fn, warmup: int = 2) -> tuple[torch.cuda.CUDAGraph, object]:
    """Runs ``fn`` ``warmup`` times on a side stream (lazy initialisation, Triton compiles, cuBLAS
    workspaces), then records one call; returns the graph and what the recorded call returned."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_ntxent_forward_and_backward_replay(dtype):
    gen = torch.Generator(device="cuda").manual_seed(0)
    n, d = 300, 64
    z1 = torch.randn(n, d, device="cuda", dtype=dtype, generator=gen, requires_grad=True)
    z2 = torch.randn(n, d, device="cuda", dtype=dtype, generator=gen, requires_grad=True)

    def loss_and_grads():
        loss = ntxent_loss(z1, z2, 0.2, backend="triton")
        return (loss, *torch.autograd.grad(loss, (z1, z2)))

    graph, captured = capture(loss_and_grads)
    for _ in range(3):
        new1 = torch.randn(n, d, device="cuda", dtype=dtype, generator=gen)
        new2 = torch.randn(n, d, device="cuda", dtype=dtype, generator=gen)
        with torch.no_grad():
            z1.copy_(new1)
            z2.copy_(new2)
        graph.replay()
        expected = loss_and_grads()
        for got, want in zip(captured, expected):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_view_augment_replay():
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(6, 3, 17, 25, 2, device="cuda", generator=gen)
    x[:, :, 12:] = 0  # padding frames stay zero
    angles = torch.zeros(6, 3, device="cuda")
    shift = torch.zeros(6, 3, device="cuda")
    graph, captured = capture(lambda: view_augment(x, angles, shift, backend="triton"))
    for _ in range(3):
        angles.uniform_(-3.0, 3.0, generator=gen)
        shift.uniform_(-2.0, 2.0, generator=gen)
        graph.replay()
        torch.testing.assert_close(captured, view_augment(x, angles, shift, backend="triton"), rtol=0, atol=0)


def _train_step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    opt.step()
    return loss


def _graph_vs_eager(model: nn.Module, make_opt, batches, rtol: float, atol: float, make_sched=None):
    """Trains a copy of ``model`` eagerly on all batches and another copy by replaying a captured
    step (the first two batches run as the capture's warm-up, eagerly); the parameters must agree.
    With ``make_sched``, a schedule steps after every step, outside the graph."""
    eager, graphed = model, copy.deepcopy(model)
    eager_opt, graphed_opt = make_opt(eager), make_opt(graphed)
    eager_sched = make_sched(eager_opt) if make_sched else None
    graphed_sched = make_sched(graphed_opt) if make_sched else None

    def advance(sched) -> None:
        if sched is not None:
            sched.step()

    for x, y in batches:
        _train_step(eager, eager_opt, x, y)
        advance(eager_sched)

    static_x, static_y = batches[0][0].clone(), batches[0][1].clone()
    warm = iter(batches[:2])

    def step():
        if (batch := next(warm, None)) is not None:  # warm-up calls run on the next real batch
            static_x.copy_(batch[0])
            static_y.copy_(batch[1])
        loss = _train_step(graphed, graphed_opt, static_x, static_y)
        if not torch.cuda.is_current_stream_capturing():  # a warm-up step: the schedule moves on
            advance(graphed_sched)
        return loss

    graphed_opt.zero_grad(set_to_none=True)
    graph, _ = capture(step, warmup=2)
    for x, y in batches[2:]:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        advance(graphed_sched)
    torch.cuda.synchronize()
    for (name, a), b in zip(eager.named_parameters(), graphed.parameters()):
        torch.testing.assert_close(b, a, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")
    return eager_opt, graphed_opt


@pytest.mark.parametrize("options", [dict(), dict(nesterov=True, clip=True)])
def test_lars_step_replay_matches_eager(options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, (3, 1), padding=(1, 0)), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 9 * 5, 4)).cuda()
    batches = [(torch.randn(6, 3, 9, 5, device="cuda"), torch.randn(6, 4, device="cuda")) for _ in range(8)]
    _graph_vs_eager(model, lambda m: LARS(m.parameters(), lr=0.5, **options), batches, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [dict(), dict(nesterov=True, clip=True)])
def test_lars_with_a_tensor_lr_follows_its_schedule_across_replays(options):
    """The schedule steps between replays by writing the device lr in place: the replayed steps
    read the current rate, as the eager steps do."""
    from skelcl.optim import warmup_cosine

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, (3, 1), padding=(1, 0)), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8 * 9 * 5, 4)).cuda()
    batches = [(torch.randn(6, 3, 9, 5, device="cuda"), torch.randn(6, 4, device="cuda")) for _ in range(8)]
    eager_opt, graphed_opt = _graph_vs_eager(
        model, lambda m: LARS(m.parameters(), lr=torch.tensor(0.5, device="cuda"), **options), batches,
        rtol=1e-4, atol=1e-5,
        make_sched=lambda opt: warmup_cosine(opt, base_lr=0.5, warmup_steps=3, total_steps=8))
    lr = graphed_opt.param_groups[0]["lr"].item()
    assert lr == pytest.approx(eager_opt.param_groups[0]["lr"].item())
    assert lr != pytest.approx(0.5)  # the schedule did move it


@pytest.mark.parametrize("mix", ["bmm", "aligned", "sparse"])
def test_stgcn_train_step_replay_matches_eager(monkeypatch, mix):
    import skelcl.models.stgcn as stgcn_module

    monkeypatch.setattr(stgcn_module, "PORTABLE_MIX", mix)
    torch.manual_seed(0)
    model = STGCN(widths=(8, 8, 16, 16), num_classes=5).cuda()
    batches = [(torch.randn(4, 3, 16, 25, 2, device="cuda"), torch.randn(4, 5, device="cuda"))
               for _ in range(6)]
    _graph_vs_eager(model, lambda m: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9), batches,
                    rtol=1e-3, atol=1e-4)
