"""The channels-last STGCN against the plain NCTV ST-GCN (tests/nctv_stgcn.py) with shared weights."""

from __future__ import annotations

import copy

import pytest
import torch
from nctv_stgcn import NCTVSTGCN
from torch import nn

from skelcl.layouts import get_layout
from skelcl.models import STGCN, ContrastiveModel, build_encoder, convert_stgcn_state_dict
from skelcl.models import stgcn as stgcn_module

SMALL = (8, 8, 12, 12, 16)  # strides 1, 1, 2, 1, 2


def _randomise_(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Random weights, BN affine parameters, running statistics and edge importances, so a
    mis-mapped key or a transposed weight cannot go unnoticed."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name == "A" or not t.is_floating_point():
                continue
            r = torch.rand(t.shape, generator=gen, dtype=torch.float64)
            if name.endswith("running_var") or name.startswith("edge_importance"):
                t.copy_(0.5 + r)
            else:
                t.copy_((r - 0.5) * 0.6)


def _pair(layout="ntu25", widths=SMALL, num_classes=None, dtype=torch.float64, gen=None, dropout=0.0):
    lay = get_layout(layout)
    ref = NCTVSTGCN(lay.adjacency_partitions(), widths=widths, num_classes=num_classes).to(dtype)
    _randomise_(ref, gen)
    new = STGCN(layout=lay, widths=widths, num_classes=num_classes, dropout=dropout).to(dtype)
    new.load_state_dict(convert_stgcn_state_dict(ref.state_dict()))
    return ref, new


def _grads(model, convert):
    g = {n: p.grad for n, p in model.named_parameters()}
    return convert_stgcn_state_dict(g, prefix="") if convert else g


@pytest.mark.parametrize("layout,t,num_classes",
                         [("ntu25", 13, None), ("kinect20", 10, 5), ("coco17", 9, None)])
@pytest.mark.parametrize("train", [True, False])
def test_matches_nctv_float64(rng, layout, t, num_classes, train):
    ref, new = _pair(layout, num_classes=num_classes, gen=rng)
    ref.train(train)
    new.train(train)
    v = get_layout(layout).num_joints
    x = torch.randn(3, 3, t, v, 2, generator=rng, dtype=torch.float64)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_new = ref(x_ref), new(x_new)
    assert out_new.shape == (3, new.out_dim)
    torch.testing.assert_close(out_new, out_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn(out_ref.shape, generator=rng, dtype=torch.float64)
    (out_ref * w).sum().backward()
    (out_new * w).sum().backward()
    torch.testing.assert_close(x_new.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    g_ref, g_new = _grads(ref, True), _grads(new, False)
    assert g_ref.keys() == g_new.keys()
    for k in g_ref:
        torch.testing.assert_close(g_new[k], g_ref[k], rtol=1e-9, atol=1e-10, msg=k)
    if train:  # running statistics updated identically
        s_ref = convert_stgcn_state_dict(ref.state_dict())
        for k, val in new.state_dict().items():
            torch.testing.assert_close(val, s_ref[k], rtol=1e-10, atol=1e-12, msg=k)


def _check_against_nctv(rng, layout="ntu25", widths=SMALL, t=13, frozen=(), input_grad=True):
    """Float64 outputs, input gradient, parameter gradients and running statistics vs the NCTV model;
    parameters whose (skelcl) name starts with one of ``frozen`` get no gradient in either model."""
    ref, new = _pair(layout, widths=widths, gen=rng)
    ref_names = [n for n, _ in ref.named_parameters()]
    index = convert_stgcn_state_dict({n: torch.tensor(i) for i, n in enumerate(ref_names)}, prefix="")
    for new_name, i in index.items():
        if new_name.startswith(frozen):
            ref.get_parameter(ref_names[int(i)]).requires_grad_(False)
            new.get_parameter(new_name).requires_grad_(False)
    x = torch.randn(3, 3, t, get_layout(layout).num_joints, 2, generator=rng, dtype=torch.float64)
    x_ref, x_new = x.clone().requires_grad_(input_grad), x.clone().requires_grad_(input_grad)
    out_ref, out_new = ref(x_ref), new(x_new)
    torch.testing.assert_close(out_new, out_ref, rtol=1e-10, atol=1e-10)
    w = torch.randn(out_ref.shape, generator=rng, dtype=torch.float64)
    (out_ref * w).sum().backward()
    (out_new * w).sum().backward()
    if input_grad:
        torch.testing.assert_close(x_new.grad, x_ref.grad, rtol=1e-9, atol=1e-10)
    g_ref = convert_stgcn_state_dict({n: p.grad for n, p in ref.named_parameters() if p.grad is not None},
                                     prefix="")
    for k, p in new.named_parameters():
        if k.startswith(frozen):
            assert p.grad is None and k not in g_ref, k
        else:
            torch.testing.assert_close(p.grad, g_ref[k], rtol=1e-9, atol=1e-10, msg=k)
    s_ref = convert_stgcn_state_dict(ref.state_dict())
    for k, val in new.state_dict().items():
        torch.testing.assert_close(val, s_ref[k], rtol=1e-10, atol=1e-12, msg=k)


@pytest.mark.parametrize("mix", ["bmm", "aligned"])
def test_portable_path_matches_nctv(rng, monkeypatch, mix):
    """The path other devices (and CPU autocast) take: F.linear instead of oneDNN convolutions and
    autograd instead of the hand-written GraphConv backward, run here on CPU tensors, with each dense
    way of mixing the joints (K*W = 75, 60, 51 rows: padded to 80, 64, 56 by "aligned")."""
    monkeypatch.setattr(stgcn_module, "_cpu", lambda x: False)
    monkeypatch.setattr(stgcn_module, "PORTABLE_MIX", mix)
    _check_against_nctv(rng)
    _check_against_nctv(rng, layout="kinect20", widths=(3, 5, 5), t=7)
    _check_against_nctv(rng, layout="coco17", widths=(8, 16, 16), t=9)
    _check_against_nctv(rng, frozen=("data_bn.", "edge_importance."), input_grad=False)


def _output_and_grads(fn, model, x, amp=False):
    """Output and parameter gradients of one forward/backward of ``fn`` (``model``, or ``model``
    compiled), under bfloat16 autocast when ``amp``."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out = fn(x).float()
    (out * torch.linspace(-1, 1, out.numel(), device=x.device).view(out.shape)).sum().backward()
    return {"output": out.detach(), **{n: p.grad for n, p in model.named_parameters()}}


def _mixing_results(model, x, mix, monkeypatch, amp):
    """``_output_and_grads`` with the joints mixed the ``mix`` way."""
    monkeypatch.setattr(stgcn_module, "PORTABLE_MIX", mix)
    return _output_and_grads(model, model, x, amp)


def _check_mixings_against_float64(monkeypatch, device, amp, mixes, tol, t=20):
    """Each way of mixing the joints is as accurate as the batched product: every output and gradient
    within ``tol`` of the float64 model's (norm of the difference, relative to the reference's norm
    plus a floor for gradients that vanish in exact arithmetic, such as a bias followed by BN), or
    no further from it than 3x the batched product's own error (bfloat16 rounds each way differently)."""
    torch.manual_seed(0)
    model = STGCN(widths=(16, 16, 32, 32), dropout=0.0).to(device)
    x = torch.randn(6, 3, t, 25, 2, device=device)
    want = _mixing_results(copy.deepcopy(model).double(), x.double(), "bmm", monkeypatch, amp=False)
    got = {mix: _mixing_results(model, x, mix, monkeypatch, amp) for mix in ("bmm", *mixes)}
    grads = torch.cat([g.flatten() for name, g in want.items() if name != "output"])
    rms_grad = grads.norm() / grads.numel() ** 0.5
    for name, ref in want.items():
        rms = ref.norm() / ref.numel() ** 0.5 if name == "output" else rms_grad
        scale = float(ref.norm() + 1e-2 * rms * ref.numel() ** 0.5)
        error = {mix: float((got[mix][name].double() - ref).norm()) / scale for mix in got}
        for mix in mixes:
            assert error[mix] <= max(3 * error["bmm"], tol), f"{mix}: {name}: relative errors {error}"


@pytest.mark.triton
def test_mixings_under_cpu_autocast_are_as_accurate_as_bmm(monkeypatch):
    """bfloat16 autocast on CPU (the portable path): the aligned matrix and the sparse Triton kernels
    (through the interpreter) against the float64 model."""
    _check_mixings_against_float64(monkeypatch, "cpu", True, ("aligned", "sparse"), tol=1e-2, t=12)


def test_portable_mix_setting_is_checked(monkeypatch):
    monkeypatch.setattr(stgcn_module, "_cpu", lambda x: False)
    monkeypatch.setattr(stgcn_module, "PORTABLE_MIX", "dense")
    with pytest.raises(ValueError, match="PORTABLE_MIX"):
        STGCN(widths=(4, 8))(torch.randn(1, 3, 4, 25, 2))


def _spy(monkeypatch, function_class) -> list:
    """Records each call of ``function_class.apply`` (an autograd.Function) and still runs it."""
    calls, apply = [], function_class.apply
    monkeypatch.setattr(function_class, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


def test_set_portable_mix_chooses_per_model(monkeypatch):
    """set_portable_mix reaches every GraphConv through a wrapper, overrides the module-wide setting
    for that model alone, computes the same function, and None hands the choice back."""
    monkeypatch.setattr(stgcn_module, "_cpu", lambda x: False)
    monkeypatch.setattr(stgcn_module, "PORTABLE_MIX", "bmm")
    aligned_calls = _spy(monkeypatch, stgcn_module._MixAligned)
    torch.manual_seed(0)
    model = ContrastiveModel(STGCN(widths=(4, 8, 8)), proj_dim=8).eval()
    other = copy.deepcopy(model)
    x = torch.randn(2, 3, 6, 25, 2)
    want = model(x)
    assert stgcn_module.set_portable_mix(model, "aligned") == 3
    got = model(x)
    assert len(aligned_calls) == 3
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    other(x)  # the copy made before keeps the module-wide batched product
    assert len(aligned_calls) == 3
    stgcn_module.set_portable_mix(model, None)
    model(x)
    assert len(aligned_calls) == 3
    assert stgcn_module.set_portable_mix(nn.Linear(2, 2), "sparse") == 0
    with pytest.raises(ValueError, match="mix must be one of"):
        stgcn_module.set_portable_mix(model, "dense")
    model.encoder.blocks[0].graph_conv.portable_mix = "dense"  # set by hand: refused when the model runs
    with pytest.raises(ValueError, match="GraphConv.portable_mix"):
        model(x)


@pytest.mark.triton
def test_set_portable_mix_sparse_runs_the_triton_kernels(monkeypatch, triton_device):
    """A model set to "sparse" mixes with the Triton kernels while the module-wide setting is the
    batched product, with the same outputs and gradients."""
    monkeypatch.setattr(stgcn_module, "_cpu", lambda x: False)
    monkeypatch.setattr(stgcn_module, "PORTABLE_MIX", "bmm")
    sparse_calls = _spy(monkeypatch, stgcn_module._SparseMixTriton)
    torch.manual_seed(0)
    model = STGCN(widths=(4, 8), dropout=0.0).to(triton_device)
    x = torch.randn(2, 3, 5, 25, 2, device=triton_device)
    want = _output_and_grads(model, model, x)
    assert not sparse_calls
    stgcn_module.set_portable_mix(model, "sparse")
    got = _output_and_grads(model, model, x)
    assert len(sparse_calls) == 2
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_cpu_graph_conv_in_chunks(rng, monkeypatch):
    """The CPU GraphConv one sequence at a time, mixing again in the backward (tiny chunk size)."""
    monkeypatch.setattr(stgcn_module, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(stgcn_module, "_WHOLE_BYTES", 0)
    _check_against_nctv(rng)


@pytest.mark.parametrize("frozen,input_grad", [(("data_bn.", "edge_importance."), False),
                                               (("blocks.1.graph_conv.",), True), (("blocks.0.",), True)])
def test_cpu_backward_partial_gradients(rng, frozen, input_grad):
    """Only some GraphConv inputs need a gradient (no adjacency gradient without learnable edge
    importance, no input gradient into the first block when data_bn is frozen, ...)."""
    _check_against_nctv(rng, frozen=frozen, input_grad=input_grad)


def test_graph_conv_cpu_backward_float32(rng):
    """The CPU GraphConv (chunked, hand-written backward) against autograd through the portable
    path, float32, with widths and lengths that make several chunks, the last one shorter."""
    torch.manual_seed(0)
    gc = stgcn_module.GraphConv(24, 40, 3)
    x = torch.randn(5, 25, 11, 24, generator=rng, requires_grad=True)
    adjacency = (get_layout("ntu25").adjacency_partitions() * (0.5 + torch.rand(3, 25, 25, generator=rng)))
    adjacency.requires_grad_()
    g = torch.randn(5, 25, 11, 40, generator=rng)
    results = []
    for fast in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(stgcn_module, "_cpu_fast_path", lambda x, fast=fast: fast)
            mp.setattr(stgcn_module, "_CHUNK_BYTES", 3 * 25 * 11 * 24 * 4 * 2)  # two sequences per chunk
            mp.setattr(stgcn_module, "_WHOLE_BYTES", 0)
            out = gc(x, adjacency)
            grads = torch.autograd.grad(out, (x, adjacency, gc.weight, gc.bias), g)
            results.append((out, *grads))
    for fast_t, plain_t in zip(*results):
        torch.testing.assert_close(fast_t, plain_t, rtol=1e-4, atol=1e-4)


def test_matches_nctv_float32(rng):
    ref, new = _pair(widths=(16, 16, 32), dtype=torch.float32, gen=rng)
    x = torch.randn(4, 3, 11, 25, 2, generator=rng)
    x_ref, x_new = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_new = ref(x_ref), new(x_new)
    torch.testing.assert_close(out_new, out_ref, rtol=1e-4, atol=1e-5)
    out_ref.square().sum().backward()
    out_new.square().sum().backward()
    torch.testing.assert_close(x_new.grad, x_ref.grad, rtol=1e-3, atol=1e-5)
    g_ref, g_new = _grads(ref, True), _grads(new, False)
    for k in g_ref:
        torch.testing.assert_close(g_new[k], g_ref[k], rtol=1e-3, atol=1e-4, msg=k)


def test_converter_prefix_and_head(rng):
    ref, _ = _pair(num_classes=7, gen=rng)
    sd = {"encoder_q." + k: v for k, v in ref.state_dict().items()}
    sd.update({"encoder_k.data_bn.weight": torch.zeros(75), "queue": torch.zeros(4, 4)})
    with pytest.raises(ValueError, match="several"):
        convert_stgcn_state_dict(sd)
    converted = convert_stgcn_state_dict(sd, prefix="encoder_q.")
    assert converted["head.weight"].shape == (7, 16)
    new = STGCN(widths=SMALL, num_classes=7).double()
    new.load_state_dict(converted)  # strict: every key present, none extra
    del sd["encoder_k.data_bn.weight"]
    assert convert_stgcn_state_dict(sd).keys() == converted.keys()  # prefix auto-detected
    # A skelcl state dict passes through.
    assert convert_stgcn_state_dict(new.state_dict()).keys() == new.state_dict().keys()


def test_converter_rejects_bad_input():
    with pytest.raises(ValueError, match="data_bn"):
        convert_stgcn_state_dict({"foo": torch.zeros(1)})
    with pytest.raises(ValueError, match="not part of ST-GCN"):
        convert_stgcn_state_dict({"data_bn.weight": torch.zeros(1), "proj.weight": torch.zeros(1)})
    extra = {"data_bn.weight": torch.zeros(1), "proj.weight": torch.zeros(1)}
    out = convert_stgcn_state_dict(extra, strict=False)
    assert list(out) == ["data_bn.weight"]
    with pytest.raises(ValueError, match="dict"):
        convert_stgcn_state_dict([1, 2])


def test_bad_input_raises():
    model = STGCN(widths=(4, 4))
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 3, 5, 25))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 2, 5, 25, 2))
    with pytest.raises(ValueError, match="joints"):
        model(torch.randn(2, 3, 5, 20, 2))
    with pytest.raises(ValueError, match="persons"):
        model(torch.randn(2, 3, 5, 25, 3))
    assert model(torch.randn(2, 3, 5, 25, 1)).shape == (2, 4)  # fewer persons than the maximum
    with pytest.raises(ValueError, match="widths"):
        STGCN(widths=(4, 0))
    with pytest.raises(ValueError, match="temporal_kernel"):
        STGCN(widths=(4,), temporal_kernel=4)
    with pytest.raises(ValueError, match="layout"):
        STGCN(layout="ntu26")
    with pytest.raises(ValueError, match="name"):
        build_encoder("stgcn-huge")


