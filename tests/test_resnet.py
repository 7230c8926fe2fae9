"""SkeletonResNet: shapes, person averaging, channels_last, presets, bad input."""

from __future__ import annotations

import pytest
import torch

from skelcl.models import ContrastiveModel, SkeletonResNet, build_encoder


def test_shapes_and_presets(rng):
    x = torch.randn(2, 3, 11, 25, 2, generator=rng)
    model = SkeletonResNet(depth=10, width=4)
    assert model(x).shape == (2, 32) and model.out_dim == 32
    assert SkeletonResNet(depth=10, width=4, num_classes=5)(x).shape == (2, 5)
    r18 = build_encoder("resnet18", width_multiplier=0.125)
    assert r18.out_dim == 64 and len(r18.layers) == 8
    assert len(build_encoder("resnet18", depth=34, width=4).layers) == 16
    assert build_encoder("resnet10", layout="coco17", width=4)(torch.randn(1, 3, 5, 17, 2)).shape == (1, 32)
    assert ContrastiveModel(model, proj_dim=7)(x).shape == (2, 7)


def test_persons_averaged_and_order_free(rng):
    model = SkeletonResNet(depth=10, width=4).eval()
    x = torch.randn(3, 3, 8, 25, 2, generator=rng, dtype=torch.float64)
    model.double()
    both = model(x)
    single = SkeletonResNet(depth=10, width=4, num_persons=1).double().eval()
    single.load_state_dict(model.state_dict())
    per_person = torch.stack([single(x[..., m:m + 1]) for m in range(2)]).mean(0)
    torch.testing.assert_close(both, per_person)
    torch.testing.assert_close(model(x.flip(-1)), both)


def test_weights_are_channels_last_and_backward_runs(rng):
    model = SkeletonResNet(depth=10, width=4)
    assert model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 6, 25, 2, generator=rng, requires_grad=True)
    model(x).square().sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(x).float()).all()


def test_bad_input_raises():
    with pytest.raises(ValueError, match="depth"):
        SkeletonResNet(depth=19)
    with pytest.raises(ValueError, match="width"):
        SkeletonResNet(width=0)
    model = SkeletonResNet(depth=10, width=2, num_joints=25)
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(2, 3, 5, 25))
    with pytest.raises(ValueError, match="channels"):
        model(torch.randn(2, 4, 5, 25, 2))
    with pytest.raises(ValueError, match="joints"):
        model(torch.randn(2, 3, 5, 24, 2))
    with pytest.raises(ValueError, match="persons"):
        model(torch.randn(2, 3, 5, 25, 3))
    assert model(torch.randn(2, 3, 5, 25, 1)).shape == (2, 16)  # fewer persons than the maximum
