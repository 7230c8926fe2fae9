"""Triton kernels of skelcl, installed as ``skelcl.kernels``.

Only kernels and their launch helpers live here: no nn.Modules and no training logic. The public,
dispatching entry points are in ``skelcl.ops``. Modules import triton at import time, so import
them lazily (``from skelcl.kernels import ntxent``) where triton may be missing.
"""

import os as _os


def check_interpreter() -> None:
    """Raise a clear error for the one known bad pairing under ``TRITON_INTERPRET=1``: triton 3.6's
    interpreter passes one-element arrays where Python ints are needed (loop bounds), which NumPy 2.4
    refuses. Triton 3.7 and later, or NumPy < 2.4, work."""
    if _os.environ.get("TRITON_INTERPRET") != "1":
        return
    import numpy
    import triton

    def version(text: str) -> tuple[int, int]:
        major, minor = text.split(".")[:2]
        return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)

    if version(triton.__version__) < (3, 7) and version(numpy.__version__) >= (2, 4):
        raise RuntimeError(
            f"TRITON_INTERPRET=1 with triton {triton.__version__} needs NumPy < 2.4 (found "
            f"{numpy.__version__}): its interpreter passes one-element arrays where Python ints are "
            "needed. Install 'numpy<2.4' or triton >= 3.7.")


def on_device(t):
    """A context making ``t``'s CUDA device the current one: Triton launches on the current device,
    not on its arguments'. A no-op for CPU tensors (the interpreter) and while torch.compile traces
    (compiled code sets its own device)."""
    import contextlib

    import torch

    if t.is_cuda and not torch.compiler.is_compiling():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def capturing(t) -> bool:
    """True while ``t``'s CUDA stream is being captured into a CUDA graph, where nothing may be read
    back to the host (input checks that sync are skipped then). False for CPU tensors and while
    torch.compile traces: dynamo cannot trace the query, and compiled code does not run the checks."""
    import torch

    return t.is_cuda and not torch.compiler.is_compiling() and torch.cuda.is_current_stream_capturing()
