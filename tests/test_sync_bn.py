"""Synchronised BN across 2 gloo ranks equals one process on the concatenated batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from skelcl.dist import DistInfo, GlooSyncBatchNorm, convert_sync_batchnorm, init_distributed, is_main_process
from skelcl.models import STGCN

WORLD = 2


def _model():
    torch.manual_seed(7)
    model = STGCN(widths=(4, 6), num_classes=3).double()
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for name, t in model.state_dict().items():
            if t.is_floating_point() and name != "A":
                t.add_(torch.rand(t.shape, dtype=t.dtype) * 0.5)
    return model


def _data():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, 7, 25, 2, generator=g, dtype=torch.float64)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64)
    return x, w


def _run(model, x, w):
    x = x.clone().requires_grad_()
    out = model(x)
    (out * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return out.detach(), x.grad, grads, {k: v.clone() for k, v in model.state_dict().items()}


def _worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = init_distributed()
    assert info.world_size == WORLD and info.rank == rank and info.is_main == (rank == 0)
    assert is_main_process() == (rank == 0)
    model = convert_sync_batchnorm(_model())
    assert isinstance(model.data_bn, GlooSyncBatchNorm)
    x, w = _data()
    part = slice(rank * 3, rank * 3 + 3)
    torch.save(_run(model.train(), x[part], w[part]), os.path.join(out_dir, f"rank{rank}.pt"))
    _check_float32_with_large_means(rank)
    _check_evaluation_stays_local(rank)
    dist.barrier()
    dist.destroy_process_group()


def _check_float32_with_large_means(rank):
    """float32 channels whose mean is 10-1000x their spread (unequal parts per rank): the combined
    statistics stay as accurate as one float32 process (a sum of squares minus the squared mean
    lost 3e-2 of the output at 500x)."""
    g = torch.Generator().manual_seed(5)
    scale = torch.tensor([10.0, 100.0, 1000.0], dtype=torch.float64).view(1, 3, 1)
    x = torch.randn(7, 3, 11, generator=g, dtype=torch.float64) + scale
    want = torch.nn.functional.batch_norm(x, None, None, training=True)  # float64, one process
    part = slice(0, 3) if rank == 0 else slice(3, 7)
    bn = GlooSyncBatchNorm(3, affine=False)
    got = bn.train()(x[part].float())
    error = (got.double() - want[part]).abs().max().item()
    assert error < 2e-4, f"rank {rank}: max abs error {error:.2e}"
    unbiased = x.transpose(0, 1).reshape(3, -1).var(dim=1)
    torch.testing.assert_close(bn.running_var.double(), 0.9 + 0.1 * unbiased, rtol=1e-5, atol=0)


def _check_evaluation_stays_local(rank):
    """In evaluation (here with batch statistics: track_running_stats=False) nothing is synchronised,
    as with torch.nn.SyncBatchNorm: each rank normalises its own batch, and may do so alone."""
    bn = GlooSyncBatchNorm(2, track_running_stats=False).eval()
    x = torch.randn(3 + rank, 2, 5, generator=torch.Generator().manual_seed(rank))
    torch.testing.assert_close(bn(x), torch.nn.functional.batch_norm(x, None, None, training=True))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_gloo_ranks_match_one_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    x, w = _data()
    out, gx, grads, state = _run(_model().train(), x, w)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    torch.testing.assert_close(torch.cat([r[0] for r in ranks]), out, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(torch.cat([r[1] for r in ranks]), gx, rtol=1e-8, atol=1e-10)
    for name, g in grads.items():  # per-rank parameter gradients sum to the single-process ones
        torch.testing.assert_close(sum(r[2][name] for r in ranks), g, rtol=1e-8, atol=1e-10, msg=name)
    for name, v in state.items():  # running statistics are identical on every rank
        for r in ranks:
            torch.testing.assert_close(r[3][name], v, rtol=1e-9, atol=1e-12, msg=name)


def test_single_process_is_plain_batchnorm():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(5)
    bn.weight.data.uniform_(0.5, 1.5)
    sync = convert_sync_batchnorm(torch.nn.Sequential(bn))[0]
    assert isinstance(sync, GlooSyncBatchNorm) and sync.weight is bn.weight
    x = torch.randn(4, 5, 3, 2)
    ref = torch.nn.BatchNorm2d(5)
    ref.load_state_dict(bn.state_dict())
    torch.testing.assert_close(sync(x), ref(x))
    with pytest.raises(ValueError, match="model"):
        convert_sync_batchnorm("not a model")
    with pytest.raises(ValueError, match="dimensions"):
        sync(torch.randn(5))


def test_init_distributed_without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed()
    assert info == DistInfo(0, 1, 0, info.device, True)
    assert is_main_process() and not dist.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_distributed()
