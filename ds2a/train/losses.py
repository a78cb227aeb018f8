"""Mask2Former set loss: class CE (no-object weight 0.1) + point-sampled mask BCE and Dice,
applied to every prediction head (deep supervision), each head matched on its own."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from .matcher import MatchCosts, hungarian_match
from .points import point_sample, uncertain_point_coords

Target = Tuple[torch.Tensor, torch.Tensor]  # labels (N,), masks (N, H, W)
Output = Tuple[torch.Tensor, torch.Tensor]  # cls logits (B, Q, K+1), mask logits (B, Q, h, w)


@dataclass
class LossConfig:
    num_classes: int
    cls_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    no_object_weight: float = 0.1
    num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    costs: MatchCosts = field(default_factory=MatchCosts)


def dice_loss(pred_logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """(M, P) logits and targets -> (M,) naive Dice loss per mask (mmdet DiceLoss, eps 1)."""
    p = pred_logits.sigmoid()
    num = 2 * (p * targets).sum(-1)
    den = p.sum(-1) + targets.sum(-1)
    return 1 - (num + eps) / (den + eps)


def _global_mean_count(count: int, device: torch.device, distributed: bool) -> float:
    """Number of target masks averaged over DDP ranks (mmdet's reduce_mean), at least 1."""
    t = torch.tensor(float(count), device=device)
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
        t = t / torch.distributed.get_world_size()
    return max(float(t.item()), 1.0)


class SetCriterion:
    """Callable: (list of head outputs, per-image targets) -> dict of losses with 'loss' the total."""

    def __init__(self, cfg: LossConfig, distributed: bool = True) -> None:
        self.cfg = cfg
        self.distributed = distributed  # average the mask count over DDP ranks when a group is up

    def single_head(self, cls_logits: torch.Tensor, mask_logits: torch.Tensor, targets: Sequence[Target],
                    num_masks: float) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        cls_logits, mask_logits = cls_logits.float(), mask_logits.float()
        b, q = cls_logits.shape[:2]
        labels = torch.full((b, q), cfg.num_classes, dtype=torch.int64, device=cls_logits.device)
        pred_masks, gt_masks = [], []
        for i, (gt_labels, gt_m) in enumerate(targets):
            qi, gi = hungarian_match(cls_logits[i], mask_logits[i], gt_labels, gt_m, cfg.costs)
            labels[i, qi] = gt_labels[gi]
            pred_masks.append(mask_logits[i, qi])
            gt_masks.append(gt_m[gi])
        class_weight = torch.ones(cfg.num_classes + 1, device=cls_logits.device)
        class_weight[-1] = cfg.no_object_weight
        loss_cls = F.cross_entropy(cls_logits.flatten(0, 1), labels.flatten(), weight=class_weight)
        preds = torch.cat(pred_masks)
        if preds.shape[0] == 0:
            zero = mask_logits.sum() * 0.0
            return {"loss_cls": cfg.cls_weight * loss_cls, "loss_mask": zero, "loss_dice": zero}
        gts = torch.cat(gt_masks).to(preds.dtype)
        coords = uncertain_point_coords(preds.unsqueeze(1), cfg.num_points, cfg.oversample_ratio,
                                        cfg.importance_sample_ratio)
        pred_pts = point_sample(preds.unsqueeze(1), coords).squeeze(1)
        with torch.no_grad():
            gt_pts = point_sample(gts.unsqueeze(1), coords).squeeze(1)
        loss_mask = F.binary_cross_entropy_with_logits(pred_pts, gt_pts, reduction="sum") / (num_masks * cfg.num_points)
        loss_dice = dice_loss(pred_pts, gt_pts).sum() / num_masks
        return {"loss_cls": cfg.cls_weight * loss_cls, "loss_mask": cfg.mask_weight * loss_mask,
                "loss_dice": cfg.dice_weight * loss_dice}

    def __call__(self, outputs: List[Output], targets: Sequence[Target]) -> Dict[str, torch.Tensor]:
        num_masks = _global_mean_count(sum(int(t[0].numel()) for t in targets), outputs[-1][0].device,
                                       self.distributed)
        losses: Dict[str, torch.Tensor] = {}
        total = outputs[-1][0].new_zeros(())
        for k, (cls_logits, mask_logits) in enumerate(outputs):
            head = self.single_head(cls_logits, mask_logits, targets, num_masks)
            for name, value in head.items():
                total = total + value
                if k == len(outputs) - 1:  # the last head's parts are what is worth logging
                    losses[name] = value.detach()
        losses["loss"] = total
        return losses
