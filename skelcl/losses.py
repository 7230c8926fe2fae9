"""Loss modules: thin nn.Module wrappers around the fused ops in ``skelcl.ops``."""

from __future__ import annotations

from torch import Tensor, nn

from skelcl.ops.ntxent import ntxent_loss

__all__ = ["NTXentLoss"]


class NTXentLoss(nn.Module):
    """NT-Xent (paper Eq. 4-5) of two views' projections; see ``skelcl.ops.ntxent_loss``.

    ``NTXentLoss(temperature=0.1, **kw)``: kw are ntxent_loss's keyword options (normalize, backend,
    group, allow_tf32, deterministic). ``forward(z1, z2)`` returns the scalar loss.
    """

    def __init__(self, temperature: float = 0.1, **kw) -> None:
        super().__init__()
        self.temperature = temperature
        self.options = kw

    def forward(self, z1: Tensor, z2: Tensor) -> Tensor:
        return ntxent_loss(z1, z2, self.temperature, **self.options)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"temperature={self.temperature}{opts}"
