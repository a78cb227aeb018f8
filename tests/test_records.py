"""SQLite records: WAL + versioned schema, per-frame rows, clear errors, and `ds2a report` on top."""
from __future__ import annotations

import csv
import sqlite3
import time

import numpy as np
import pytest

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.inspect.loop import Result
from ds2a.inspect.quantify import Defect
from ds2a.inspect.records import SCHEMA_VERSION, Records, connect
from ds2a.inspect.report_cmd import summarise
from ds2a.inspect.rules import PartVerdict
from ds2a.inspect.sources import Frame

CLASSES = ["background", "damage", "smudge", "dust"]


def _result(seq: int, part: str, defects, reasons=()) -> Result:
    frame = Frame(np.zeros((20, 30, 3), np.uint8), seq, time.time(), time.perf_counter(), part)
    ms = {"queue": 1.0, "preprocess": 2.0, "infer": 10.0 + seq, "postprocess": 0.5, "output": 3.0,
          "latency": 20.0 + seq}
    return Result(seq, frame, np.zeros((4, 4), np.uint8), list(defects), not reasons, list(reasons), ms)


def _fill(path) -> int:
    rec = Records(str(path))
    run = rec.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, {"level": "part"}, 0.1)
    dust = Defect(3, "dust", 80.0, 0.8, (1, 2, 3, 4), (2.5, 3.5), 0.9)
    dmg = Defect(1, "damage", 200.0, 2.0, (5, 5, 10, 10), (9.5, 9.5), None)
    frames = [(0, "a", [dust], ()), (1, "a", [dust, dmg], ("damage: 1 region(s) > max_count 0",)),
              (2, "b", [], ()), (3, "b", [dust], ())]
    for seq, part, defects, reasons in frames:
        rec.add_frame(_result(seq, part, defects, reasons))
        rec.commit()
    rec.add_verdict(PartVerdict("a", "part", False, ["damage: 1 region(s) > max_count 0"], 0, 1, 2, 1.0, 2.0))
    rec.add_verdict(PartVerdict("b", "part", True, [], 2, 3, 2, 3.0, 4.0))
    rec.finish_run("finished", {"frames": 4, "dropped": 7, "corrupt": 1, "reconnects": 2, "e2e_fps": 30.0,
                                "model_fps": 40.0})
    rec.close()
    return run


def test_schema_is_versioned_wal_and_indexed(tmp_path):
    path = tmp_path / "sub" / "r.sqlite"  # the folder is created
    _fill(path)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "frames", "defects", "verdicts", "timings"} <= tables
    indices = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert {"frames_run_t", "frames_verdict", "verdicts_run_verdict", "verdicts_t"} <= indices
    assert con.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 4
    assert con.execute("SELECT COUNT(*) FROM defects").fetchone()[0] == 4
    assert con.execute("SELECT area_mm2, x, y, w, h FROM defects WHERE class_name='damage'").fetchone() == (
        2.0, 5, 5, 10, 10)
    infer = con.execute("SELECT infer_ms FROM timings ORDER BY frame_id").fetchall()
    assert infer == [(10.0,), (11.0,), (12.0,), (13.0,)]


def test_a_second_run_appends_to_the_same_file(tmp_path):
    path = tmp_path / "r.sqlite"
    assert (_fill(path), _fill(path)) == (1, 2)


def test_committed_frames_survive_without_close(tmp_path):
    path = tmp_path / "r.sqlite"
    rec = Records(str(path))
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    rec.add_frame(_result(0, "a", []))
    rec.commit()
    rec.add_frame(_result(1, "a", []))  # in flight, not committed
    other = sqlite3.connect(path)  # what another process (or a restart after SIGKILL) sees
    assert other.execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 1


def test_unwritable_or_wrong_databases_fail_clearly(tmp_path):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(UserError, match="writable folder"):
        Records(str(blocker / "db.sqlite"))
    with pytest.raises(UserError, match="cannot use inspection database"):
        Records(str(tmp_path))  # a folder
    old = tmp_path / "old.sqlite"
    sqlite3.connect(old).execute("PRAGMA user_version=7")
    with pytest.raises(UserError, match="schema version 7"):
        Records(str(old))
    with pytest.raises(UserError, match="does not exist"):
        connect(str(tmp_path / "none.sqlite"), create=False)


def test_summary_counts_parts_defects_latency_and_drops(tmp_path):
    path = tmp_path / "r.sqlite"
    run = _fill(path)
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    s = summarise(con, run)
    assert (s["parts"], s["pass"], s["fail"], s["pass_rate"]) == (2, 1, 1, 0.5)
    assert (s["frames"], s["frames_fail"], s["dropped"], s["reconnects"]) == (4, 1, 7, 2)
    assert s["defects"]["dust"] == {"regions": 3, "frames": 3, "area_px": 240.0, "area_mm2": 2.4}
    assert s["defects"]["damage"]["regions"] == 1
    assert s["latency_ms"]["infer_ms"]["median"] == pytest.approx(11.5)
    assert s["fail_reasons"] == {"damage: max_count": 1}


def test_report_command_prints_and_writes_csv(tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    _fill(path)
    out_csv = tmp_path / "parts.csv"
    assert main(["report", str(path), "--csv", str(out_csv)]) == 0
    text = capsys.readouterr().out
    assert "2: 1 PASS, 1 FAIL, pass rate 50.0%" in text and "dropped       7" in text
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["part_id"], r["verdict"], r["damage_regions"], r["dust_regions"]) for r in rows] == [
        ("a", "FAIL", "1", "2"), ("b", "PASS", "0", "1")]


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "none.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err
    path = tmp_path / "r.sqlite"
    _fill(path)
    assert main(["report", str(path), "--run", "9"]) == 2
    assert "run 9 is not in" in capsys.readouterr().err
    empty = tmp_path / "empty.sqlite"
    Records(str(empty)).close()
    assert main(["report", str(empty)]) == 2
    assert "no runs yet" in capsys.readouterr().err
