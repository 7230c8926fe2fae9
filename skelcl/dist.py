"""Small torch.distributed helpers: process-group setup from torchrun, and synchronised BN.

Batch-norm statistics must be global in contrastive training (per-device statistics let the two
views of a sequence recognise each other through the batch). On CUDA, torch's SyncBatchNorm does
this; it refuses CPU tensors, so ``GlooSyncBatchNorm`` does the same with all-reduces that work
on any backend (gloo included), which is what CPU runs and the tests use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistInfo",
    "init_distributed",
    "is_main_process",
    "barrier",
    "wait_for_all",
    "cleanup",
    "convert_sync_batchnorm",
    "GlooSyncBatchNorm",
]


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    NCCL when CUDA is available, gloo otherwise (or ``backend``). Outside torchrun (no WORLD_SIZE,
    or 1) no group is created and a single-process DistInfo is returned.
    """
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} and WORLD_SIZE={world} do not describe a process group")
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"), rank=rank, world_size=world)
    if world > 1 and not _WAIT_GROUP:
        # created now, by every rank together; wait_for_all's barrier runs on it
        _WAIT_GROUP.append(dist.new_group(backend="gloo", timeout=_WAIT_TIMEOUT))
    return DistInfo(rank, world, local_rank, device, rank == 0)


# A gloo group of its own for wait_for_all, so that the default group keeps its collective timeout
# (30 min for gloo, 10 for NCCL), which is what catches a rank that hangs.
_WAIT_GROUP: list = []
_WAIT_TIMEOUT = timedelta(days=1)


def wait_for_all() -> None:
    """A barrier that outlasts long work on one rank (the main process's evaluation at the end of a
    run, which on CPU and NTU-sized data can exceed the default group's timeout). A process that
    left without it could abort in gloo's teardown while its peer still runs."""
    if _WAIT_GROUP and dist.is_available() and dist.is_initialized():
        dist.barrier(group=_WAIT_GROUP[0])


def is_main_process() -> bool:
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _WAIT_GROUP.clear()


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over ranks: the gradient of a global sum is the global sum of gradients."""

    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=group)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span every rank of ``process_group``, on any device.

    Per channel, each rank contributes its count, mean and sum of squared deviations from that mean
    (in float32; float64 input stays float64); one all-reduce gathers them, and they combine exactly
    (Chan et al.'s parallel variance) into the global mean and biased variance. The running variance
    gets the unbiased one, as for a single process on the concatenated batch. Unlike a sum of squares
    minus the squared mean, this keeps float32 accurate for channels whose mean is large against their
    spread. Gradients flow through the all-reduce. Outside training (as torch.nn.SyncBatchNorm), or
    without an initialised group, it is plain BN.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True,
                 process_group=None, device=None, dtype=None):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
        self.process_group = process_group

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"input must have at least 2 dimensions (N, C, ...), got {x.dim()}")

    def _momentum(self) -> float:
        if self.momentum is None:  # cumulative moving average
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        # Only in training, as torch.nn.SyncBatchNorm: evaluation (batch statistics or not) stays local,
        # so one rank may evaluate alone.
        synced = self.training and dist.is_available() and dist.is_initialized() and \
            dist.get_world_size(self.process_group) > 1
        if not synced:
            return super().forward(x)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        c = x.shape[1]
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        flat = x.transpose(0, 1).reshape(c, -1).to(acc)  # (C, everything else)
        n_local = flat.shape[1]
        mean_local = flat.sum(dim=1) / max(n_local, 1)  # zeros for an empty part
        m2_local = (flat - mean_local[:, None]).square().sum(dim=1)
        # Each rank fills its own row; the all-reduce (a sum) then gathers every rank's row.
        world, rank = dist.get_world_size(self.process_group), dist.get_rank(self.process_group)
        row = torch.cat([torch.full((1,), n_local, dtype=acc, device=x.device), mean_local, m2_local])
        rows = _AllReduceSum.apply(
            torch.cat([torch.zeros(rank * row.numel(), dtype=acc, device=x.device), row,
                       torch.zeros((world - rank - 1) * row.numel(), dtype=acc, device=x.device)]),
            self.process_group).view(world, 2 * c + 1)
        counts, means, m2s = rows[:, :1], rows[:, 1:c + 1], rows[:, c + 1:]
        count = counts.sum()
        if count.item() < 2:
            raise ValueError("GlooSyncBatchNorm needs more than one value per channel across all ranks")
        mean = (counts * means).sum(dim=0) / count
        var = (m2s + counts * (means - mean).square()).sum(dim=0) / count
        if self.track_running_stats:
            m = self._momentum()
            with torch.no_grad():
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * (count / (count - 1))
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        shape = (1, c) + (1,) * (x.dim() - 2)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight.to(acc)
            shift = shift * self.weight.to(acc) + self.bias.to(acc)
        y = x.to(acc) * scale.view(shape) + shift.view(shape)
        return y.to(x.dtype)


def _convert_to_gloo(module: nn.Module, group) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        out = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats, process_group=group)
        out.to(device=module.running_mean.device if module.running_mean is not None else None)
        with torch.no_grad():
            if module.affine:
                out.weight = module.weight
                out.bias = module.bias
            if module.track_running_stats:
                out.running_mean = module.running_mean
                out.running_var = module.running_var
                out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert_to_gloo(child, group))
    return out


def _wants_torch_sync(model: nn.Module, group=None) -> bool:
    if dist.is_available() and dist.is_initialized():
        return dist.get_backend(group) == "nccl"
    return any(t.is_cuda for t in model.parameters()) or any(t.is_cuda for t in model.buffers())


def convert_sync_batchnorm(model: nn.Module, group=None) -> nn.Module:
    """Every BatchNorm*d in ``model`` -> synchronised BN (parameters and statistics kept).

    torch.nn.SyncBatchNorm when the process group is NCCL (or, with no group yet, when the model is
    on CUDA); GlooSyncBatchNorm otherwise. Returns the converted model (the root may be replaced).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
    if _wants_torch_sync(model, group):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    return _convert_to_gloo(model, group)
