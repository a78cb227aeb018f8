"""`ds2a eval --rules/--sweep`: part verdicts from predictions and ground truth, escapes and overkill."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.eval.parts import PartCollector, parse_sweep, sweep
from ds2a.inspect.rules import default_rules, parse_rules
from ds2a.inspect.truth import min_floor

CLASSES = ["background", "damage", "smudge", "dust"]


def _blob(value: int, side: int, shape=(64, 64), at=(8, 8)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[at[0]:at[0] + side, at[1]:at[1] + side] = value
    return m


def _cases() -> list:
    """(name, prediction, truth): caught, escape (damage), overkill (dust), clean, ignore-only."""
    empty = np.zeros((64, 64), np.uint8)
    ignore = empty.copy()
    ignore[:20, :20] = 255
    return [("caught", _blob(1, 10), _blob(1, 12)),
            ("escape", empty, _blob(1, 12)),
            ("overkill", _blob(3, 10), empty),
            ("clean", empty, empty),
            ("ignored", empty, ignore)]


def _collect(rules=None, floor=None) -> PartCollector:
    rules = rules or default_rules(CLASSES)
    col = PartCollector(rules, CLASSES, floor=min_floor(rules) if floor is None else floor)
    for name, pred, truth in _cases():
        col.add(name, pred, truth)
    return col


def test_escapes_and_overkill_are_counted_with_their_classes() -> None:
    parts = _collect().verdicts()
    assert (parts["total"], parts["defective"], parts["good"]) == (5, 2, 3)
    assert (parts["escapes"], parts["overkill"]) == (1, 1)
    assert parts["escaped_parts"] == ["escape"] and parts["overkill_parts"] == ["overkill"]
    assert parts["escape_rate"] == 0.5 and parts["overkill_rate"] == pytest.approx(1 / 3)
    assert parts["by_class"]["damage"] == {"escapes": 1, "overkill": 0}
    assert parts["by_class"]["dust"] == {"escapes": 0, "overkill": 1}


def test_regions_below_the_minimum_area_do_not_make_a_part_defective() -> None:
    # 10x10 = 100 px predicted dust fails at min area 64; at 128 it is noise
    rules = parse_rules({"min_area_px": 128, "classes": {"damage": {"max_count": 0}, "dust": {"max_count": 0}}},
                        CLASSES)
    parts = _collect(rules).verdicts()
    assert parts["overkill"] == 0 and parts["defective"] == 2  # the 12x12 = 144 px damage still counts


def test_frames_grouping_makes_one_part_of_consecutive_images() -> None:
    rules = parse_rules({"part": {"by": "frames", "frames": 2}, "classes": {"damage": {"max_count": 0},
                                                                             "dust": {"max_count": 0}}}, CLASSES)
    parts = _collect(rules).verdicts()
    # (caught, escape) -> defective, caught (a frame failed);  (overkill, clean) -> overkill;  (ignored) good
    assert (parts["total"], parts["defective"], parts["escapes"], parts["overkill"]) == (3, 1, 0, 1)


def test_sweep_of_min_area_trades_overkill_for_escapes() -> None:
    values = [16.0, 64.0, 128.0, 200.0]
    rules = default_rules(CLASSES)
    col = _collect(rules, floor=min_floor(rules, values))
    rows = sweep(col, "min_area_px", values)
    assert [r["defective"] for r in rows] == [2, 2, 2, 2]  # the truth keeps the given rules (64 px)
    assert [r["overkill"] for r in rows] == [1, 1, 0, 0]  # the 100 px false dust stops counting
    assert [r["escapes"] for r in rows] == [1, 1, 2, 2]  # so does the 100 px predicted damage
    assert col.rules.min_area_px == 64  # the sweep works on copies
    per_class = sweep(col, "dust.max_count", [0, 1])
    assert [r["overkill"] for r in per_class] == [1, 0]


@pytest.mark.parametrize("spec, match", [
    ("min_area_px", "FIELD=V1"),
    ("colour=1,2", "not a numeric rule field"),
    ("rust.max_count=1", "not a defect class"),
    ("min_area_px=a,b", "numbers"),
    ("max_count=0.5", "whole numbers"),
    ("min_area_px=-1", ">= 0"),
])
def test_bad_sweeps_are_user_errors(spec: str, match: str) -> None:
    with pytest.raises(UserError, match=match):
        parse_sweep(spec, CLASSES)


@pytest.fixture()
def pred_data(tmp_path: Path) -> tuple:
    data, preds = tmp_path / "data", tmp_path / "preds"
    for d in ("images", "masks"):
        (data / "test" / d).mkdir(parents=True)
    preds.mkdir()
    (data / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    for name, pred, truth in _cases():
        cv2.imwrite(str(data / "test" / "images" / f"{name}.png"), np.zeros((64, 64, 3), np.uint8))
        cv2.imwrite(str(data / "test" / "masks" / f"{name}.png"), truth)
        cv2.imwrite(str(preds / f"{name}.png"), pred)
    return data, preds


def test_cli_reports_parts_and_writes_the_sweep(pred_data: tuple, tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    data, preds = pred_data
    out, prefix = tmp_path / "m.json", tmp_path / "sw"
    rc = main(["eval", "--pred-dir", str(preds), "--data", str(data), "--rules", "default", "--json", str(out),
               "--sweep", "min_area_px=16,128", "--sweep-out", str(prefix)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "escapes: 1 of 2" in printed and "overkill: 1 of 3" in printed
    result = json.loads(out.read_text())
    parts = result["parts"]
    assert (parts["total"], parts["defective"], parts["escapes"], parts["overkill"]) == (5, 2, 1, 1)
    rows = list(csv.DictReader(open(f"{prefix}.csv")))
    assert [int(r["overkill"]) for r in rows] == [1, 0]
    assert Path(f"{prefix}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 128 |" in Path(f"{prefix}.md").read_text()
    assert [r["overkill"] for r in result["sweep"]] == [1, 0]


@pytest.mark.parametrize("extra, match", [
    (["--sweep", "min_area_px=16"], "need --rules"),
    (["--rules", "default", "--sweep-out", "x"], "--sweep-out needs --sweep"),
    (["--rules", "nosuch.yaml"], "does not exist"),
])
def test_cli_bad_part_options_exit_2(pred_data: tuple, extra: list, match: str,
                                     capsys: pytest.CaptureFixture) -> None:
    data, preds = pred_data
    assert main(["eval", "--pred-dir", str(preds), "--data", str(data)] + extra) == 2
    assert match in capsys.readouterr().err
