"""Hungarian matching of predicted queries to ground-truth masks (Mask2Former costs).

Cost = 2 * (-p(class)) + 5 * pairwise mask BCE + 5 * pairwise Dice, the masks compared on
the same random points for every pair; SciPy's linear_sum_assignment finds the optimum.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from .points import point_sample


@dataclass
class MatchCosts:
    cls: float = 2.0
    mask: float = 5.0
    dice: float = 5.0
    num_points: int = 12544


def pairwise_bce(pred_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(Q, P) logits, (N, P) binary targets -> (Q, N) mean BCE of every pair."""
    pos = F.binary_cross_entropy_with_logits(pred_logits, torch.ones_like(pred_logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(pred_logits, torch.zeros_like(pred_logits), reduction="none")
    return (pos @ targets.T + neg @ (1 - targets).T) / pred_logits.shape[1]


def pairwise_dice(pred_logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(Q, P) logits, (N, P) binary targets -> (Q, N) 1 - Dice (naive Dice, eps 1, as mmdet's DiceCost)."""
    p = pred_logits.sigmoid()
    num = 2 * p @ targets.T
    den = p.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (num + eps) / (den + eps)


def cost_matrix(
    cls_logits: torch.Tensor, mask_logits: torch.Tensor, gt_labels: torch.Tensor, gt_masks: torch.Tensor,
    costs: Optional[MatchCosts] = None,
) -> torch.Tensor:
    """(Q, K+1), (Q, h, w), (N,), (N, H, W) -> (Q, N) matching cost for one image."""
    costs = costs or MatchCosts()
    q, n = cls_logits.shape[0], gt_labels.shape[0]
    cost_cls = -cls_logits.softmax(-1)[:, gt_labels]
    coords = torch.rand(1, costs.num_points, 2, device=mask_logits.device)
    pred_pts = point_sample(mask_logits.unsqueeze(1), coords.expand(q, -1, -1)).squeeze(1)
    gt_pts = point_sample(gt_masks.unsqueeze(1).to(pred_pts.dtype), coords.expand(n, -1, -1)).squeeze(1)
    return (costs.cls * cost_cls + costs.mask * pairwise_bce(pred_pts, gt_pts)
            + costs.dice * pairwise_dice(pred_pts, gt_pts))


@torch.no_grad()
def hungarian_match(
    cls_logits: torch.Tensor, mask_logits: torch.Tensor, gt_labels: torch.Tensor, gt_masks: torch.Tensor,
    costs: Optional[MatchCosts] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Optimal one-to-one assignment for one image -> (query indices, gt indices), sorted by query."""
    if gt_labels.numel() == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=cls_logits.device)
        return empty, empty
    cost = cost_matrix(cls_logits.float(), mask_logits.float(), gt_labels, gt_masks, costs)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    dev = cls_logits.device
    return torch.as_tensor(rows, dtype=torch.int64, device=dev), torch.as_tensor(cols, dtype=torch.int64, device=dev)
