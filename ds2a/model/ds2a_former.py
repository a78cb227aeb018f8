"""DS2A-Former: ResNet -> pixel decoder -> DSSCA cascade -> masked-attention decoder with DQGSA -> masks.

`forward` returns every prediction (for deep supervision); `semantic_logits` is the official
semantic inference on top of the last one.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError
from ..meta import MBSD_CLASSES, ModelMeta
from .backbone import ResNet
from .config import ModelConfig, get_config
from .decoder import Prediction, TransformerDecoder
from .dssca import DSSCA
from .head import PredictionHead
from .pixel_decoder import PixelDecoder


def default_meta(config: ModelConfig) -> ModelMeta:
    """M-BSD names for 4 classes, otherwise background + class1..classK-1."""
    k = config.num_classes
    classes = list(MBSD_CLASSES) if k == len(MBSD_CLASSES) else ["background"] + [f"class{i}" for i in range(1, k)]
    return ModelMeta(arch=config.name, classes=classes[:k], input_size=config.input_size)


class DS2AFormer(nn.Module):
    def __init__(self, config: ModelConfig, meta: ModelMeta | None = None) -> None:
        super().__init__()
        self.config = config
        self.meta = meta if meta is not None else default_meta(config)
        c = config.hidden_dim
        self.backbone = ResNet(config.backbone_depth, config.backbone_width, config.backbone_norm)
        self.pixel_decoder = PixelDecoder(
            self.backbone.out_channels, c, config.encoder_layers, config.encoder_heads,
            config.encoder_points, config.encoder_ffn, config.norm_groups)
        self.dssca1 = DSSCA(c, config.dssca_kernel)
        self.dssca2 = DSSCA(c, config.dssca_kernel)
        self.dssca3 = DSSCA(c, config.dssca_kernel)
        self.transformer_decoder = TransformerDecoder(
            config.decoder_layers, c, config.decoder_heads, config.decoder_ffn, config.query_grid)
        self.query_feat = nn.Embedding(config.num_queries, c)  # initial query features
        self.query_embed = nn.Embedding(config.num_queries, c)  # query positional embedding
        self.level_embed = nn.Embedding(3, c)  # added to the decoder memories, low -> high res
        self.head = PredictionHead(c, config.num_classes)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward(self, x: Tensor) -> list[Prediction]:
        """x: normalised RGB (B, 3, H, W), H and W multiples of 32."""
        if x.shape[-1] % 32 or x.shape[-2] % 32:
            raise UserError(f"input size {tuple(x.shape[-2:])} is not a multiple of 32; resize or pad the image first")
        b = x.shape[0]
        mask_features, mem = self.pixel_decoder(self.backbone(x))
        # DSSCA cascade, memories ordered low -> high resolution
        mem[1] = self.dssca1(mem[0], mem[1])
        mem[2] = self.dssca2(mem[1], mem[2])
        mask_features = self.dssca3(mem[2], mask_features)
        q = self.query_feat.weight.unsqueeze(0).expand(b, -1, -1)
        q_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)
        return self.transformer_decoder(mem, mask_features, q, q_pos, self.level_embed.weight, self.head)

    @staticmethod
    def semantic_from_prediction(pred: Prediction, size: tuple[int, int]) -> Tensor:
        """Official semantic inference: sum_q softmax(cls)[:, :, :K] * sigmoid(upsampled mask)."""
        cls, masks = pred
        masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        b, q, h, w = masks.shape
        probs = cls.softmax(-1)[..., :-1].transpose(1, 2)  # (B, K, Q)
        return torch.matmul(probs, masks.sigmoid().reshape(b, q, h * w)).reshape(b, -1, h, w)

    def semantic_logits(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) normalised RGB -> (B, K, H, W) semantic scores, as the official `predict`."""
        return self.semantic_from_prediction(self.forward(x)[-1], (int(x.shape[-2]), int(x.shape[-1])))


def build_model(name: str, num_classes: int | None = None, meta: ModelMeta | None = None,
                **overrides: Any) -> DS2AFormer:
    """Build a registered DS2A-Former by name (ds2a_tiny, ds2a_r18, ds2a_r34, ds2a_r50).

    `num_classes` and any ModelConfig field (e.g. num_queries=36, input_size=(320, 320)) override
    the named config; an unknown name raises UserError listing the valid ones.
    """
    if meta is not None and num_classes is None:
        num_classes = meta.num_classes
    config = get_config(name, num_classes=num_classes, **overrides)
    if meta is not None and meta.num_classes != config.num_classes:
        raise UserError(f"meta lists {meta.num_classes} classes but the model has {config.num_classes}")
    return DS2AFormer(config, meta)
