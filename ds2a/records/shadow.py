"""A shadow model's verdicts, recorded beside the live ones and never published.

Table `shadow` (schema version 3, ds2a/records/database.py): one row per live part the candidate
model was offered. `judged` is 1 when the candidate judged every frame of the part, 0 when the part
was left out (the candidate's bounded queue was full: a documented sample, `reasons` says why); the
live verdict is repeated so agreement is one query. Python 3.8 compatible, torch-free.
"""
from __future__ import annotations

TABLES = ("shadow",)
SCHEMA = """
CREATE TABLE IF NOT EXISTS shadow (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id), part_id TEXT, first_seq INTEGER, last_seq INTEGER,
    model TEXT NOT NULL, model_sha256 TEXT, judged INTEGER NOT NULL, verdict TEXT, reasons TEXT,
    live_verdict TEXT NOT NULL, n_frames INTEGER, infer_ms REAL, t REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_run ON shadow(run_id, part_id);
"""
