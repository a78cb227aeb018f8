"""Turn a class map into measured defects: connected components per class, areas in px and mm^2.

Components are found at model resolution (cheap) and scaled to frame pixels, so the cost
does not grow with the camera resolution.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import UserError


@dataclass
class Defect:
    """One connected region of a defect class, in frame coordinates."""

    class_id: int
    class_name: str
    area_px: float
    area_mm2: Optional[float]
    bbox: Tuple[int, int, int, int]  # x, y, w, h
    centroid: Tuple[float, float]  # x, y
    confidence: Optional[float] = None  # mean model confidence over the region, when known

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["bbox"], d["centroid"] = list(self.bbox), [round(v, 1) for v in self.centroid]
        return d


@dataclass
class ClassTotal:
    count: int = 0
    area_px: float = 0.0
    area_mm2: Optional[float] = None


def quantify(
    class_map: np.ndarray,
    classes: Sequence[str],
    frame_hw: Optional[Tuple[int, int]] = None,
    mm_per_pixel: Optional[float] = None,
    min_area_px: float = 0.0,
    confidence: Optional[np.ndarray] = None,
    origin: Tuple[int, int] = (0, 0),
) -> List[Defect]:
    """Defects of every class except 0 (background), largest first within a class.

    class_map: uint8 (h, w) at model size; frame_hw: the frame it came from (areas, boxes and
    centroids are scaled to it); min_area_px: smaller regions (in frame pixels) are noise;
    origin: (x, y) of the inspected region in the frame, added to boxes and centroids.
    """
    h, w = class_map.shape[:2]
    fh, fw = frame_hw or (h, w)
    sx, sy = fw / w, fh / h
    px_area = sx * sy
    ox, oy = origin
    mm2 = mm_per_pixel * mm_per_pixel if mm_per_pixel else None
    present = np.bincount(class_map.ravel(), minlength=len(classes))
    if len(present) > len(classes):  # an id outside the class list would be skipped: a silent PASS
        raise UserError(f"the model gave class id {len(present) - 1} but lists {len(classes)} classes "
                        f"({', '.join(map(str, classes))}); the model and its metadata disagree: re-export it "
                        "with `ds2a export`")
    defects: List[Defect] = []
    for cid in range(1, len(classes)):
        if present[cid] == 0:
            continue
        mask = cv2.compare(class_map, cid, cv2.CMP_EQ)
        n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
        conf_means = None
        if confidence is not None and n > 1:
            sums = np.bincount(labels.ravel(), weights=confidence.ravel(), minlength=n)
            conf_means = sums / np.maximum(stats[:, cv2.CC_STAT_AREA], 1)
        order = np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1
        for k in order:
            x, y, bw, bh, area = (int(v) for v in stats[k])
            area_px = area * px_area
            if area_px < min_area_px:
                continue
            defects.append(Defect(
                class_id=cid, class_name=str(classes[cid]), area_px=round(area_px, 1),
                area_mm2=round(area_px * mm2, 4) if mm2 else None,
                bbox=(ox + int(x * sx), oy + int(y * sy), max(1, round(bw * sx)), max(1, round(bh * sy))),
                centroid=(ox + float((cents[k][0] + 0.5) * sx - 0.5), oy + float((cents[k][1] + 0.5) * sy - 0.5)),
                confidence=None if conf_means is None else round(float(conf_means[k]), 4),
            ))
    return defects


def totals(defects: Sequence[Defect], classes: Sequence[str]) -> Dict[str, ClassTotal]:
    """Count and summed area per defect class (every class except background appears)."""
    out = {str(c): ClassTotal() for c in classes[1:]}
    for d in defects:
        t = out.setdefault(d.class_name, ClassTotal())
        t.count += 1
        t.area_px += d.area_px
        if d.area_mm2 is not None:
            t.area_mm2 = (t.area_mm2 or 0.0) + d.area_mm2
    return out
