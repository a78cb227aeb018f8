"""Confusion-matrix metrics follow mmsegmentation's IoUMetric (ignore 255, NaN-skipping means)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ds2a.metrics import ConfusionMatrix, format_table


def test_hand_computed_two_class_case() -> None:
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [0, 0, 0, 1]], np.uint8)
    cm = ConfusionMatrix(2)
    cm.update(pred, gt)
    r = cm.metrics(["bg", "fg"])
    # bg: gt 4 px, pred 4 px (the ignored pixel does not count), intersect 3
    assert r["per_class"]["bg"]["IoU"] == pytest.approx(3 / 5)
    assert r["per_class"]["bg"]["Acc"] == pytest.approx(3 / 4)
    assert r["per_class"]["bg"]["Precision"] == pytest.approx(3 / 4)
    assert r["per_class"]["bg"]["Dice"] == pytest.approx(6 / 8)
    # fg: gt 3 px, pred 3 px, intersect 2
    assert r["per_class"]["fg"]["IoU"] == pytest.approx(2 / 4)
    assert r["per_class"]["fg"]["Recall"] == pytest.approx(2 / 3)
    assert r["per_class"]["fg"]["Fscore"] == pytest.approx(2 / 3)
    assert r["mIoU"] == pytest.approx((3 / 5 + 2 / 4) / 2)
    assert r["aAcc"] == pytest.approx(5 / 7)
    assert r["per_class"]["fg"]["pixels"] == 3


def test_absent_class_is_nan_and_left_out_of_means() -> None:
    gt = np.array([[0, 1], [1, 0]], np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(gt.copy(), gt)
    r = cm.metrics()
    assert r["per_class"]["2"]["IoU"] is None and r["per_class"]["2"]["Dice"] is None
    assert r["mIoU"] == 1.0 and r["mDice"] == 1.0


def test_class_only_in_prediction_scores_zero_iou() -> None:
    gt = np.zeros((2, 2), np.uint8)
    pred = np.array([[0, 2], [0, 0]], np.uint8)
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    r = cm.metrics()
    assert r["per_class"]["2"]["IoU"] == 0.0
    assert r["per_class"]["2"]["Acc"] is None  # no label pixels: 0/0 as in mmseg
    assert r["mIoU"] == pytest.approx((3 / 4 + 0.0) / 2)


def _brute_force(preds, gts, k):
    out = {}
    for c in range(k):
        inter = pa = la = 0
        for p, g in zip(preds, gts):
            valid = g != 255
            inter += int(np.sum((p == c) & (g == c) & valid))
            pa += int(np.sum((p == c) & valid))
            la += int(np.sum((g == c) & valid))
        union = pa + la - inter
        iou = inter / union if union else math.nan
        dice = 2 * inter / (pa + la) if pa + la else math.nan
        prec = inter / pa if pa else math.nan
        rec = inter / la if la else math.nan
        out[c] = (iou, dice, prec, rec)
    return out


def test_matches_brute_force_over_random_batches() -> None:
    rng = np.random.default_rng(3)
    k = 4
    preds = [rng.integers(0, k, (13, 17)).astype(np.uint8) for _ in range(5)]
    gts = []
    for _ in range(5):
        g = rng.integers(0, k, (13, 17)).astype(np.uint8)
        g[rng.random(g.shape) < 0.1] = 255
        gts.append(g)
    cm = ConfusionMatrix(k)
    for p, g in zip(preds, gts):
        cm.update(p, g)
    r = cm.metrics()
    ref = _brute_force(preds, gts, k)
    for c in range(k):
        iou, dice, prec, rec = ref[c]
        row = r["per_class"][str(c)]
        assert row["IoU"] == pytest.approx(iou)
        assert row["Dice"] == pytest.approx(dice)
        assert row["Precision"] == pytest.approx(prec)
        assert row["Recall"] == pytest.approx(rec)
        assert row["Fscore"] == pytest.approx(2 * prec * rec / (prec + rec))
    assert r["mIoU"] == pytest.approx(np.mean([ref[c][0] for c in range(k)]))
    valid = np.concatenate([g.ravel() != 255 for g in gts])
    correct = np.concatenate([(p == g).ravel() for p, g in zip(preds, gts)])
    assert r["aAcc"] == pytest.approx(correct[valid].mean())


def test_label_outside_class_range_is_an_error_but_bad_prediction_counts_as_wrong() -> None:
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.zeros((2, 2), np.uint8), np.full((2, 2), 3, np.uint8))
    cm.update(np.array([[0, 7]], np.uint8), np.array([[0, 1]], np.uint8))
    r = cm.metrics()
    assert r["per_class"]["1"]["Recall"] == 0.0 and r["aAcc"] == 0.5


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        ConfusionMatrix(2).update(np.zeros((2, 3)), np.zeros((3, 2)))


def test_table_lists_every_class_in_percent() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([[0, 1]]), np.array([[0, 0]]))
    text = format_table(cm.metrics(["background", "crack"]))
    assert "background" in text and "crack" in text and "mIoU 25.00" in text


def test_a_class_the_model_never_finds_scores_fscore_zero_not_skipped():
    """A class with labelled pixels and no correct prediction must pull mFscore down, not drop out of it."""
    from ds2a.metrics import metrics_from_areas

    intersect = np.array([90.0, 0.0])
    pred_area = np.array([100.0, 0.0])  # class 1 never predicted
    label_area = np.array([90.0, 10.0])
    r = metrics_from_areas(intersect, pred_area, label_area, ["bg", "crack"])
    assert r["per_class"]["crack"]["Fscore"] == 0.0
    bg = 2 * 0.9 * 1.0 / 1.9
    assert r["mFscore"] == pytest.approx(bg / 2)
    absent = metrics_from_areas(np.array([5.0, 0.0]), np.array([5.0, 0.0]), np.array([5.0, 0.0]))
    assert absent["per_class"]["1"]["Fscore"] is None and absent["mFscore"] == pytest.approx(1.0)
