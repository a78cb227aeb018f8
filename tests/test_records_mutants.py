"""Tests written from the mutation-testing survivors of ds2a/records/database.py (docs/MUTATION.md).

Each test checks behaviour a survivor showed untested: every column a frame, verdict, run and audit row
keeps; the unsaved-rows file (its name, its lines, one file per run, the fallback folders, the message
naming the file or every folder that refused it); the compact end row a full disk still takes; the
outage counters in the run's stats; the alarm; `drain`'s patience; `run_status` at the boundary of
STALE_S; `identify`'s and `connect`'s refusals word for word. Time is a fake clock where waiting matters
(`Clock`), and a full disk is a connection that refuses chosen statements (`Refusing`).
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, List, Optional

import numpy as np
import pytest

import ds2a.records.database as database
from ds2a.errors import UserError
from ds2a.inspect.loop import UNREADABLE, Result
from ds2a.inspect.parts import PartVerdict
from ds2a.inspect.quantify import Defect
from ds2a.records import audit
from ds2a.records.database import (
    APPLICATION_ID,
    HEARTBEAT_S,
    OLDEST_VERSION,
    SCHEMA,
    SCHEMA_VERSION,
    STALE_S,
    Records,
    RecordsBackedUp,
    connect,
    identify,
    process_identity,
    run_status,
    unsaved_dirs,
)
from ds2a.sources import Frame

CLASSES = ["background", "damage", "smudge", "dust"]
STAMP = (2026, 12, 7, 8, 9, 10, 0, 341, 0)  # the fake clock's wall time, for the unsaved file's name
FULL = "database or disk is full"


class Clock:
    """Stands in for the `time` module inside database.py: monotonic time moves only when the code sleeps
    (or the test moves it); `on_sleep(n)` runs after the n-th sleep."""

    def __init__(self, on_sleep=None) -> None:
        self.t = 1000.0
        self.slept: List[float] = []
        self.on_sleep = on_sleep

    def monotonic(self) -> float:
        return self.t

    def time(self) -> float:
        return time.time()

    def strftime(self, fmt: str, *args: Any) -> str:
        return time.strftime(fmt, STAMP)

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s
        if self.on_sleep is not None:
            self.on_sleep(len(self.slept))


class Refusing:
    """rec.con as on a full disk for chosen statements: SQL starting with one of `refuse` (any letter case)
    fails with SQLite's own message; everything else reaches the real connection."""

    def __init__(self, con: sqlite3.Connection, *refuse: str) -> None:
        self._con, self.refuse = con, tuple(r.lower() for r in refuse)

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.lstrip().lower().startswith(self.refuse):
            raise sqlite3.OperationalError(FULL)
        return self._con.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


FRAMES_IN = "INSERT INTO frames"
VERDICTS_IN = "INSERT INTO verdicts"
END_ROW = "UPDATE runs SET ended_at=?, status=?, frames=?, dropped"
COMPACT_ROW = "UPDATE runs SET ended_at=?, status=?, frames=?, stats"


def _result(seq: int, part: Optional[str], defects=(), reasons=(), name: str = "") -> Result:
    frame = Frame(np.zeros((20, 30, 3), np.uint8), 100 + seq, 1700000000.0 + seq, 0.0, part, name)
    ms = {"queue": 1.0, "preprocess": 2.0, "infer": 3.0, "postprocess": 4.0, "output": 5.0, "latency": 6.0}
    return Result(seq, frame, None, list(defects), not reasons, list(reasons), ms)


def _verdict(part: str = "a", reasons=("damage",), **kw: Any) -> PartVerdict:
    return PartVerdict(part, "part", not reasons, list(reasons), 0, 1, 2, 10.0, 11.0, **kw)


def _records(tmp_path, clock: Optional[Clock] = None, monkeypatch=None, **kw: Any) -> Records:
    if clock is not None:
        monkeypatch.setattr(database, "time", clock)
    rec = Records(str(tmp_path / "r.sqlite"), **kw)
    rec.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, {"level": "part"}, 0.1)
    return rec


def _locked(path):
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


def _row(path, sql: str, *args: Any):
    con = sqlite3.connect(path)
    try:
        return con.execute(sql, args).fetchall()
    finally:
        con.close()


def _name(rec: Records) -> str:
    return f"r.sqlite.unsaved-run{rec.run_id}-20261207T080910.jsonl"


