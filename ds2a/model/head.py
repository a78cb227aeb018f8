"""Mask2Former prediction head: class logits and mask logits from (normalised) query features."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class PredictionHead(nn.Module):
    """cls = Linear(q); masks = MLP(q) . pixel embeddings (the official einsum 'bqc,bchw->bqhw').

    K+1 classes (the last is "no object"). The einsum is written as a batched matmul, which
    exports to a plain ONNX MatMul that every TensorRT version handles.
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_embed = nn.Linear(dim, num_classes + 1)
        self.mask_embed = nn.Sequential(
            nn.Linear(dim, dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim), nn.ReLU(inplace=True),
            nn.Linear(dim, dim))

    def forward(self, q: Tensor, mask_features: Tensor) -> tuple[Tensor, Tensor]:
        """q (B, Q, C) already post-normed; mask_features (B, C, H, W) -> (B, Q, K+1), (B, Q, H, W)."""
        b, c, h, w = mask_features.shape
        masks = torch.matmul(self.mask_embed(q), mask_features.reshape(b, c, h * w))
        return self.cls_embed(q), masks.reshape(b, -1, h, w)
