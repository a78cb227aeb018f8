"""`ds2a report DB --check` (ds2a/records/check.py): passes on a good run, and finds each broken invariant
in a database where it was broken by hand (the shapes the old defects left: two verdicts for one part, a
PASS over a frame not inspected, lost rows counted as none, a killed run left `running`)."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from ds2a.cli import main

DEMO_MODEL = Path(__file__).resolve().parents[1] / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"


@pytest.fixture(scope="module")
def good_db(tmp_path_factory) -> Path:
    db = tmp_path_factory.mktemp("check") / "good.sqlite"
    assert main(["inspect", "--model", str(DEMO_MODEL), "--source", "demo://?frames=40&width=320&height=180",
                 "--headless", "--db", str(db)]) == 0
    return db


def _broken(good_db: Path, tmp_path: Path, *sql: str) -> Path:
    db = tmp_path / "broken.sqlite"
    shutil.copy(good_db, db)
    con = sqlite3.connect(db)
    for statement in sql:
        con.execute(statement)
    con.commit()
    con.close()
    return db


def _check(db: Path, capsys) -> tuple:
    rc = main(["report", str(db), "--check"])
    return rc, capsys.readouterr().out


def test_a_good_run_passes_the_check(good_db, capsys):
    rc, out = _check(good_db, capsys)
    assert rc == 0 and "OK, 1 run(s)" in out


@pytest.mark.parametrize("sql, words", [
    # the interrupted part of the old code: its first frames closed as a part, then the same id again
    (["INSERT INTO verdicts (run_id, part_id, level, verdict, first_seq, last_seq, n_frames, t_start, t_end) "
      "SELECT run_id, part_id, level, 'PASS', last_seq + 1000, last_seq + 1000, 0, t_start, t_end FROM verdicts "
      "ORDER BY id LIMIT 1"], "has more than one verdict"),
    # a PASS part over a frame the model never saw (model unavailable)
    (["UPDATE frames SET verdict='NONE', reasons='[\"not inspected: model unavailable\"]' WHERE seq=("
      "SELECT first_seq FROM verdicts WHERE verdict='PASS' ORDER BY id LIMIT 1)"], "is PASS but frame"),
    # a part whose verdict never reached the records
    (["DELETE FROM verdicts WHERE id=(SELECT MIN(id) FROM verdicts)"], "with no part verdict"),
    # the full disk of the old code: rows lost, the run stored with db_unwritten 0
    (["DELETE FROM frames WHERE id=(SELECT MAX(id) FROM frames)"], "the database holds"),
    (["UPDATE runs SET stats=json_set(stats, '$.db_unwritten', 3, '$.db_unwritten_frames', 3)"],
     "3 row(s) were never written"),
    # a SIGKILLed run: status running, its process long gone
    (["UPDATE runs SET status='running', ended_at=NULL, stats=json_object('pid', 2147483600, 'host', 'elsewhere', "
      "'heartbeat', 1000.0)"], "stored as running but its process is gone (stale)"),
    (["UPDATE runs SET status='finished', stats=json_set(stats, '$.inspected', 0)"], "no frame was inspected"),
    (["UPDATE runs SET status='empty'"], "status empty but it has judged parts"),
    (["UPDATE runs SET status='finished', ended_at=NULL"], "no end time"),
    # rules that cannot fail a part, with PASS verdicts
    (["UPDATE runs SET rules=json_object('level', 'part', 'classes', json_object('damage', json_object()))"],
     "rules that cannot fail a part"),
    (["UPDATE runs SET stats=json_set(stats, '$.selftest', json_object('status', 'failed'))"],
     "from a model that failed its self-test"),
    # a frame in two parts
    (["UPDATE verdicts SET last_seq=last_seq + 1 WHERE id=(SELECT MIN(id) FROM verdicts)"], "share frames"),
])
def test_each_broken_invariant_is_listed_and_fails_the_check(good_db, tmp_path, capsys, sql, words):
    rc, out = _check(_broken(good_db, tmp_path, *sql), capsys)
    assert rc == 1 and words in out and "violation(s)" in out, out


def test_check_of_one_run_and_of_a_foreign_file(good_db, tmp_path, capsys):
    rc, out = _check(good_db, capsys)
    assert main(["report", str(good_db), "--check", "--run", "1"]) == 0
    assert main(["report", str(good_db), "--check", "--run", "7"]) == 2  # not there: a clear error
    assert "run 7 is not in" in capsys.readouterr().err
    foreign = tmp_path / "foreign.sqlite"
    sqlite3.connect(foreign).execute("CREATE TABLE invoices (id INTEGER)").connection.close()
    assert main(["report", str(foreign), "--check"]) == 2


def test_parts_counts_in_the_run_stats_agree_with_the_rows(good_db):
    con = sqlite3.connect(good_db)
    stats = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    rows = dict(con.execute("SELECT verdict, COUNT(*) FROM verdicts GROUP BY verdict").fetchall())
    con.close()
    assert stats["parts"] == sum(rows.values()) and stats["parts_failed"] == rows.get("FAIL", 0)
