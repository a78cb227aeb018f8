"""Point sampling for mask losses (PointRend / Mask2Former): score masks on a few thousand
points instead of every pixel, picking mostly the points where the prediction is uncertain."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def point_sample(inputs: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear values of (N, C, H, W) maps at (N, P, 2) points given as (x, y) in [0, 1] -> (N, C, P)."""
    grid = 2.0 * coords.unsqueeze(2) - 1.0
    return F.grid_sample(inputs, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


@torch.no_grad()
def uncertain_point_coords(
    mask_logits: torch.Tensor,
    num_points: int = 12544,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> torch.Tensor:
    """(N, 1, H, W) logits -> (N, P, 2) points: the most uncertain of P*oversample random points
    (|logit| smallest) make up `importance_sample_ratio` of them, the rest are uniform random."""
    n = mask_logits.shape[0]
    device = mask_logits.device
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(n, num_sampled, 2, device=device)
    uncertainty = -point_sample(mask_logits, coords).abs()[:, 0, :]
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    idx = torch.topk(uncertainty, k=num_uncertain, dim=1).indices
    picked = torch.gather(coords, 1, idx.unsqueeze(-1).expand(-1, -1, 2))
    if num_random > 0:
        picked = torch.cat([picked, torch.rand(n, num_random, 2, device=device)], dim=1)
    return picked
