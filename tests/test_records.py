"""SQLite records: WAL + versioned schema, per-frame rows, clear errors, and `ds2a report` on top."""
from __future__ import annotations

import csv
import json
import os
import sqlite3
import time

import cv2
import numpy as np
import pytest

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.inspect.loop import Result
from ds2a.inspect.parts import PartVerdict
from ds2a.inspect.quantify import Defect
from ds2a.records.database import SCHEMA_VERSION, Records, connect
from ds2a.records.report import summarise
from ds2a.sources import Frame

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
    with pytest.raises(UserError, match="is a folder"):
        Records(str(tmp_path))
    old = tmp_path / "old.sqlite"
    Records(str(old)).close()
    con = sqlite3.connect(old)
    con.execute("PRAGMA user_version=7")
    con.close()
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


# -- never someone else's: foreign, corrupt and legacy files --------------------------------------

def _snapshot(path):
    return path.read_bytes(), path.stat().st_mtime_ns


def _foreign_runs(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, name TEXT)")
    con.execute("INSERT INTO runs (name) VALUES ('marathon')")
    con.commit()
    con.close()


def _foreign_other(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.commit()
    con.close()


def _foreign_app_id(path):
    _foreign_other(path)
    con = sqlite3.connect(path)
    con.execute("PRAGMA application_id=1234")
    con.close()


def _not_sqlite(path):
    path.write_bytes(b"name,total\nx,1\n" * 20)


def _corrupt_sqlite(path):
    _foreign_other(path)
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)
    path.write_bytes(bytes(data))


def _foreign_same_names(path, app_id: int = 0, version: int = 0):
    """All of ds2a's table names, other columns: another program's file (or, marked, a damaged one)."""
    con = sqlite3.connect(path)
    for t in ("runs", "frames", "defects", "verdicts", "timings"):
        con.execute(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, note TEXT)")
    con.execute(f"PRAGMA application_id={app_id}")
    con.execute(f"PRAGMA user_version={version}")
    con.commit()
    con.close()


def _ours_marked_other_columns(path):
    _foreign_same_names(path, app_id=0x44533241, version=1)


def _ours_newer_schema(path):
    from ds2a.records.database import _create

    _create(str(path))
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE runs ADD COLUMN operator TEXT")
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.commit()
    con.close()


@pytest.mark.parametrize("make, words", [(_foreign_runs, "table.s. runs with other columns than ds2a's"),
                                         (_foreign_same_names, "frames, runs, timings, verdicts with other columns"),
                                         (_ours_marked_other_columns, "with other columns than ds2a's"),
                                         (_ours_newer_schema, f"schema version {SCHEMA_VERSION + 1}, written by a "
                                                              "newer ds2a.*left untouched"),
                                         (_foreign_other, "no ds2a tables"),
                                         (_foreign_app_id, "another application"),
                                         (_not_sqlite, "not a SQLite file"),
                                         (_corrupt_sqlite, "malformed")])
def test_another_applications_or_a_corrupt_file_is_refused_untouched(tmp_path, capsys, make, words):
    path = tmp_path / "their.sqlite"
    make(path)
    before = _snapshot(path)
    time.sleep(0.01)
    with pytest.raises(UserError, match=words):
        Records(str(path))
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _snapshot(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["their.sqlite"]  # no -wal / -shm left either


def test_our_databases_carry_a_mark_and_older_unmarked_ones_are_adopted(tmp_path):
    from ds2a.records.database import APPLICATION_ID, SCHEMA

    path = tmp_path / "r.sqlite"
    _fill(path)
    assert int.from_bytes(path.read_bytes()[68:72], "big") == APPLICATION_ID  # in the file itself, not only the WAL
    legacy = tmp_path / "legacy.sqlite"  # written by ds2a before the mark existed
    con = sqlite3.connect(legacy)
    con.executescript(SCHEMA)
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    con.commit()
    con.close()
    assert _fill(legacy) == 1
    assert sqlite3.connect(legacy).execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_a_damaged_database_of_ours_is_a_clear_error(tmp_path):
    path = tmp_path / "r.sqlite"
    _fill(path)
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="damaged|malformed"):
        Records(str(path))


