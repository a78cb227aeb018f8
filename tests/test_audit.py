"""The audit trail (ds2a/records/audit.py): a hash chain that `ds2a report --audit` and `--check` verify,
run start/stop rows from `ds2a inspect`, schema version 2 beside version 1 files, and verdict overrides
(`ds2a override`) that add rows and never rewrite the original, with roles from a users file."""
from __future__ import annotations

import os
import re
import sqlite3
import time

import numpy as np
import pytest

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.inspect.loop import Result
from ds2a.inspect.parts import PartVerdict
from ds2a.records import audit, database
from ds2a.records.database import APPLICATION_ID, Records, connect
from ds2a.sources import Frame

CLASSES = ["background", "damage"]


def _result(seq: int, part: str, reasons=()) -> Result:
    frame = Frame(np.zeros((8, 8, 3), np.uint8), seq, time.time(), time.perf_counter(), part)
    return Result(seq, frame, np.zeros((4, 4), np.uint8), [], not reasons, list(reasons), {"latency": 1.0})


def _run(path, parts=(("a", True), ("b", False)), rules=None) -> int:
    """One recorded run: a frame and a part verdict per part, start and stop audited."""
    rec = Records(str(path))
    run = rec.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, rules or {"level": "part"}, None)
    for seq, (part, ok) in enumerate(parts):
        reasons = () if ok else ("damage: 1 region(s) > max_count 0",)
        rec.add_frame(_result(seq, part, reasons))
        rec.add_verdict(PartVerdict(part, "part", ok, list(reasons), seq, seq, 1, 1.0 + seq, 1.5 + seq))
        rec.commit()
    rec.finish_run("finished", {"frames": len(parts), "parts": len(parts)})
    rec.close()
    return run


def _tamper(path, *sql: str) -> None:
    """What someone with the file and SQLite in hand does: drop the append-only triggers, change rows,
    put the triggers back (so only the chain can tell)."""
    con = sqlite3.connect(path)
    for t in audit.TRIGGERS:
        con.execute(f"DROP TRIGGER {t}")
    for statement in sql:
        con.execute(statement)
    for statement in audit.statements():
        if statement.startswith("CREATE TRIGGER"):
            con.execute(statement)
    con.commit()
    con.close()


def _audit(path, capsys, *more):
    rc = main(["report", str(path), "--audit", *more])
    return rc, capsys.readouterr().out


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "r.sqlite"
    _run(path)
    _run(path, rules={"level": "part", "classes": {"damage": {"max_count": 1}}})  # other rules: a rules_change row
    return path


def test_runs_are_audited_and_the_chain_verifies(db, capsys):
    rc, out = _audit(db, capsys)
    assert rc == 0, out
    assert "chain OK, 5 row(s)" in out
    con = sqlite3.connect(db)
    actions = [r[0] for r in con.execute("SELECT action FROM audit ORDER BY id")]
    assert actions == ["run_start", "run_stop", "rules_change", "run_start", "run_stop"]
    prev = [r[0] for r in con.execute("SELECT prev FROM audit ORDER BY id")]
    hashes = [r[0] for r in con.execute("SELECT hash FROM audit ORDER BY id")]
    assert prev == [audit.GENESIS] + hashes[:-1]
    assert main(["report", str(db), "--check"]) == 0


@pytest.mark.parametrize("sql, words", [
    (["UPDATE audit SET user='mallory' WHERE id=2"], r"audit row 2: its content does not match its hash"),
    (["DELETE FROM audit WHERE id=3"], r"audit row\(s\) 3 missing"),
    (["DELETE FROM audit WHERE id=5"], r"after 4 missing: the id counter is at 5"),
    (["UPDATE audit SET id=-1 WHERE id=2", "UPDATE audit SET id=2 WHERE id=3", "UPDATE audit SET id=3 WHERE id=-1"],
     r"audit row 2: its link does not match"),
])
def test_an_edited_deleted_or_reordered_row_breaks_the_chain(db, capsys, sql, words):
    _tamper(db, *sql)
    rc, out = _audit(db, capsys)
    assert rc == 1
    assert "CHAIN BROKEN" in out
    assert re.search(words, out), out
    assert main(["report", str(db), "--check"]) == 1  # --check includes the chain
    assert "audit row" in capsys.readouterr().out


