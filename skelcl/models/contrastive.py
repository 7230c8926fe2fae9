"""Encoder + projection head for contrastive pretraining (SimCLR's ``z = g(f(x))``)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ContrastiveModel"]


class ContrastiveModel(nn.Module):
    """``forward(x)`` -> projection ``z``; ``encode(x)`` -> representation ``h`` used downstream.

    The projection is the paper's two-layer MLP ``Linear -> ReLU -> Linear``; ``hidden`` defaults
    to the encoder's output width. ``encoder`` must expose ``out_dim`` and have no classification
    head: ``encode`` is meant to return pooled features, not logits.
    """

    def __init__(self, encoder: nn.Module, proj_dim: int = 128, hidden: int | None = None):
        super().__init__()
        in_dim = getattr(encoder, "out_dim", None)
        if not isinstance(in_dim, int) or in_dim < 1:
            raise ValueError("encoder must have a positive integer attribute out_dim")
        if getattr(encoder, "head", None) is not None:
            raise ValueError(f"encoder has a classification head ({encoder.head}); build it with "
                             "num_classes=None so that encode() returns features (a checkpoint's head.* "
                             "weights can be dropped before load_state_dict)")
        hidden = in_dim if hidden is None else hidden
        if proj_dim < 1:
            raise ValueError(f"proj_dim must be >= 1, got {proj_dim}")
        if hidden < 1:
            raise ValueError(f"hidden must be >= 1, got {hidden}")
        self.encoder = encoder
        self.projector = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, proj_dim))
        self.proj_dim, self.hidden = proj_dim, hidden

    def encode(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.encoder(x))
