"""Encoders (ST-GCN, SkeletonResNet), the contrastive wrapper, and checkpoint conversion."""

from __future__ import annotations

from torch import nn

from skelcl.layouts import Layout, get_layout
from skelcl.models.contrastive import ContrastiveModel
from skelcl.models.convert import convert_stgcn_state_dict
from skelcl.models.resnet import RESNET_STAGE_BLOCKS, SkeletonResNet
from skelcl.models.stgcn import STGCN, stgcn_widths

__all__ = ["STGCN", "SkeletonResNet", "ContrastiveModel", "convert_stgcn_state_dict", "build_encoder",
           "ENCODERS", "ENCODER_BASE_WIDTHS", "stgcn_widths"]

# each ST-GCN preset: (width multiplier of the original 64-...-256 network, default depth)
_STGCN_PRESETS = {"stgcn": (1.0, 10), "stgcn-quarter": (0.25, 10), "stgcn-small": (0.125, 6)}
_RESNET_WIDTH = 64  # the resnets' first-stage channels at width_multiplier 1
# channels of the first block of each preset at width_multiplier 1 (what skelcl.train's --width counts)
ENCODER_BASE_WIDTHS = ({name: stgcn_widths(3, scale)[0] for name, (scale, _) in _STGCN_PRESETS.items()}
                       | {f"resnet{depth}": _RESNET_WIDTH for depth in RESNET_STAGE_BLOCKS})
ENCODERS = tuple(ENCODER_BASE_WIDTHS)


def build_encoder(name: str, layout: str | Layout = "ntu25", width_multiplier: float = 1.0,
                  depth: int | None = None, **kw) -> nn.Module:
    """Encoder preset by name; ``width_multiplier`` and ``depth`` scale it for the ablations.

    * ``"stgcn"``: the original ST-GCN, 10 blocks of 64-...-256 channels.
    * ``"stgcn-quarter"``: 16-16-16-16-32-32-32-64-64-64 (SkeletonCLR / AimCLR size).
    * ``"stgcn-small"``: 8-8-16-16-32-32, 6 blocks: ``skelcl.train``'s default, sized for a CPU.
    * ``"resnet10" | "resnet18" | "resnet34"``: SkeletonResNet, base width 64; ``depth`` overrides.

    Other keywords go to the model (``dropout``, ``num_classes``, ``temporal_kernel``, ...).
    """
    if name not in ENCODERS:
        raise ValueError(f"name must be one of {list(ENCODERS)}, got {name!r}")
    if not width_multiplier > 0:
        raise ValueError(f"width_multiplier must be > 0, got {width_multiplier}")
    lay = get_layout(layout)
    if name.startswith("stgcn"):
        if "widths" in kw:
            raise ValueError("widths cannot be combined with a preset name: use STGCN(widths=...)")
        scale, own_depth = _STGCN_PRESETS[name]
        widths = stgcn_widths(own_depth if depth is None else depth, width_multiplier * scale)
        return STGCN(layout=lay, widths=widths, **kw)
    base = round(kw.pop("width", _RESNET_WIDTH) * width_multiplier)
    return SkeletonResNet(depth=int(name[len("resnet"):]) if depth is None else depth, width=max(1, base),
                          num_joints=lay.num_joints, **kw)