def _lines(path) -> List[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# -- what a row keeps ---------------------------------------------------------------------------------------

def test_frames_defects_timings_and_verdicts_keep_every_column(tmp_path):
    rec = _records(tmp_path)
    dust = Defect(3, "dust", 80.0, 0.8, (1, 2, 3, 4), (2.5, 3.5), 0.9)
    rec.add_frame(_result(0, "a", [dust], ("dust: too big",), name="f0.png"), "a.jpg", "a_raw.jpg")
    rec.add_frame(_result(1, "a", [], (UNREADABLE,)))  # no usable image: no width or height
    rec.add_verdict(_verdict("a", ("dust: too big",), recipe="r1", recipe_sha256="ab"))
    rec.add_verdict(_verdict("b", ()))
    rec.commit()
    path = tmp_path / "r.sqlite"
    frames = _row(path, "SELECT run_id, seq, source_index, t, part_id, name, width, height, verdict, reasons, "
                        "n_defects, image_path, raw_path FROM frames ORDER BY id")
    assert frames == [(1, 0, 100, 1700000000.0, "a", "f0.png", 30, 20, "FAIL", '["dust: too big"]', 1, "a.jpg",
                       "a_raw.jpg"),
                      (1, 1, 101, 1700000001.0, "a", None, None, None, "FAIL", json.dumps([UNREADABLE]), 0, None,
                       None)]
    assert _row(path, "SELECT frame_id, run_id, class_id, class_name, area_px, area_mm2, x, y, w, h, cx, cy, "
                      "confidence FROM defects") == [(1, 1, 3, "dust", 80.0, 0.8, 1, 2, 3, 4, 2.5, 3.5, 0.9)]
    assert _row(path, "SELECT frame_id, run_id, queue_ms, preprocess_ms, infer_ms, postprocess_ms, output_ms, "
                      "latency_ms FROM timings ORDER BY frame_id") == [(1, 1, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
                                                                      (2, 1, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0)]
    assert _row(path, "SELECT run_id, part_id, level, verdict, reasons, first_seq, last_seq, n_frames, t_start, "
                      "t_end, recipe, recipe_sha256 FROM verdicts ORDER BY id") == [
        (1, "a", "part", "FAIL", '["dust: too big"]', 0, 1, 2, 10.0, 11.0, "r1", "ab"),
        (1, "b", "part", "PASS", None, 0, 1, 2, 10.0, 11.0, None, None)]
    rec.close()


def test_the_run_row_and_its_audit_rows_name_the_run_the_rules_and_who_ran_it(tmp_path):
    path = tmp_path / "r.sqlite"
    connect(str(path)).close()
    con = sqlite3.connect(path)  # a run from before the rules were stored: rules NULL
    con.execute("INSERT INTO runs (started_at, status) VALUES (1.0, 'finished')")
    con.commit()
    con.close()
    rules = {"level": "part"}
    sha = hashlib.sha256(json.dumps(rules).encode()).hexdigest()
    rec = Records(str(path))
    rec.extra["evidence"] = {"model_sha256": "m1", "engine_sha256": "", "recipe": "r1", "other": "x"}
    before = time.time()
    run = rec.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, rules, 0.1)
    row = _row(path, "SELECT started_at, status, model, backend, source, classes, rules, mm_per_pixel, stats "
                     "FROM runs WHERE id=?", run)[0]
    assert row[1:8] == ("running", "m.onnx", "onnxruntime", "demo://", json.dumps(CLASSES), json.dumps(rules), 0.1)
    started, stats = row[0], json.loads(row[8])
    assert before <= started <= time.time()
    assert {k: stats[k] for k in ("pid", "host", "boot", "pid_start")} == process_identity()
    assert stats["heartbeat"] == started
    rows = {r[5]: r for r in audit.rows(sqlite3.connect(path), run)}
    assert sorted(rows) == ["rules_change", "run_start"]
    assert stats["audit"] == {"rules_change": rows["rules_change"][0], "run_start": rows["run_start"][0]}
    for r in rows.values():  # id, t, user, role, origin, action, run_id, part_id, detail
        assert (r[1], r[2], r[4], r[6]) == (round(started, 6), audit.local_user(), audit.local_origin(), run)
    assert json.loads(rows["rules_change"][8]) == {"previous_run": 1, "rules_sha256": sha,
                                                   "rules_sha256_before": hashlib.sha256(b"").hexdigest()}
    assert json.loads(rows["run_start"][8]) == {"model": "m.onnx", "backend": "onnxruntime", "source": "demo://",
                                                "rules_sha256": sha, "model_sha256": "m1", "recipe": "r1"}
    rec.finish_run("finished", {"frames": 3, "dropped": 4, "corrupt": 5, "reconnects": 6, "e2e_fps": 7.5,
                                "model_fps": 8.5, "parts": 2})
    ended, status, *counts, stats = _row(path, "SELECT ended_at, status, frames, dropped, corrupt, reconnects, "
                                               "e2e_fps, model_fps, stats FROM runs WHERE id=?", run)[0]
    assert (status, counts) == ("finished", [3, 4, 5, 6, 7.5, 8.5])
    assert started <= ended <= time.time()
    stop = [r for r in audit.rows(sqlite3.connect(path), run) if r[5] == "run_stop"]
    assert len(stop) == 1 and json.loads(stats)["audit"]["run_stop"] == stop[0][0]
    assert (stop[0][1], stop[0][2], stop[0][4]) == (round(ended, 6), audit.local_user(), audit.local_origin())
    assert json.loads(stop[0][8]) == {"status": "finished", "frames": 3, "parts": 2}
    rec.close()
    again = Records(str(path))  # the same rules as the run before: no rules_change row
    second = again.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, rules, 0.1)
    assert [r[5] for r in audit.rows(sqlite3.connect(path), second)] == ["run_start"]
    again.close()
    other = Records(str(path))
    third = other.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, {"level": "frame"}, 0.1)
    change = [r for r in audit.rows(sqlite3.connect(path), third) if r[5] == "rules_change"]
    assert json.loads(change[0][8])["previous_run"] == second
    assert json.loads(change[0][8])["rules_sha256_before"] == sha
    other.close()


def test_a_run_the_database_refuses_to_start_leaves_no_row_and_says_what_to_do(tmp_path):
    rec = Records(str(tmp_path / "r.sqlite"))
    rec.con = Refusing(rec.con, "INSERT INTO audit")  # the run row goes in, its audit row does not: neither stays
    with pytest.raises(UserError) as err:
        rec.start_run("m", "b", "s", CLASSES, {}, None)
    assert str(err.value) == (f"cannot write inspection database {rec.path}: {FULL}; free the disk or stop the "
                              "process holding it, or pass another --db")
    assert rec.run_id is None
    assert _row(tmp_path / "r.sqlite", "SELECT COUNT(*) FROM runs") == [(0,)]
    rec.close()


# -- outages: the queue, the warnings, the alarm, the stats -------------------------------------------------

