"""Multi-scale deformable attention (Deformable DETR) in pure PyTorch via `grid_sample`.

Same arithmetic as mmcv's CPU path (`multi_scale_deformable_attn_pytorch`): bilinear
sampling, zero padding, align_corners=False. Spatial shapes are plain Python ints so the
module traces/exports to ONNX (GridSample, opset >= 16) without dynamic shape tensors.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def deformable_sample(value: Tensor, shapes: Sequence[tuple[int, int]], locations: Tensor, weights: Tensor) -> Tensor:
    """Weighted sum of bilinear samples.

    value (B, N, heads, d) over the concatenated levels; locations (B, Q, heads, L, P, 2) as
    (x, y) in [0, 1]; weights (B, Q, heads, L, P). Returns (B, Q, heads * d).
    """
    b, _, heads, d = value.shape
    _, q, _, levels, points, _ = locations.shape
    values = value.split([h * w for h, w in shapes], dim=1)
    grids = 2 * locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (B, h*w, heads, d) -> (B*heads, d, h, w)
        v = values[lvl].flatten(2).transpose(1, 2).reshape(b * heads, d, h, w)
        # (B, Q, heads, P, 2) -> (B*heads, Q, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (B*heads, d, Q, L*P) * (B*heads, 1, Q, L*P) -> (B*heads, d, Q)
    attn = weights.transpose(1, 2).reshape(b * heads, 1, q, levels * points)
    out = (torch.stack(sampled, dim=-2).flatten(-2) * attn).sum(-1)
    return out.view(b, heads * d, q).transpose(1, 2).contiguous()


class MSDeformAttn(nn.Module):
    """Each query samples `points` locations per head and level around its reference point."""

    def __init__(self, dim: int = 256, heads: int = 8, levels: int = 3, points: int = 4) -> None:
        super().__init__()
        self.dim, self.heads, self.levels, self.points = dim, heads, levels, points
        self.sampling_offsets = nn.Linear(dim, heads * levels * points * 2)
        self.attention_weights = nn.Linear(dim, heads * levels * points)
        self.value_proj = nn.Linear(dim, dim)
        self.output_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable-DETR init: offsets start on a ring (one direction per head), uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.heads, dtype=torch.float32) * (2.0 * math.pi / self.heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.heads, 1, 1, 2)
        grid = grid.repeat(1, self.levels, self.points, 1)
        for i in range(self.points):
            grid[:, :, i, :] *= i + 1
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for lin in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, query: Tensor, query_pos: Tensor | None, value: Tensor,
                reference_points: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        """query/value (B, N, C); reference_points (B, N, levels, 2) normalised (x, y).

        Returns the attention output plus the residual `query` (as mmcv does).
        """
        identity = query
        if query_pos is not None:
            query = query + query_pos
        b, nq, _ = query.shape
        nv = value.shape[1]
        v = self.value_proj(value).view(b, nv, self.heads, -1)
        offsets = self.sampling_offsets(query).view(b, nq, self.heads, self.levels, self.points, 2)
        weights = self.attention_weights(query).view(b, nq, self.heads, self.levels * self.points)
        weights = weights.softmax(-1).view(b, nq, self.heads, self.levels, self.points)
        # offsets are in pixels of each level: normalise by (w, h)
        normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        out = deformable_sample(v, shapes, locations, weights)
        return self.output_proj(out) + identity
