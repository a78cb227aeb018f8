"""The official training and test pipelines (docs/ARCHITECTURE.md, "The model"), in numpy/OpenCV with explicit randomness.

Train (per sample): random resize (short edge picked from 256..1024, or a ratio of the image's
own size) -> random crop with mmseg's `cat_max_ratio` retry -> flips -> PhotoMetricDistortion
-> pad to the crop size (image 0, mask 255 = ignore). Every random draw comes from the
`np.random.Generator` passed in, so a seeded generator reproduces a batch exactly.
Test: resize keeping the ratio to fit (2048, 512) long x short edge, pad to a multiple of 32.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

IGNORE_INDEX = 255
# the official RandomChoiceResize scales: int(512 * x * 0.1) for x in 5..20 -> 256 .. 1024
OFFICIAL_SHORT_EDGES: Tuple[int, ...] = tuple(int(512 * x * 0.1) for x in range(5, 21))


def resize_pair(image: np.ndarray, mask: np.ndarray, size_hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Bilinear for the image, nearest for the mask (labels stay exact).

    INTER_NEAREST_EXACT samples pixel centres like the bilinear image does; plain INTER_NEAREST
    is shifted by half a source pixel, which misaligns masks by several pixels at 4x upscaling.
    """
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image, mask
    return (cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR),
            cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT))


def short_edge_size(hw: Tuple[int, int], short: int, max_size: int = 2048) -> Tuple[int, int]:
    """mmseg ResizeShortestEdge: short edge -> `short`, unless the long edge would pass `max_size`."""
    h, w = hw
    scale = short / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


def random_crop_box(
    mask: np.ndarray, crop_hw: Tuple[int, int], rng: np.random.Generator,
    cat_max_ratio: float = 0.75, tries: int = 10,
) -> Tuple[int, int, int, int]:
    """mmseg RandomCrop: retry up to `tries` times until no class covers >= cat_max_ratio of the crop.

    Returns (y0, y1, x0, x1); the crop is smaller than crop_hw when the image is.
    """
    h, w = mask.shape[:2]
    ch, cw = crop_hw

    def box() -> Tuple[int, int, int, int]:
        y0 = int(rng.integers(0, max(h - ch, 0) + 1))
        x0 = int(rng.integers(0, max(w - cw, 0) + 1))
        return y0, min(y0 + ch, h), x0, min(x0 + cw, w)

    y0, y1, x0, x1 = box()
    if cat_max_ratio < 1.0:
        for _ in range(tries):
            counts = np.bincount(mask[y0:y1, x0:x1].ravel(), minlength=256)
            counts[IGNORE_INDEX] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            y0, y1, x0, x1 = box()
    return y0, y1, x0, x1


def _convert(img: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(
    image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
    contrast_range: Tuple[float, float] = (0.5, 1.5), saturation_range: Tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> np.ndarray:
    """mmseg PhotoMetricDistortion on a BGR uint8 image: each step with probability 1/2,
    contrast either first or last."""
    img = image
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = _convert(hsv[:, :, 1], alpha=rng.uniform(*saturation_range))
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if rng.integers(2):
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        shift = int(rng.integers(-hue_delta, hue_delta))
        hsv[:, :, 0] = ((hsv[:, :, 0].astype(np.int32) + shift) % 180).astype(np.uint8)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if mode == 0 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(*contrast_range))
    return img


def pad_pair(image: np.ndarray, mask: np.ndarray, size_hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Pad bottom/right to at least size_hw: image with 0, mask with 255 (ignored by the loss)."""
    ph, pw = max(size_hw[0] - image.shape[0], 0), max(size_hw[1] - image.shape[1], 0)
    if ph == 0 and pw == 0:
        return image, mask
    image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    mask = cv2.copyMakeBorder(mask, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=IGNORE_INDEX)
    return image, mask


@dataclass
class TrainTransform:
    """Official training augmentation. `ratio_range` (e.g. (0.5, 2.0)) replaces the short-edge
    choice by a scale relative to the image; `short_edges=None` and no ratio turns resizing off.
    `vflip` adds vertical flips (surfaces have no up); `photometric=False` turns colour jitter off."""

    crop_size: Tuple[int, int] = (256, 256)
    short_edges: Optional[Sequence[int]] = OFFICIAL_SHORT_EDGES
    ratio_range: Optional[Tuple[float, float]] = None
    max_size: int = 2048
    cat_max_ratio: float = 0.75
    hflip: float = 0.5
    vflip: float = 0.0
    photometric: bool = True

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
                 ) -> Tuple[np.ndarray, np.ndarray]:
        """(BGR uint8 HxWx3, mask uint8 HxW) -> both at exactly crop_size."""
        h, w = image.shape[:2]
        if self.ratio_range is not None:
            r = rng.uniform(*self.ratio_range)
            image, mask = resize_pair(image, mask, (max(1, int(h * r + 0.5)), max(1, int(w * r + 0.5))))
        elif self.short_edges:
            short = int(self.short_edges[int(rng.integers(len(self.short_edges)))])
            image, mask = resize_pair(image, mask, short_edge_size((h, w), short, self.max_size))
        y0, y1, x0, x1 = random_crop_box(mask, self.crop_size, rng, self.cat_max_ratio)
        image, mask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        if rng.random() < self.hflip:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < self.vflip:
            image, mask = image[::-1], mask[::-1]
        image, mask = np.ascontiguousarray(image), np.ascontiguousarray(mask)
        if self.photometric:
            image = photometric_distortion(image, rng)
        return pad_pair(image, mask, self.crop_size)


def rescale_size(hw: Tuple[int, int], scale: Tuple[int, int] = (2048, 512)) -> Tuple[int, int]:
    """mmcv keep-ratio rescale: the largest size with long edge <= max(scale), short <= min(scale)."""
    h, w = hw
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


@dataclass
class TestTransform:
    """Official test resize: keep ratio into `scale`, then pad bottom/right to `size_divisor`."""

    __test__ = False  # not a pytest class
    scale: Tuple[int, int] = (2048, 512)
    size_divisor: int = 32

    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int]]:
        """-> (padded BGR image with H, W multiples of size_divisor, (h, w) of the valid region)."""
        h, w = rescale_size(image.shape[:2], self.scale)
        if (h, w) != image.shape[:2]:
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        d = self.size_divisor
        ph, pw = (-h) % d, (-w) % d
        if ph or pw:
            image = cv2.copyMakeBorder(image, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        return image, (h, w)