def test_an_outage_is_warned_retried_on_time_and_its_end_reported(tmp_path, monkeypatch, caplog):
    clock = Clock()
    rec = _records(tmp_path, clock, monkeypatch, retry_s=2.0)
    path = str(tmp_path / "r.sqlite")
    assert rec.con.execute("PRAGMA busy_timeout").fetchone()[0] == database.BUSY_MS
    other = _locked(path)
    rec.add_frame(_result(0, "a"))
    rec.commit()
    assert caplog.messages[-1] == (f"warning: records: cannot write {path} (database is locked); inspection goes "
                                   "on, records wait in memory (up to 3000) and are retried every 2 s")
    assert rec.con.execute("PRAGMA busy_timeout").fetchone()[0] == 5  # retries must not stall the loop
    other.execute("ROLLBACK")
    other.close()
    clock.t += 1.9  # before the next try: nothing is written yet, even though the lock is gone
    rec.add_frame(_result(1, "a"))
    rec.commit()
    assert rec.pending == 2 and _row(path, "SELECT COUNT(*) FROM frames") == [(0,)]
    assert rec.health()["db_max_delay_s"] == 1.9
    clock.t += 0.6
    rec.commit()
    assert rec.pending == 0 and _row(path, "SELECT seq FROM frames ORDER BY id") == [(0,), (1,)]
    assert caplog.messages[-1] == f"records: {path} writable again after 2.5 s; 2 queued rows written, nothing lost"
    assert rec.con.execute("PRAGMA busy_timeout").fetchone()[0] == database.BUSY_MS
    other = _locked(path)  # a second outage is counted as one more
    rec.add_frame(_result(2, "a"))
    rec.commit()
    assert rec.outages == 2
    other.execute("ROLLBACK")
    other.close()
    rec.close()


def test_health_counts_queued_given_up_and_saved_rows_and_the_longest_outage(tmp_path, monkeypatch):
    clock = Clock()
    rec = _records(tmp_path, clock, monkeypatch, retry_s=0.5)
    assert rec.health() == {"db_outages": 0, "db_max_delay_s": 0.0, "db_max_backlog": 0, "db_unwritten": 0,
                            "db_unwritten_frames": 0, "db_unwritten_verdicts": 0}
    path = str(tmp_path / "r.sqlite")
    other = _locked(path)
    rec.add_frame(_result(0, "a"))
    rec.commit()
    clock.t += 1.23456
    assert rec.drain(0) == (f"1 records could not be written to {path} (database is locked); saved to "
                            f"{tmp_path / _name(rec)}")
    rec.add_frame(_result(1, "a"))
    rec.add_verdict(_verdict())
    rec.add_verdict(_verdict("b"))
    rec.commit()
    assert rec.health() == {"db_outages": 1, "db_max_delay_s": 1.23, "db_max_backlog": 3, "db_unwritten": 4,
                            "db_unwritten_frames": 2, "db_unwritten_verdicts": 2,
                            "db_unsaved_file": str(tmp_path / _name(rec)), "db_last_error": "database is locked"}
    other.execute("ROLLBACK")
    other.close()
    rec.close()


def test_a_full_queue_raises_the_alarm_once_with_how_long_and_how_many(tmp_path, monkeypatch):
    clock = Clock()
    rec = _records(tmp_path, clock, monkeypatch, max_pending=2, retry_s=1.0)
    path = str(tmp_path / "r.sqlite")
    other = _locked(path)
    for seq in range(2):
        rec.add_frame(_result(seq, "a"))
        rec.commit()
    clock.t += 3.4
    rec.add_frame(_result(2, "a"))
    with pytest.raises(RecordsBackedUp) as err:
        rec.commit()
    assert str(err.value) == (f"ALARM: inspection database {path} has refused writes for 3 s (database is locked) "
                              "and 3 records wait in memory, the limit; stopping the station so that no part "
                              "passes unrecorded. Free the disk or the lock, then restart")
    assert rec.health()["db_max_delay_s"] == 3.4 and rec.health()["db_max_backlog"] == 3
    clock.t += 1.0
    rec.add_frame(_result(3, "a"))
    rec.commit()  # the alarm is raised once; the shutdown that follows still tries to write
    other.execute("ROLLBACK")
    other.close()
    rec.finish_run("error", {})  # after the alarm the records that could be written are, without a second error
    assert _row(path, "SELECT COUNT(*) FROM frames") == [(4,)]
    rec.close()


def test_the_heartbeat_is_renewed_every_heartbeat_s_with_the_runs_facts(tmp_path, monkeypatch):
    clock = Clock()
    rec = _records(tmp_path, clock, monkeypatch)
    path = tmp_path / "r.sqlite"
    rec.extra["fail_images_unsaved"] = 1

    def beat():
        return json.loads(_row(path, "SELECT stats FROM runs")[0][0])

    first = beat()["heartbeat"]
    time.sleep(0.01)
    clock.t = 1000.0 + HEARTBEAT_S - 0.1
    rec.add_frame(_result(0, "a"))
    rec.commit()
    assert beat()["heartbeat"] == first
    clock.t = 1000.0 + HEARTBEAT_S  # exactly HEARTBEAT_S after the start: renewed
    rec.add_frame(_result(1, "a"))
    rec.commit()
    stats = beat()
    assert stats["heartbeat"] > first and stats["fail_images_unsaved"] == 1
    assert {k: stats[k] for k in ("pid", "host", "boot", "pid_start")} == process_identity()
    rec.close()


# -- drain and close: how long the end of a run waits ------------------------------------------------------

def test_drain_writes_everything_once_the_lock_goes_and_closes_the_outage(tmp_path, monkeypatch, caplog):
    path = str(tmp_path / "r.sqlite")
    other: List[Any] = []

    def release(n: int) -> None:
        if n == 2:
            other[0].execute("ROLLBACK")

    clock = Clock(release)
    rec = _records(tmp_path, clock, monkeypatch, retry_s=2.0)
    other.append(_locked(path))
    rec.add_frame(_result(0, "a"))
    rec.commit()
    assert rec.drain(10.0) == ""
    assert clock.slept == [0.5, 0.5]  # retried every min(retry_s, 0.5) s
    assert rec.pending == 0 and rec.health()["db_max_delay_s"] == 1.0
    rec.add_frame(_result(1, "a"))
    rec.commit()  # the outage ended in drain: no second "writable again"
    assert not [m for m in caplog.messages if "writable again" in m]
    assert _row(path, "SELECT COUNT(*) FROM frames") == [(2,)]
    rec.close()


