"""Load checkpoints in the original ST-GCN key layout into ``skelcl.models.STGCN``.

Original keys (optionally under a prefix such as ``encoder_q.`` or ``module.``)::

    A, data_bn.*, edge_importance.{i}, fcn.{weight,bias} (1x1 Conv2d head),
    st_gcn_networks.{i}.gcn.conv.{weight,bias}      (K*C_out, C_in, 1, 1)
    st_gcn_networks.{i}.tcn.0.*  BN   tcn.2.* temporal Conv2d   tcn.3.* BN
    st_gcn_networks.{i}.residual.0.* 1x1 Conv2d   residual.1.* BN
"""

from __future__ import annotations

import re

from torch import Tensor

__all__ = ["convert_stgcn_state_dict"]

_BLOCK_PARTS = {
    "gcn.conv": "graph_conv",
    "tcn.0": "bn_graph",
    "tcn.2": "temporal_conv",
    "tcn.3": "bn_temporal",
    "residual.0": "residual.linear",
    "residual.1": "residual.bn",
}
_BLOCK_KEY = re.compile(r"st_gcn_networks\.(\d+)\.(gcn\.conv|tcn\.[023]|residual\.[01])\.(\w+)$")
_SQUEEZED = ("graph_conv.weight", "residual.linear.weight", "head.weight")


def _detect_prefix(keys) -> str:
    prefixes = sorted({k[: -len("data_bn.weight")] for k in keys if k.endswith("data_bn.weight")})
    if not prefixes:
        raise ValueError("state_dict has no 'data_bn.weight' key: not an ST-GCN checkpoint")
    if len(prefixes) > 1:
        raise ValueError(f"state_dict holds several ST-GCN encoders {prefixes}: pass prefix= to pick one")
    return prefixes[0]


def _new_key(key: str) -> str | None:
    if key == "A" or key.startswith(("data_bn.", "edge_importance.")):
        return key
    if key.startswith("fcn.") or key.startswith("fc.") and key.count(".") == 1:
        return "head." + key.split(".", 1)[1]
    m = _BLOCK_KEY.match(key)
    if m:
        index, part, leaf = m.groups()
        return f"blocks.{index}.{_BLOCK_PARTS[part]}.{leaf}"
    return None


def convert_stgcn_state_dict(state_dict: dict[str, Tensor], prefix: str | None = None,
                             strict: bool = True) -> dict[str, Tensor]:
    """Original-layout ST-GCN state dict -> one that ``skelcl.models.STGCN.load_state_dict`` accepts.

    ``prefix`` (e.g. ``"encoder_q."``) selects the encoder inside a larger checkpoint; by default it
    is found from the position of ``data_bn.weight``. Keys outside the prefix are dropped. A key
    inside it that is not part of ST-GCN raises ValueError, or is dropped with ``strict=False``.
    1x1 convolution weights (graph conv, residual, ``fcn`` head) lose their trailing (1, 1).
    A checkpoint already in skelcl's layout passes through (prefix removed).
    """
    if not isinstance(state_dict, dict):
        raise ValueError(f"state_dict must be a dict of tensors, got {type(state_dict).__name__}")
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]  # a training checkpoint wrapping the weights
    if prefix is None:
        prefix = _detect_prefix(state_dict.keys())
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix):]
        new = key if key.startswith(("blocks.", "head.")) else _new_key(key)
        if new is None:
            unknown.append(key)
            continue
        if new.endswith(_SQUEEZED) and value.dim() == 4:
            if value.shape[2:] != (1, 1):
                raise ValueError(
                    f"state_dict[{prefix + key!r}] must be a 1x1 convolution, got {tuple(value.shape)}")
            value = value.flatten(1)
        out[new] = value
    if unknown and strict:
        raise ValueError(f"state_dict has keys that are not part of ST-GCN under prefix {prefix!r}: "
                         f"{unknown[:8]} (pass strict=False to drop them)")
    if not out:
        raise ValueError(f"state_dict has no ST-GCN keys under prefix {prefix!r}")
    return out
