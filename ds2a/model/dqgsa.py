"""DQGSA, dual query gated spatial attention: replaces query self-attention in every decoder layer.

The Q queries are laid out as a sqrt(Q) x sqrt(Q) grid (query i at row i // side, col i % side).
x1 = the layer input (projected by a 3x3 conv), x2 = the cross-attended queries. A distance
gate mixes them, a CBAM-style spatial attention on the mix reweights x1, and a ConvNeXt-style
MLP with layer scale (gamma, init 1e-6) adds the result to x2.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .dssca import channel_mean_max


class DQGSA(nn.Module):
    def __init__(self, dim: int, side: int, kernel: int = 7, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dim, self.side = dim, side
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, bias=False)  # on x1
        self.dist_conv = nn.Conv2d(1, 1, 3, 1, 1, bias=False)  # on ||x2 - x1||
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))
        self.smooth = 0.5
        self.eps = 1e-8

    def _grid(self, q: Tensor) -> Tensor:
        return q.transpose(1, 2).reshape(q.shape[0], self.dim, self.side, self.side)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        """x1, x2 (B, Q, C) -> (B, Q, C)."""
        g1 = self.proj(self._grid(x1))
        g2 = self._grid(x2)
        dist = torch.linalg.vector_norm(g2 - g1, dim=1, keepdim=True) + self.eps
        w = torch.sigmoid(self.dist_conv(dist) * self.smooth)
        mixed = w * g1 + (1 - w) * g2
        y = torch.sigmoid(self.spatial(channel_mean_max(mixed))) * g1
        y = y.permute(0, 2, 3, 1)  # (B, side, side, C)
        y = self.gamma * self.fc2(self.act(self.fc1(self.norm(y))))
        out = y.permute(0, 3, 1, 2) + g2  # official drop_path is 0: a plain residual
        return out.permute(0, 2, 3, 1).reshape(x2.shape[0], -1, self.dim)