def test_presets_and_parameter_count():
    full = build_encoder("stgcn", num_classes=60)
    n = sum(p.numel() for p in full.parameters())
    assert 3.0e6 < n < 3.2e6  # the original ST-GCN has about 3.1 M parameters
    assert build_encoder("stgcn").widths == (64, 64, 64, 64, 128, 128, 128, 256, 256, 256)
    quarter = build_encoder("stgcn-quarter")
    assert quarter.widths == (16, 16, 16, 16, 32, 32, 32, 64, 64, 64) and quarter.out_dim == 64
    assert quarter.strides == (1, 1, 1, 1, 2, 1, 1, 2, 1, 1)
    shallow = build_encoder("stgcn", depth=4, width_multiplier=0.5)
    assert shallow.widths == (32, 32, 64, 128)
    assert build_encoder("stgcn-quarter", layout="kinect20").layout.num_joints == 20
    small = build_encoder("stgcn-small")  # skelcl.train's default: the former quarter at width 8, depth 6
    assert small.widths == (8, 8, 16, 16, 32, 32) and small.strides == (1, 1, 2, 1, 2, 1)
    assert build_encoder("stgcn-small", width_multiplier=0.5, depth=3).widths == (4, 8, 16)


def test_dropout_and_odd_lengths(rng):
    model = STGCN(widths=(6, 6, 10), dropout=0.5).train()
    for t in (1, 2, 7):
        out = model(torch.randn(2, 3, t, 25, 2, generator=rng))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
    model.eval()
    x = torch.randn(2, 3, 7, 25, 2, generator=rng)
    torch.testing.assert_close(model(x), model(x))  # no dropout at eval


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(rng, dtype):
    model = STGCN(widths=(8, 8, 16)).eval()
    x = torch.randn(2, 3, 9, 25, 2, generator=rng)
    expect = model(x)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), expect, rtol=0.1, atol=0.05)
    model.train()
    with torch.autocast("cpu", dtype=dtype):
        loss = model(x).float().square().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_contrastive_model(rng):
    enc = STGCN(widths=(4, 8))
    model = ContrastiveModel(enc, proj_dim=5, hidden=6)
    x = torch.randn(3, 3, 6, 25, 2, generator=rng)
    assert model(x).shape == (3, 5) and model.encode(x).shape == (3, 8)
    assert model.encoder is enc
    with pytest.raises(ValueError, match="proj_dim"):
        ContrastiveModel(enc, proj_dim=0)
    with pytest.raises(ValueError, match="out_dim"):
        ContrastiveModel(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="classification head"):
        ContrastiveModel(STGCN(widths=(4, 8), num_classes=3))


