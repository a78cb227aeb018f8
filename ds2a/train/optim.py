"""Optimiser and schedule as the official configs: AdamW, backbone lr x0.1, no weight decay on
norms and query/level embeddings, gradient clipping, poly decay with an optional linear warm-up."""
from __future__ import annotations

from typing import Dict, List

import torch
from torch import nn

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)
EMBED_KEYS = ("query_embed", "query_feat", "level_embed")


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float = 0.1) -> List[Dict]:
    """Four groups (backbone or not) x (decay or not); frozen parameters are left out."""
    no_decay_ids = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, NORM_TYPES + (nn.Embedding,)):
            no_decay_ids.update(id(p) for p in module.parameters(recurse=False))
    groups: Dict[tuple, Dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_backbone = name.startswith("backbone.")
        decay = not (id(p) in no_decay_ids or any(k in name for k in EMBED_KEYS))
        key = (is_backbone, decay)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "lr": lr * (backbone_lr_mult if is_backbone else 1.0),
                           "weight_decay": weight_decay if decay else 0.0}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(model: nn.Module, lr: float = 1e-4, weight_decay: float = 0.05,
                    backbone_lr_mult: float = 0.1) -> torch.optim.AdamW:
    groups = param_groups(model, lr, weight_decay, backbone_lr_mult)
    for g in groups:
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)


def lr_factor(it: int, max_iters: int, power: float = 0.9, warmup_iters: int = 0, warmup_ratio: float = 1e-3) -> float:
    """Multiplier of the base lr at iteration `it` (0-based): linear warm-up, then poly to 0 at max_iters."""
    poly = max(0.0, 1.0 - it / max(1, max_iters)) ** power
    if it < warmup_iters:
        return poly * (warmup_ratio + (1.0 - warmup_ratio) * it / warmup_iters)
    return poly


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = g["initial_lr"] * factor
