"""Masked-attention transformer decoder of DS2A-Former (Mask2Former with DQGSA instead of self-attention).

Layer order (official `dssa_decoder.py`):
    q1 = norm0(q + CrossAttn(q + q_pos, mem + mem_pos, mem, mask))
    q2 = norm1(DQGSA(x1=q, x2=q1))
    out = norm2(q2 + FFN(q2))
The attention mask comes from the previous prediction: a query may only look where its
mask logit is positive (sigmoid >= 0.5); a query whose mask is empty looks everywhere.
"""
from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dqgsa import DQGSA
from .ffn import FFN
from .positional_encoding import sine_position_encoding

Prediction = Tuple[Tensor, Tensor]  # (class logits (B, Q, K+1), mask logits (B, Q, H/4, W/4))
Head = Callable[[Tensor, Tensor], Prediction]  # (post-normed queries, mask features) -> prediction


class CrossAttention(nn.Module):
    """Multi-head attention with `nn.MultiheadAttention`'s parameters (packed in_proj) and residual.

    Written out with matmul/softmax so that ONNX export is plain and the boolean mask is explicit.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.dim, self.heads = dim, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                mask: Tensor | None = None) -> Tensor:
        """query (B, Q, C), memory (B, S, C), mask (B, Q, S) bool, True = may not attend."""
        b, nq, c = query.shape
        ns = memory.shape[1]
        wq, wk, wv = self.in_proj_weight.chunk(3)
        bq, bk, bv = self.in_proj_bias.chunk(3)
        d = c // self.heads
        q = F.linear(query + query_pos, wq, bq).view(b, nq, self.heads, d).transpose(1, 2)
        k = F.linear(memory + memory_pos, wk, bk).view(b, ns, self.heads, d).transpose(1, 2)
        v = F.linear(memory, wv, bv).view(b, ns, self.heads, d).transpose(1, 2)
        scores = (q * d ** -0.5) @ k.transpose(-2, -1)  # (B, heads, Q, S)
        if mask is not None:
            scores = scores.masked_fill(mask[:, None], float("-inf"))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, nq, c)
        return query + self.out_proj(out)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, ffn: int, query_side: int, dqgsa_kernel: int = 7) -> None:
        super().__init__()
        self.cross_attn = CrossAttention(dim, heads)
        self.norm0 = nn.LayerNorm(dim)
        self.dqgsa = DQGSA(dim, query_side, dqgsa_kernel)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = FFN(dim, ffn)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, q: Tensor, q_pos: Tensor, memory: Tensor, memory_pos: Tensor, mask: Tensor | None) -> Tensor:
        q1 = self.norm0(self.cross_attn(q, q_pos, memory, memory_pos, mask))
        q2 = self.norm1(self.dqgsa(q, q1))
        return self.norm2(self.ffn(q2))


class TransformerDecoder(nn.Module):
    """The decoder layers plus `post_norm`, the LayerNorm applied before every prediction head.

    `forward` runs Mask2Former's masked-attention loop. The query embeddings, the level embedding
    and the prediction head are DS2AFormer's (their state_dict keys follow the official
    checkpoints' layout, ds2a/model/convert.py), so the caller passes them in.
    """

    def __init__(self, num_layers: int, dim: int, heads: int, ffn: int, query_side: int) -> None:
        super().__init__()
        self.dim = dim
        self.layers = nn.ModuleList(DecoderLayer(dim, heads, ffn, query_side) for _ in range(num_layers))
        self.post_norm = nn.LayerNorm(dim)
        for p in self.parameters():  # official init_weights: xavier_normal on every matrix/kernel
            if p.dim() > 1:
                nn.init.xavier_normal_(p)

    def forward(self, memories: Sequence[Tensor], mask_features: Tensor, query: Tensor, query_pos: Tensor,
                level_embed: Tensor, head: Head) -> list[Prediction]:
        """memories: (B, C, h, w) maps, low -> high resolution; query / query_pos (B, Q, C);
        level_embed (levels, C). Returns the prediction before the first layer and after each layer
        (deep supervision); layer i attends to memory i % levels, masked by the previous prediction.
        """
        b = query.shape[0]
        tokens, pos, sizes = [], [], []
        for i, m in enumerate(memories):
            h, w = int(m.shape[-2]), int(m.shape[-1])
            tokens.append(m.flatten(2).transpose(1, 2) + level_embed[i].view(1, 1, -1))
            pos.append(sine_position_encoding(h, w, self.dim // 2, m).flatten(2).transpose(1, 2).expand(b, -1, -1))
            sizes.append((h, w))
        preds = [head(self.post_norm(query), mask_features)]
        for i, layer in enumerate(self.layers):
            lvl = i % len(memories)
            mask = attention_mask(preds[-1][1], sizes[lvl])
            query = layer(query, query_pos, tokens[lvl], pos[lvl], mask)
            preds.append(head(self.post_norm(query), mask_features))
        return preds


def attention_mask(mask_logits: Tensor, size: tuple[int, int]) -> Tensor:
    """(B, Q, H, W) mask logits -> (B, Q, h*w) bool at the next memory's size; True = blocked.

    Matches the official head: bilinear resize, `sigmoid < 0.5`, detached; rows that would
    block every key are released (the official code does this right before each layer).
    """
    prob = F.interpolate(mask_logits.detach(), size=size, mode="bilinear", align_corners=False).flatten(2).sigmoid()
    # "row not entirely blocked" == "row max >= 0.5": a float ReduceMax exports everywhere, bool reductions do not
    return (prob < 0.5) & (prob.amax(dim=-1, keepdim=True) >= 0.5)
