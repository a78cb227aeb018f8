"""The audit trail in the records database: who did what, when and from where, in a hash chain.

Table `audit` (schema version 2, ds2a/records/database.py) is append-only: triggers refuse UPDATE and
DELETE, and every row carries `prev` (the previous row's hash) and `hash` = SHA-256 of `prev` followed
by the row's canonical content (its id and fields as compact JSON). `verify` walks the chain: an edited
row no longer matches its hash, a deleted row breaks the next row's link and leaves a gap in the ids
(the last row: the id counter in sqlite_sequence stays ahead), a reordered row breaks both. Runs keep
the ids of their start and stop rows in their stats, and every override row repeats its audit row, so
those are checked against the chain too. What it cannot prove: someone who rewrites the whole chain
and every cross-reference with SQLite in hand; an auditor keeps the last hash (`ds2a report DB --audit`
prints it) to pin the chain up to that row.

Table `overrides`: a verdict override or a doubt, one row beside its audit row; the original verdict
row is never changed (`ds2a override`, ds2a/cli/override.py). Python 3.8 compatible, torch-free.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import sqlite3
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

GENESIS = "0" * 64  # the `prev` of the first row
TABLES = ("audit", "overrides")
ACTIONS = ("run_start", "run_stop", "rules_change", "alarm_ack", "recipe_select", "override", "doubtful",
           "evidence_export", "review_mark", "review_confirm", "review_reject",
           "review_export")  # the review_* rows: ds2a/records/review.py
SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, t REAL NOT NULL, user TEXT NOT NULL, role TEXT, origin TEXT NOT NULL,
    action TEXT NOT NULL, run_id INTEGER, part_id TEXT, detail TEXT, prev TEXT NOT NULL, hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS overrides (
    id INTEGER PRIMARY KEY AUTOINCREMENT, audit_id INTEGER NOT NULL REFERENCES audit(id),
    verdict_id INTEGER NOT NULL REFERENCES verdicts(id), run_id INTEGER NOT NULL, part_id TEXT,
    kind TEXT NOT NULL, original TEXT NOT NULL, verdict TEXT, reason TEXT NOT NULL, user TEXT NOT NULL,
    role TEXT, t REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS overrides_run ON overrides(run_id, part_id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'audit rows are append-only'); END;
CREATE TRIGGER IF NOT EXISTS overrides_no_update BEFORE UPDATE ON overrides
    BEGIN SELECT RAISE(ABORT, 'override rows are append-only'); END;
CREATE TRIGGER IF NOT EXISTS overrides_no_delete BEFORE DELETE ON overrides
    BEGIN SELECT RAISE(ABORT, 'override rows are append-only'); END;
"""
TRIGGERS = ("audit_no_update", "audit_no_delete", "overrides_no_update", "overrides_no_delete")
FIELDS = ("id", "t", "user", "role", "origin", "action", "run_id", "part_id", "detail")


def statements() -> List[str]:
    """SCHEMA as single statements (a migration runs them inside its own transaction; executescript would
    commit first)."""
    out, buf = [], []
    for line in SCHEMA.strip().splitlines():
        buf.append(line)
        text = "\n".join(buf).strip()
        if text.endswith(";") and (not text.startswith("CREATE TRIGGER") or text.endswith("END;")):
            out.append(text)
            buf = []
    return out


