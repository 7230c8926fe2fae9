"""The one known bad pairing of triton and NumPy under TRITON_INTERPRET=1 fails with a clear error."""

import numpy
import pytest

triton = pytest.importorskip("triton")

from skelcl.kernels import check_interpreter  # noqa: E402


@pytest.mark.parametrize("triton_version, numpy_version, bad", [
    ("3.6.0", "2.4.6", True),
    ("3.6.0", "2.3.5", False),
    ("3.7.0", "2.4.6", False),
    ("3.9.0", "2.4.0rc1", False),
    ("3.10.0", "3.0.0", False),
])
def test_triton_36_with_numpy_24_is_refused_by_name(monkeypatch, triton_version, numpy_version, bad):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    if bad:
        with pytest.raises(RuntimeError, match=r"triton 3\.6\.0 needs NumPy < 2\.4 \(found 2\.4\.6\)"):
            check_interpreter()
    else:
        check_interpreter()


def test_compiled_kernels_are_not_checked(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(numpy, "__version__", "2.4.6")
    check_interpreter()


def test_on_device_guards_cuda_tensors_only():
    """Triton launches on the current CUDA device, so the kernels' launchers enter the arguments'
    device first; CPU tensors (the interpreter) need nothing."""
    import contextlib

    import torch
    from skelcl.kernels import on_device

    assert isinstance(on_device(torch.zeros(1)), contextlib.nullcontext)
    if torch.cuda.is_available():
        t = torch.zeros(1, device=f"cuda:{torch.cuda.device_count() - 1}")
        with on_device(t):
            assert torch.cuda.current_device() == t.device.index
