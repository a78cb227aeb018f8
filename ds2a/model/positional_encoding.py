"""Normalised 2-D sine positional encoding (DETR / mmdet `SinePositionalEncoding`, no padding mask)."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def sine_position_encoding(height: int, width: int, num_feats: int, like: Tensor,
                           temperature: float = 10000.0, eps: float = 1e-6) -> Tensor:
    """(1, 2*num_feats, H, W): y features first, then x; each interleaves sin/cos.

    Coordinates are 1..H (1..W) divided by (H + eps) and scaled by 2*pi, as mmdet does with
    `normalize=True` for an all-valid mask. Computed in float32, then cast to `like`'s dtype.
    """
    device = like.device
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * (2 * math.pi)  # same float32 op order as mmdet
    x = x / (x[-1:] + eps) * (2 * math.pi)
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / num_feats)
    pos_y = y[:, None] / dim_t  # (H, F)
    pos_x = x[:, None] / dim_t  # (W, F)
    pos_y = torch.stack((pos_y[:, 0::2].sin(), pos_y[:, 1::2].cos()), dim=2).reshape(height, num_feats)
    pos_x = torch.stack((pos_x[:, 0::2].sin(), pos_x[:, 1::2].cos()), dim=2).reshape(width, num_feats)
    pos = torch.cat((pos_y[:, None, :].expand(height, width, num_feats),
                     pos_x[None, :, :].expand(height, width, num_feats)), dim=2)
    return pos.permute(2, 0, 1).unsqueeze(0).to(like.dtype)
