"""A label equal to the class count is refused with the clear message where labels are read
(the dataset loader and the confusion matrix), never as a numpy reshape error."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from ds2a.data.datasets import SegmentationDataset
from ds2a.errors import UserError
from ds2a.metrics import ConfusionMatrix

CLASSES = ["background", "damage", "smudge", "dust"]


@pytest.mark.parametrize("label", [len(CLASSES), len(CLASSES) + 1])
def test_the_confusion_matrix_names_a_label_at_or_past_the_class_count(label):
    conf = ConfusionMatrix(len(CLASSES))
    gt = np.zeros((4, 4), np.uint8)
    gt[0, 0] = label
    with pytest.raises(ValueError, match=f"label value {label} outside 0..3"):
        conf.update(np.zeros((4, 4), np.uint8), gt)
    assert conf.matrix.sum() == 0  # nothing half-counted


def test_the_largest_valid_label_is_counted():
    conf = ConfusionMatrix(len(CLASSES))
    gt = np.full((2, 2), len(CLASSES) - 1, np.uint8)
    conf.update(gt, gt)
    assert conf.matrix[3, 3] == 4


@pytest.mark.parametrize("label", [len(CLASSES), 254])
def test_a_mask_label_at_the_class_count_is_a_clear_error(tmp_path, label):
    image, mask = tmp_path / "a.png", tmp_path / "a_mask.png"
    cv2.imwrite(str(image), np.zeros((8, 8, 3), np.uint8))
    m = np.zeros((8, 8), np.uint8)
    m[1, 1] = label
    m[2, 2] = 255  # ignored pixels are fine
    cv2.imwrite(str(mask), m)
    ds = SegmentationDataset([image], [mask], CLASSES, root=tmp_path)
    with pytest.raises(UserError, match=rf"has labels \[{label}\] outside 0..3"):
        ds.load(0)
    m[1, 1] = len(CLASSES) - 1
    cv2.imwrite(str(mask), m)
    assert ds.load(0).mask.max() == 255
