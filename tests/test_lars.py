"""skelcl.optim.LARS against the per-parameter float64 reference (skelcl.reference.LARSReference)."""

from __future__ import annotations

import copy
import io
import os

import pytest
import torch
from torch import nn

import skelcl.optim.lars as lars_module
from skelcl.optim import LARS
from skelcl.reference import LARSReference

# "fused": the C++ kernel (csrc/lars.cpp) that CPU float32/float64 groups use; "triton": the Triton
# kernels CUDA groups use (kernels/lars.py; here through the interpreter); "scalar": the foreach path
# with 0-dim trust ratios (the CPU fallback); "flat": the foreach path as on CUDA (its fallback).
PATHS = ["fused", "triton", "scalar", "flat"]


def use_path(opt: LARS, path: str) -> LARS:
    opt._fused_cpu = path == "fused"
    opt._triton = path == "triton"
    if path == "fused" and lars_module._cpu_op() is None:
        pytest.skip("the C++ extension could not be built")
    if path == "triton" and lars_module._triton_kernels() is None:
        pytest.skip("triton is not installed")
    on_cpu = any(p.device.type == "cpu" for g in opt.param_groups for p in g["params"])
    if path == "triton" and on_cpu and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU tensors take the Triton kernels only under TRITON_INTERPRET=1")
    if path in ("scalar", "flat"):
        opt._broadcast = path
    return opt


