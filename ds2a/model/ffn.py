"""Transformer feed-forward block with its residual (mmcv `FFN`, two layers, ReLU)."""
from __future__ import annotations

from torch import Tensor, nn


class FFN(nn.Module):
    """x + fc2(relu(fc1(x))); dropout is zero in every DS2A config, so there is none."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc2(self.act(self.fc1(x)))
