"""demo:// knows its ground truth: escapes and overkill live, in the run summary, the records and the report."""
from __future__ import annotations

import logging
import sqlite3
from types import SimpleNamespace

import numpy as np

from ds2a.data.synth import render_cell
from ds2a.inspect.parts import PartVerdict
from ds2a.inspect.rules import default_rules
from ds2a.inspect.truth import TruthTally
from ds2a.sources.demo import DemoSource

CLASSES = ["background", "damage", "smudge", "dust"]


def _pv(part: str, passed: bool, reasons=()) -> PartVerdict:
    return PartVerdict(part, "part", passed, list(reasons), 0, 0, 1, 0.0, 0.0)


def test_demo_truth_is_the_generators_mask_cached_or_rerendered() -> None:
    src = DemoSource(frames=12, seed=3)
    seen = {f.part_id for f in src if f.part_id}
    assert seen
    part = sorted(seen)[0]
    mask, size = src.truth(part)
    ch, cw = src.cell_hw
    expected = render_cell(np.random.default_rng([3, int(part[5:])]), (ch // 2, cw // 2))[1]
    assert size == (ch, cw) and np.array_equal(mask, expected)
    fresh = DemoSource(seed=3)  # nothing rendered yet: the mask is re-made from the seed
    assert np.array_equal(fresh.truth(part)[0], expected)
    assert src.truth("part-000001") is None and src.truth("cell-x") is None


def test_truth_tally_counts_escapes_and_overkill_and_keeps_them_in_the_records(caplog) -> None:
    bad = np.zeros((32, 32), np.uint8)
    bad[4:16, 4:16] = 1  # 144 px damage at mask size, x4 in frame pixels
    good = np.zeros((32, 32), np.uint8)
    good[:2, :2] = 3  # a 4 px speck (16 frame px): below the default 64 px minimum
    truths = {"p1": bad, "p2": bad, "p3": good, "p4": good}
    records = SimpleNamespace(extra={})
    caplog.set_level(logging.INFO, logger="ds2a")
    tally = TruthTally(default_rules(CLASSES), CLASSES, lambda pid: (truths[pid], (64, 64)) if pid in truths else None,
                       records)
    tally.publish(object(), [_pv("p1", False, ["damage: 1 region(s) > max_count 0"]), _pv("p2", True)])
    tally.publish(object(), [_pv("p3", False, ["dust: 1 region(s) > max_count 0"]), _pv("p4", True),
                             _pv("unknown", False)])
    tally.publish(None, [])
    s = records.extra["truth"]
    assert (s["total"], s["defective"], s["escapes"], s["overkill"]) == (4, 2, 1, 1)
    assert s["escape_rate"] == 0.5 and s["overkill_rate"] == 0.5
    assert s["escaped_parts"] == ["p2"] and s["overkill_parts"] == ["p3"]
    assert s["by_class"]["damage"]["escapes"] == 1 and s["by_class"]["dust"]["overkill"] == 1
    printed = caplog.text
    assert "ESCAPE: defective part passed: p2 (damage)" in printed and "OVERKILL: good part failed: p3" in printed


def test_summary_and_report_show_the_truth(tmp_path) -> None:
    from ds2a.inspect.loop import LoopStats
    from ds2a.inspect.summary import summary_text
    from ds2a.records.database import Records, connect
    from ds2a.records.report import format_report, summarise

    truth = {"total": 10, "defective": 8, "good": 2, "escapes": 1, "overkill": 0, "escape_rate": 0.125,
             "overkill_rate": 0.0, "by_class": {}, "escaped_parts": ["cell-000004"], "overkill_parts": [],
             "rules": "built-in default"}
    pub = SimpleNamespace(parts=[], frames_failed=0, images_failed=0, image_error="", records=None)
    text = summary_text(LoopStats(), pub, CLASSES, truth)
    assert "escapes 1 (12.5% of defective), overkill 0 (0.0% of good)" in text
    assert "ground truth" not in summary_text(LoopStats(), pub, CLASSES)

    db = tmp_path / "r.sqlite"
    rec = Records(str(db))
    run = rec.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, {"level": "part"}, None)
    rec.extra["truth"] = truth
    rec.finish_run("finished", {"frames": 3})
    rec.close()
    con = connect(str(db), create=False, readonly=True)
    con.row_factory = sqlite3.Row
    s = summarise(con, run)
    assert s["truth"]["escapes"] == 1
    assert "ground truth  10 parts judged against ground truth (8 defective): escapes 1" in format_report(s)
