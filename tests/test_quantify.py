"""Defect quantification: components per class, scaling to the frame, mm^2, min area, confidence."""
from __future__ import annotations

import numpy as np
import pytest

from ds2a.inspect.quantify import quantify, totals

CLASSES = ("background", "damage", "smudge", "dust")


def _map() -> np.ndarray:
    cm = np.zeros((32, 64), np.uint8)
    cm[2:6, 3:11] = 1  # damage 4x8 = 32 px
    cm[20:22, 40:42] = 1  # damage 2x2 = 4 px
    cm[10:20, 30:35] = 3  # dust 10x5 = 50 px
    return cm


def test_components_per_class_with_area_bbox_centroid_at_model_size():
    defects = quantify(_map(), CLASSES)
    assert [(d.class_name, d.area_px) for d in defects] == [("damage", 32), ("damage", 4), ("dust", 50)]
    big = defects[0]
    assert big.bbox == (3, 2, 8, 4)
    assert big.centroid == pytest.approx((6.5, 3.5))
    assert big.area_mm2 is None and big.confidence is None


def test_scaling_to_the_frame_multiplies_area_and_boxes():
    # frame 4x larger in width, 2x in height: areas x8, boxes and centroids scaled
    defects = quantify(_map(), CLASSES, frame_hw=(64, 256))
    big = defects[0]
    assert big.area_px == 32 * 8
    assert big.bbox == (12, 4, 32, 8)
    # the centre of the region stays the centre after scaling
    assert big.centroid == pytest.approx((6.5 * 4 + 1.5, 3.5 * 2 + 0.5))


def test_mm2_uses_the_scale_squared_and_min_area_filters_in_frame_pixels():
    defects = quantify(_map(), CLASSES, frame_hw=(64, 256), mm_per_pixel=0.1, min_area_px=40)
    assert [d.area_px for d in defects] == [256, 400]  # the 4 px region (32 frame px) is gone
    assert defects[0].area_mm2 == pytest.approx(256 * 0.01)


def test_origin_places_a_region_of_interest_in_the_frame():
    plain = quantify(_map(), CLASSES, frame_hw=(64, 256))
    shifted = quantify(_map(), CLASSES, frame_hw=(64, 256), origin=(100, 50))
    assert [d.area_px for d in shifted] == [d.area_px for d in plain]
    assert shifted[0].bbox == (112, 54, 32, 8)
    assert shifted[0].centroid == pytest.approx((plain[0].centroid[0] + 100, plain[0].centroid[1] + 50))


def test_confidence_is_the_mean_over_each_region():
    cm = _map()
    conf = np.full(cm.shape, 0.2, np.float32)
    conf[2:6, 3:7] = 1.0  # half of the big damage region confident
    defects = quantify(cm, CLASSES, confidence=conf)
    assert defects[0].confidence == pytest.approx(0.6)
    assert defects[1].confidence == pytest.approx(0.2)


def test_totals_cover_every_defect_class():
    t = totals(quantify(_map(), CLASSES, mm_per_pixel=1.0), CLASSES)
    assert set(t) == {"damage", "smudge", "dust"}
    assert (t["damage"].count, t["damage"].area_px, t["damage"].area_mm2) == (2, 36, 36)
    assert t["smudge"].count == 0 and t["smudge"].area_mm2 is None


def test_empty_map_has_no_defects():
    assert quantify(np.zeros((8, 8), np.uint8), CLASSES) == []


def test_regions_touching_at_a_corner_are_one_region():
    """8-connectivity: a one-pixel diagonal crack is one defect, not specks below the minimum area."""
    cm = np.zeros((16, 16), np.uint8)
    for i in range(12):
        cm[2 + i, 2 + i] = 1
    defects = quantify(cm, CLASSES, min_area_px=10)
    assert [(d.class_name, d.area_px, d.bbox) for d in defects] == [("damage", 12, (2, 2, 12, 12))]
    anti = np.fliplr(cm)
    assert [d.area_px for d in quantify(anti, CLASSES)] == [12]


def test_a_region_of_exactly_the_minimum_area_is_kept():
    cm = np.zeros((16, 16), np.uint8)
    cm[0:5, 0:4] = 2  # 20 px
    assert [d.area_px for d in quantify(cm, CLASSES, min_area_px=20)] == [20]
    assert quantify(cm, CLASSES, min_area_px=20.5) == []


def test_a_class_id_equal_to_the_class_count_is_refused():
    cm = np.zeros((8, 8), np.uint8)
    cm[0, 0] = len(CLASSES)
    with pytest.raises(Exception, match="class id 4 but lists 4 classes"):
        quantify(cm, CLASSES)
