"""Segmentation metrics from a confusion matrix, with mmsegmentation's IoUMetric definitions.

Numbers here must be comparable with the paper's tables, so the definitions follow
mmsegmentation 1.x exactly: pixels labelled `ignore_index` (255) are dropped, areas are
summed over the whole split before dividing (not averaged per image), a 0/0 class gives
NaN and the means skip NaN (`np.nanmean`). Values are fractions in [0, 1]. numpy only.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

IGNORE_INDEX = 255
PER_CLASS_KEYS = ("IoU", "Acc", "Dice", "Precision", "Recall", "Fscore")


class ConfusionMatrix:
    """Accumulates a (K, K) matrix, rows = ground truth, columns = prediction."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        # labelled pixels whose prediction is not a valid class: count in the label area only
        self.unmatched_label = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Add one prediction/label pair (same shape, integer class indices).

        Ground-truth labels >= num_classes other than ignore_index are an error (wrong
        dataset for this model); predictions outside the range count as wrong for their pixel.
        """
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from label shape {gt.shape}")
        keep = gt != self.ignore_index
        g = gt[keep].astype(np.int64)
        p = pred[keep].astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.num_classes):
            raise ValueError(f"label value {int(g.max())} outside 0..{self.num_classes - 1} (or {self.ignore_index})")
        # A prediction outside the class range still counts against the label's recall.
        outside = (p < 0) | (p >= self.num_classes)
        if outside.any():
            self.unmatched_label += np.bincount(g[outside], minlength=self.num_classes)
            g, p = g[~outside], p[~outside]
        k = self.num_classes
        self.matrix += np.bincount(g * k + p, minlength=k * k).reshape(k, k)

    def label_area(self) -> np.ndarray:
        """Pixels per ground-truth class (including those predicted as an invalid class)."""
        return self.matrix.sum(axis=1) + self.unmatched_label

    def metrics(self, class_names: Optional[Sequence[str]] = None, beta: float = 1.0) -> Dict[str, Any]:
        """All per-class and summary metrics as a JSON-ready dict (NaN becomes None in `per_class`)."""
        return metrics_from_areas(
            intersect=np.diag(self.matrix).astype(np.float64),
            pred_area=self.matrix.sum(axis=0).astype(np.float64),
            label_area=self.label_area().astype(np.float64),
            class_names=class_names,
            beta=beta,
        )


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(v: np.ndarray) -> float:
    if np.all(np.isnan(v)):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(v))


def metrics_from_areas(
    intersect: np.ndarray,
    pred_area: np.ndarray,
    label_area: np.ndarray,
    class_names: Optional[Sequence[str]] = None,
    beta: float = 1.0,
) -> Dict[str, Any]:
    """mmseg IoUMetric: per-class IoU/Acc/Dice/Precision/Recall/Fscore and their NaN-skipping means."""
    union = pred_area + label_area - intersect
    iou = _div(intersect, union)
    acc = _div(intersect, label_area)
    dice = _div(2 * intersect, pred_area + label_area)
    precision = _div(intersect, pred_area)
    recall = acc
    # mmseg's f_score gives NaN when precision = recall = 0, so a class the model never finds drops
    # out of mFscore and the mean looks better than the model is. Here such a class scores 0; only a
    # class absent from both labels and predictions is NaN (skipped), as for the other metrics.
    p, r = np.nan_to_num(precision), np.nan_to_num(recall)
    present = (label_area + pred_area) > 0
    fscore = np.where(present, _div((1 + beta**2) * p * r, beta**2 * p + r), np.nan)
    fscore = np.where(present & (p + r == 0), 0.0, fscore)
    k = len(intersect)
    names: List[str] = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(names) != k:
        raise ValueError(f"{len(names)} class names for {k} classes")
    total = float(label_area.sum())
    arrays = (iou, acc, dice, precision, recall, fscore)
    per_class = {name: {key: _none_if_nan(arr[i]) for key, arr in zip(PER_CLASS_KEYS, arrays)}
                 for i, name in enumerate(names)}
    for i, name in enumerate(names):
        per_class[name]["pixels"] = int(label_area[i])
    return {
        "aAcc": float(intersect.sum() / total) if total > 0 else float("nan"),
        "mIoU": _nanmean(iou),
        "mAcc": _nanmean(acc),
        "mDice": _nanmean(dice),
        "mPrecision": _nanmean(precision),
        "mRecall": _nanmean(recall),
        "mFscore": _nanmean(fscore),
        "per_class": per_class,
    }


def _none_if_nan(v: float) -> Optional[float]:
    v = float(v)
    return None if math.isnan(v) else v


def format_table(result: Dict[str, Any]) -> str:
    """A readable per-class table (percent, 2 decimals, like mmseg's log) plus the summary line."""
    cols = PER_CLASS_KEYS
    names = list(result["per_class"])
    width = max([len("class")] + [len(n) for n in names])
    lines = [f"{'class':<{width}} " + " ".join(f"{c:>9}" for c in cols)]
    for name in names:
        row = result["per_class"][name]
        cells = ["      nan" if row[c] is None else f"{100 * row[c]:9.2f}" for c in cols]
        lines.append(f"{name:<{width}} " + " ".join(cells))
    summary = "  ".join(f"{k} {100 * result[k]:.2f}" for k in ("aAcc", "mIoU", "mAcc", "mDice", "mFscore"))
    lines.append(summary)
    return "\n".join(lines)
