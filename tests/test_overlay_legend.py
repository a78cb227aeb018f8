"""The video's annotation: every failure reason is drawn (not the first two), and the legend explains painted
regions without a box (smaller than the rules' minimum area: shown, not counted) whenever any are painted."""
from __future__ import annotations

import numpy as np

from ds2a.inspect.overlay import Renderer, info_lines
from ds2a.meta import MBSD_CLASSES, MBSD_PALETTE

REASONS = ["damage: count 1 > max_count 0", "smudge: area 40 > max_area_px 20", "dust: count 3 > max_count 2"]


def _render(reasons, class_map=None, h=720, w=1280):
    frame = np.full((h, w, 3), 60, np.uint8)
    cm = np.zeros((64, 64), np.uint8) if class_map is None else class_map
    return Renderer(MBSD_CLASSES, MBSD_PALETTE, "overlay").render(frame, cm, False, reasons, part_id="cell-1")


def test_every_reason_is_drawn():
    two, three = _render(REASONS[:2]), _render(REASONS)
    changed = np.argwhere(np.any(two != three, axis=2))
    assert len(changed) > 50  # the third reason is on the picture
    assert changed[:, 0].min() > 100 and changed[:, 1].min() > 640  # below the first two, on the right


def test_reasons_that_do_not_fit_say_how_many_are_left_out():
    assert info_lines("cell-1", REASONS, 10) == ["cell-1"] + REASONS
    assert info_lines(None, REASONS, 3) == REASONS
    assert info_lines("cell-1", REASONS, 3) == ["cell-1", REASONS[0], "+2 more reason(s)"]
    small = _render(REASONS * 10, h=240, w=320)  # far more than fit: drawn without leaving the picture
    assert small.shape == (240, 320, 3)


def test_the_legend_explains_unboxed_specks_when_something_is_painted():
    speck = np.zeros((64, 64), np.uint8)
    speck[60, 60] = 3  # one painted pixel, bottom right, with no defect box (below the minimum area)
    plain, painted = _render([]), _render([], speck)
    rows = len(MBSD_CLASSES) - 1
    line = int(28 * max(0.4, 720 / 720.0 * 0.7)) + 4
    note = (slice(8 + rows * line, 8 + (rows + 1) * line), slice(0, 640))  # the legend row after the classes
    assert np.any(plain[note] != painted[note])  # the note is drawn there
    above = (slice(0, 8 + rows * line), slice(0, 640))
    assert np.array_equal(plain[above], painted[above])  # the class legend itself is unchanged
