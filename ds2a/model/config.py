"""Named DS2A-Former configurations: every size knob lives here, never in the module code."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import UserError


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of one DS2A-Former variant. The official models use the defaults (R18/R34/R50)."""

    name: str
    backbone_depth: int = 18  # 18 / 34 / 50
    backbone_width: int = 64  # stem width; 64 = standard (torchvision) ResNet
    backbone_norm: str = "frozen_bn"  # frozen_bn (official, ImageNet weights) | bn | gn (from scratch)
    num_classes: int = 4
    hidden_dim: int = 256  # pixel-decoder, DSSCA and transformer-decoder width
    encoder_layers: int = 6
    encoder_heads: int = 8
    encoder_points: int = 4
    encoder_ffn: int = 1024
    decoder_layers: int = 9
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    num_queries: int = 100  # a perfect square: DQGSA lays the queries out as a grid
    dssca_kernel: int = 7
    norm_groups: int = 32
    input_size: tuple[int, int] = (512, 512)  # (H, W) the deployed model runs at

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", tuple(int(v) for v in self.input_size))
        self.validate()

    def validate(self) -> None:
        """Reject sizes the network cannot be built with, saying which knob to change."""
        problems = []
        if self.backbone_depth not in (18, 34, 50):
            problems.append(f"backbone_depth={self.backbone_depth} (use 18, 34 or 50)")
        if self.backbone_norm not in ("frozen_bn", "bn", "gn"):
            problems.append(f"backbone_norm={self.backbone_norm!r} (use frozen_bn, bn or gn)")
        side = math.isqrt(self.num_queries) if self.num_queries > 0 else 0
        if side * side != self.num_queries or side == 0:
            problems.append(f"num_queries={self.num_queries} is not a perfect square (DQGSA grid); use 25, 36, 64, 100...")
        if self.num_classes < 1:
            problems.append(f"num_classes={self.num_classes} (need at least 1)")
        for heads_field in ("encoder_heads", "decoder_heads"):
            heads = getattr(self, heads_field)
            if heads < 1 or self.hidden_dim % heads:
                problems.append(f"hidden_dim={self.hidden_dim} is not divisible by {heads_field}={heads}")
        if self.hidden_dim % 2 or self.hidden_dim % self.norm_groups:
            problems.append(f"hidden_dim={self.hidden_dim} must be even and divisible by norm_groups={self.norm_groups}")
        if self.dssca_kernel not in (3, 7):
            problems.append(f"dssca_kernel={self.dssca_kernel} (official code allows 3 or 7)")
        if len(self.input_size) != 2 or any(v <= 0 or v % 32 for v in self.input_size):
            problems.append(f"input_size={self.input_size} must be (H, W), both multiples of 32")
        if self.encoder_layers < 0 or self.decoder_layers < 1:
            problems.append("need encoder_layers >= 0 and decoder_layers >= 1")
        if problems:
            raise UserError(f"model config '{self.name}' is invalid: " + "; ".join(problems))

    @property
    def query_grid(self) -> int:
        """Side of the sqrt(Q) x sqrt(Q) query grid DQGSA works on."""
        return math.isqrt(self.num_queries)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


_OFFICIAL = {"hidden_dim": 256, "encoder_layers": 6, "decoder_layers": 9, "num_queries": 100, "input_size": (512, 512)}

MODEL_CONFIGS: dict[str, ModelConfig] = {
    # CPU demos and small edge devices: half-width ResNet-18, narrow and shallow transformer.
    "ds2a_tiny": ModelConfig(
        name="ds2a_tiny", backbone_depth=18, backbone_width=32, hidden_dim=128,
        encoder_layers=2, encoder_heads=4, encoder_ffn=512,
        decoder_layers=3, decoder_heads=4, decoder_ffn=512,
        num_queries=25, input_size=(256, 256),
    ),
    # The paper's models, exactly as configs/_base_/model/ds2aformer_r{18,34,50}*.py.
    "ds2a_r18": ModelConfig(name="ds2a_r18", backbone_depth=18, **_OFFICIAL),
    "ds2a_r34": ModelConfig(name="ds2a_r34", backbone_depth=34, **_OFFICIAL),
    "ds2a_r50": ModelConfig(name="ds2a_r50", backbone_depth=50, **_OFFICIAL),
}


def get_config(name: str, num_classes: int | None = None, **overrides: Any) -> ModelConfig:
    """Look a config up by name and apply overrides (e.g. num_queries=36)."""
    if name not in MODEL_CONFIGS:
        short = f"ds2a_{name}"
        if short in MODEL_CONFIGS:
            name = short
        else:
            valid = ", ".join(MODEL_CONFIGS)
            raise UserError(f"unknown model '{name}'; valid names: {valid}")
    known = {f.name for f in fields(ModelConfig)} - {"name"}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise UserError(f"unknown model option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    if num_classes is not None:
        overrides["num_classes"] = int(num_classes)
    return replace(MODEL_CONFIGS[name], **overrides)