def test_a_deleted_last_row_with_its_counter_is_still_caught_by_the_runs_reference(db, capsys):
    _tamper(db, "DELETE FROM audit WHERE id=5", "UPDATE sqlite_sequence SET seq=4 WHERE name='audit'")
    rc, out = _audit(db, capsys)
    assert rc == 1 and "run 2: its run_stop audit row 5 is not in the chain" in out


def test_the_append_only_triggers_refuse_edits_and_their_removal_is_reported(db, capsys):
    con = sqlite3.connect(db)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("UPDATE audit SET user='x' WHERE id=1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        con.execute("DELETE FROM audit WHERE id=1")
    con.execute("DROP TRIGGER audit_no_delete")
    con.commit()
    con.close()
    rc, out = _audit(db, capsys)
    assert rc == 1 and "audit_no_delete removed" in out


def _version1(path) -> None:
    """A database as ds2a wrote it before the audit trail: schema version 1, no audit tables."""
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA application_id={APPLICATION_ID}")
    con.executescript(database.V1_SCHEMA)
    con.execute("INSERT INTO runs (started_at, ended_at, status, model, stats, frames) "
                "VALUES (1.0, 2.0, 'finished', 'm', '{}', 0)")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()


def test_an_older_database_without_the_audit_table_reads_and_is_migrated_when_written(tmp_path, capsys):
    path = tmp_path / "old.sqlite"
    _version1(path)
    before = path.read_bytes()
    assert main(["report", str(path)]) == 0
    rc, out = _audit(path, capsys)
    assert rc == 0 and "no audit trail" in out and "chain OK, 0 row(s)" in out
    assert path.read_bytes() == before  # reading never migrates
    _run(path)  # writing adds the tables and version 2, then audits the run
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == database.SCHEMA_VERSION
    assert [r[0] for r in con.execute("SELECT action FROM audit ORDER BY id")] == ["rules_change", "run_start",
                                                                                     "run_stop"]
    con.close()
    assert _audit(path, capsys)[0] == 0


def test_a_current_file_is_refused_untouched_by_a_ds2a_that_reads_only_version_1(db, monkeypatch):
    monkeypatch.setattr(database, "SCHEMA_VERSION", 1)
    before = db.read_bytes()
    with pytest.raises(UserError, match=f"schema version {database.UPGRADES and max(database.UPGRADES)}, "
                                        "written by a newer ds2a"):
        connect(str(db))
    assert db.read_bytes() == before


def test_removing_the_audit_table_and_downgrading_the_version_is_reported(db, capsys):
    con = sqlite3.connect(db)
    for t in audit.TRIGGERS:
        con.execute(f"DROP TRIGGER {t}")
    con.execute("DROP TABLE overrides")
    con.execute("DROP TABLE audit")
    for t in ("shadow", "marks"):  # and what later versions added, so the file looks like version 1
        con.execute(f"DROP TABLE {t}")
    con.execute("ALTER TABLE verdicts DROP COLUMN recipe")
    con.execute("ALTER TABLE verdicts DROP COLUMN recipe_sha256")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    rc, out = _audit(db, capsys)
    assert rc == 1 and "audit table missing, but run(s) 1, 2 were audited" in out


def test_a_demo_inspect_run_writes_start_and_stop_rows(tmp_path, capsys):
    from fakes.onnx_models import threshold_onnx

    model = threshold_onnx(tmp_path / "thr.onnx")
    path = tmp_path / "inspect.sqlite"
    assert main(["inspect", "--model", str(model), "--source", "demo://?frames=6&width=96&height=64&speed=24",
                 "--headless", "--db", str(path)]) == 0
    con = sqlite3.connect(path)
    rows = con.execute("SELECT action, run_id, user, origin, detail FROM audit ORDER BY id").fetchall()
    assert [r[:2] for r in rows] == [("run_start", 1), ("run_stop", 1)]
    assert rows[0][2] == audit.local_user() and audit.local_origin().split(" pid ")[0] in rows[0][3]
    assert '"status":"finished"' in rows[1][4]
    import hashlib
    import json
    from pathlib import Path

    start = json.loads(rows[0][4])  # which model judged is provable from the chain alone (a promotion, a shadow)
    assert start["model_sha256"] == hashlib.sha256(Path(model).read_bytes()).hexdigest()
    assert start["recipe"] == "default" and len(start["recipe_sha256"]) == 64 and "engine_sha256" not in start
    capsys.readouterr()
    assert _audit(path, capsys)[0] == 0


# --- overrides ----------------------------------------------------------------------------------------------

def _users(tmp_path):
    from ds2a.notify.users import hash_password

    path = tmp_path / "users.txt"
    path.write_text(f"anna:operator:{hash_password('anna-secret', method='pbkdf2')}\n"
                    f"ben:engineer:{hash_password('ben-secret', method='pbkdf2')}\n")
    return str(path)


def _override(db, *more):
    return main(["override", str(db), "--part", "b", "--run", "1", *more])


def test_an_override_adds_rows_keeps_the_original_and_the_report_shows_both(db, capsys):
    con = sqlite3.connect(db)
    original = con.execute("SELECT * FROM verdicts WHERE run_id=1 AND part_id='b'").fetchone()
    con.close()
    assert _override(db, "--verdict", "PASS", "--reason", "dust, blown off", "--user", "ben") == 0
    assert "FAIL -> PASS by ben (unverified" in capsys.readouterr().out
    con = sqlite3.connect(db)
    assert con.execute("SELECT * FROM verdicts WHERE run_id=1 AND part_id='b'").fetchone() == original
    o = con.execute("SELECT kind, original, verdict, reason, user, role, audit_id FROM overrides").fetchone()
    assert o == ("override", "FAIL", "PASS", "dust, blown off", "ben", None, 6)
    assert con.execute("SELECT action, part_id, run_id FROM audit WHERE id=6").fetchone() == ("override", "b", 1)
    con.close()
    assert main(["report", str(db), "--run", "1"]) == 0
    out = capsys.readouterr().out
    assert "1 PASS, 1 FAIL" in out  # the original verdicts
    assert "part b: FAIL -> PASS by ben (unverified)" in out and "dust, blown off" in out
    assert _audit(db, capsys)[0] == 0


def test_an_edited_override_row_is_caught_against_its_audit_row(db, capsys):
    assert _override(db, "--verdict", "PASS", "--reason", "dust", "--user", "ben") == 0
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER overrides_no_update")
    con.execute("UPDATE overrides SET reason='other'")
    con.execute(audit.statements()[-2])  # overrides_no_update back
    con.commit()
    con.close()
    rc, out = _audit(db, capsys)
    assert rc == 1 and "override row 1 (part b) does not match its audit row 6" in out


def test_roles_are_enforced_for_overrides(db, tmp_path, monkeypatch, capsys):
    users = _users(tmp_path)
    monkeypatch.setenv("DS2A_PASSWORD", "anna-secret")
    assert _override(db, "--verdict", "PASS", "--reason", "x", "--user", "anna", "--users", users) == 2
    err = capsys.readouterr().err
    assert "anna is operator" in err and "needs engineer" in err and "nothing recorded" in err
    assert _override(db, "--doubtful", "--reason", "glare", "--user", "anna", "--users", users) == 0
    monkeypatch.setenv("DS2A_PASSWORD", "wrong")
    assert _override(db, "--verdict", "PASS", "--reason", "x", "--user", "ben", "--users", users) == 2
    assert "wrong password" in capsys.readouterr().err
    monkeypatch.setenv("DS2A_PASSWORD", "ben-secret")
    assert _override(db, "--verdict", "PASS", "--reason", "dust", "--user", "ben", "--users", users) == 0
    con = sqlite3.connect(db)
    assert con.execute("SELECT kind, verdict, user, role FROM overrides ORDER BY id").fetchall() == [
        ("doubtful", None, "anna", "operator"), ("override", "PASS", "ben", "engineer")]
    assert con.execute("SELECT COUNT(*) FROM audit WHERE action IN ('override', 'doubtful')").fetchone()[0] == 2
    con.close()
    capsys.readouterr()
    assert main(["report", str(db), "--run", "1"]) == 0
    out = capsys.readouterr().out
    assert "part b: FAIL, doubtful by anna (operator)" in out and "part b: FAIL -> PASS by ben (engineer)" in out


def test_an_override_names_its_part_and_run(db, capsys):
    assert main(["override", str(db), "--part", "b", "--verdict", "PASS", "--reason", "x", "--user", "ben"]) == 2
    err = capsys.readouterr().err
    assert "2 verdicts" in err and "runs 1, 2" in err and "--run N" in err
    assert main(["override", str(db), "--part", "zz", "--verdict", "PASS", "--reason", "x", "--user", "ben"]) == 2
    assert "part zz has no verdict" in capsys.readouterr().err
    assert _override(db, "--verdict", "FAIL", "--reason", "x", "--user", "ben") == 2
    assert "already FAIL" in capsys.readouterr().err
    assert _override(db, "--verdict", "PASS", "--reason", "  ", "--user", "ben") == 2
    con = sqlite3.connect(db)
    assert con.execute("SELECT COUNT(*) FROM overrides").fetchone()[0] == 0


# --- OPC UA method calls ------------------------------------------------------------------------------------

def test_opcua_method_calls_are_audited_as_they_happen(tmp_path, capsys):
    asyncua = pytest.importorskip("asyncua", reason="asyncua missing: pip install -e '.[notify]'")
    import asyncio
    import socket

    from ds2a.notify.opcua_server import NAMESPACE, OpcuaStation, parse_opcua_url

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"opc.tcp://127.0.0.1:{s.getsockname()[1]}"
    path = tmp_path / "r.sqlite"
    rec = Records(str(path))
    rec.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, {"level": "part"}, None)
    station = OpcuaStation(parse_opcua_url(url))
    station.info = {"recipe": "rules.yaml"}
    seen = {}

    async def client() -> None:
        async with asyncua.Client(url) as c:
            ns = await c.get_namespace_index(NAMESPACE)
            sm = await c.nodes.objects.get_child([f"{ns}:DS2A", f"{ns}:VisionStateMachine"])
            with pytest.raises(asyncua.ua.UaStatusCodeError):  # no alarm: refused, and audited all the same
                await sm.call_method(f"{ns}:AcknowledgeAlarm", asyncua.ua.Variant("x", asyncua.ua.VariantType.String))
            con = sqlite3.connect(path)  # while the run goes on, not at its end
            seen["during"] = [r[0] for r in con.execute("SELECT action FROM audit ORDER BY id")]
            con.close()
            recipes = await c.nodes.objects.get_child([f"{ns}:DS2A", f"{ns}:RecipeManagement"])
            await recipes.call_method(f"{ns}:SelectRecipe", asyncua.ua.Variant("rules.yaml", asyncua.ua.VariantType.String))

    station.start(None, rec)
    try:
        asyncio.run(asyncio.wait_for(client(), 60))
    finally:
        station.close()
    rec.finish_run("finished", {"frames": 0, "parts": 0})
    rec.close()
    assert seen["during"] == ["run_start", "alarm_ack"]
    con = sqlite3.connect(path)
    rows = con.execute("SELECT action, user, role, origin, run_id, detail FROM audit ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["run_start", "alarm_ack", "recipe_select", "run_stop"]
    assert rows[1][1:3] == ("anonymous", "engineer") and rows[1][3].startswith("opc.tcp") and rows[1][4] == 1
    assert '"status":"BadInvalidState"' in rows[1][5] and '"status":"Good"' in rows[2][5]
    assert [a.get("audit_id") for a in rec.extra["opcua_audit"]] == [2, 3]
    con.close()
    assert _audit(path, capsys)[0] == 0


def test_an_evidence_export_is_audited(db, tmp_path, capsys):
    pytest.importorskip("cv2")
    out = tmp_path / "evidence"
    out.mkdir()
    assert main(["evidence", str(db), "--part", "b", "--run", "1", "--out", str(out)]) == 0
    con = sqlite3.connect(db)
    row = con.execute("SELECT action, run_id, part_id, user, detail FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    con.close()
    assert row[:4] == ("evidence_export", 1, "b", audit.local_user())
    folder = next(p for p in out.iterdir() if p.is_dir())
    import hashlib
    import json

    detail = json.loads(row[4])
    assert detail["folder"] == os.path.abspath(str(folder))
    assert detail["manifest_sha256"] == hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    capsys.readouterr()
    assert _audit(db, capsys)[0] == 0


# --- the page: named users ----------------------------------------------------------------------------------

def test_the_page_signs_users_in_by_name_and_a_shared_token_still_works(db, tmp_path, caplog):
    pytest.importorskip("aiohttp")
    import logging
    import urllib.error
    import urllib.parse
    import urllib.request

    from ds2a.notify.users import read_users
    from ds2a.web.server import SESSION_COOKIE, BackgroundServer, Site, make_app

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)

    def get(url, data=None, headers=None):
        req = urllib.request.Request(url, data=data, headers=headers or {})
        try:
            with opener.open(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as err:
            return err.code, dict(err.headers), err.read().decode("utf-8", "replace")

    caplog.set_level(logging.INFO, logger="ds2a")
    token = "shared-token-0123456789"
    server = BackgroundServer(make_app(Site(str(db)), token, read_users(_users(tmp_path))), "127.0.0.1", 0)
    port = server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        status, headers, _ = get(f"{base}/api/summary")
        assert status == 401  # neither signed in nor the token
        status, _, body = get(f"{base}/login")
        assert status == 200 and 'name="password"' in body and 'type="password"' in body
        form = urllib.parse.urlencode({"name": "ben", "password": "wrong"}).encode()
        status, headers, _ = get(f"{base}/login", form)
        assert status == 401 and SESSION_COOKIE not in headers.get("Set-Cookie", "")
        form = urllib.parse.urlencode({"name": "ben", "password": "ben-secret"}).encode()
        status, headers, _ = get(f"{base}/login", form)
        assert status == 303 and headers["Location"] == "/"
        cookie = headers["Set-Cookie"].split(";")[0]
        assert cookie.startswith(SESSION_COOKIE + "=") and "HttpOnly" in headers["Set-Cookie"]
        status, _, body = get(f"{base}/api/summary", headers={"Cookie": cookie})
        assert status == 200 and '"parts"' in body
        assert get(f"{base}/api/summary", headers={"Cookie": SESSION_COOKIE + "=forged"})[0] == 401
        status, _, body = get(f"{base}/api/summary", headers={"Authorization": f"Bearer {token}"})
        assert status == 200  # the shared token of a single-user station
        status, _, _ = get(f"{base}/evidence/1.zip", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
    finally:
        server.stop()
    assert "ben (engineer) signed in" in caplog.text and "refused a sign-in for 'ben'" in caplog.text
    assert "evidence of part verdict 1 taken by shared token" in caplog.text
