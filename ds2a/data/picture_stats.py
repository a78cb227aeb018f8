"""Statistics of a picture and of the model's answers on it, and the drift reference made of them: what
`ds2a export` and `ds2a calibrate` store in a model's metadata (`ModelMeta.extra["drift_reference"]`) and
what the drift watch of ds2a/inspect/drift.py compares the line's picture with (docs/DRIFT.md). Lives
with the data, below export and inspection, so both use it. Torch-free, Python 3.8."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import UserError

DRIFT_KEY = "drift_reference"  # in ModelMeta.extra
DRIFT_FORMAT = 1
HIST_BINS = 8  # per colour channel
AREA_STEP = 4  # class maps and logits are read on every 4th row and column: the fractions move < 0.5 %

# Watched statistics: name -> (direction, smallest sigma). Direction +1: only a rise alarms, 0: both ways.
# The sigma floor keeps a reference of near-identical frames from alarming on sensor noise.
WATCHED: Dict[str, Tuple[int, float]] = {
    "brightness": (0, 2.0),  # mean grey level, 0..255
    "contrast": (0, 1.0),  # standard deviation of the grey levels
    "sharpness": (0, 0.05),  # log of the variance of the Laplacian of the grey image
    "blue_green": (0, 0.5),  # colour balance: mean blue minus mean green, grey levels
    "red_green": (0, 0.5),  # mean red minus mean green
    "defect_area": (0, 0.005),  # share of pixels the model calls a defect (any class but background)
    "confidence": (0, 0.01),  # mean softmax margin between the two best classes (models with logits only)
}
# Recorded but not watched: the demo conveyor's defect area is heavy-tailed (a run of defect-rich cells reaches
# 6 standard deviations) and alarmed once in 30,000 clean frames; no injected drift needed it (docs/DRIFT.md).
RECORDED_ONLY = ("defect_area",)


def image_stats(image: np.ndarray) -> Dict[str, Any]:
    """Brightness, contrast, sharpness and the colour histogram of one uint8 BGR frame at the model size.

    About a millisecond for 256x256 (docs/DRIFT.md): OpenCV does the work, the histogram reads every
    second pixel.
    """
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    mean, std = cv2.meanStdDev(grey)
    b, g, r = cv2.mean(image)[:3]
    _, lap_std = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_16S))
    sub = np.ascontiguousarray(image[::2, ::2])
    hist = np.concatenate([cv2.calcHist([sub], [c], None, [HIST_BINS], [0, 256]).ravel() for c in range(3)])
    hist /= max(float(sub.shape[0] * sub.shape[1]), 1.0)
    return {"brightness": float(mean[0, 0]), "contrast": float(std[0, 0]),
            "sharpness": math.log(float(lap_std[0, 0]) ** 2 + 1.0), "blue_green": b - g, "red_green": r - g,
            "hist": hist.astype(np.float64)}


def model_stats(class_map: np.ndarray, logits: Optional[np.ndarray], num_classes: int) -> Dict[str, Any]:
    """Per-class area fractions of a class map and, with logits (K, H, W), the mean top-2 softmax margin."""
    sub = np.asarray(class_map)[::AREA_STEP, ::AREA_STEP]
    areas = np.bincount(sub.ravel(), minlength=num_classes)[:num_classes] / max(sub.size, 1)
    out: Dict[str, Any] = {"areas": areas.astype(np.float64), "defect_area": float(1.0 - areas[0]) if len(areas) else 0.0}
    if logits is not None and np.asarray(logits).ndim == 3 and np.asarray(logits).shape[0] >= 2:
        lg = np.asarray(logits, np.float32)[:, ::AREA_STEP, ::AREA_STEP]
        p = np.exp(lg - lg.max(axis=0, keepdims=True))
        p /= p.sum(axis=0, keepdims=True)
        top2 = np.partition(p, -2, axis=0)[-2:]
        out["confidence"] = float((top2[1] - top2[0]).mean())
    return out


def sample_of(image: np.ndarray, class_map: np.ndarray, logits: Optional[np.ndarray], num_classes: int,
              ) -> Dict[str, Any]:
    """Every statistic of one frame."""
    s = image_stats(image)
    s.update(model_stats(class_map, logits, num_classes))
    return s


@dataclass
class Reference:
    """What the model's reference frames looked like: mean and spread of every statistic."""

    frames: int
    source: str  # where the frames came from
    produced_by: str  # the runtime that gave the class maps
    stats: Dict[str, Tuple[float, float]]  # statistic -> (mean, standard deviation) over the frames
    hist: List[float]  # mean colour histogram, HIST_BINS per channel, B G R
    areas: List[Tuple[float, float]]  # per class: (mean, standard deviation) of its area fraction
    classes: List[str] = field(default_factory=list)
    note: str = ""  # e.g. that the model has no logits, so no confidence was recorded

    def to_dict(self) -> Dict[str, Any]:
        return {"format": DRIFT_FORMAT, "frames": self.frames, "source": self.source, "produced_by": self.produced_by,
                "stats": {k: [round(m, 6), round(s, 6)] for k, (m, s) in self.stats.items()},
                "hist": [round(v, 6) for v in self.hist],
                "classes": list(self.classes), "areas": [[round(m, 6), round(s, 6)] for m, s in self.areas],
                "note": self.note}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Reference":
        """The stored form back; UserError naming `where` when it is damaged."""
        try:
            if int(data.get("format", 0)) != DRIFT_FORMAT:
                raise ValueError(f"format {data.get('format')} (this ds2a reads {DRIFT_FORMAT})")
            stats = {str(k): (float(v[0]), float(v[1])) for k, v in data["stats"].items()}
            hist = [float(v) for v in data["hist"]]
            if len(hist) != 3 * HIST_BINS:
                raise ValueError(f"a colour histogram of {len(hist)} bins, not {3 * HIST_BINS}")
            classes = [str(c) for c in data["classes"]]
            areas = [(float(v[0]), float(v[1])) for v in data["areas"]]
            if len(areas) != len(classes):
                raise ValueError(f"{len(areas)} class areas for {len(classes)} classes")
            if not all(math.isfinite(x) for pair in list(stats.values()) + areas for x in pair):
                raise ValueError("a statistic is not a finite number")
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            raise UserError(f"{where}: its drift reference statistics are unreadable ({exc}); record them again "
                            "with `python -m ds2a.inspect.drift_reference` or re-export the model") from None
        return cls(int(data.get("frames", 0)), str(data.get("source", "")), str(data.get("produced_by", "")),
                   stats, hist, areas, classes, str(data.get("note", "")))

    def line(self) -> str:
        watched = ", ".join(k for k in WATCHED if k in self.stats and k not in RECORDED_ONLY)
        return (f"drift reference: {self.frames} frames from {self.source}; watching {watched}"
                + (f" ({self.note})" if self.note else ""))


