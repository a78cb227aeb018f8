"""DSSCA, dual scale spatial cross attention: a coarse map, upsampled, gated by the fine map's spatial attention.

out = fine + ConvTranspose(coarse) * sigmoid(Conv_k([mean_c(fine), max_c(fine)])).
Three run in a cascade after the pixel decoder (strides 32->16, 16->8, 8->4).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def channel_mean_max(x: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, 2, H, W): channel mean and channel max, the CBAM spatial descriptor."""
    return torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)


class DSSCA(nn.Module):
    def __init__(self, dim: int = 256, kernel: int = 7) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(dim, dim, 3, stride=2, padding=1, output_padding=1)
        self.spatial = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, coarse: Tensor, fine: Tensor) -> Tensor:
        """coarse (B, C, h, w), fine (B, C, 2h, 2w) -> (B, C, 2h, 2w)."""
        gate = torch.sigmoid(self.spatial(channel_mean_max(fine)))
        return fine + self.up(coarse) * gate