def test_report_reads_read_only_and_never_changes_the_file(tmp_path, capsys):
    path = tmp_path / "service.sqlite"
    _fill(path)
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=DELETE")  # so that a WAL switch would show in the file
    con.close()
    path.chmod(0o444)
    before = _snapshot(path)
    time.sleep(0.01)
    assert main(["report", str(path)]) == 0
    assert "1 PASS, 1 FAIL" in capsys.readouterr().out
    assert _snapshot(path) == before
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    ro = connect(str(path), create=False, readonly=True)  # what report uses: writes are impossible
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("DELETE FROM runs")
    ro.close()
    if os.geteuid() != 0:  # root ignores file modes; the checks above hold for everyone
        with pytest.raises(UserError):
            Records(str(path))


# -- never lost, never overwritten -------------------------------------------------------------------

def test_report_csv_onto_the_database_or_a_hard_link_of_it_is_refused(tmp_path, capsys):
    path = tmp_path / "r.sqlite"
    _fill(path)
    os.link(path, tmp_path / "link.csv")
    before = path.read_bytes()
    for out in (path, tmp_path / "link.csv", tmp_path / "r.sqlite-wal"):
        assert main(["report", str(path), "--csv", str(out)]) == 2
        assert "same file as the input DB" in capsys.readouterr().err
    assert path.read_bytes() == before
    assert main(["report", str(path), "--csv", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def _locked(path):
    """A second process-like connection holding the write lock."""
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    return other


def test_a_locked_database_queues_records_retries_and_reports_the_delay(tmp_path, caplog):
    path = tmp_path / "r.sqlite"
    rec = Records(str(path), retry_s=0.05)
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    other = _locked(path)
    t0 = time.perf_counter()
    for seq in range(5):
        rec.add_frame(_result(seq, "a", []))
        rec.commit()  # must not raise and must not wait for the lock
    assert time.perf_counter() - t0 < 2.0
    assert rec.pending == 5 and rec.outages == 1 and "locked" in caplog.messages[0]
    other.execute("ROLLBACK")
    other.close()
    time.sleep(0.06)
    rec.add_frame(_result(5, "a", []))
    rec.commit()
    assert rec.pending == 0 and "writable again" in caplog.messages[-1]
    rec.finish_run("finished", {"frames": 6})
    rec.close()
    con = sqlite3.connect(path)
    assert [r[0] for r in con.execute("SELECT seq FROM frames ORDER BY id")] == list(range(6))
    stats = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    assert stats["db_outages"] == 1 and stats["db_max_delay_s"] > 0 and stats["db_max_backlog"] == 5


def test_a_full_disk_queues_records_and_a_full_queue_stops_with_an_alarm(tmp_path):
    from ds2a.records.database import RecordsBackedUp

    path = tmp_path / "r.sqlite"
    rec = Records(str(path), max_pending=3, retry_s=0.0)
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    pages = rec.con.execute("PRAGMA page_count").fetchone()[0]
    rec.con.execute(f"PRAGMA max_page_count={pages}")  # sqlite's own 'database or disk is full'
    big = [Defect(1, "damage", 1.0, None, (0, 0, 1, 1), (0.5, 0.5), None)] * 400
    for seq in range(3):
        rec.add_frame(_result(seq, "a", big))
        rec.commit()
    assert rec.pending == 3 and "full" in rec.last_error
    rec.add_frame(_result(3, "a", big))
    with pytest.raises(RecordsBackedUp, match="ALARM.*no part passes unrecorded"):
        rec.commit()
    rec.con.execute("PRAGMA max_page_count=1073741823")  # space again: nothing was lost
    rec.finish_run("error", {})
    rec.close()
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM frames").fetchone()[0] == 4


def _publisher(tmp_path, records, save_fail=None):
    from ds2a.inspect.overlay import Renderer
    from ds2a.inspect.parts import PartTracker
    from ds2a.inspect.publish import Publisher
    from ds2a.inspect.rules import load_rules

    return Publisher(Renderer(CLASSES, [(0, 0, 0)] * 4), [], PartTracker(load_rules(None, CLASSES), True),
                     records, save_fail)


def test_the_realtime_loop_keeps_inspecting_while_the_database_is_locked(tmp_path):
    import threading

    from fakes.segmenter import ThresholdSegmenter

    from ds2a.inspect.loop import InspectionLoop
    from ds2a.inspect.rules import analyser, load_rules
    from ds2a.sources.demo import DemoSource

    path = tmp_path / "r.sqlite"
    rec = Records(str(path), retry_s=0.1)
    rec.start_run("m", "fake", "demo://", CLASSES, {}, None)
    pub = _publisher(tmp_path, rec)
    window = []

    def hold_lock():  # 1.2 s here (the soak script, benchmarks/soak.py, holds it 15 s)
        time.sleep(0.5)
        other = _locked(path)
        window.append(time.time())
        time.sleep(1.2)
        window.append(time.time())
        other.execute("ROLLBACK")
        other.close()

    locker = threading.Thread(target=hold_lock)
    locker.start()
    loop = InspectionLoop(DemoSource("demo://", frames=75, fps=30, width=160, height=96), ThresholdSegmenter(),
                          analyser(load_rules(None, CLASSES), CLASSES), pub)
    stats = loop.run()
    locker.join()
    pub.finish()
    rec.finish_run("finished", stats.to_dict())
    rec.close()
    con = sqlite3.connect(path)
    times = [t for (t,) in con.execute("SELECT t FROM frames ORDER BY id")]
    assert len(times) == stats.frames > 40  # every inspected frame recorded
    during = sum(1 for t in times if window[0] < t < window[1])
    outside = len(times) - during
    span = times[-1] - times[0]
    lock_s = window[1] - window[0]
    assert during / lock_s > 0.6 * outside / (span - lock_s)  # the frame rate held up through the lock
    health = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    assert health["db_outages"] >= 1 and health["db_max_delay_s"] >= 0.5 and health["db_unwritten"] == 0


def test_failure_images_are_unique_per_run_and_never_replace_files(tmp_path):
    fails = tmp_path / "fails"
    names = []
    for _ in range(2):  # two runs without --db: same seq numbers, different files
        pub = _publisher(tmp_path, None, str(fails))
        res = _result(0, "a", [], ("damage: 1 region(s) > max_count 0",))
        pub(res)
        names.append(sorted(p.name for p in fails.iterdir()))
    assert len(names[0]) == 3 and len(names[1]) == 6 and set(names[0]) < set(names[1])  # annotated, raw, class map
    assert all(n.endswith(("_annotated.jpg", "_raw.jpg", "_mask.png")) for n in names[1])
    path = tmp_path / "r.sqlite"  # with --db: the run id and the run tag are in the name, the row points at it
    rec = Records(str(path))
    run = rec.start_run("m", "b", "s", CLASSES, {}, None)
    pub = _publisher(tmp_path, rec, str(fails))
    pub(_result(0, "a", [], ("x",)))
    rec.close()
    image = sqlite3.connect(path).execute("SELECT image_path FROM frames").fetchone()[0]
    assert os.path.basename(image).startswith(f"run{run}_{pub.run_tag}_000000_a")
    assert cv2.imread(image) is not None


def test_a_failed_image_write_is_counted_warned_and_recorded(tmp_path, monkeypatch, caplog):
    import ds2a.inspect.publish as publish

    def disk_full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(publish, "write_new", disk_full)
    path = tmp_path / "r.sqlite"
    rec = Records(str(path))
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    pub = _publisher(tmp_path, rec, str(tmp_path / "fails"))
    for seq in range(3):
        pub(_result(seq, "a", [], ("damage: too big",)))
    pub.finish()
    rec.finish_run("finished", {"frames": 3})
    rec.close()
    assert pub.images_failed == 3
    err = caplog.text
    assert err.count("could not save failure image") == 1 and "No space left" in err
    con = sqlite3.connect(path)
    assert con.execute("SELECT COUNT(*), COUNT(image_path) FROM frames").fetchone() == (3, 0)
    stats = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    assert stats["fail_images_unsaved"] == 3 and "No space left" in stats["fail_images_error"]


def test_rows_the_database_never_takes_are_saved_beside_it_and_the_run_fails(tmp_path):
    path = tmp_path / "r.sqlite"
    rec = Records(str(path), retry_s=0.05)
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    other = _locked(path)
    for seq in range(3):
        rec.add_frame(_result(seq, "a", []))
        rec.commit()
    rec.finish_patience_s = 0.2
    with pytest.raises(UserError, match="3 records could not be written.*saved to .*unsaved-run1"):
        rec.finish_run("finished", {"frames": 3})
    rec.close()
    other.execute("ROLLBACK")
    dumps = list(tmp_path.glob("r.sqlite.unsaved-run1-*.jsonl"))
    assert len(dumps) == 1  # one file per run: the run's end, refused a moment later, joins the rows
    rows = [json.loads(line) for line in dumps[0].read_text().splitlines()]
    assert [r["row"][1] for r in rows[:3]] == [0, 1, 2] and rows[0]["table"] == "frames"
    assert [r["table"] for r in rows[3:]] == ["runs"] and rows[3]["row"]["status"] == "finished"


def test_inspect_stops_with_an_alarm_when_the_record_queue_is_full(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    import ds2a.inspect.run as inspection

    class FullDisk(Records):
        def __init__(self, path):
            super().__init__(path, max_pending=5, retry_s=0.0)
            self.finish_patience_s = 0.2

        def start_run(self, *a, **k):
            run = super().start_run(*a, **k)
            pages = self.con.execute("PRAGMA page_count").fetchone()[0]
            self.con.execute(f"PRAGMA max_page_count={pages}")  # the disk is full from here on
            return run

    monkeypatch.setattr(inspection, "Records", FullDisk)
    model = Path(__file__).resolve().parents[1] / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"
    db = tmp_path / "r.sqlite"
    rc = main(["inspect", "--model", str(model), "--source", "demo://?frames=200&width=320&height=180",
               "--headless", "--db", str(db), "--threads", "1"])
    err = capsys.readouterr().err
    assert rc == 2
    last = err.strip().splitlines()[-1]
    assert "ALARM" in last and "no part passes unrecorded" in last and str(db) in last
    assert "Traceback" not in err
    dumps = list(tmp_path.glob("r.sqlite.unsaved-run1-*.jsonl"))  # what the full disk refused is kept
    assert len(dumps) == 1 and len(dumps[0].read_text().splitlines()) >= 6


def test_the_run_summary_reports_database_outages_and_unsaved_images(tmp_path):
    from types import SimpleNamespace

    from ds2a.inspect.loop import LoopStats
    from ds2a.inspect.summary import summary_text

    rec = SimpleNamespace(outages=2, max_delay_s=15.2, max_backlog=450)
    pub = SimpleNamespace(parts=[], frames_failed=3, images_failed=3, image_error="f.jpg: No space left",
                          records=rec)
    text = summary_text(LoopStats(), pub, CLASSES)
    assert "database outages      2, longest 15.2 s, at most 450 rows" in text
    assert "failure images lost   3 (not written: f.jpg: No space left)" in text
    pub.records, pub.images_failed = None, 0
    assert "outages" not in summary_text(LoopStats(), pub, CLASSES)


def test_a_log_on_the_full_disk_does_not_stop_the_records(tmp_path, monkeypatch):
    import logging
    import sys

    class FullFile:
        def write(self, text):
            raise OSError(27, "File too large")

        def flush(self):
            raise OSError(27, "File too large")

    path = tmp_path / "r.sqlite"
    rec = Records(str(path), retry_s=0.0)
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    other = _locked(path)
    monkeypatch.setattr(sys, "stderr", FullFile())
    handler = logging.StreamHandler()  # the warnings go to stderr, on the full disk
    monkeypatch.setattr(logging.getLogger("ds2a"), "handlers", [handler])
    rec.add_frame(_result(0, "a", []))
    rec.commit()  # warns (and cannot): must not raise
    other.execute("ROLLBACK")
    rec.commit()
    assert rec.pending == 0 and rec.outages == 1
    rec.close()


def _full(rec: Records) -> None:
    pages = rec.con.execute("PRAGMA page_count").fetchone()[0]
    rec.con.execute(f"PRAGMA max_page_count={pages}")  # sqlite's own 'database or disk is full'


def _stats_of_run(path, dumps) -> dict:
    """The run's end stats: from the database, or from the unsaved file when even that row was refused."""
    status, stats = sqlite3.connect(path).execute("SELECT status, stats FROM runs").fetchone()
    if status != "running":
        return json.loads(stats)
    ends = [json.loads(line) for d in dumps for line in d.read_text().splitlines()]
    return [e for e in ends if e["table"] == "runs"][-1]["row"]["stats"]


def test_a_full_disk_counts_every_row_it_lost_in_the_run_record(tmp_path):
    """The queue used to be cleared before the health was read: 'finished' with db_unwritten 0."""
    path = tmp_path / "r.sqlite"
    rec = Records(str(path), retry_s=0.0)
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    _full(rec)
    big = [Defect(1, "damage", 1.0, None, (0, 0, 1, 1), (0.5, 0.5), None)] * 400
    for seq in range(4):
        rec.add_frame(_result(seq, "a", big))
        rec.commit()
    rec.add_verdict(PartVerdict("a", "part", False, ["damage"], 0, 3, 4, 0.0, 1.0))
    rec.finish_patience_s = 0.1
    with pytest.raises(UserError, match="records incomplete: 5 records could not be written"):
        rec.finish_run("finished", {"frames": 4, "parts": 1})
    rec.close()
    dumps = list(tmp_path.glob("r.sqlite.unsaved-run1-*.jsonl"))
    stats = _stats_of_run(path, dumps)
    assert (stats["db_unwritten"], stats["db_unwritten_frames"], stats["db_unwritten_verdicts"]) == (5, 4, 1)
    assert stats["db_unsaved_file"] == str(dumps[0])


def test_unsaved_rows_go_to_a_fallback_folder_when_the_database_folder_refuses_them(tmp_path, monkeypatch):
    import errno

    import ds2a.records.database as database

    real = database.write_new

    def full_beside_db(path, data):
        if os.path.dirname(path) == str(tmp_path):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(database, "write_new", full_beside_db)
    monkeypatch.setenv("DS2A_UNSAVED_DIR", str(tmp_path / "elsewhere"))
    path = tmp_path / "r.sqlite"
    rec = Records(str(path), retry_s=0.0)
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    other = _locked(path)
    for seq in range(3):
        rec.add_frame(_result(seq, "a", []))
        rec.commit()
    rec.finish_patience_s = 0.1
    with pytest.raises(UserError, match=r"3 records could not be written.*saved to .*elsewhere"):
        rec.finish_run("finished", {"frames": 3})
    other.execute("ROLLBACK")
    rec.close()
    dumps = list((tmp_path / "elsewhere").glob("r.sqlite.unsaved-run1-*.jsonl"))
    lines = [json.loads(line) for line in dumps[0].read_text().splitlines()] if len(dumps) == 1 else []
    assert [r["table"] for r in lines] == ["frames"] * 3 + ["runs"]  # the rows, then the refused end row
    assert not list(tmp_path.glob("*.jsonl"))


def test_a_killed_run_does_not_show_as_running_forever(tmp_path, capsys):
    """A run whose process was SIGKILLed keeps status 'running' in the file; report shows it killed."""
    import signal
    import subprocess
    import sys

    path = tmp_path / "r.sqlite"
    code = ("import sys, time\nfrom ds2a.records.database import Records\n"
            "r = Records(sys.argv[1]); r.start_run('m', 'b', 's', ['bg', 'd'], {}, None)\n"
            "print('started', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "started"
    assert main(["report", str(path)]) == 0
    assert "(running, started" in capsys.readouterr().out  # alive: running
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert sqlite3.connect(path).execute("SELECT status FROM runs").fetchone()[0] == "running"
    assert main(["report", str(path)]) == 0
    assert "(killed, started" in capsys.readouterr().out


def test_run_status_of_a_running_run_on_another_host_goes_stale_without_heartbeat():
    from ds2a.records.database import STALE_S, run_status

    stats = json.dumps({"pid": 1, "host": "another-host", "heartbeat": 1000.0})
    assert run_status("running", stats, 990.0, now=1000.0 + STALE_S - 1) == "running"
    assert run_status("running", stats, 990.0, now=1000.0 + STALE_S + 1) == "stale"
    assert run_status("running", None, 990.0, now=990.0 + STALE_S + 1) == "stale"  # runs from before the heartbeat
    assert run_status("finished", stats, 990.0) == "finished"


def test_a_running_run_renews_its_heartbeat_and_the_page_shows_a_killed_run(tmp_path, monkeypatch):
    import ds2a.records.database as database

    monkeypatch.setattr(database, "HEARTBEAT_S", 0.0)
    path = tmp_path / "r.sqlite"
    rec = Records(str(path))
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    first = json.loads(sqlite3.connect(path).execute("SELECT stats FROM runs").fetchone()[0])
    assert first["pid"] == os.getpid() and first["host"]
    time.sleep(0.01)
    rec.add_frame(_result(0, "a", []))
    rec.commit()
    beat = json.loads(sqlite3.connect(path).execute("SELECT stats FROM runs").fetchone()[0])["heartbeat"]
    assert beat > first["heartbeat"]
    rec.con.close()  # as if killed: no end row
    con = sqlite3.connect(path)
    con.execute("UPDATE runs SET stats=json_set(stats, '$.pid', 2147483600)")  # a pid that does not exist
    con.commit()
    con.close()
    pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")
    from ds2a.web import data

    con = data.open_readonly(str(path))
    try:
        assert [r["status"] for r in data.runs(con)] == ["killed"]
    finally:
        con.close()


def test_the_report_counts_frames_not_inspected_apart_from_frames_with_no_part_in_view(tmp_path, capsys):
    """Model-unavailable frames used to be counted as 'no part in view'."""
    path = tmp_path / "r.sqlite"
    rec = Records(str(path))
    rec.start_run("m", "b", "s", CLASSES, {}, None)
    away = _result(0, "a", [])
    away.inspected, away.passed, away.reasons = False, False, ["not inspected: the model server is unreachable"]
    gap = _result(1, None, [])
    gap.inspected, gap.in_view = False, False
    judged = _result(2, "b", [])
    for res in (away, gap, judged):
        rec.add_frame(res)
    rec.add_verdict(PartVerdict("a", "part", False, away.reasons, 0, 0, 1, 0.0, 0.0, none=True, uninspected=1))
    rec.add_verdict(PartVerdict("b", "part", True, [], 2, 2, 1, 0.0, 0.0))
    rec.commit()
    rec.finish_run("finished", {"frames": 3, "parts": 2})
    rec.close()
    assert main(["report", str(path)]) == 0
    out = capsys.readouterr().out
    assert "frames        3 (1 with no part in view, 1 not inspected)" in out
    assert "parts         2: 1 PASS, 0 FAIL, 1 NONE (not inspected)" in out
    assert main(["report", str(path), "--check"]) == 0


def test_a_run_whose_pid_now_belongs_to_another_process_or_boot_is_killed():
    from ds2a.records.database import process_identity, run_status

    me = process_identity()
    assert run_status("running", json.dumps(me)) == "running"
    assert run_status("running", json.dumps({**me, "pid_start": "1"})) == "killed"  # same pid, another process
    assert run_status("running", json.dumps({**me, "boot": "another-boot"})) == "killed"  # the machine restarted


def _schema_of(con: sqlite3.Connection):
    return {r[0]: r[1] for r in con.execute("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")}


def test_a_version_2_file_is_migrated_to_the_same_tables_as_a_new_file_and_keeps_its_rows(tmp_path):
    from ds2a.records import database

    old = tmp_path / "v2.sqlite"
    con = sqlite3.connect(old)
    con.execute(f"PRAGMA application_id={database.APPLICATION_ID}")
    con.executescript(database.V1_SCHEMA)
    for statement in database.UPGRADES[2]:
        con.execute(statement)
    con.execute("INSERT INTO runs (started_at, status) VALUES (1.0, 'finished')")
    con.execute("INSERT INTO verdicts (run_id, part_id, level, verdict) VALUES (1, 'old-part', 'part', 'FAIL')")
    con.execute("PRAGMA user_version=2")
    con.commit()
    con.close()
    before = old.read_bytes()
    assert main(["report", str(old)]) == 0 and old.read_bytes() == before  # reading never migrates
    rec = Records(str(old))
    rec.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, {"level": "part"}, None)
    pv = PartVerdict("new-part", "part", True, [], 0, 0, 1, 2.0, 3.0)
    pv.recipe, pv.recipe_sha256 = "cheap-cell", "ab" * 32  # type: ignore[attr-defined]
    rec.add_verdict(pv)
    rec.commit()
    rec.finish_run("finished", {"frames": 1})
    rec.close()
    _fill(tmp_path / "new.sqlite")
    migrated, fresh = sqlite3.connect(old), sqlite3.connect(tmp_path / "new.sqlite")
    assert migrated.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    for table in database.ALL_TABLES:  # same columns in the same order, whichever way the file came to be
        cols = f"PRAGMA table_info({table})"
        assert [r[1:3] for r in migrated.execute(cols)] == [r[1:3] for r in fresh.execute(cols)], table
    assert set(_schema_of(migrated)) == set(_schema_of(fresh))  # indexes and append-only triggers too
    rows = migrated.execute("SELECT part_id, verdict, recipe, recipe_sha256 FROM verdicts ORDER BY id").fetchall()
    assert rows == [("old-part", "FAIL", None, None), ("new-part", "PASS", "cheap-cell", "ab" * 32)]
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        migrated.execute("INSERT INTO marks (verdict_id, run_id, action, user, t) VALUES (1, 1, 'mark', 'ann', 1)")
        migrated.execute("UPDATE marks SET note = 'edited'")
    migrated.close()
    fresh.close()


def test_a_version_2_file_with_version_3_columns_is_refused_untouched(tmp_path):
    """A file that says version 2 but has columns version 2 never had is not a file ds2a wrote."""
    from ds2a.records import database

    path = tmp_path / "odd.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA application_id={database.APPLICATION_ID}")
    con.executescript(database.SCHEMA)
    for table in ("shadow", "marks"):
        con.execute(f"DROP TABLE {table}")
    con.execute("PRAGMA user_version=2")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(UserError, match="verdicts with other columns"):
        connect(str(path))
    assert path.read_bytes() == before
