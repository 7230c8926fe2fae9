"""Public, dispatching ops: one name each, several backends behind it.

``backend="auto"`` picks the Triton kernel for CUDA tensors and the CPU implementation for CPU
tensors (the C++ kernel of view_augment; NT-Xent's chunked PyTorch, which never builds the 2N x 2N
matrix); ``"triton"``, ``"cpu"`` and ``"torch"`` (the plain-PyTorch reference) force one.

    from skelcl.ops import ntxent_loss, view_augment, two_views
"""

from __future__ import annotations

import importlib

# Submodules load on first use, so importing skelcl.ops does not import triton or build C++.
_EXPORTS = {
    "view_augment": "skelcl.ops.augment",
    "two_views": "skelcl.ops.augment",
    "ntxent_loss": "skelcl.ops.ntxent",
    "NonFiniteInputError": "skelcl.ops.ntxent",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'skelcl.ops' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
