"""Mask2Former pixel decoder: deformable-attention encoder over strides 32/16/8, FPN to stride 4.

Follows mmdet 3.3 `MSDeformAttnPixelDecoder`: 1x1 input projections (conv with bias + GroupNorm),
sine positional encoding plus a learned level embedding, post-norm deformable encoder layers,
then a lateral 1x1 conv + bilinear top-down path + 3x3 output conv for stride 4 and a 1x1
`mask_feature` conv that gives the per-pixel embeddings the masks are read from.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ffn import FFN
from .ms_deform_attn import MSDeformAttn
from .positional_encoding import sine_position_encoding


class ConvNorm(nn.Sequential):
    """Conv2d + GroupNorm (+ ReLU): mmcv `ConvModule` with norm_cfg GN."""

    def __init__(self, cin: int, cout: int, kernel: int, groups: int, bias: bool, relu: bool = False) -> None:
        layers = [nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=bias), nn.GroupNorm(groups, cout)]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class EncoderLayer(nn.Module):
    """Post-norm: x = norm1(x + MSDeformAttn(x)); x = norm2(x + FFN(x))."""

    def __init__(self, dim: int, heads: int, levels: int, points: int, ffn: int) -> None:
        super().__init__()
        self.attn = MSDeformAttn(dim, heads, levels, points)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, pos: Tensor, ref: Tensor, shapes: list[tuple[int, int]]) -> Tensor:
        x = self.norm1(self.attn(x, pos, x, ref, shapes))
        return self.norm2(self.ffn(x))


def _reference_points(shapes: list[tuple[int, int]], like: Tensor) -> Tensor:
    """Pixel centres of every level, normalised to [0, 1] as (x, y): (sum h*w, 2)."""
    refs = []
    for h, w in shapes:
        ys = (torch.arange(h, dtype=torch.float32, device=like.device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=like.device) + 0.5) / w
        refs.append(torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], -1).reshape(-1, 2))
    return torch.cat(refs, 0).to(like.dtype)


class PixelDecoder(nn.Module):
    """Backbone features (strides 4..32) -> (mask features at stride 4, 3 memories low->high res)."""

    def __init__(self, in_channels: list[int], dim: int = 256, encoder_layers: int = 6, heads: int = 8,
                 points: int = 4, ffn: int = 1024, groups: int = 32, levels: int = 3) -> None:
        super().__init__()
        self.dim, self.levels = dim, levels
        # low -> high resolution: input_convs[0] projects the stride-32 map
        self.input_convs = nn.ModuleList(
            ConvNorm(in_channels[-1 - i], dim, 1, groups, bias=True) for i in range(levels))
        self.level_embed = nn.Embedding(levels, dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, levels, points, ffn) for _ in range(encoder_layers))
        n_fpn = len(in_channels) - levels
        # high -> low resolution index order as in mmdet: lateral_convs[i] serves in_channels[i]
        self.lateral_convs = nn.ModuleList(ConvNorm(in_channels[i], dim, 1, groups, bias=False) for i in range(n_fpn))
        self.output_convs = nn.ModuleList(ConvNorm(dim, dim, 3, groups, bias=False, relu=True) for _ in range(n_fpn))
        self.mask_feature = nn.Conv2d(dim, dim, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init: xavier for projections, caffe2-xavier for FPN convs, N(0,1) level embedding."""
        for m in self.input_convs:
            nn.init.xavier_uniform_(m[0].weight)
            nn.init.zeros_(m[0].bias)
        for m in list(self.lateral_convs) + list(self.output_convs):
            nn.init.kaiming_uniform_(m[0].weight, a=1)
        nn.init.kaiming_uniform_(self.mask_feature.weight, a=1)
        nn.init.zeros_(self.mask_feature.bias)
        nn.init.normal_(self.level_embed.weight)
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        for layer in self.layers:
            layer.attn.reset_parameters()

    def forward(self, feats: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        b = feats[0].shape[0]
        tokens, pos_list, shapes = [], [], []
        for i in range(self.levels):
            feat = feats[len(feats) - 1 - i]
            h, w = int(feat.shape[-2]), int(feat.shape[-1])
            x = self.input_convs[i](feat)
            pos = sine_position_encoding(h, w, self.dim // 2, x) + self.level_embed.weight[i].view(1, -1, 1, 1)
            tokens.append(x.flatten(2).transpose(1, 2))
            pos_list.append(pos.flatten(2).transpose(1, 2).expand(b, -1, -1))
            shapes.append((h, w))
        x = torch.cat(tokens, 1)
        pos = torch.cat(pos_list, 1)
        ref = _reference_points(shapes, x)[None, :, None, :].expand(b, -1, self.levels, -1)
        for layer in self.layers:
            x = layer(x, pos, ref, shapes)
        outs = [t.transpose(1, 2).reshape(b, self.dim, h, w)
                for t, (h, w) in zip(x.split([h * w for h, w in shapes], 1), shapes)]
        for i in range(len(self.lateral_convs) - 1, -1, -1):
            lateral = self.lateral_convs[i](feats[i])
            top = F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            outs.append(self.output_convs[i](lateral + top))
        return self.mask_feature(outs[-1]), outs[: self.levels]
