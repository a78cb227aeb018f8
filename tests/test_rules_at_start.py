"""Rules that could never fail a part in the frames a source gives are refused before the run.

When the frame size is known at start (a video, a camera) the region the model judges (the ROI inside
the frame, else the frame) must be one where some defect could exceed a limit; otherwise every part
would PASS by construction (a 2x2 frame under the default 64 px minimum area, say).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ds2a.errors import UserError
from ds2a.inspect.run import InspectOptions, inspect

pytest.importorskip("onnx")
from fakes.onnx_models import threshold_onnx  # noqa: E402


def _video(path: Path, size, n: int = 3) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, size)
    for _ in range(n):
        w.write(np.zeros((size[1], size[0], 3), np.uint8))  # black: the threshold model sees damage everywhere
    w.release()
    assert cv2.VideoCapture(str(path)).isOpened()
    return path


def _run(tmp_path: Path, source: Path, rules_text: str = "", **kw):
    rules = None
    if rules_text:
        rules = tmp_path / "rules.yaml"
        rules.write_text(rules_text)
    options = InspectOptions(model=str(threshold_onnx(tmp_path / "m.onnx")), source=str(source), headless=True,
                             rules=None if rules is None else str(rules), **kw)
    return inspect(options, out=open(tmp_path / "out.txt", "w"))


def test_min_area_larger_than_the_video_frame_is_refused_at_start(tmp_path):
    video = _video(tmp_path / "v.avi", (32, 24))
    with pytest.raises(UserError, match=r"the frame of .*v.avi is 32x24 = 768 px: the rules .* ignore regions "
                                        r"under 5000 px .*could never FAIL"):
        _run(tmp_path, video, "min_area_px: 5000\nclasses: {damage: {max_count: 0}}\n")


def test_an_roi_smaller_than_the_minimum_area_is_refused_at_start(tmp_path):
    video = _video(tmp_path / "v.avi", (96, 64))
    with pytest.raises(UserError, match="--roi 0,0,6,6 is 6x6 = 36 px: .*ignore regions under 64 px"):
        _run(tmp_path, video, roi=(0, 0, 6, 6))


def test_the_same_black_video_fails_when_its_frame_can_hold_a_defect(tmp_path):
    video = _video(tmp_path / "v.avi", (32, 24))
    summary = _run(tmp_path, video, "min_area_px: 100\nclasses: {damage: {max_count: 0}}\n")
    assert summary.parts and all(not p.passed for p in summary.parts)
