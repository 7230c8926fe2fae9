"""Test configuration shared by every test module.

Triton kernels run on CUDA when a GPU is present; otherwise they run on CPU tensors through
Triton's interpreter, which must be switched on before any ``@triton.jit`` function is defined,
so it is set here, before the tests import skelcl.kernels.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = importlib.util.find_spec("triton") is not None
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    skip_triton = pytest.mark.skip(reason="triton is not installed")
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "triton" in item.keywords and not HAS_TRITON:
            item.add_marker(skip_triton)
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture
def triton_device() -> str:
    """Device on which Triton kernels run here: 'cuda', or 'cpu' through the interpreter."""
    if not HAS_TRITON:
        pytest.skip("triton is not installed")
    return "cuda" if HAS_CUDA else "cpu"


@pytest.fixture
def fresh_python():
    """Runs a Python program in a new process with this checkout importable (for what must happen
    before anything is loaded, such as a first call inside torch.compile); a non-zero exit fails the
    test with the program's stderr."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = os.environ | {"PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}

    def run(program: str, timeout: float = 300) -> None:
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, env=env,
                              timeout=timeout)
        assert done.returncode == 0, done.stderr[-3000:]

    return run


@pytest.fixture
def rng() -> torch.Generator:
    """A fresh, seeded CPU generator per test, so every failure can be replayed."""
    return torch.Generator().manual_seed(1234)


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill ``t`` with NaN so that any element a kernel forgets to write fails the comparison."""
    return t.fill_(float("nan"))
