"""Model metadata that travels with every artefact (checkpoint, ONNX props, engine sidecar).

Torch-free on purpose: the runtime on a Jetson reads it without PyTorch.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

MBSD_CLASSES: Tuple[str, ...] = ("background", "damage", "smudge", "dust")
# BGR colours used for overlays, one per class (background is black).
MBSD_PALETTE: Tuple[Tuple[int, int, int], ...] = ((0, 0, 0), (0, 0, 255), (0, 200, 255), (255, 128, 0))
# ImageNet statistics on RGB, as the official configs use.
MEAN_RGB: Tuple[float, float, float] = (123.675, 116.28, 103.53)
STD_RGB: Tuple[float, float, float] = (58.395, 57.12, 57.375)

ONNX_META_KEY = "ds2a"  # key in ONNX metadata_props holding ModelMeta JSON
INPUT_NAME = "images"  # uint8 NHWC BGR frames at the model size
OUTPUT_CLASS_MAP = "class_map"  # uint8 (N, H, W)
OUTPUT_LOGITS = "logits"  # float32 (N, K, H, W)


def default_palette(num_classes: int) -> List[Tuple[int, int, int]]:
    """M-BSD colours first, then deterministic distinct colours for extra classes."""
    palette = list(MBSD_PALETTE[:num_classes])
    k = len(palette)
    while len(palette) < num_classes:
        hue = (k * 47) % 180
        import colorsys

        r, g, b = colorsys.hsv_to_rgb(hue / 180.0, 0.9, 0.95)
        palette.append((int(b * 255), int(g * 255), int(r * 255)))
        k += 1
    return palette


@dataclass
class ModelMeta:
    """What a deployed model needs besides its weights: classes, colours, normalisation, size."""

    arch: str
    classes: List[str] = field(default_factory=lambda: list(MBSD_CLASSES))
    palette: List[Tuple[int, int, int]] = field(default_factory=list)
    mean: Tuple[float, float, float] = MEAN_RGB
    std: Tuple[float, float, float] = STD_RGB
    input_size: Tuple[int, int] = (256, 256)  # (H, W)
    checkpoint_sha256: Optional[str] = None
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.classes = check_classes(self.classes)
        if not self.palette:
            self.palette = default_palette(len(self.classes))
        self.palette = [tuple(int(v) for v in c) for c in self.palette]
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.input_size = (int(self.input_size[0]), int(self.input_size[1]))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["palette"] = [list(c) for c in self.palette]
        d["mean"], d["std"], d["input_size"] = list(self.mean), list(self.std), list(self.input_size)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ModelMeta":
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)

    @classmethod
    def from_json(cls, text: str) -> "ModelMeta":
        return cls.from_dict(json.loads(text))


def check_classes(classes: Any) -> List[str]:
    """The class names as a list of distinct strings; ValueError otherwise (the readers of ONNX props, engine
    sidecars and Triton configs turn it into a UserError naming the model). A string would be read letter
    by letter ("background" as ten classes) and a name given twice would merge two classes in every report."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (list, tuple)):
        raise ValueError(f"'classes' must be a list of class names such as [\"background\", \"damage\"], "
                         f"not {type(classes).__name__} {str(classes)[:40]!r}")
    names = list(classes)
    bad = [c for c in names if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"'classes' must hold non-empty names; found {str(bad[0])[:40]!r}")
    seen = set()
    for name in names:
        if name in seen:
            raise ValueError(f"class name '{name[:40]}' appears twice in 'classes'; each class needs its own name")
        seen.add(name)
    return names


def parse_size(text: str) -> Tuple[int, int]:
    """'512' -> (512, 512); '512x1024' -> (512, 1024) as (H, W)."""
    from .errors import UserError

    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"size '{text}' is not HxW (example: 512x512)") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) <= 0:
        raise UserError(f"size '{text}' is not HxW with positive numbers (example: 512x512)")
    return vals[0], vals[1]


def sizes_ok_for_model(size: Sequence[int], divisor: int = 32) -> bool:
    return all(int(s) % divisor == 0 for s in size)


def file_sha256(path: "str | os.PathLike[str]") -> str:
    """sha256 of a file, read in 1 MiB blocks: ties a checkpoint, ONNX and engine to their source."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sha256_or_empty(path: Optional[str]) -> str:
    """file_sha256, or "" where there is no file (a served model, no rules file): what identities record."""
    return file_sha256(path) if path and os.path.isfile(path) else ""


def guess_precision(path: str, meta: Any) -> str:
    """Precision from the model's metadata, else from the file name (m.int8.onnx), else fp32."""
    extra = getattr(meta, "extra", {}) or {}
    if extra.get("precision"):
        return str(extra["precision"])
    name = os.path.basename(path).lower()
    for token in ("int8", "fp16", "bf16", "fp8", "fp32"):
        if token in name:
            return token
    return "fp32"