def test_drain_with_no_patience_gives_up_at_once_and_by_default_waits_ten_seconds(tmp_path, monkeypatch):
    clock = Clock()
    rec = _records(tmp_path, clock, monkeypatch, retry_s=0.1)
    rec.con = Refusing(rec.con, FRAMES_IN)
    rec.add_frame(_result(0, "a"))
    assert "1 records could not be written" in rec.drain(0)
    assert clock.slept == []
    rec.add_frame(_result(1, "a"))
    rec.drain()
    assert 9.9 <= sum(clock.slept) <= 10.15 and set(clock.slept) == {0.1}
    del clock.slept[:]
    rec.add_frame(_result(2, "a"))
    rec.close()  # close waits 2 s for what is still queued, then saves it
    assert sum(clock.slept) == pytest.approx(2.0, abs=0.15)
    assert [r["row"][1] for r in _lines(tmp_path / _name(rec))] == [0, 1, 2]


# -- the unsaved-rows file ---------------------------------------------------------------------------------

def test_refused_rows_and_the_refused_end_row_go_to_one_file_with_every_field(tmp_path, monkeypatch, caplog):
    rec = _records(tmp_path, Clock(), monkeypatch, retry_s=0.0)
    rec.con = Refusing(rec.con, FRAMES_IN, VERDICTS_IN, END_ROW, COMPACT_ROW)
    dust = Defect(3, "dust", 80.0, 0.8, (1, 2, 3, 4), (2.5, 3.5), 0.9)
    rec.add_frame(_result(0, "Teil-\u00e4", [dust], ("dust: too big",)))
    rec.add_verdict(_verdict("Teil-\u00e4", ("dust: too big",)))
    rec.finish_patience_s = 0.0
    path, saved = str(tmp_path / "r.sqlite"), str(tmp_path / _name(rec))
    with pytest.raises(UserError) as err:
        rec.finish_run("finished", {"frames": 1, "parts": 1})
    assert str(err.value) == (f"records incomplete: 2 records could not be written to {path} ({FULL}); saved to "
                              f"{saved}; the run's end could not be written to {path} ({FULL}); saved to {saved}")
    assert f"ERROR: records: 2 records could not be written to {path} ({FULL}); saved to {saved}" in caplog.messages
    assert f"ERROR: records: cannot mark run 1 finished in {path}: {FULL}" in caplog.messages
    lines = _lines(saved)
    assert lines[0] == {"table": "frames", "row": [1, 0, 100, 1700000000.0, "Teil-\u00e4", None, 30, 20, "FAIL",
                                                   '["dust: too big"]', 1, None, None],
                        "defects": [[1, 3, "dust", 80.0, 0.8, 1, 2, 3, 4, 2.5, 3.5, 0.9]],
                        "timing": [1, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}
    assert lines[1] == {"table": "verdicts", "row": [1, "Teil-\u00e4", "part", "FAIL", '["dust: too big"]', 0, 1, 2,
                                                     10.0, 11.0, None, None], "defects": [], "timing": []}
    assert [sorted(x) for x in lines[2:]] == [["row", "table"]] and lines[2]["table"] == "runs"
    end = lines[2]["row"]
    assert (end["id"], end["status"], end["stats"]["frames"], end["stats"]["parts"]) == (1, "finished", 1, 1)
    assert abs(end["ended_at"] - time.time()) < 60
    assert (end["stats"]["db_unwritten"], end["stats"]["db_unwritten_frames"],
            end["stats"]["db_unwritten_verdicts"], end["stats"]["db_unsaved_file"]) == (2, 1, 1, saved)
    assert _row(path, "SELECT status FROM runs") == [("running",)]  # the run's end is in the file only
    assert [r[5] for r in audit.rows(sqlite3.connect(path))] == ["run_start"]  # no stop row without the end row
    rec.close()


def test_a_full_disk_that_refuses_the_end_row_still_takes_a_compact_one(tmp_path, monkeypatch, caplog):
    rec = _records(tmp_path, Clock(), monkeypatch, retry_s=0.0)
    rec.con = Refusing(rec.con, FRAMES_IN, END_ROW)
    rec.add_frame(_result(0, "a"))
    rec.finish_patience_s = 0.0
    stats = {"frames": 3, "dropped": 4, "corrupt": 5, "parts": 2, "reconnects": 6, "e2e_fps": 7.0, "chart": "x" * 50}
    path, saved = str(tmp_path / "r.sqlite"), str(tmp_path / _name(rec))
    with pytest.raises(UserError) as err:  # the frame is saved to the file, the run's end (compact) to the database
        rec.finish_run("finished", stats)
    assert str(err.value) == f"records incomplete: 1 records could not be written to {path} ({FULL}); saved to {saved}"
    ended, status, frames, small = _row(path, "SELECT ended_at, status, frames, stats FROM runs")[0]
    assert (status, frames) == ("finished", 3) and abs(ended - time.time()) < 60
    assert json.loads(small) == {"frames": 3, "dropped": 4, "corrupt": 5, "parts": 2, "db_unwritten": 1,
                                 "db_unwritten_frames": 1, "db_unwritten_verdicts": 0, "db_unsaved_file": saved,
                                 "db_last_error": FULL, **process_identity()}
    assert not [m for m in caplog.messages if "cannot mark run" in m]
    assert [r["table"] for r in _lines(saved)] == ["frames"]
    rec.close()


def test_the_runs_file_is_appended_to_and_replaced_by_a_new_one_only_when_it_cannot_be(tmp_path, monkeypatch):
    rec = _records(tmp_path, Clock(), monkeypatch)
    rec.con = Refusing(rec.con, FRAMES_IN)
    path, first = str(tmp_path / "r.sqlite"), tmp_path / _name(rec)
    rec.add_frame(_result(0, "a"))
    assert rec.drain(0).endswith(f"saved to {first}")
    rec.add_frame(_result(1, "a"))
    assert rec.drain(0) == f"1 records could not be written to {path} ({FULL}); saved to {first}"
    assert [r["row"][1] for r in _lines(first)] == [0, 1]  # appended: one file per run
    os.rename(first, tmp_path / "moved.jsonl")
    os.mkdir(first)  # the run's file cannot take more: the next folder gets a new one
    rec.add_frame(_result(2, "a"))
    elsewhere = os.path.join(os.environ["DS2A_UNSAVED_DIR"], _name(rec))
    assert rec.drain(0).endswith(f"saved to {elsewhere}")
    assert [r["row"][1] for r in _lines(elsewhere)] == [2] and rec.unsaved_file == elsewhere
    rec.close()


def test_rows_no_folder_takes_are_reported_lost_with_every_folder_and_its_error(tmp_path, monkeypatch):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp))
    rec = _records(tmp_path, Clock(), monkeypatch)
    rec.con = Refusing(rec.con, FRAMES_IN)
    rec.add_frame(_result(0, "a"))
    first = tmp_path / _name(rec)
    assert rec.drain(0).endswith(f"saved to {first}")
    os.remove(first)
    os.mkdir(first)  # the run's file is now a folder: "Is a directory"

    def no_space(path, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(database, "write_new", no_space)
    rec.add_frame(_result(1, "a"))
    rec.add_frame(_result(2, "a"))
    env = os.environ["DS2A_UNSAVED_DIR"]
    nospace = "No space left on device"
    assert rec.drain(0) == (
        f"2 records could not be written to {tmp_path / 'r.sqlite'} ({FULL}); they could not be saved anywhere "
        f"({first}: Is a directory; {tmp_path}: {nospace}; {env}: {nospace}; {home / '.ds2a' / 'unsaved'}: "
        f"{nospace}; {tmp}: {nospace}): LOST")
    assert rec.health()["db_unwritten"] == 3 and rec.unsaved_file == str(first)
    rec.close()


def test_unsaved_dirs_in_order_without_repeats(tmp_path, monkeypatch):
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp))
    db = str(tmp_path / "db" / "r.sqlite")
    monkeypatch.setenv("DS2A_UNSAVED_DIR", str(tmp_path / "spare"))
    assert unsaved_dirs(db) == [str(tmp_path / "db"), str(tmp_path / "spare"), str(home / ".ds2a" / "unsaved"),
                                str(tmp)]
    monkeypatch.setenv("DS2A_UNSAVED_DIR", "")
    assert unsaved_dirs(db) == [str(tmp_path / "db"), str(home / ".ds2a" / "unsaved"), str(tmp)]
    monkeypatch.setenv("DS2A_UNSAVED_DIR", str(tmp_path / "db"))
    assert unsaved_dirs(db) == [str(tmp_path / "db"), str(home / ".ds2a" / "unsaved"), str(tmp)]


