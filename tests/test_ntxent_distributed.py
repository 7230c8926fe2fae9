"""NT-Xent across 2 gloo ranks on CPU: loss and gradients equal one process on the whole batch."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from skelcl import reference as ref

pytestmark = pytest.mark.distributed

WORLD = 2
N_PER_RANK = 5
DIM = 24
TAU = 0.1


def _global_batch(dtype):
    g = torch.Generator().manual_seed(99)
    z1 = torch.randn(WORLD * N_PER_RANK, DIM, generator=g, dtype=torch.float64).to(dtype)
    z2 = torch.randn(WORLD * N_PER_RANK, DIM, generator=g, dtype=torch.float64).to(dtype)
    return z1, z2


def _worker(rank, init_file, cases):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for backend, dtype, tol, allow_tf32 in cases:
            _check_rank(rank, backend, dtype, tol, allow_tf32)
        _check_mismatches_raise_on_every_rank(rank)
    finally:
        dist.destroy_process_group()


def _check_rank(rank, backend, dtype, tol, allow_tf32):
    from skelcl.ops import NonFiniteInputError, ntxent_loss

    z1, z2 = _global_batch(dtype)
    a = z1.double().requires_grad_()
    b = z2.double().requires_grad_()
    want = ref.ntxent_loss(a, b, TAU)
    want.backward()

    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    l1 = z1[rows].clone().requires_grad_()
    l2 = z2[rows].clone().requires_grad_()
    loss = ntxent_loss(l1, l2, TAU, backend=backend, allow_tf32=allow_tf32)  # the default group: WORLD
    loss.backward()
    scale = a.grad.abs().max().item()
    assert abs(loss.double().item() - want.item()) <= tol * max(want.item(), 1.0), (backend, dtype)
    assert (l1.grad.double() - a.grad[rows]).abs().max().item() <= tol * scale
    assert (l2.grad.double() - b.grad[rows]).abs().max().item() <= tol * scale

    # Bad input on one rank only: every rank raises instead of hanging in a collective.
    bad = z1[rows].clone()
    if rank == 1:
        bad[0, 0] = float("nan")
    try:
        ntxent_loss(bad, z2[rows], TAU, backend=backend)
    except NonFiniteInputError as err:
        assert "NaN or Inf" in str(err)
    else:
        raise AssertionError("NaN on rank 1 was not reported")
    # Unchecked: no rank raises, and the global loss is NaN on every rank, the clean one included.
    assert torch.isnan(ntxent_loss(bad, z2[rows], TAU, backend=backend, check_finite=False))


def _check_mismatches_raise_on_every_rank(rank):
    """Ranks that disagree on what must be shared all raise the same clear error (no hang, no abort
    inside a collective): rank 1 passes another D, dtype, temperature or an empty batch."""
    from skelcl.ops import ntxent_loss

    def ok():
        return torch.randn(3, 8), torch.randn(3, 8)

    cases = [((torch.randn(3, 6), torch.randn(3, 6)), {}, r"feature size D on every rank, got \[8, 6\]"),
             ((torch.randn(3, 8).double(), torch.randn(3, 8).double()), {}, "same dtype"),
             (ok(), {"temperature": 0.5}, r"temperature on every rank, got \[0.1, 0.5\]"),
             ((torch.randn(0, 8), torch.randn(0, 8)), {}, r"batch size N on every rank, got \[3, 0\]")]
    for theirs, kwargs, match in cases:
        z1, z2 = ok() if rank == 0 else theirs
        settings = {"temperature": 0.1, "backend": "cpu"} | (kwargs if rank == 1 else {})
        with pytest.raises(ValueError, match=match):
            ntxent_loss(z1, z2, **settings)
    with pytest.raises(ValueError, match="empty batch .* on every rank"):
        ntxent_loss(torch.randn(0, 8), torch.randn(0, 8), backend="cpu")


def test_two_ranks_equal_one_process(tmp_path):
    # One spawn for every case: starting the ranks costs more than the checks.
    cases = [("cpu", torch.float32, 2e-5, True), ("cpu", torch.bfloat16, 3e-2, True)]
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") == "1":
        # The interpreter setting reaches the ranks. With tf32 allowed, float32 rows are multiplied
        # as float16 (tf32's mantissa) and gathered as such; without, exactly.
        cases += [("triton", torch.float32, 2e-5, False), ("triton", torch.float32, 2e-3, True),
                  ("triton", torch.bfloat16, 3e-2, True)]
    mp.spawn(_worker, args=(str(tmp_path / "dist_init"), cases), nprocs=WORLD, join=True)
