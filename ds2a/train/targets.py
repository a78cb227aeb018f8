"""Semantic label maps -> per-class instance targets, as mmseg's Mask2FormerHead builds them.

A semantic map becomes one "instance" per class present (ignore pixels belong to none),
so the set-prediction losses can match queries to classes.
"""
from __future__ import annotations

from typing import List, Tuple

import torch

IGNORE_INDEX = 255


def semantic_to_instances(mask: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> Tuple[torch.Tensor, torch.Tensor]:
    """(H, W) integer map -> labels (N,) int64 and binary masks (N, H, W) float, N = classes present."""
    classes = torch.unique(mask)
    classes = classes[classes != ignore_index]
    labels = classes.to(torch.int64)
    masks = (mask.unsqueeze(0) == classes.view(-1, 1, 1)).float()
    return labels, masks


def batch_targets(masks: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """(B, H, W) label maps -> one (labels, masks) pair per image."""
    return [semantic_to_instances(m, ignore_index) for m in masks]