# -- run_status: killed, stale, running -------------------------------------------------------------------

def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_run_status_at_the_stale_boundary_and_with_every_kind_of_stats():
    away = {"pid": 1, "host": "another-host", "heartbeat": 1000.0}
    assert run_status("running", json.dumps(away), now=1000.0 + STALE_S) == "running"  # exactly STALE_S: not yet
    assert run_status("running", json.dumps(away), now=1000.0 + STALE_S + 0.01) == "stale"
    assert run_status("running", away, now=1000.0 + STALE_S) == "running"  # stats already parsed
    assert run_status("running", {**away, "heartbeat": time.time()}) == "running"  # now defaults to the clock
    assert run_status("running", "not json", 1000.0, now=1010.0) == "running"  # unreadable stats: the start time
    assert run_status("running", "{}", 1000.0, now=1010.0) == "running"
    assert run_status("running", None, 1000.0, now=1000.0 + STALE_S + 1) == "stale"
    assert run_status("running", {"pid": "1", "host": socket.gethostname()}, 1000.0, now=1010.0) == "running"
    here = {"pid": _dead_pid(), "host": socket.gethostname()}
    assert run_status("running", json.dumps(here)) == "killed"
    assert run_status("error", json.dumps(here)) == "error"


def test_asking_whether_a_process_lives_does_not_signal_it(monkeypatch):
    child = subprocess.Popen(["sleep", "30"], preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL))
    try:
        assert database._alive(child.pid)
        time.sleep(0.1)
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
    assert not database._alive(_dead_pid())

    def not_mine(pid, sig):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(database.os, "kill", not_mine)
    assert database._alive(1)  # another user's process exists


def test_process_identity_names_this_process_and_its_start_time(tmp_path):
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot = f.read().strip()
    stat = open(f"/proc/{os.getpid()}/stat").read()
    start = stat[stat.rindex(")") + 2:].split(" ")[19]  # field 22 of proc(5)
    assert process_identity() == {"pid": os.getpid(), "host": socket.gethostname(), "boot": boot,
                                  "pid_start": start}
    odd = tmp_path / "x) y z"  # a process name with ") " in it, as any program may have
    os.symlink("/bin/sleep", odd)
    child = subprocess.Popen([str(odd), "30"])
    try:
        time.sleep(0.1)
        stat = open(f"/proc/{child.pid}/stat").read()
        assert database._started(child.pid) == stat[stat.rindex(")") + 2:].split(" ")[19]
    finally:
        child.kill()
        child.wait()
    assert database._started(_dead_pid()) == ""


# -- identify and connect: which files are ours, refusals word for word ------------------------------------

def _not_ours(path, why: str) -> str:
    return f"database {path} {why}: not a ds2a inspection database, left untouched; give --db a new file name"


