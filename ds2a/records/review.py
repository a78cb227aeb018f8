"""Operator review marks: "this verdict was wrong", confirmed or rejected by an engineer.

Table `marks` (schema version 3, ds2a/records/database.py) is append-only like the audit trail: a
mark (`action` mark, `kind` false_reject or missed_defect, with a note) and its confirmation
(`action` confirm or reject, `mark_id` pointing at the mark) are separate rows, each beside its audit
row (`review_mark`, `review_confirm`, `review_reject`: ds2a/records/audit.py) written in the same
transaction; the verdict row is never changed. A false reject is a FAIL that should have passed, a
missed defect a PASS that should have failed (a NONE part was never judged, so it cannot be either).
Anyone may mark (operator and above, or an unverified single-user name); only an engineer or admin
confirms. Confirmed marks become training data (`ds2a review export`, ds2a/records/review_export.py;
docs/REVIEW.md). Python 3.8 compatible, torch-free.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Dict, List, Optional

from . import audit

TABLES = ("marks",)
KINDS = ("false_reject", "missed_defect")
TRIGGERS = ("marks_no_update", "marks_no_delete")  # the append-only guards (SCHEMA)
WRONG_VERDICT = {"false_reject": "FAIL", "missed_defect": "PASS"}  # the verdict each kind says was wrong
ROLES = ("operator", "engineer", "admin")  # as ds2a/notify/users.py (records sits below notify)
CONFIRMERS = ("engineer", "admin")
MAX_NOTE = 1000
SCHEMA = """
CREATE TABLE IF NOT EXISTS marks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, audit_id INTEGER REFERENCES audit(id),
    verdict_id INTEGER NOT NULL REFERENCES verdicts(id), run_id INTEGER NOT NULL, part_id TEXT,
    action TEXT NOT NULL, kind TEXT, mark_id INTEGER REFERENCES marks(id), note TEXT,
    user TEXT NOT NULL, role TEXT, t REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS marks_run ON marks(run_id, part_id);
CREATE TRIGGER IF NOT EXISTS marks_no_update BEFORE UPDATE ON marks
    BEGIN SELECT RAISE(ABORT, 'mark rows are append-only'); END;
CREATE TRIGGER IF NOT EXISTS marks_no_delete BEFORE DELETE ON marks
    BEGIN SELECT RAISE(ABORT, 'mark rows are append-only'); END;
"""


class ReviewError(ValueError):
    """A mark or confirmation refused, nothing written; `status` is the HTTP answer the page gives
    (400 bad input, 403 role, 404 unknown, 409 conflict)."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.status = status


def has_marks(con: sqlite3.Connection) -> bool:
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='marks'").fetchone() is not None


def _note(note: Optional[str], required: bool) -> str:
    text = (note or "").strip()
    if required and not text:
        raise ReviewError("the note is empty: say what is wrong with the verdict (it is kept in the audit trail); "
                          "nothing recorded", 400)
    return text[:MAX_NOTE]


def _append(con: sqlite3.Connection, action: str, row: Dict[str, Any], origin: str,
            detail: Dict[str, Any]) -> int:
    """One audit row and its marks row in one transaction (the caller holds BEGIN IMMEDIATE); the mark's id."""
    aid, _ = audit.append(con, action, row["user"], origin, role=row["role"], run_id=row["run_id"],
                          part_id=row["part_id"], detail=detail)
    t = con.execute("SELECT t FROM audit WHERE id=?", (aid,)).fetchone()[0]
    cur = con.execute("INSERT INTO marks (audit_id, verdict_id, run_id, part_id, action, kind, mark_id, note, user, "
                      "role, t) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                      (aid, row["verdict_id"], row["run_id"], row["part_id"], row["action"], row.get("kind"),
                       row.get("mark_id"), row["note"], row["user"], row["role"], t))
    return int(cur.lastrowid)


def mark(con: sqlite3.Connection, verdict_id: int, kind: str, note: str, user: str, role: Optional[str],
         origin: str, detail: Optional[Dict[str, Any]] = None) -> int:
    """Mark one part verdict (its `verdicts` row id) as a false reject or a missed defect; the mark's id.

    ReviewError (nothing written) for an unknown kind or verdict, an empty note, a role that is not one
    of ROLES, or a kind that does not fit the verdict (a false reject must be a FAIL, a missed defect a PASS).
    """
    if kind not in KINDS:
        raise ReviewError(f"kind {kind!r} is not one of {', '.join(KINDS)}; nothing recorded", 400)
    if role is not None and role not in ROLES:
        raise ReviewError(f"role {role!r} is not one of {', '.join(ROLES)}; nothing recorded", 403)
    text = _note(note, required=True)
    con.execute("BEGIN IMMEDIATE")
    try:
        found = con.execute("SELECT run_id, part_id, verdict FROM verdicts WHERE id=?", (verdict_id,)).fetchone()
        if found is None:
            raise ReviewError(f"part verdict {verdict_id} is not in the records; nothing recorded", 404)
        run_id, part_id, verdict = found
        if verdict != WRONG_VERDICT[kind]:
            raise ReviewError(f"part {part_id} of run {run_id} is {verdict}: a {kind.replace('_', ' ')} marks a "
                              f"{WRONG_VERDICT[kind]} that was wrong"
                              + (" (a NONE part was never judged)" if verdict == "NONE" else "")
                              + "; nothing recorded", 409)
        row = {"verdict_id": verdict_id, "run_id": run_id, "part_id": part_id, "action": "mark", "kind": kind,
               "note": text, "user": str(user), "role": role}
        mark_id = _append(con, "review_mark", row, origin, {**(detail or {}), "verdict_id": verdict_id,
                                                             "verdict": verdict, "kind": kind, "note": text})
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return mark_id