def make_reference(samples: Sequence[Dict[str, Any]], classes: Sequence[str], source: str, produced_by: str,
                   ) -> Reference:
    """Mean and spread of the statistics of the reference frames (`sample_of` without a reference histogram)."""
    if not samples:
        raise UserError(f"no reference frames from {source}: cannot record drift statistics")
    hist = np.mean([s["hist"] for s in samples], axis=0)
    stats = {}
    for name in WATCHED:
        values = [s[name] for s in samples if s.get(name) is not None]
        if len(values) == len(samples):
            stats[name] = (float(np.mean(values)), float(np.std(values)))
    areas = np.array([s["areas"] for s in samples])
    note = "" if "confidence" in stats else "no confidence: the model gives class maps only, no logits"
    return Reference(len(samples), source, produced_by, stats, [float(v) for v in hist],
                     [(float(m), float(sd)) for m, sd in zip(areas.mean(0), areas.std(0))], list(classes), note)


def reference_of(meta: Any, where: str = "the model") -> Optional[Reference]:
    """The drift reference in a ModelMeta (None when the model carries none)."""
    data = (getattr(meta, "extra", None) or {}).get(DRIFT_KEY)
    return None if data is None else Reference.from_dict(data, where)


def set_reference(meta: Any, reference: Reference) -> None:
    """Store (or replace) the drift reference in a ModelMeta; every other key stays."""
    meta.extra = {**meta.extra, DRIFT_KEY: reference.to_dict()}


def reference_from(infer_batch: Callable[[np.ndarray], Sequence[Any]], frames: Sequence[np.ndarray],
                   classes: Sequence[str], source: str, produced_by: str, batch: int = 4) -> Reference:
    """Run the model (`infer_batch`: (N,H,W,3) uint8 at the model size -> results with class_map, logits)
    on the reference frames and summarise them."""
    samples = []
    frames = [np.ascontiguousarray(f, dtype=np.uint8) for f in frames]
    for i in range(0, len(frames), batch):
        chunk = frames[i:i + batch]
        for frame, res in zip(chunk, infer_batch(np.stack(chunk))):
            samples.append(sample_of(frame, res.class_map, getattr(res, "logits", None), len(classes)))
    return make_reference(samples, classes, source, produced_by)