def _sqlite(path, sql: str = "", app_id: int = 0, version: int = 0) -> None:
    con = sqlite3.connect(path)
    if sql:
        con.executescript(sql)
    con.execute(f"PRAGMA application_id={app_id}")
    con.execute(f"PRAGMA user_version={version}")
    con.commit()
    con.close()


def _refusal(path) -> str:
    with pytest.raises(UserError) as err:
        identify(str(path))
    return str(err.value)


def test_identify_tells_new_ours_and_legacy_files_and_refuses_the_rest_word_for_word(tmp_path):
    assert identify(str(tmp_path / "none.sqlite")) == "new"
    (tmp_path / "empty.sqlite").write_bytes(b"")
    assert identify(str(tmp_path / "empty.sqlite")) == "new"
    assert _refusal(tmp_path) == f"--db {tmp_path} is a folder; give a file name such as {tmp_path}/inspect.sqlite"
    os.symlink(tmp_path / "gone", tmp_path / "dangling.sqlite")
    assert _refusal(tmp_path / "dangling.sqlite") == (f"cannot read inspection database {tmp_path}/dangling.sqlite: "
                                                      "No such file or directory")
    short = tmp_path / "short.sqlite"
    short.write_bytes(database.SQLITE_MAGIC + b"\0" * 50)
    assert _refusal(short) == _not_ours(short, "is not a SQLite file")
    text = tmp_path / "text.sqlite"
    text.write_bytes(b"x" * 200)
    assert _refusal(text) == _not_ours(text, "is not a SQLite file")
    theirs = tmp_path / "theirs.sqlite"
    _sqlite(theirs, "CREATE TABLE runs (id INTEGER);", app_id=0x12345678)
    assert _refusal(theirs) == _not_ours(theirs, "belongs to another application (SQLite application_id 0x12345678)")
    none = tmp_path / "none-tables.sqlite"
    _sqlite(none, version=5)
    assert _refusal(none) == _not_ours(none, "has no ds2a tables (tables: none)")
    other = tmp_path / "other.sqlite"
    _sqlite(other, "CREATE TABLE b (x); CREATE TABLE a (x);")
    assert _refusal(other) == _not_ours(other, "has no ds2a tables (tables: a, b)")
    extra = tmp_path / "extra.sqlite"
    _sqlite(extra, SCHEMA + "CREATE TABLE notes (x);", APPLICATION_ID, SCHEMA_VERSION)
    assert _refusal(extra) == _not_ours(extra, "has tables ds2a does not write (SQLite file of another program, "
                                               "or damaged)")
    lacking = tmp_path / "lacking.sqlite"
    missing = sorted(set(database.ALL_TABLES) - set(database.TABLES_OF[SCHEMA_VERSION - 1]))
    _sqlite(lacking, SCHEMA + "".join(f"DROP TABLE {t};" for t in missing), APPLICATION_ID, SCHEMA_VERSION)
    assert _refusal(lacking) == _not_ours(lacking, f"has ds2a's table names but not {', '.join(missing)} (SQLite "
                                                   "file of another program, or damaged)")
    v1 = tmp_path / "v1.sqlite"
    _sqlite(v1, database.V1_SCHEMA, APPLICATION_ID, 1)
    assert identify(str(v1)) == "ours"
    legacy = tmp_path / "legacy.sqlite"
    _sqlite(legacy, database.V1_SCHEMA, 0, 1)
    assert identify(str(legacy)) == "legacy"
    marked = tmp_path / "marked.sqlite"
    _sqlite(marked, app_id=APPLICATION_ID)
    assert identify(str(marked)) == "ours"


def test_a_newer_schema_is_refused_whether_marked_or_not(tmp_path):
    for app_id in (APPLICATION_ID, 0):
        path = tmp_path / f"newer{app_id}.sqlite"
        _sqlite(path, database.V1_SCHEMA, app_id, SCHEMA_VERSION + 1)
        assert _refusal(path) == (f"inspection database {path} has schema version {SCHEMA_VERSION + 1}, written by "
                                  f"a newer ds2a; this ds2a reads version {SCHEMA_VERSION}: left untouched. Upgrade "
                                  "ds2a to read it, or give --db a new file")


def test_an_unreadable_sqlite_file_is_ours_and_damaged_or_theirs_and_refused_untouched(tmp_path):
    for app_id in (APPLICATION_ID, 0):
        path = tmp_path / f"broken{app_id}.sqlite"
        _sqlite(path, SCHEMA, app_id, SCHEMA_VERSION)
        data = bytearray(path.read_bytes())
        data[100:] = b"\xff" * (len(data) - 100)
        path.write_bytes(bytes(data))
        if app_id:
            assert identify(str(path)) == "ours"
            with pytest.raises(UserError) as err:
                connect(str(path))
            assert str(err.value).startswith(f"inspection database {path} is damaged (")
            assert str(err.value).endswith("); keep it for recovery and pass a new --db file")
        else:
            assert _refusal(path).startswith(f"database {path} cannot be read as SQLite (")
        assert path.read_bytes() == bytes(data)
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(path.name)) == [path.name]


def test_connect_refuses_a_missing_or_empty_file_to_read_and_a_version_it_does_not_know(tmp_path):
    missing = tmp_path / "none.sqlite"
    with pytest.raises(UserError) as err:
        connect(str(missing), create=False)
    assert str(err.value) == (f"inspection database {missing} does not exist; run `ds2a inspect ... --db {missing}` "
                              "first")
    empty = tmp_path / "empty.sqlite"
    empty.write_bytes(b"")
    with pytest.raises(UserError) as err:
        connect(str(empty), create=False, readonly=True)
    assert str(err.value) == f"inspection database {empty} is empty; run `ds2a inspect ... --db {empty}` first"
    assert empty.read_bytes() == b""
    zero = tmp_path / "zero.sqlite"  # our tables, unmarked, version 0
    _sqlite(zero, database.V1_SCHEMA, 0, 0)
    with pytest.raises(UserError) as err:
        connect(str(zero))
    assert str(err.value) == (f"inspection database {zero} has schema version 0, this ds2a reads versions "
                              f"{OLDEST_VERSION} to {SCHEMA_VERSION}; use a new --db file")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(UserError) as err:
        connect(str(blocker / "r.sqlite"))
    assert str(err.value).startswith(f"cannot use inspection database {blocker / 'r.sqlite'}: ")
    assert str(err.value).endswith("; pass a --db path in a writable folder")