def confirm(con: sqlite3.Connection, mark_id: int, accept: bool, note: str, user: str, role: Optional[str],
            origin: str, detail: Optional[Dict[str, Any]] = None) -> int:
    """An engineer's (or admin's) answer to a mark: confirmed (accept) or rejected; the confirmation row's id.

    ReviewError (nothing written) for another role (an operator may mark, never confirm), an unknown mark,
    or a mark that already has its answer (a second answer would make the export ambiguous).
    """
    if role not in CONFIRMERS:
        raise ReviewError(f"{user} is {role or 'without a role'}: confirming or rejecting a mark needs "
                          f"{' or '.join(CONFIRMERS)}; nothing recorded", 403)
    text = _note(note, required=False)
    con.execute("BEGIN IMMEDIATE")
    try:
        found = con.execute("SELECT verdict_id, run_id, part_id, kind FROM marks WHERE id=? AND action='mark'",
                            (mark_id,)).fetchone()
        if found is None:
            raise ReviewError(f"mark {mark_id} is not in the records (`ds2a review list` shows the marks); "
                              "nothing recorded", 404)
        verdict_id, run_id, part_id, kind = found
        done = con.execute("SELECT action, user FROM marks WHERE mark_id=? ORDER BY id LIMIT 1", (mark_id,)).fetchone()
        if done is not None:
            raise ReviewError(f"mark {mark_id} was already {'confirmed' if done[0] == 'confirm' else 'rejected'} by "
                              f"{done[1]}; nothing recorded", 409)
        action = "confirm" if accept else "reject"
        row = {"verdict_id": verdict_id, "run_id": run_id, "part_id": part_id, "action": action, "kind": kind,
               "mark_id": mark_id, "note": text, "user": str(user), "role": role}
        answer_id = _append(con, f"review_{action}", row, origin,
                            {**(detail or {}), "mark_id": mark_id, "verdict_id": verdict_id, "kind": kind,
                             "note": text})
        con.commit()
    except BaseException:
        con.rollback()
        raise
    return answer_id


def marks(con: sqlite3.Connection, run_id: Optional[int] = None) -> List[Dict[str, Any]]:
    """Every mark (oldest first, of one run or all) with its part verdict and its answer: `status` open,
    confirmed or rejected, `answered_by`, `answer_role`, `answer_note`, `answered_t`. Read-only; [] on a
    database from before marks."""
    if not has_marks(con):
        return []
    sql = ("SELECT m.id, m.audit_id, m.verdict_id, m.run_id, m.part_id, m.kind, m.note, m.user, m.role, m.t, "
           "v.verdict, v.reasons, a.action, a.user, a.role, a.note, a.t, a.id FROM marks m "
           "JOIN verdicts v ON v.id = m.verdict_id "
           "LEFT JOIN marks a ON a.id = (SELECT MIN(id) FROM marks WHERE mark_id = m.id) "
           "WHERE m.action = 'mark'" + (" AND m.run_id = ?" if run_id is not None else "") + " ORDER BY m.id")
    out = []
    for r in con.execute(sql, () if run_id is None else (run_id,)):
        try:
            reasons = json.loads(r[11]) if r[11] else []
        except ValueError:
            reasons = [r[11]]
        status = {"confirm": "confirmed", "reject": "rejected"}.get(r[12], "open")
        out.append({"id": r[0], "audit_id": r[1], "verdict_id": r[2], "run_id": r[3], "part_id": r[4], "kind": r[5],
                    "note": r[6], "user": r[7], "role": r[8], "t": r[9], "verdict": r[10], "reasons": reasons,
                    "status": status, "answer_id": r[17], "answered_by": r[13], "answer_role": r[14],
                    "answer_note": r[15], "answered_t": r[16]})
    return out


def verify(con: sqlite3.Connection) -> List[str]:
    """Marks rows that do not match their audit rows (edited with SQLite in hand), and append-only triggers
    that were removed (the way to edit a row); read-only."""
    if not has_marks(con):
        return []
    present = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    gone = [t for t in TRIGGERS if t not in present]
    problems = [f"append-only trigger(s) {', '.join(gone)} removed"] if gone else []
    cur = con.execute("SELECT m.id, m.action, m.run_id, m.part_id, m.user, m.verdict_id, a.action, a.run_id, "
                      "a.part_id, a.user, a.detail FROM marks m LEFT JOIN audit a ON a.id = m.audit_id ORDER BY m.id")
    for r in cur:
        try:
            detail = json.loads(r[10] or "{}")
        except ValueError:
            detail = {}
        if r[6] != f"review_{r[1]}" or tuple(r[2:5]) != tuple(r[7:10]) or detail.get("verdict_id") != r[5]:
            problems.append(f"marks row {r[0]} (part {r[3]}) does not match its audit row (edited)")
    return problems
