"""Operator review marks: "this verdict was wrong", confirmed or rejected by an engineer.

Table `marks` (schema version 3, ds2a/records/database.py) is append-only like the audit trail: a
mark (`action` mark, `kind` false_reject or missed_defect, with a note) and its confirmation
(`action` confirm or reject, `mark_id` pointing at the mark) are separate rows, each beside its audit
row; the verdict row is never changed. Python 3.8 compatible, torch-free.
"""
from __future__ import annotations

TABLES = ("marks",)
KINDS = ("false_reject", "missed_defect")
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