def test_an_older_file_is_migrated_only_when_written_and_a_legacy_one_marked_only_then(tmp_path):
    for app_id in (APPLICATION_ID, 0):
        path = tmp_path / f"v1-{app_id}.sqlite"
        _sqlite(path, database.V1_SCHEMA, app_id, 1)
        before = path.read_bytes()
        ro = connect(str(path), readonly=True)
        assert ro.execute("PRAGMA user_version").fetchone()[0] == 1
        ro.close()
        assert path.read_bytes() == before
        con = connect(str(path))
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert con.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert set(database.ALL_TABLES) <= tables
        con.close()
        assert identify(str(path)) == "ours"


def test_a_marked_file_cut_short_gets_its_schema_and_opening_a_file_leaves_nothing_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "db"
    db.mkdir()
    marked = db / "marked.sqlite"
    _sqlite(marked, app_id=APPLICATION_ID)
    before = marked.read_bytes()
    with pytest.raises(UserError, match="schema version 0"):  # read-only: the schema is not created
        connect(str(marked), readonly=True)
    assert marked.read_bytes() == before
    con = connect(str(marked))
    assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")} >= set(database.ALL_TABLES)
    con.execute("INSERT INTO runs (started_at, status) VALUES (1.0, 'finished')")
    con.commit()
    con.close()
    con = connect(str(marked))  # a second open does not create the schema again, nor any file beside
    assert con.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_a_new_files_header_carries_the_mark_and_the_version_at_once(tmp_path):
    path = tmp_path / "r.sqlite"
    con = connect(str(path))  # still open: nothing checkpointed yet
    header = path.read_bytes()[:100]
    assert int.from_bytes(header[68:72], "big") == APPLICATION_ID
    assert int.from_bytes(header[60:64], "big") == SCHEMA_VERSION
    con.close()


def test_a_report_reads_a_file_whose_wal_it_cannot_open_as_it_is_on_disk(tmp_path, monkeypatch):
    path = tmp_path / "r.sqlite"
    _sqlite(path, SCHEMA, APPLICATION_ID, SCHEMA_VERSION)
    opened: List[Any] = []
    real = sqlite3.connect

    class NoShm:
        def __init__(self, con):
            self.con, self.closed = con, False

        def execute(self, sql, *args):
            raise sqlite3.OperationalError("unable to open database file")

        def close(self):
            self.closed = True
            self.con.close()

    def connect_(target, **kw):
        con = real(target, **kw)
        opened.append((target, kw))
        return con if "immutable=1" in target else NoShm(con)

    monkeypatch.setattr(database.sqlite3, "connect", connect_)
    con = database._connect_ro(str(path))
    monkeypatch.undo()
    ro = f"file:{path}?mode=ro"
    assert opened == [(ro, {"uri": True, "check_same_thread": False, "timeout": 10}),
                      (ro + "&immutable=1", {"uri": True, "check_same_thread": False})]
    seen: List[Any] = []
    reader = threading.Thread(target=lambda: seen.append(con.execute("SELECT COUNT(*) FROM runs").fetchone()[0]))
    reader.start()
    reader.join()
    assert seen == [0]  # usable from the page's threads
    with pytest.raises(sqlite3.OperationalError):
        con.execute("DELETE FROM runs")
    con.close()


def test_a_logged_outage_never_goes_unlogged(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    rec = _records(tmp_path, Clock(), monkeypatch)
    rec.con = Refusing(rec.con, "INSERT INTO audit")
    rec.finish_run("finished", {"frames": 0})  # the stop row is refused: said, and the run still ends
    assert caplog.messages == [f"ERROR: records: cannot write the run_stop audit row to {rec.path}: {FULL}"]
    stats = json.loads(_row(tmp_path / "r.sqlite", "SELECT stats FROM runs")[0][0])
    assert "run_stop" not in stats["audit"] and _row(tmp_path / "r.sqlite", "SELECT status FROM runs") == [
        ("finished",)]
    rec.close()


# -- second round: what the first mutation run still let through ------------------------------------------

def test_a_schema_script_splits_into_whole_statements():
    script = ("CREATE TABLE a (x);\nCREATE TRIGGER t AFTER INSERT ON a\nBEGIN SELECT 1; END;\n"
              "CREATE INDEX i ON a(x);\n")
    assert database.statements(script) == ["CREATE TABLE a (x);", "CREATE TRIGGER t AFTER INSERT ON a\nBEGIN "
                                           "SELECT 1; END;", "CREATE INDEX i ON a(x);"]
    con = sqlite3.connect(":memory:")
    for statement in database.statements(script):
        con.execute(statement)
    assert [r[0] for r in con.execute("SELECT name FROM sqlite_master ORDER BY name")] == ["a", "i", "t"]
    con.close()


def test_a_table_of_a_later_version_in_an_older_file_is_named_as_not_ds2a_s(tmp_path):
    path = tmp_path / "v1-with-audit.sqlite"  # version 1 never had the audit table: not a file ds2a wrote
    _sqlite(path, database.V1_SCHEMA + audit.SCHEMA, APPLICATION_ID, 1)
    assert _refusal(path) == _not_ours(path, "has tables ds2a does not write (SQLite file of another program, or "
                                             "damaged)")


def test_the_records_connection_waits_ten_seconds_for_a_lock_and_is_written_by_the_output_thread(tmp_path):
    path = str(tmp_path / "r.sqlite")
    con = connect(path)
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] == 10000
    con.close()
    rec = Records(path)  # made in the main thread, written by the output thread
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    errors: List[BaseException] = []

    def output_thread() -> None:
        try:
            rec.add_frame(_result(0, "a"))
            rec.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    worker = threading.Thread(target=output_thread)
    worker.start()
    worker.join()
    assert errors == [] and _row(path, "SELECT COUNT(*) FROM frames") == [(1,)]
    rec.close()


