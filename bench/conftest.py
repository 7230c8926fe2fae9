"""Benchmark configuration: ``pytest bench --benchmark-only``.

Triton kernels are only benchmarked on CUDA (the interpreter would measure NumPy, not the kernel).
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # bench-local helper modules

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device")
