"""Draw a result for people: class colours (overlay, mask or side by side), legend, verdict, every reason, FPS.

Runs in the output thread only. Colours are looked up at model resolution and scaled once
with nearest neighbour, so drawing costs a few cv2 calls per frame.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..preprocess import class_map_to_frame, to_bgr
from .quantify import Defect

MODES = ("overlay", "mask", "side")
PASS_BGR, FAIL_BGR, NONE_BGR = (60, 180, 60), (40, 40, 220), (110, 110, 110)
# painted pixels without a box are regions smaller than the rules' minimum area: shown, not counted
SPECKS_NOTE = "no box: below min. area, not counted"


class Renderer:
    """Turns (frame, class map, verdict) into an annotated BGR image."""

    def __init__(self, classes: Sequence[str], palette: Sequence[Tuple[int, int, int]], mode: str = "overlay",
                 alpha: float = 0.5) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.classes, self.mode, self.alpha = list(classes), mode, float(alpha)
        self.palette = [tuple(int(v) for v in c) for c in palette][:256]  # BGR per class id: the page's too
        self.lut = np.zeros((256, 3), np.uint8)
        self.lut[: len(self.palette)] = np.asarray(self.palette, np.uint8).reshape(-1, 3)

    def colorize(self, class_map: np.ndarray, frame_hw: Tuple[int, int]) -> np.ndarray:
        """Class colours at frame size (background black)."""
        h, w = frame_hw
        small = self.lut[class_map]
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)

    def render(self, frame: np.ndarray, class_map: Optional[np.ndarray], passed: bool, reasons: Sequence[str],
               defects: Sequence[Defect] = (), fps: Optional[float] = None, part_id: Optional[str] = None,
               roi: Optional[Tuple[int, int, int, int]] = None) -> np.ndarray:
        """roi: (x, y, w, h) of the frame the class map covers (outlined); None = the whole frame.
        class_map None: the frame was not inspected (no part in view), shown with a grey 'NO PART'."""
        frame = to_bgr(frame)
        if class_map is None:
            out = frame.copy()
            self._annotate(out, passed, [], fps, part_id, label="NO PART")
            return np.hstack([frame, out]) if self.mode == "side" else out
        x, y, w, h = roi or (0, 0, frame.shape[1], frame.shape[0])
        region = frame[y:y + h, x:x + w]
        color = self.colorize(class_map, (h, w))
        if self.mode == "mask":
            painted = color
        else:
            painted = cv2.addWeighted(region, 1.0 - self.alpha, color, self.alpha, 0.0)
            background = cv2.compare(class_map_to_frame(class_map, (h, w)), 0, cv2.CMP_EQ)
            cv2.copyTo(region, background, painted)  # background pixels stay untouched
        if roi is None:
            out = painted
        else:
            out = np.zeros_like(frame) if self.mode == "mask" else frame.copy()
            out[y:y + h, x:x + w] = painted
            cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (200, 200, 200), 1)
        for d in defects:
            bx, by, bw, bh = d.bbox
            cv2.rectangle(out, (bx, by), (bx + bw - 1, by + bh - 1), tuple(int(v) for v in self.lut[d.class_id]), 1)
        self._annotate(out, passed, reasons, fps, part_id, specks=bool(class_map.any()))
        if self.mode == "side":
            out = np.hstack([frame, out])
        return out

    def _annotate(self, img: np.ndarray, passed: bool, reasons: Sequence[str], fps: Optional[float],
                  part_id: Optional[str], label: Optional[str] = None, specks: bool = False) -> None:
        """specks: something is painted, so the legend says what an unboxed painted region is."""
        h, w = img.shape[:2]
        scale = max(0.4, min(w, h) / 720.0 * 0.7)
        thick = max(1, round(scale * 2))
        line = int(28 * scale) + 4
        # legend (top left)
        for i, name in enumerate(self.classes[1:], start=1):
            y = 8 + (i - 1) * line
            cv2.rectangle(img, (8, y), (8 + line - 8, y + line - 8), tuple(int(v) for v in self.lut[i]), -1)
            cv2.putText(img, name, (8 + line, y + line - 10), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8,
                        (255, 255, 255), thick, cv2.LINE_AA)
        if specks:
            y = 8 + max(len(self.classes) - 1, 0) * line
            cv2.putText(img, SPECKS_NOTE, (8, y + line - 10), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.6,
                        (255, 255, 255), thick, cv2.LINE_AA)
        # verdict (top right) and every reason below it
        text = label or ("PASS" if passed else "FAIL")
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale * 1.6, thick + 1)
        x0 = w - tw - 24
        color = NONE_BGR if label else PASS_BGR if passed else FAIL_BGR
        cv2.rectangle(img, (x0 - 8, 8), (w - 8, 8 + th + 20), color, -1)
        cv2.putText(img, text, (x0, 8 + th + 10), cv2.FONT_HERSHEY_SIMPLEX, scale * 1.6, (255, 255, 255),
                    thick + 1, cv2.LINE_AA)
        top = 8 + th + 20
        rows = max(1, (h - 40 - top) // line)  # what fits above the FPS line
        for i, r in enumerate(info_lines(part_id, reasons, rows)):
            (rw, _), _ = cv2.getTextSize(r, cv2.FONT_HERSHEY_SIMPLEX, scale * 0.7, thick)
            cv2.putText(img, r, (max(4, w - rw - 12), top + line * (i + 1)), cv2.FONT_HERSHEY_SIMPLEX,
                        scale * 0.7, (255, 255, 255), thick, cv2.LINE_AA)
        if fps is not None:
            cv2.putText(img, f"{fps:.1f} FPS (end-to-end)", (8, h - 12), cv2.FONT_HERSHEY_SIMPLEX, scale * 0.8,
                        (255, 255, 255), thick, cv2.LINE_AA)


def info_lines(part_id: Optional[str], reasons: Sequence[str], rows: int) -> List[str]:
    """The part id and every reason; when they do not fit in `rows`, the last row says how many are left out."""
    lines = [t for t in [part_id or ""] + [str(r) for r in reasons] if t]
    if len(lines) <= rows:
        return lines
    keep = max(rows - 1, 0)
    return lines[:keep] + [f"+{len(lines) - keep} more reason(s)"]