def test_opening_a_current_file_needs_no_write_lock(tmp_path):
    path = str(tmp_path / "r.sqlite")
    connect(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another station writing
    t0 = time.monotonic()
    connect(path).close()
    assert time.monotonic() - t0 < 2.0
    other.execute("ROLLBACK")
    other.close()


def test_an_unreadable_file_reads_as_nothing(tmp_path):
    assert database._read(str(tmp_path / "none")) == ""


def test_the_default_retry_and_queue_are_in_the_outage_warning(tmp_path, caplog):
    rec = _records(tmp_path)
    other = _locked(str(tmp_path / "r.sqlite"))
    rec.add_frame(_result(0, "a"))
    rec.commit()
    assert caplog.messages[-1].endswith("records wait in memory (up to 3000) and are retried every 0.5 s")
    other.execute("ROLLBACK")
    other.close()
    rec.close()


def test_a_station_that_stops_before_its_run_started_writes_no_audit_row(tmp_path):
    rec = Records(str(tmp_path / "r.sqlite"))
    rec.finish_run("error", {})
    rec.close()
    assert audit.rows(sqlite3.connect(tmp_path / "r.sqlite")) == []


def test_the_run_start_row_names_every_model_and_recipe_hash_given(tmp_path):
    rec = Records(str(tmp_path / "r.sqlite"))
    rec.extra["evidence"] = {"model_sha256": "", "engine_sha256": "e1", "recipe": "r1", "recipe_sha256": "rs",
                             "other": "x"}
    run = rec.start_run("m", "b", "s", CLASSES, {}, None)
    detail = json.loads([r for r in audit.rows(sqlite3.connect(tmp_path / "r.sqlite"), run)][0][8])
    assert {k: v for k, v in detail.items() if k not in ("model", "backend", "source", "rules_sha256")} == {
        "engine_sha256": "e1", "recipe": "r1", "recipe_sha256": "rs"}
    rec.close()


def test_results_and_verdicts_without_the_optional_fields_are_stored(tmp_path):
    from types import SimpleNamespace

    rec = _records(tmp_path)
    res = _result(0, "a")
    plain = SimpleNamespace(frame=res.frame, seq=0, verdict="PASS", reasons=[], defects=[], ms={})  # no `unreadable`
    rec.add_frame(plain)
    rec.add_verdict(SimpleNamespace(part_id="a", level="part", verdict="PASS", reasons=[], first_seq=0, last_seq=0,
                                    n_frames=1, t_start=1.0, t_end=1.0))  # no recipe fields
    rec.commit()
    path = tmp_path / "r.sqlite"
    assert _row(path, "SELECT width, height FROM frames") == [(30, 20)]
    assert _row(path, "SELECT recipe, recipe_sha256 FROM verdicts") == [(None, None)]
    rec.close()


def test_a_heartbeat_is_renewed_again_and_again(tmp_path, monkeypatch):
    clock = Clock()
    rec = _records(tmp_path, clock, monkeypatch)
    for seq in range(3):
        clock.t += HEARTBEAT_S
        rec.add_frame(_result(seq, "a"))
        rec.commit()
    assert rec.pending == 0 and _row(tmp_path / "r.sqlite", "SELECT COUNT(*) FROM frames") == [(3,)]
    rec.close()


def test_a_retry_happens_exactly_retry_s_after_the_last_try(tmp_path, monkeypatch):
    clock = Clock()
    rec = _records(tmp_path, clock, monkeypatch, retry_s=2.0)
    other = _locked(str(tmp_path / "r.sqlite"))
    rec.add_frame(_result(0, "a"))
    rec.commit()
    other.execute("ROLLBACK")
    other.close()
    clock.t = 1002.0
    rec.commit()
    assert rec.pending == 0
    rec.close()


def test_a_refused_end_row_alone_is_saved_and_named_as_the_runs_end(tmp_path, monkeypatch):
    rec = _records(tmp_path, Clock(), monkeypatch)
    rec.con = Refusing(rec.con, END_ROW, COMPACT_ROW)
    path, saved = str(tmp_path / "r.sqlite"), str(tmp_path / _name(rec))
    with pytest.raises(UserError) as err:
        rec.finish_run("finished", {"frames": 0})
    assert str(err.value) == (f"records incomplete: the run's end could not be written to {path} ({FULL}); "
                              f"saved to {saved}")
    end = _lines(saved)
    assert [e["table"] for e in end] == ["runs"]
    ids = end[0]["row"]["stats"]["audit"]  # the stop row was rolled back with the end row: not named
    assert sorted(ids) == ["run_start"]
    assert [r[0] for r in audit.rows(sqlite3.connect(path))] == [ids["run_start"]]
    rec.close()


def test_a_refused_end_row_of_a_run_that_never_started_is_saved_too(tmp_path, monkeypatch):
    rec = Records(str(tmp_path / "r.sqlite"))  # the station stopped before start_run: no audit ids in the stats
    monkeypatch.setattr(database, "time", Clock())
    rec.con = Refusing(rec.con, END_ROW, COMPACT_ROW)
    with pytest.raises(UserError, match="records incomplete: the run's end could not be written"):
        rec.finish_run("error", {})
    assert [e["row"]["status"] for e in _lines(tmp_path / _name(rec))] == ["error"]
    rec.close()
