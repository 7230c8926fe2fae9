"""skelcl.models.BatchNorm2d: nn.BatchNorm2d's function and state, with accurate batch statistics on
channels_last CPU tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from skelcl.models.batchnorm import BatchNorm2d, channels_last_batch_stats


def channels_last(shape, gen, *, scale=3.0, offset=5.0, dtype=torch.float64):
    n, c, h, w = shape
    x = torch.randn(n, h, w, c, generator=gen, dtype=torch.float64) * scale + offset
    return x.to(dtype).permute(0, 3, 1, 2)  # (N, C, H, W) view of (N, H, W, C) memory


@pytest.mark.parametrize("shape", [(64, 16, 25, 50), (3, 5, 7, 11), (1, 4, 25, 9), (5, 3, 1, 1)])
def test_stats_match_float64(shape, rng):
    x64 = channels_last(shape, rng)
    x = x64.float()
    assert x.is_contiguous(memory_format=torch.channels_last)
    var, mean = torch.var_mean(x.double(), dim=(0, 2, 3), correction=0)
    got_mean, got_var = channels_last_batch_stats(x)
    assert got_mean.dtype == got_var.dtype == torch.float32
    torch.testing.assert_close(got_mean.double(), mean, rtol=3e-7, atol=1e-7)
    torch.testing.assert_close(got_var.double(), var, rtol=1e-6, atol=1e-7)


def test_more_accurate_than_the_channels_last_kernel(rng):
    """The reason for the module: on this size the plain kernel is off by about 3e-5 (relative)."""
    x = channels_last((64, 16, 25, 50), rng).float()
    ref = F.batch_norm(x.double().contiguous(), None, None, training=True)
    plain = F.batch_norm(x, None, None, training=True)
    accurate = BatchNorm2d(16, affine=False, track_running_stats=False)(x)
    err = lambda y: float((y.double() - ref).abs().max())
    assert err(accurate) < 3e-6
    assert err(accurate) < err(plain) / 4


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("shape", [(6, 5, 7, 11), (1, 3, 4, 5)])
def test_function_gradients_and_running_stats_match_nn_batchnorm(affine, momentum, shape, rng):
    """Against nn.BatchNorm2d in float64 (its contiguous kernel): outputs, every gradient and the
    running statistics over three training steps, then evaluation."""
    c = shape[1]
    ref = torch.nn.BatchNorm2d(c, momentum=momentum, affine=affine).double()
    mine = BatchNorm2d(c, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.copy_(torch.rand(c, generator=rng, dtype=torch.float64) + 0.5)
            ref.bias.copy_(torch.randn(c, generator=rng, dtype=torch.float64))
    mine.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ref.state_dict().items()})
    for _ in range(3):
        x = channels_last(shape, rng, dtype=torch.float32).requires_grad_()
        x64 = x.detach().double().contiguous().requires_grad_()
        g = torch.randn(shape, generator=rng, dtype=torch.float64)
        y, y64 = mine(x), ref(x64)
        assert y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
        y.backward(g.float().contiguous(memory_format=torch.channels_last))
        y64.backward(g)
        torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-4, atol=1e-5)
        if affine:
            torch.testing.assert_close(mine.weight.grad.double(), ref.weight.grad, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(mine.bias.grad.double(), ref.bias.grad, rtol=1e-4, atol=1e-4)
    for name, want in ref.state_dict().items():
        torch.testing.assert_close(mine.state_dict()[name].double() if want.is_floating_point()
                                   else mine.state_dict()[name], want, rtol=1e-5, atol=1e-6, msg=name)
    mine.eval(), ref.eval()
    x = channels_last(shape, rng, dtype=torch.float32)
    torch.testing.assert_close(mine(x).double(), ref(x.double()), rtol=1e-5, atol=1e-5)


def test_gradcheck_of_the_normalisation(rng):
    """The backward (training-mode batch norm's, from the given statistics) against finite
    differences, with the statistics recomputed from x on every call."""
    from skelcl.models.batchnorm import _NormWithStats

    x = channels_last((3, 2, 4, 5), rng).requires_grad_()
    w = (torch.rand(2, generator=rng, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(2, generator=rng, dtype=torch.float64).requires_grad_()

    def fn(x, w, b):
        mean, var = channels_last_batch_stats(x.detach())
        return _NormWithStats.apply(x, w, b, mean, var, 1e-5)

    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_other_inputs_take_the_plain_path(rng, monkeypatch):
    """Contiguous, float64, autocast and evaluation inputs are nn.BatchNorm2d's business."""
    import skelcl.models.batchnorm as bn

    calls = []
    monkeypatch.setattr(bn, "channels_last_batch_stats", lambda x: calls.append(1) or (_ for _ in ()).throw(
        AssertionError("accurate path taken")))
    m = BatchNorm2d(4)
    x = channels_last((2, 4, 3, 5), rng, dtype=torch.float32)
    m(x.contiguous())
    m.double()(x.double())
    m.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(x)
    m.eval()(x)
    assert not calls
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m.train()(torch.randn(1, 4, 1, 1).contiguous(memory_format=torch.channels_last))


def test_encoders_use_it():
    from skelcl.models import STGCN, SkeletonResNet

    for model in (STGCN(widths=(4, 8)), SkeletonResNet(depth=10, width=8)):
        norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        assert norms and all(isinstance(m, BatchNorm2d) for m in norms)