@pytest.mark.slow
def test_torch_compile_matches_eager(rng):
    model = STGCN(widths=(4, 8)).train()
    x = torch.randn(2, 3, 6, 25, 2, generator=rng)
    compiled = torch.compile(model)
    expect = model(x)
    out = compiled(x)
    torch.testing.assert_close(out, expect, rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


_FIRST_CALL_COMPILED = """
import torch
from skelcl.models import STGCN
torch.manual_seed(0)
model = STGCN(widths=(8, 8, 16), num_classes=5)
x = torch.randn(2, 3, 8, 25, 2)
out = torch.compile(model, fullgraph=True, backend="aot_eager")(x)
out.square().sum().backward()
got = [p.grad.clone() for p in model.parameters()]
model.zero_grad()
expect = model(x)
expect.square().sum().backward()
torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)
for g, p in zip(got, model.parameters()):  # (biases before a batch norm have an exact gradient of 0)
    torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-5)
"""


def test_torch_compile_fullgraph_traces_a_first_call_on_cpu(fresh_python):
    """In a fresh process, compiling first (no eager call, no load_cpu_kernels): the C++ mixing
    kernel is built while dynamo traces, and its ops have fake implementations."""
    if not stgcn_module._graph_mix_available():
        pytest.skip("the C++ extension could not be built")
    fresh_python(_FIRST_CALL_COMPILED)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("support_given", [True, False])
def test_graph_conv_sparse_mixing_matches_portable_path(rng, dtype, support_given):
    """The CPU GraphConv mixes joints with the sparse kernel (csrc/graph_mix.cpp) when the support
    of the adjacency is known (or the adjacency needs no gradient). Edge-importance entries that are
    exactly zero keep their gradient: the support, not the current values, decides the pattern."""
    if not stgcn_module._graph_mix_available():
        pytest.skip("the C++ extension could not be built")
    torch.manual_seed(0)
    gc = stgcn_module.GraphConv(24, 40, 3).to(dtype)
    partitions = get_layout("ntu25").adjacency_partitions().to(dtype)
    importance = 0.5 + torch.rand(3, 25, 25, generator=rng, dtype=dtype)
    importance[0, 3, 3] = importance[1, 1, 20] = importance[2, 20, 1] = 0.0  # on edges of the graph
    importance.requires_grad_(support_given)
    x = torch.randn(5, 25, 11, 24, generator=rng, dtype=dtype, requires_grad=True)
    g = torch.randn(5, 25, 11, 40, generator=rng, dtype=dtype)
    results = []
    for fast in (True, False):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(stgcn_module, "_cpu_fast_path", lambda x, fast=fast: fast)
            mp.setattr(stgcn_module, "_CHUNK_BYTES", 3 * 25 * 11 * 24 * 8 * 2)  # several chunks
            mp.setattr(stgcn_module, "_WHOLE_BYTES", 0)
            out = gc(x, partitions * importance, partitions if support_given else None)
            inputs = (x, gc.weight, gc.bias) + ((importance,) if support_given else ())
            results.append((out, *torch.autograd.grad(out, inputs, g)))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for fast_t, plain_t in zip(*results):
        torch.testing.assert_close(fast_t, plain_t, **tol)
    if support_given:  # the zeroed importances still get (non-zero) gradients
        grad_importance = results[0][-1]
        assert grad_importance[0, 3, 3] != 0 and grad_importance[1, 1, 20] != 0
        assert (grad_importance[partitions == 0] == 0).all()


def test_graph_mix_kernel_checks_its_arguments():
    if not stgcn_module._graph_mix_available():
        pytest.skip("the C++ extension could not be built")
    x = torch.randn(2, 4, 6)
    out = torch.empty(2, 3, 6)
    rowptr, col, val = torch.tensor([0, 1, 1, 2]), torch.tensor([0, 3]), torch.ones(2)
    torch.ops.skelcl.graph_mix_(out, x, rowptr, col, val)
    torch.testing.assert_close(out, torch.stack([x[:, 0], torch.zeros(2, 6), x[:, 3]], 1))
    with pytest.raises(RuntimeError, match="outside"):
        torch.ops.skelcl.graph_mix_(out, x, rowptr, torch.tensor([0, 4]), val)
    with pytest.raises(RuntimeError, match="rowptr"):
        torch.ops.skelcl.graph_mix_(out, x, torch.tensor([0, 2, 1, 2]), col, val)
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.skelcl.graph_mix_(out, x, rowptr, col, val.double())
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.skelcl.graph_mix_(out, x.transpose(1, 2).contiguous().transpose(1, 2), rowptr, col, val)


@pytest.mark.parametrize("layout", ["kinect20", "coco17"])
def test_cpu_path_other_layouts_match_nctv(rng, layout):
    """The CPU path (sparse joint mixing on each layout's own partitions) on the other joint graphs."""
    _check_against_nctv(rng, layout=layout, widths=(8, 16, 16), t=9)


def test_cpu_path_without_the_cpp_extension_matches_nctv(rng, monkeypatch):
    """Where csrc/graph_mix.cpp cannot be built, the CPU path mixes joints with dense products."""
    monkeypatch.setattr(stgcn_module, "_GRAPH_MIX", [False])
    _check_against_nctv(rng)
    _check_against_nctv(rng, frozen=("edge_importance.",))


def test_graph_mix_kernel_partition_major_layouts(rng):
    """Either side of the C++ mixing may be partition-major, (P, B, rows / P, L)."""
    if not stgcn_module._graph_mix_available():
        pytest.skip("the C++ extension could not be built")
    b, k, w, length = 3, 3, 4, 5
    pattern = torch.rand(k * w, w, generator=rng) < 0.4
    csr = stgcn_module._Csr.of(pattern)
    dense = torch.randn(k * w, w, generator=rng, dtype=torch.float64) * pattern
    val = dense[csr.rows, csr.cols].contiguous()
    x = torch.randn(b, w, length, generator=rng, dtype=torch.float64)
    out = torch.full((k, b, w, length), float("nan"), dtype=torch.float64)
    torch.ops.skelcl.graph_mix_(out, x, csr.rowptr, csr.cols, val)
    want = (dense @ x).view(b, k, w, length).transpose(0, 1)  # (K, B, W, L)
    torch.testing.assert_close(out, want)
    back = torch.empty(b, w, length, dtype=torch.float64)  # the transpose, reading the (K, B, W, L) side
    torch.ops.skelcl.graph_mix_(back, out, csr.t_rowptr, csr.t_col, val[csr.by_col].contiguous())
    torch.testing.assert_close(back, dense.t() @ (dense @ x))
    g = torch.randn(k, b, w, length, generator=rng, dtype=torch.float64)
    grad_val = torch.ops.skelcl.graph_mix_val_grad(g, x, csr.rowptr, csr.cols)
    g_batch_major = g.transpose(0, 1).reshape(b, k * w, length)
    torch.testing.assert_close(grad_val, (g_batch_major @ x.transpose(1, 2)).sum(0)[csr.rows, csr.cols])


@pytest.mark.cuda
@pytest.mark.parametrize("amp", [False, True])
def test_mixing_variants_agree_on_cuda(monkeypatch, amp):
    """On a GPU (where they matter) the three ways of mixing joints compute one function: float32
    (TF32 off) within 1e-4 of the float64 model, bfloat16 autocast as accurate as the batched product."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    _check_mixings_against_float64(monkeypatch, "cuda", amp, ("aligned", "sparse"), tol=1e-2 if amp else 1e-4)


def test_mixing_pattern_is_built_once_and_follows_a_loaded_adjacency(rng):
    """STGCN keeps the CSR of A's pattern as non-persistent buffers (state dicts are unchanged); a
    state dict that brings another A rebuilds them, so the sparse mixing never uses a stale pattern."""
    model = STGCN(widths=(8, 8))
    assert not any("_support_" in key for key in model.state_dict())
    assert int(model._support().rows.numel()) == int((model.A != 0).sum())
    state = model.state_dict()
    state["A"] = state["A"].clone()
    state["A"][0].fill_diagonal_(0.0)  # drop the 25 root entries of partition 0
    other = STGCN(widths=(8, 8))
    other.load_state_dict(state)
    assert int(other._support().rows.numel()) == int((model.A != 0).sum()) - 25
    x = torch.randn(3, 3, 7, 25, 2, generator=rng)
    with torch.no_grad():
        # the C++ sparse path (pattern from the buffers) against autocast-free dense mixing of the same A
        sparse_out = other(x)
        dense = STGCN(widths=(8, 8))
        dense.load_state_dict(state)
        dense._support = lambda: None  # GraphConv then mixes densely with the current values
        torch.testing.assert_close(sparse_out, dense(x), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.triton
def test_torch_compile_with_sparse_triton_mixing_matches_eager(monkeypatch, triton_device):
    """torch.compile over the sparse Triton mixing (its kernels called through their torch.library
    ops while tracing): outputs and every gradient as in eager mode. On CPU the portable path is
    forced (float32) and the kernels run through the interpreter."""
    monkeypatch.setattr(stgcn_module, "PORTABLE_MIX", "sparse")
    monkeypatch.setattr(stgcn_module, "_cpu", lambda x: False)
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = STGCN(widths=(4, 8), dropout=0.0).to(triton_device)
    x = torch.randn(2, 3, 6, 25, 2, device=triton_device)
    eager = _output_and_grads(model, model, x)
    compiled = _output_and_grads(torch.compile(model, fullgraph=True), model, x)
    for name, want in eager.items():
        torch.testing.assert_close(compiled[name], want, rtol=1e-4, atol=1e-5, msg=name)


def test_stgcn_can_be_made_on_the_meta_device_and_loaded(rng):
    """Meta-device construction (shapes only, no memory) still works with the mixing-pattern
    buffers; after to_empty, loading a state dict rebuilds them from the loaded A."""
    with torch.device("meta"):
        model = STGCN(widths=(4, 8))
    assert model.A.is_meta and model._support().rows.is_meta
    source = STGCN(widths=(4, 8))
    model.to_empty(device="cpu").load_state_dict(source.state_dict())
    x = torch.randn(2, 3, 5, 25, 2, generator=rng)
    torch.testing.assert_close(model(x), source(x))