class SmallNet(nn.Module):
    """Convolutions, batch norm, linear layers and biases: every kind of tensor LARS meets."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, (3, 1), padding=(1, 0))
        self.bn1 = nn.BatchNorm2d(5)
        self.conv2 = nn.Conv2d(5, 7, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(7)
        self.fc1 = nn.Linear(7, 11)
        self.fc2 = nn.Linear(11, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc2(torch.tanh(self.fc1(x.mean(dim=(2, 3)))))


def make_net(dtype: torch.dtype, seed: int = 0) -> SmallNet:
    torch.manual_seed(seed)
    net = SmallNet().to(dtype)
    with torch.no_grad():  # non-trivial BN affine parameters, so their updates matter
        for bn in (net.bn1, net.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return net


def make_batches(n_steps: int, dtype: torch.dtype, gen: torch.Generator):
    return [(torch.randn(6, 3, 9, 5, generator=gen).to(dtype), torch.randn(6, 4, generator=gen).to(dtype))
            for _ in range(n_steps)]


def train(net, opt, batches):
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        opt.step()


def assert_nets_close(a: nn.Module, b: nn.Module, rtol: float, atol: float):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=rtol, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


CONFIGS = [
    dict(),  # the defaults
    dict(exclude_bias_and_norm=False),
    dict(momentum=0.0),
    dict(nesterov=True),
    dict(clip=True),
    dict(clip=True, nesterov=True, exclude_bias_and_norm=False),
    dict(weight_decay=0.05, eps=1e-4),
    dict(weight_decay=0.0, trust_coefficient=0.02),
]


def config_id(config: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in config.items()) or "default"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_matches_reference_float64_20_steps(config, path, rng):
    lr = 0.7  # large, so that the trust ratios (about 1e-3) move the weights visibly
    ref_net = make_net(torch.float64)
    net = copy.deepcopy(ref_net)
    start = copy.deepcopy(ref_net)
    opt = use_path(LARS(net.parameters(), lr=lr, **config), path)  # "flat": the CUDA code path on CPU
    batches = make_batches(20, torch.float64, rng)
    train(ref_net, LARSReference(ref_net.parameters(), lr=lr, **config), batches)
    train(net, opt, batches)
    assert_nets_close(net, ref_net, rtol=1e-10, atol=1e-12)
    moved = max((p - q).abs().max().item() for p, q in zip(net.parameters(), start.parameters()))
    assert moved > 1e-4  # the comparison is not between two unchanged models


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference_in_float32_and_float64(dtype, path, rng):
    ref_net = make_net(dtype)
    net = copy.deepcopy(ref_net)
    batches = make_batches(5, dtype, rng)
    train(ref_net, LARSReference(ref_net.parameters(), lr=0.5, nesterov=True), batches)
    train(net, use_path(LARS(net.parameters(), lr=0.5, nesterov=True), path), batches)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    assert_nets_close(net, ref_net, **tol)


@pytest.mark.parametrize("path", ["foreach", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_one_step_close_to_float64(dtype, clip, path, rng, request):
    """16-bit parameters: the foreach path (what CPU buckets of these dtypes take) and the Triton
    kernels (on the GPU, or through the interpreter)."""
    device = request.getfixturevalue("triton_device") if path == "triton" else "cpu"
    w = torch.randn(13, 7, generator=rng, dtype=torch.float64)
    g = torch.randn(13, 7, generator=rng, dtype=torch.float64)
    b = torch.randn(13, generator=rng, dtype=torch.float64)
    gb = torch.randn(13, generator=rng, dtype=torch.float64)
    ref = [nn.Parameter(w.clone()), nn.Parameter(b.clone())]
    low = [nn.Parameter(w.to(device, dtype)), nn.Parameter(b.to(device, dtype))]
    for p, grad in zip(ref, (g, gb)):
        p.grad = grad.clone()
    for p, grad in zip(low, (g, gb)):
        p.grad = grad.to(device, dtype)
    LARSReference(ref, lr=50.0, clip=clip).step()
    opt = LARS(low, lr=50.0, clip=clip)
    if path == "triton":
        use_path(opt, "triton")
    opt.step()
    if path == "triton":
        assert all(b._triton_schedule is not None for b in opt._plans[id(opt.param_groups[0])].buckets)
    for pl, pr in zip(low, ref):
        torch.testing.assert_close(pl.double().cpu(), pr.detach(), rtol=2e-2, atol=2e-2)


def test_mixed_dtypes_in_one_group(rng):
    dtypes = (torch.float32, torch.float64)
    params = [nn.Parameter(torch.randn(4, 3, generator=rng, dtype=dt)) for dt in dtypes]
    params.append(nn.Parameter(torch.randn(5, generator=rng, dtype=torch.float64)))
    ref = [nn.Parameter(p.detach().clone()) for p in params]
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=rng, dtype=p.dtype) for p in params]
        for p, r, g in zip(params, ref, grads):
            p.grad, r.grad = g.clone(), g.clone()
        LARS(params, lr=3.0, weight_decay=0.1).step()  # fresh optimisers: no momentum carried
        LARSReference(ref, lr=3.0, weight_decay=0.1).step()
    for p, r in zip(params, ref):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("clip", [False, True])
def test_zero_norm_parameters_use_trust_one(clip, path, rng):
    """A zero weight, a zero gradient, and both: trust ratio 1, as in the reference."""
    shapes = [(6, 4), (3, 5), (2, 2), (7, 3)]
    weights = [torch.randn(s, generator=rng, dtype=torch.float64) for s in shapes]
    grads = [torch.randn(s, generator=rng, dtype=torch.float64) for s in shapes]
    weights[0].zero_()  # zero weight, non-zero gradient
    grads[1].zero_()  # non-zero weight, zero gradient (weight decay 0 keeps it zero)
    weights[2].zero_()
    grads[2].zero_()  # both zero
    ours = [nn.Parameter(w.clone()) for w in weights]
    ref = [nn.Parameter(w.clone()) for w in weights]
    opt = use_path(LARS(ours, lr=0.3, weight_decay=0.0, clip=clip), path)
    ref_opt = LARSReference(ref, lr=0.3, weight_decay=0.0, clip=clip)
    for _ in range(2):
        for p, r, g in zip(ours, ref, grads):
            p.grad, r.grad = g.clone(), g.clone()
        opt.step()
        ref_opt.step()
    for p, r in zip(ours, ref):
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-14)
    # First step of the zero weight, by hand: trust = 1 (min(1 / lr, 1) = 1 with clip), v = g.
    one = use_path(LARS([nn.Parameter(torch.zeros(6, 4, dtype=torch.float64))], lr=0.3, weight_decay=0.0,
                        clip=clip), path)
    p = one.param_groups[0]["params"][0]
    p.grad = grads[0].clone()
    one.step()
    torch.testing.assert_close(p.detach(), -0.3 * grads[0], rtol=1e-14, atol=0)


@pytest.mark.parametrize("path", PATHS)
def test_gradients_are_not_modified_and_missing_gradients_skipped(path, rng):
    net = make_net(torch.float64)
    opt = use_path(LARS(net.parameters(), lr=0.5, nesterov=True), path)
    x, y = make_batches(1, torch.float64, rng)[0]
    ((net(x) - y) ** 2).mean().backward()
    net.fc2.bias.grad = None
    before = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    bias = net.fc2.bias.detach().clone()
    opt.step()
    for n, p in net.named_parameters():
        if p.grad is not None:
            assert torch.equal(p.grad, before[n]), n
    assert torch.equal(net.fc2.bias, bias)
    assert net.fc2.bias not in opt.state


@pytest.mark.parametrize("path", PATHS)
def test_group_override_lars_exclude(path, rng):
    # lars_exclude=False adapts 1-D tensors too: the reference with exclude_bias_and_norm=False.
    net = make_net(torch.float64)
    ref_net = copy.deepcopy(net)
    batches = make_batches(6, torch.float64, rng)
    train(net, use_path(LARS([{"params": net.parameters(), "lars_exclude": False}], lr=0.5), path), batches)
    train(ref_net, LARSReference(ref_net.parameters(), lr=0.5, exclude_bias_and_norm=False), batches)
    assert_nets_close(net, ref_net, rtol=1e-10, atol=1e-12)
    # lars_exclude=True: plain momentum SGD for the whole group (no decay, no adaptation).
    net = make_net(torch.float64)
    sgd_net = copy.deepcopy(net)
    head = list(net.fc1.parameters()) + list(net.fc2.parameters())
    body = [p for p in net.parameters() if all(p is not h for h in head)]
    opt = use_path(LARS([{"params": body}, {"params": head, "lars_exclude": True}], lr=0.5), path)
    sgd_head = list(sgd_net.fc1.parameters()) + list(sgd_net.fc2.parameters())
    sgd_body = [p for p in sgd_net.parameters() if all(p is not h for h in sgd_head)]
    sgd = [LARSReference(sgd_body, lr=0.5), torch.optim.SGD(sgd_head, lr=0.5, momentum=0.9)]
    for x, y in batches:
        opt.zero_grad()
        for o in sgd:
            o.zero_grad()
        ((net(x) - y) ** 2).mean().backward()
        ((sgd_net(x) - y) ** 2).mean().backward()
        opt.step()
        for o in sgd:
            o.step()
    assert_nets_close(net, sgd_net, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_state_dict_round_trip_continues_identically(path, rng):
    batches = make_batches(20, torch.float64, rng)
    net = make_net(torch.float64)
    resumed = copy.deepcopy(net)
    train(net, use_path(LARS(net.parameters(), lr=0.5, nesterov=True), path), batches)

    opt = use_path(LARS(resumed.parameters(), lr=0.5, nesterov=True), path)
    train(resumed, opt, batches[:10])
    blob = io.BytesIO()
    torch.save({"model": resumed.state_dict(), "opt": opt.state_dict()}, blob)
    blob.seek(0)
    saved = torch.load(blob)
    fresh = make_net(torch.float64, seed=99)
    fresh.load_state_dict(saved["model"])
    fresh_opt = use_path(LARS(fresh.parameters(), lr=0.5, nesterov=True), path)
    fresh_opt.load_state_dict(saved["opt"])
    assert all("momentum_buffer" in fresh_opt.state[p] for p in fresh.parameters())
    train(fresh, fresh_opt, batches[10:])
    for a, b in zip(net.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_grad_scaler_steps_and_skips_on_inf(path, rng):
    batches = make_batches(4, torch.float32, rng)
    net = make_net(torch.float32)
    ref_net = copy.deepcopy(net)
    opt = use_path(LARS(net.parameters(), lr=0.5), path)
    ref_opt = LARSReference(ref_net.parameters(), lr=0.5)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**10) for _ in range(2)]
    for x, y in batches:
        for model, o, scaler in ((net, opt, scalers[0]), (ref_net, ref_opt, scalers[1])):
            o.zero_grad()
            scaler.scale(((model(x) - y) ** 2).mean()).backward()
            scaler.unscale_(o)
            scaler.step(o)
            scaler.update()
    assert_nets_close(net, ref_net, rtol=1e-5, atol=1e-6)

    # An inf gradient: the scaler must skip the step (weights and momentum unchanged) and back off.
    scaler = scalers[0]
    x, y = batches[0]
    weights = [p.detach().clone() for p in net.parameters()]
    buffers = [opt.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    scale = scaler.get_scale()
    opt.zero_grad()
    scaler.scale(((net(x) - y) ** 2).mean()).backward()
    net.fc1.weight.grad[0, 0] = float("inf")
    scaler.unscale_(opt)
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() < scale
    for p, w, v in zip(net.parameters(), weights, buffers):
        assert torch.equal(p, w)
        assert torch.equal(opt.state[p]["momentum_buffer"], v)


def test_cpu_groups_take_the_fused_kernel_when_they_can(monkeypatch, rng):
    if lars_module._cpu_op() is None:
        pytest.skip("the C++ extension could not be built")
    calls = []
    real = lars_module._cpu_op()

    def counted(*args):
        calls.append(len(args[0]))
        return real(*args)

    monkeypatch.setattr(lars_module, "_cpu_op", lambda: counted)
    net = make_net(torch.float64)
    train(net, LARS(net.parameters(), lr=0.5), make_batches(2, torch.float64, rng))
    assert calls == [len(list(net.parameters()))] * 2  # one call per step for the whole group
    calls.clear()  # bfloat16 is not fused: the foreach path runs
    w = nn.Parameter(torch.randn(3, 4, generator=rng).to(torch.bfloat16))
    w.grad = torch.randn(3, 4, generator=rng).to(torch.bfloat16)
    LARS([w], lr=0.5).step()
    assert calls == []


@pytest.mark.parametrize("nesterov", [False, True])
def test_non_contiguous_parameters_fall_back_to_foreach(nesterov, rng):
    """A transposed weight or gradient cannot go to the kernel: the foreach path handles the group."""
    base = torch.randn(7, 5, generator=rng, dtype=torch.float64)
    weights = [base.t(), torch.randn(4, 6, generator=rng, dtype=torch.float64),
               torch.randn(6, generator=rng, dtype=torch.float64)]
    ours = [nn.Parameter(w.clone(memory_format=torch.preserve_format)) for w in weights]
    assert not ours[0].is_contiguous()
    ref = [nn.Parameter(w.clone()) for w in weights]
    opt = LARS(ours, lr=0.4, nesterov=nesterov, weight_decay=1e-3)
    ref_opt = LARSReference(ref, lr=0.4, nesterov=nesterov, weight_decay=1e-3)
    for step in range(4):
        grads = [torch.randn(w.shape, generator=rng, dtype=torch.float64) for w in weights]
        if step == 2:
            grads[1] = torch.randn(6, 4, generator=rng, dtype=torch.float64).t()  # non-contiguous gradient
        for p, r, g in zip(ours, ref, grads):
            p.grad, r.grad = g.clone(memory_format=torch.preserve_format), g.clone()
        opt.step()
        ref_opt.step()
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-14)


def test_fused_matches_foreach_in_float32_on_many_chunks(rng):
    """Tensors longer than one kernel chunk (parallel partial sums), adapted and excluded, float32."""
    shapes = [(300, 257), (70001,), (64, 3, 3, 3), (1,), (0, 4)]
    weights = [0.1 * torch.randn(s, generator=rng) for s in shapes]
    fused = [nn.Parameter(w.clone()) for w in weights]
    loop = [nn.Parameter(w.double()) for w in weights]
    opt = use_path(LARS(fused, lr=0.8, nesterov=True, weight_decay=1e-4), "fused")
    ref_opt = LARSReference(loop, lr=0.8, nesterov=True, weight_decay=1e-4)
    for _ in range(5):
        grads = [torch.randn(s, generator=rng) for s in shapes]
        for p, r, g in zip(fused, loop, grads):
            p.grad, r.grad = g.clone(), g.double()
        opt.step()
        ref_opt.step()
    for p, r in zip(fused, loop):
        torch.testing.assert_close(p.double(), r.detach(), rtol=1e-5, atol=1e-6)


def step_both(models_and_opts, x, y, edit=None):
    """One training step of each (model, optimiser) pair; ``edit(model)`` runs after backward."""
    for model, o in models_and_opts:
        o.zero_grad(set_to_none=True)
        ((model(x) - y) ** 2).mean().backward()
        if edit is not None:
            edit(model)
        o.step()


@pytest.mark.parametrize("path", PATHS)
def test_kept_plan_follows_changes_between_steps(path, rng, monkeypatch):
    """Gradients that disappear and come back, lr and exclusion changes, params removed from a group
    and added as a new one, a cleared state: each step is still exactly the reference's, and the
    plan is rebuilt only when something changed."""
    net = make_net(torch.float64)
    ref_net = copy.deepcopy(net)
    opt = use_path(LARS(net.parameters(), lr=0.5, nesterov=True), path)
    ref_opt = LARSReference(ref_net.parameters(), lr=0.5, nesterov=True)
    pairs = [(net, opt), (ref_net, ref_opt)]
    builds = []
    real_plan = LARS._plan
    monkeypatch.setattr(LARS, "_plan", lambda self, group: builds.append(1) or real_plan(self, group))
    batches = make_batches(16, torch.float64, rng)

    def drop(*names):
        def edit(model):
            for name in names:
                model.get_parameter(name).grad = None
        return edit

    edits = {3: drop("fc1.weight"), 4: drop("fc1.weight", "bn1.bias"), 7: drop("conv2.weight")}
    expected_builds = {0: 1, 1: 1, 2: 1, 3: 2, 4: 3, 5: 4, 6: 4, 7: 5, 8: 6}
    for step, (x, y) in enumerate(batches):
        for _, o in pairs:
            o.param_groups[0]["lr"] = 0.5 * 0.9**step  # read at every step, no rebuild
        if step == 9:  # adapt the 1-D tensors too
            opt.param_groups[0]["lars_exclude"] = False
            ref_opt.param_groups[0]["exclude_bias_and_norm"] = False
        if step == 10:  # back to the rule, through the other switch
            opt.param_groups[0]["lars_exclude"] = None
            for _, o in pairs:
                o.param_groups[0]["exclude_bias_and_norm"] = True
        if step == 11:  # fc2's weight leaves the first group (same list object, edited in place) ...
            for model, o in pairs:
                params = o.param_groups[0]["params"]
                del params[next(i for i, p in enumerate(params) if p is model.fc2.weight)]
        if step == 12:  # ... and comes back as a group of its own
            for model, o in pairs:
                o.add_param_group({"params": [model.fc2.weight], "lr": 0.2})
        if step == 14:  # momentum reset
            for _, o in pairs:
                o.state.clear()
        step_both(pairs, x, y, edits.get(step))
        assert_nets_close(net, ref_net, rtol=1e-10, atol=1e-12)
        if step in expected_builds:
            assert len(builds) == expected_builds[step], step
    assert len(builds) == 6 + 4 + 2  # steps 9 to 12 rebuild once (12: the new group), 14 both plans
    assert set(opt.state) == set(net.parameters())
    for p, r in zip(net.parameters(), ref_net.parameters()):
        torch.testing.assert_close(opt.state[p]["momentum_buffer"], ref_opt.state[r]["momentum_buffer"],
                                   rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_gradient_turning_sparse_after_steps_raises(path, rng):
    w = nn.Parameter(torch.randn(5, 3, generator=rng))
    opt = use_path(LARS([w], lr=0.1), path)
    for _ in range(2):
        w.grad = torch.randn(5, 3, generator=rng)
        opt.step()
    w.grad = torch.randn(5, 3, generator=rng).to_sparse()
    before = w.detach().clone()
    with pytest.raises(ValueError, match="sparse"):
        opt.step()
    assert torch.equal(w, before)


def test_fused_kernel_declines_a_non_contiguous_gradient_for_one_step(monkeypatch, rng):
    """Contiguous parameters, one step with a transposed gradient: the kernel returns False and
    changes nothing, the foreach path takes that step, the next steps are fused again."""
    if lars_module._cpu_op() is None:
        pytest.skip("the C++ extension could not be built")
    results = []
    real = lars_module._cpu_op()

    def recorded(*args):
        results.append(real(*args))
        return results[-1]

    monkeypatch.setattr(lars_module, "_cpu_op", lambda: recorded)
    shapes = [(7, 5), (4, 6), (6,)]
    ours = [nn.Parameter(torch.randn(s, generator=rng, dtype=torch.float64)) for s in shapes]
    ref = [nn.Parameter(p.detach().clone()) for p in ours]
    opt = LARS(ours, lr=0.4, nesterov=True, weight_decay=1e-3)
    ref_opt = LARSReference(ref, lr=0.4, nesterov=True, weight_decay=1e-3)
    for step in range(4):
        grads = [torch.randn(s, generator=rng, dtype=torch.float64) for s in shapes]
        if step == 1:
            grads[0] = torch.randn(5, 7, generator=rng, dtype=torch.float64).t()
        for p, r, g in zip(ours, ref, grads):
            p.grad, r.grad = g.clone(memory_format=torch.preserve_format), g.clone()
        opt.step()
        ref_opt.step()
    assert results == [True, False, True, True]
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p, r, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", ["non_contiguous_grad", "sparse_grad", "float16", "buffer_dtype",
                                  "buffer_shape", "meta_device"])
def test_kernel_returns_false_and_touches_nothing_when_a_tensor_does_not_fit(case, rng):
    op = lars_module._cpu_op()
    if op is None:
        pytest.skip("the C++ extension could not be built")
    params = [torch.randn(4, 3, generator=rng), torch.randn(3, generator=rng)]
    grads = [torch.randn(4, 3, generator=rng), torch.randn(3, generator=rng)]
    bufs = [torch.randn(4, 3, generator=rng), torch.randn(3, generator=rng)]
    if case == "non_contiguous_grad":
        grads[0] = torch.randn(3, 4, generator=rng).t()
    elif case == "sparse_grad":
        grads[1] = grads[1].to_sparse()
    elif case == "float16":
        params, grads, bufs = ([t.half() for t in ts] for ts in (params, grads, bufs))
    elif case == "buffer_dtype":
        bufs[1] = bufs[1].double()
    elif case == "buffer_shape":
        bufs[0] = bufs[0].reshape(3, 4)
    else:
        grads[0] = torch.empty(4, 3, device="meta")
    before = [t.clone() for t in params + bufs]
    assert op(params, grads, bufs, 1, 0.1, 0.9, 1e-4, 1e-3, 0.0, False, False) is False
    assert all(torch.equal(a, b) for a, b in zip(params + bufs, before))
    grads = [torch.randn(4, 3, generator=rng), torch.randn(3, generator=rng)]  # all fitting: True
    params, bufs = [t.float() for t in params], [torch.zeros(4, 3), torch.zeros(3)]
    assert op(params, grads, bufs, 1, 0.1, 0.9, 1e-4, 1e-3, 0.0, False, False) is True


def test_load_state_dict_into_a_stepped_optimizer(rng):
    """Loading a state into an optimiser that has stepped replaces its buffers: the kept plan must
    not go on updating the old ones."""
    batches = make_batches(8, torch.float64, rng)
    net = make_net(torch.float64)
    other = copy.deepcopy(net)
    opt = LARS(net.parameters(), lr=0.5)
    other_opt = LARS(other.parameters(), lr=0.5)
    train(net, opt, batches[:3])
    train(other, other_opt, batches[:5])
    saved = copy.deepcopy(other_opt.state_dict())
    net.load_state_dict(other.state_dict())
    opt.load_state_dict(saved)
    train(net, opt, batches[5:])
    train(other, other_opt, batches[5:])
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("path", PATHS)
def test_a_replaced_parameter_state_is_the_one_updated(path, rng):
    """``opt.state[p] = {...}`` between steps (as torch's optimisers allow): the new buffer is read
    and updated, and it is what state_dict saves."""
    batches = make_batches(6, torch.float64, rng)
    net = make_net(torch.float64)
    opt = use_path(LARS(net.parameters(), lr=0.5), path)
    train(net, opt, batches[:2])
    other = copy.deepcopy(net)
    other_opt = use_path(LARS(other.parameters(), lr=0.5), path)
    for p, q in zip(net.parameters(), other.parameters()):  # both continue from halved buffers
        buf = opt.state[p]["momentum_buffer"] / 2
        opt.state[p] = {"momentum_buffer": buf.clone()}
        other_opt.state[q] = {"momentum_buffer": buf.clone()}
    train(net, opt, batches[2:])
    train(other, other_opt, batches[2:])
    saved = opt.state_dict()["state"]
    for i, (p, q) in enumerate(zip(net.parameters(), other.parameters())):
        assert torch.equal(p, q)
        assert torch.equal(saved[i]["momentum_buffer"], other_opt.state[q]["momentum_buffer"])


def test_fused_results_do_not_depend_on_the_thread_count(rng):
    """Serial and parallel kernel runs, whole-tensor tasks and tensors split between threads
    (adapted and excluded): bitwise the same weights and buffers."""
    if lars_module._cpu_op() is None:
        pytest.skip("the C++ extension could not be built")
    shapes = [(600, 500), (300_000,), (50, 50), (70_001,), (3, 7, 5), (1,)]
    weights = [0.1 * torch.randn(s, generator=rng) for s in shapes]
    grads = [[torch.randn(s, generator=rng) for s in shapes] for _ in range(3)]
    results = []
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2, 3):
            torch.set_num_threads(n_threads)
            params = [nn.Parameter(w.clone()) for w in weights]
            opt = use_path(LARS(params, lr=0.8, nesterov=True, weight_decay=1e-4), "fused")
            for step_grads in grads:
                for p, g in zip(params, step_grads):
                    p.grad = g.clone()
                opt.step()
            results.append([p.detach().clone() for p in params]
                           + [opt.state[p]["momentum_buffer"] for p in params])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_closure_returns_loss(rng):
    net = make_net(torch.float64)
    opt = LARS(net.parameters(), lr=0.1)
    x, y = make_batches(1, torch.float64, rng)[0]

    def closure():
        opt.zero_grad()
        loss = ((net(x) - y) ** 2).mean()
        loss.backward()
        return loss

    assert torch.is_tensor(opt.step(closure))


@pytest.mark.parametrize("kwargs, word", [
    (dict(lr=-1.0), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(lr=torch.tensor([0.1])), "lr"),  # a tensor lr must be 0-dim
    (dict(lr=torch.tensor(1)), "lr"),  # ... and floating point
    (dict(lr=torch.tensor(-0.1)), "lr"),
    (dict(lr=torch.tensor(0.0), clip=True), "lr"),
    (dict(lr=0.1, momentum=-0.5), "momentum"),
    (dict(lr=0.1, weight_decay=-1e-4), "weight_decay"),
    (dict(lr=0.1, trust_coefficient=-1.0), "trust_coefficient"),
    (dict(lr=0.1, eps=-1e-8), "eps"),
    (dict(lr=0.0, clip=True), "lr"),
])
def test_bad_arguments_raise_value_error(kwargs, word):
    with pytest.raises(ValueError, match=word):
        LARS([nn.Parameter(torch.ones(2, 2))], **kwargs)


@pytest.mark.parametrize("kwargs, word", [
    (dict(lars_exclude="yes"), "lars_exclude"),
    (dict(lars_exclude=1), "lars_exclude"),
    (dict(lr=-1.0), "lr"),
    (dict(momentum=-0.5), "momentum"),
    (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(lr=0.0, clip=True), "lr"),
])
def test_bad_group_settings_raise_in_the_constructor_and_add_param_group(kwargs, word):
    with pytest.raises(ValueError, match=word):
        LARS([{"params": [nn.Parameter(torch.ones(2, 2))], **kwargs}], lr=0.1)
    opt = LARS([nn.Parameter(torch.ones(2, 2))], lr=0.1)
    with pytest.raises(ValueError, match=word):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(3))], **kwargs})
    assert len(opt.param_groups) == 1  # the refused group is not kept


def test_bad_group_override_and_sparse_gradient():
    with pytest.raises(ValueError, match="lars_exclude"):
        LARS([{"params": [nn.Parameter(torch.ones(2, 2))], "lars_exclude": "yes"}], lr=0.1)
    emb = nn.Embedding(5, 3, sparse=True)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(ValueError, match="sparse"):
        LARS(emb.parameters(), lr=0.1).step()


@pytest.mark.cuda
@pytest.mark.parametrize("lr_kind", ["float", "cuda tensor", "cpu tensor"])
def test_cuda_matches_reference_without_host_sync(lr_kind, rng):
    net = make_net(torch.float32).cuda()
    ref_net = copy.deepcopy(net)
    batches = [(x.cuda(), y.cuda()) for x, y in make_batches(8, torch.float32, rng)]
    lr = {"float": 0.5, "cuda tensor": torch.tensor(0.5, device="cuda"), "cpu tensor": torch.tensor(0.5)}
    opt = LARS(net.parameters(), lr=lr[lr_kind], nesterov=True)
    train(net, opt, batches[:2])  # first steps allocate buffers and copy the segment index
    train(ref_net, LARSReference(ref_net.parameters(), lr=0.5, nesterov=True), batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for x, y in batches[2:]:
            opt.zero_grad(set_to_none=True)
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_nets_close(net, ref_net, rtol=1e-4, atol=1e-5)
    if lars_module._triton_kernels() is not None:  # the steps were the Triton kernels' (kernels/lars.py)
        plan = opt._plans[id(opt.param_groups[0])]
        assert all(bucket._triton_schedule is not None for bucket in plan.buckets)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("config", [dict(), dict(nesterov=True), dict(clip=True, nesterov=True),
                                    dict(lars_exclude=True), dict(lars_exclude=True, nesterov=True)],
                         ids=config_id)
def test_tensor_lr_follows_the_schedule_like_a_float_lr(config, path, rng):
    """A 0-dim tensor lr, changed in place by the schedule, gives the steps of a float lr."""
    from skelcl.optim import warmup_cosine

    exclude = config.pop("lars_exclude", None)
    nets = [make_net(torch.float64) for _ in range(2)]
    opts = []
    for net, lr in zip(nets, (0.7, torch.tensor(0.7, dtype=torch.float64))):
        groups = [{"params": net.parameters(), **({"lars_exclude": exclude} if exclude else {})}]
        opts.append(use_path(LARS(groups, lr=lr, **config), path))
    lr_tensor = opts[1].param_groups[0]["lr"]
    scheds = [warmup_cosine(opt, base_lr=0.7, warmup_steps=5, total_steps=20) for opt in opts]
    batches = make_batches(20, torch.float64, rng)
    for batch in batches:
        for net, opt, sched in zip(nets, opts, scheds):
            train(net, opt, [batch])
            sched.step()
        assert opts[1].param_groups[0]["lr"] is lr_tensor  # changed in place, never replaced
        assert lr_tensor.item() == pytest.approx(opts[0].param_groups[0]["lr"], rel=1e-12)
    assert_nets_close(nets[1], nets[0], rtol=1e-12, atol=1e-14)


def test_tensor_lr_round_trips_through_state_dict(rng):
    net = make_net(torch.float64)
    opt = LARS(net.parameters(), lr=torch.tensor(0.3, dtype=torch.float64))
    train(net, opt, make_batches(2, torch.float64, rng))
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    other = LARS(make_net(torch.float64).parameters(), lr=torch.tensor(0.9, dtype=torch.float64))
    other.load_state_dict(torch.load(buffer))
    assert torch.is_tensor(other.param_groups[0]["lr"]) and other.param_groups[0]["lr"].item() == 0.3


@pytest.mark.triton
def test_triton_kernels_take_each_step_and_decline_what_does_not_fit(monkeypatch, rng, triton_device):
    """One kernel call per step and bucket while every tensor fits; a non-contiguous gradient sends
    that step to the foreach path (nothing half-done), and the next step is the kernels' again."""
    kernels = lars_module._triton_kernels()
    if kernels is None:
        pytest.skip("triton is not installed")
    calls = []
    real = kernels.lars_step_
    monkeypatch.setattr(kernels, "lars_step_", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    shapes = [(7, 5), (4, 6), (6,)]
    weights = [torch.randn(s, generator=rng, dtype=torch.float64) for s in shapes]
    ours = [nn.Parameter(w.to(triton_device)) for w in weights]
    ref = [nn.Parameter(w.clone()) for w in weights]
    opt = use_path(LARS(ours, lr=0.4, nesterov=True, weight_decay=1e-3), "triton")
    ref_opt = LARSReference(ref, lr=0.4, nesterov=True, weight_decay=1e-3)
    for step in range(4):
        grads = [torch.randn(s, generator=rng, dtype=torch.float64) for s in shapes]
        if step == 2:
            grads[1] = torch.randn(6, 4, generator=rng, dtype=torch.float64).t()  # non-contiguous
        for p, r, g in zip(ours, ref, grads):
            p.grad, r.grad = g.to(triton_device), g.clone()
        opt.step()
        ref_opt.step()
    assert calls == [3, 3, 3]  # steps 0, 1 and 3
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p.cpu(), r, rtol=1e-12, atol=1e-14)


@pytest.mark.triton
@pytest.mark.parametrize("config", [dict(), dict(clip=True, nesterov=True, eps=1e-3), dict(momentum=0.0)],
                         ids=config_id)
def test_triton_kernels_on_multi_block_tensors_float32(config, rng, triton_device):
    """Tensors of several kernel blocks (partial sums added up by every block), a zero weight, an
    empty tensor, adapted and excluded, float32, three steps against the float64 reference."""
    from skelcl.kernels.lars import BLOCK

    shapes = [(3, BLOCK + 7), (5, 7), (13, 1), (0, 4), (2 * BLOCK + 3,), (9,)]
    weights = [0.1 * torch.randn(s, generator=rng) for s in shapes]
    weights[2].zero_()
    ours = [nn.Parameter(w.to(triton_device)) for w in weights]
    ref = [nn.Parameter(w.double()) for w in weights]
    opt = use_path(LARS(ours, lr=0.8, weight_decay=1e-2, **config), "triton")
    ref_opt = LARSReference(ref, lr=0.8, weight_decay=1e-2, **config)
    for _ in range(3):
        grads = [torch.randn(s, generator=rng) for s in shapes]
        for p, r, g in zip(ours, ref, grads):
            p.grad, r.grad = g.to(triton_device), g.double()
        opt.step()
        ref_opt.step()
    assert opt._plans[id(opt.param_groups[0])].buckets[0]._triton_schedule is not None  # kernels ran
    for p, r in zip(ours, ref):
        torch.testing.assert_close(p.double().cpu(), r.detach(), rtol=1e-5, atol=1e-6)
