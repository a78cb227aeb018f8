"""The one frame -> model-input function, shared by export, calibration, runtimes, eval and training.

Every path that feeds the network goes through here, so a calibration image, an eval image
and a camera frame are turned into numbers the same way.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import cv2
import numpy as np

from .meta import MEAN_RGB, STD_RGB


def to_bgr(frame: np.ndarray) -> np.ndarray:
    """Grayscale, BGRA or 16-bit frames become 8-bit 3-channel BGR."""
    if frame.dtype != np.uint8:
        if frame.dtype == np.uint16:
            frame = (frame >> 8).astype(np.uint8)
        else:
            frame = np.clip(frame, 0, 255).astype(np.uint8)
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 1:
        return cv2.cvtColor(frame[:, :, 0], cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    raise ValueError(f"cannot use a frame of shape {frame.shape}: expected HxW, HxWx1, HxWx3 or HxWx4")


def resize_frame(frame: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """Any frame -> uint8 BGR at the model size (H, W). No copy when it already fits."""
    frame = to_bgr(frame)
    h, w = size_hw
    if frame.shape[0] != h or frame.shape[1] != w:
        interp = cv2.INTER_AREA if frame.shape[0] > h else cv2.INTER_LINEAR
        frame = cv2.resize(frame, (w, h), interpolation=interp)
    return np.ascontiguousarray(frame)


def normalize(
    frames_bgr: np.ndarray,
    mean: Sequence[float] = MEAN_RGB,
    std: Sequence[float] = STD_RGB,
) -> np.ndarray:
    """uint8 BGR (H,W,3) or (N,H,W,3) -> float32 RGB normalised NCHW, exactly what the graph does inside."""
    x = frames_bgr if frames_bgr.ndim == 4 else frames_bgr[None]
    x = x[..., ::-1].astype(np.float32)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def class_map_to_frame(class_map: np.ndarray, frame_hw: Tuple[int, int]) -> np.ndarray:
    """Model-size class map back to the frame size (nearest neighbour keeps labels exact)."""
    h, w = frame_hw
    if class_map.shape[:2] == (h, w):
        return class_map
    return cv2.resize(class_map, (w, h), interpolation=cv2.INTER_NEAREST)
