"""A stand-in Segmenter: dark pixels are 'damage', with an optional delay to act like a slow model.

It lets the loop, drop policy and records be tested and timed without a trained network,
and without ONNX Runtime threads blurring CPU measurements. Test-only, so it lives under tests/
and not in the package.
"""
from __future__ import annotations

import time
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from ds2a.meta import ModelMeta
from ds2a.preprocess import resize_frame
from ds2a.runtime.base import InferResult, Segmenter


class ThresholdSegmenter(Segmenter):
    """Class 1 where the gray level is below `threshold`, else background; sleeps `delay_s` per frame."""

    backend = "fake"

    def __init__(self, input_size: Tuple[int, int] = (64, 64), threshold: int = 60, delay_s: float = 0.0,
                 classes: Sequence[str] = ("background", "damage", "smudge", "dust")) -> None:
        super().__init__(ModelMeta(arch="threshold", classes=list(classes), input_size=tuple(input_size)))
        self.threshold, self.delay_s = threshold, delay_s
        self.calls = 0

    def infer_batch(self, frames: object) -> List[InferResult]:
        batch = self.prepare_batch(frames)  # type: ignore[arg-type]
        out = []
        for frame in batch:
            gray = cv2.cvtColor(resize_frame(frame, self.input_size), cv2.COLOR_BGR2GRAY)
            cm = (gray < self.threshold).astype(np.uint8)
            conf = np.where(cm > 0, 1.0 - gray / 255.0, gray / 255.0).astype(np.float32)
            out.append(InferResult(class_map=cm, confidence=conf))
        self.calls += len(out)
        if self.delay_s:
            time.sleep(self.delay_s * len(out))
        return out
