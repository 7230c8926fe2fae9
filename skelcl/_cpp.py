"""Builds the C++ CPU kernels in ``csrc/`` on first use (torch.utils.cpp_extension + ninja).

Builds are cached by torch in ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``),
so the ~20 s compile happens once per machine and source version, not per process.
"""

from __future__ import annotations

import functools
import os
import warnings

__all__ = ["csrc_dir", "load_extension"]


def csrc_dir() -> str:
    """Folder holding the C++ sources: ``skelcl/csrc`` when installed, ``../csrc`` in a checkout."""
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "csrc"), os.path.join(os.path.dirname(here), "csrc")):
        if os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError("skelcl's C++ sources (csrc/) were not found next to the package")


@functools.cache
def load_extension(name: str, sources: tuple[str, ...]):
    """Compile (or fetch from the cache) the extension ``name`` from ``sources`` in csrc/.

    Returns the loaded module, or None after one warning when no compiler or ninja is available;
    callers then fall back to the plain-PyTorch path. The ops register themselves with
    torch.library (``TORCH_LIBRARY``), so after loading they are reachable as ``torch.ops.skelcl.*``.
    """
    from torch.utils import cpp_extension

    if os.environ.get("SKELCL_NO_CPP") == "1":
        return None
    paths = [os.path.join(csrc_dir(), s) for s in sources]
    flags = ["-O3", "-fopenmp"]
    if os.environ.get("SKELCL_NATIVE") == "1":
        flags.append("-march=native")
    try:
        return cpp_extension.load(
            name=name,
            sources=paths,
            extra_cflags=flags,
            extra_ldflags=["-fopenmp"],
            is_python_module=False,
            verbose=os.environ.get("SKELCL_VERBOSE_BUILD") == "1",
        )
    except Exception as err:  # no compiler, no ninja, or a broken toolchain
        warnings.warn(
            f"skelcl: could not build the C++ extension {name!r} ({type(err).__name__}: {err}); "
            "falling back to the plain-PyTorch implementation, which is slower.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
