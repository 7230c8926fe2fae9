"""BatchNorm2d whose batch statistics stay accurate on channels_last CPU tensors.

PyTorch's CPU batch norm sums a channels_last float32 tensor row by row into one accumulator per
thread and channel, so its mean and variance carry an error that grows with the number of rows
(N*H*W): about 3e-5 relative at 64 x 25 x 50 rows, 30 times that of the contiguous kernel. A ReLU
input that close to zero then switches differently from the exact function, and the gradient of
everything before it moves. In 20 draws of a float32 quarter-width ST-GCN step (N=2, T=50, M=2,
default initialisation), 14 had an input gradient more than 1e-4 (max-relative) away from float64
with PyTorch's statistics and 9 with these: float32 cannot rule such switches out, only make them rarer.

Here the statistics are taken from the same memory viewed as (N, H*W*C): the kernel then reduces
only N rows per column, and the H*W partial means and variances are combined per channel in
float64 (equal counts: the mean of the means; the mean of the variances plus the variance of the
means). The normalisation itself and the backward are PyTorch's own kernels with those statistics.
Everything else (CUDA, contiguous or float64 input, evaluation with running statistics, autocast,
torch.compile) takes ``nn.BatchNorm2d``'s own path. State dicts are those of ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BatchNorm2d", "channels_last_batch_stats"]


def channels_last_batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of a channels_last (N, C, H, W) tensor, in x's dtype."""
    n, c = x.shape[:2]
    wide = x.permute(0, 2, 3, 1).reshape(n, -1)  # (N, H*W*C): a view of the same memory
    col_mean, col_var = torch.batch_norm_update_stats(wide, None, None, 0.0)  # biased variance
    var_of_means, mean = torch.var_mean(col_mean.view(-1, c).double(), dim=0, correction=0)
    var = col_var.view(-1, c).double().mean(0) + var_of_means
    return mean.to(x.dtype), var.to(x.dtype)


class _NormWithStats(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with the batch's own statistics; the backward is
    training-mode batch norm's, so the statistics' dependence on x is part of the gradient."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, var, eps):
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return torch.batch_norm(x, weight, bias, mean, var, False, 0.0, eps, False)

    @staticmethod
    def backward(ctx, grad):
        x, weight, mean, invstd = ctx.saved_tensors
        wanted = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                  ctx.needs_input_grad[2]]
        gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
            grad.contiguous(memory_format=torch.channels_last), x, weight, None, None, mean, invstd, True,
            ctx.eps, wanted)
        return gx, gw, gb, None, None, None


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with accurate batch statistics for channels_last float32 CPU tensors."""

    def _accurate_path(self, x: Tensor) -> bool:
        return (not torch.compiler.is_compiling()  # (the compiler makes its own reductions)
                and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == 4
                and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
                and (self.training or self.running_mean is None)
                and x.shape[0] * x.shape[2] * x.shape[3] > 1  # else nn.BatchNorm2d's own error
                and (self.weight is None or self.weight.dtype == torch.float32)
                and not torch.is_autocast_enabled("cpu"))

    def forward(self, x: Tensor) -> Tensor:
        if not self._accurate_path(x):
            return super().forward(x)
        with torch.no_grad():
            mean, var = channels_last_batch_stats(x.detach())
            if self.training and self.track_running_stats and self.running_mean is not None:
                self._update_running_stats(mean, var, x.numel() // x.shape[1])
        return _NormWithStats.apply(x, self.weight, self.bias, mean, var, self.eps)

    def _update_running_stats(self, mean: Tensor, var: Tensor, count: int) -> None:
        """As nn.BatchNorm2d: an exponential (or, with momentum None, cumulative) average, the
        variance unbiased."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(var * (count / (count - 1)), factor)