def row_hash(prev: str, row: Sequence[Any]) -> str:
    """SHA-256 (hex) of `prev` and the row's FIELDS as compact JSON: the link of the chain."""
    canonical = json.dumps(list(row), separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256((prev + canonical).encode("ascii")).hexdigest()


def local_user() -> str:
    """The operating-system user running this process (who starts a run or types a command)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError, ImportError):  # no passwd entry (containers)
        return f"uid {os.getuid()}" if hasattr(os, "getuid") else "unknown"


def local_origin() -> str:
    return f"{socket.gethostname()} pid {os.getpid()}"


def has_audit(con: sqlite3.Connection) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='audit'").fetchone() is not None


def append(con: sqlite3.Connection, action: str, user: str, origin: str, role: Optional[str] = None,
           run_id: Optional[int] = None, part_id: Optional[str] = None, detail: Optional[Dict[str, Any]] = None,
           t: Optional[float] = None) -> Tuple[int, str]:
    """Add one row; (id, hash). Outside a transaction it takes the write lock (BEGIN IMMEDIATE) and commits,
    so two processes never link to the same previous row; inside one, the caller must already have written
    in it (holding the lock) and commits."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    own = not con.in_transaction
    if own:
        con.execute("BEGIN IMMEDIATE")
    try:
        last = con.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        seq = con.execute("SELECT seq FROM sqlite_sequence WHERE name='audit'").fetchone()
        new_id = max(int(last[0]) if last else 0, int(seq[0]) if seq else 0) + 1
        prev = last[1] if last else GENESIS
        text = json.dumps(detail, sort_keys=True, separators=(",", ":")) if detail is not None else None
        row = (new_id, round(time.time() if t is None else float(t), 6), str(user), role, str(origin), action,
               run_id, None if part_id is None else str(part_id), text)
        digest = row_hash(prev, row)
        con.execute("INSERT INTO audit (id, t, user, role, origin, action, run_id, part_id, detail, prev, hash) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)", (*row, prev, digest))
        if own:
            con.commit()
    except BaseException:
        if own:
            con.rollback()
        raise
    return new_id, digest


def rows(con: sqlite3.Connection, run_id: Optional[int] = None) -> List[Tuple]:
    """Audit rows (FIELDS + prev, hash) in id order, all or those of one run."""
    if not has_audit(con):
        return []
    cols = ", ".join(FIELDS + ("prev", "hash"))
    if run_id is None:
        return [tuple(r) for r in con.execute(f"SELECT {cols} FROM audit ORDER BY id")]
    return [tuple(r) for r in con.execute(f"SELECT {cols} FROM audit WHERE run_id=? ORDER BY id", (run_id,))]


def verify(con: sqlite3.Connection) -> Tuple[int, List[str]]:
    """(rows checked, problems): the chain, the id sequence, the triggers, and the runs' and overrides'
    references into the chain. Read-only."""
    problems: List[str] = []
    if not has_audit(con):
        audited = [rid for rid, stats in con.execute("SELECT id, stats FROM runs") if _stat_ids(stats)]
        if audited:
            problems.append(f"audit table missing, but run(s) {', '.join(map(str, audited[:10]))} were audited: "
                            "the audit trail was removed")
        return 0, problems
    chain = rows(con)
    prev, last_id = GENESIS, 0
    for row in chain:
        rid, stored_prev, stored_hash = row[0], row[-2], row[-1]
        if rid != last_id + 1:
            gap = f"{last_id + 1}" if rid == last_id + 2 else f"{last_id + 1}..{rid - 1}"
            problems.append(f"audit row(s) {gap} missing (deleted)" if rid > last_id else
                            f"audit row {rid} out of order")
        if stored_prev != prev:
            problems.append(f"audit row {rid}: its link does not match the row before it (a row deleted, "
                            "moved or edited before it)")
        try:
            ok = row_hash(stored_prev or "", row[:-2]) == stored_hash
        except (TypeError, ValueError):
            ok = False
        if not ok:
            problems.append(f"audit row {rid}: its content does not match its hash (edited)")
        prev, last_id = stored_hash or "", rid
    seq = con.execute("SELECT seq FROM sqlite_sequence WHERE name='audit'").fetchone()
    if seq and int(seq[0]) > last_id:
        problems.append(f"audit row(s) after {last_id} missing: the id counter is at {seq[0]} (deleted)")
    present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    gone = [t for t in TRIGGERS if t not in present]
    if gone:
        problems.append(f"append-only trigger(s) {', '.join(gone)} removed")
    by_id = {r[0]: r for r in chain}
    for run_id, stats in con.execute("SELECT id, stats FROM runs ORDER BY id"):
        for action, aid in _stat_ids(stats).items():
            r = by_id.get(aid)
            if r is None or r[5] != action or r[6] != run_id:
                problems.append(f"run {run_id}: its {action} audit row {aid} is not in the chain")
    for o in con.execute("SELECT id, audit_id, verdict_id, run_id, part_id, kind, original, verdict, reason, user "
                         "FROM overrides ORDER BY id"):
        r = by_id.get(o[1])
        detail = _detail(r[8]) if r else {}
        same = r is not None and r[5] == o[5] and r[6] == o[3] and r[7] == o[4] and r[2] == o[9] and \
            [detail.get(k) for k in ("verdict_id", "original", "verdict", "reason")] == [o[2], o[6], o[7], o[8]]
        if not same:
            problems.append(f"override row {o[0]} (part {o[4]}) does not match its audit row {o[1]} (edited)")
    return len(chain), problems


def head(con: sqlite3.Connection) -> Tuple[int, str]:
    """(last id, last hash): what an auditor writes down to pin the chain."""
    if not has_audit(con):
        return 0, GENESIS
    last = con.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    return (int(last[0]), str(last[1])) if last else (0, GENESIS)


def _detail(text: Optional[str]) -> Dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _stat_ids(stats: Optional[str]) -> Dict[str, int]:
    """{action: audit id} a run keeps in its stats (`audit`: {"run_start": id, "run_stop": id})."""
    ids = _detail(stats).get("audit")
    return {k: v for k, v in ids.items() if k in ACTIONS and isinstance(v, int)} if isinstance(ids, dict) else {}


def overrides(con: sqlite3.Connection, run_id: int) -> List[Dict[str, Any]]:
    """A run's overrides and doubts, oldest first, with the original verdict beside each."""
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "overrides" not in tables:
        return []
    cur = con.execute("SELECT id, audit_id, verdict_id, part_id, kind, original, verdict, reason, user, role, t "
                      "FROM overrides WHERE run_id=? ORDER BY id", (run_id,))
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def add_override(con: sqlite3.Connection, verdict_id: int, kind: str, reason: str, user: str, origin: str,
                 role: Optional[str] = None, verdict: Optional[str] = None,
                 detail: Optional[Dict[str, Any]] = None) -> Tuple[int, str]:
    """An override (`kind` override, with the new `verdict`) or a doubt (`kind` doubtful) of one verdict row:
    an audit row and an override row in one transaction; the verdict row is never changed. (audit id, the
    original verdict). ValueError for a verdict id not in the records or an override to the same verdict."""
    if kind not in ("override", "doubtful"):
        raise ValueError(f"unknown override kind {kind!r}")
    con.execute("BEGIN IMMEDIATE")
    try:
        found = con.execute("SELECT run_id, part_id, verdict FROM verdicts WHERE id=?", (verdict_id,)).fetchone()
        if found is None:
            raise ValueError(f"verdict {verdict_id} is not in the records")
        run_id, part_id, original = found
        if kind == "override" and verdict == original:
            raise ValueError(f"part {part_id} is already {original}; nothing to override")
        full = {**(detail or {}), "verdict_id": verdict_id, "original": original, "verdict": verdict,
                "reason": reason}
        aid, _ = append(con, kind, user, origin, role=role, run_id=run_id, part_id=part_id, detail=full)
        t = con.execute("SELECT t FROM audit WHERE id=?", (aid,)).fetchone()[0]
        con.execute("INSERT INTO overrides (audit_id, verdict_id, run_id, part_id, kind, original, verdict, reason, "
                    "user, role, t) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (aid, verdict_id, run_id, part_id, kind, original, verdict, reason, user, role, t))
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return aid, str(original)


def format_rows(chain: Sequence[Tuple]) -> List[str]:
    """One line per audit row, as `ds2a report DB --audit` prints them."""
    out = []
    for rid, t, user, role, origin, action, run_id, part_id, detail, _, digest in chain:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if isinstance(t, (int, float)) else "?"
        where = f" run {run_id}" if run_id is not None else ""
        part = f" part {part_id}" if part_id is not None else ""
        out.append(f"  {rid:>5}  {when}  {user}{f' ({role})' if role else ''} from {origin}: {action}{where}{part}"
                   f"{'  ' + detail if detail else ''}  [{str(digest)[:12]}]")
    return out
