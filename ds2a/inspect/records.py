"""Inspection records in SQLite (WAL): runs, frames, defects, part verdicts and per-frame timings.

Committed every frame (WAL + synchronous=NORMAL makes that cheap), so a killed process
loses at most the frames in flight. The schema version lives in PRAGMA user_version;
`ds2a report` reads the same tables.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Dict, Iterable, Optional

from ..errors import UserError

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at REAL NOT NULL, ended_at REAL, status TEXT NOT NULL,
    model TEXT, backend TEXT, source TEXT, classes TEXT, rules TEXT, mm_per_pixel REAL,
    frames INTEGER DEFAULT 0, dropped INTEGER DEFAULT 0, corrupt INTEGER DEFAULT 0,
    reconnects INTEGER DEFAULT 0, e2e_fps REAL, model_fps REAL, stats TEXT
);
CREATE TABLE IF NOT EXISTS frames (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id), seq INTEGER NOT NULL, source_index INTEGER,
    t REAL NOT NULL, part_id TEXT, name TEXT, width INTEGER, height INTEGER, verdict TEXT NOT NULL,
    reasons TEXT, n_defects INTEGER NOT NULL, image_path TEXT, raw_path TEXT
);
CREATE TABLE IF NOT EXISTS defects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    frame_id INTEGER NOT NULL REFERENCES frames(id), run_id INTEGER NOT NULL,
    class_id INTEGER, class_name TEXT, area_px REAL, area_mm2 REAL,
    x INTEGER, y INTEGER, w INTEGER, h INTEGER, cx REAL, cy REAL, confidence REAL
);
CREATE TABLE IF NOT EXISTS verdicts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id), part_id TEXT, level TEXT NOT NULL,
    verdict TEXT NOT NULL, reasons TEXT, first_seq INTEGER, last_seq INTEGER, n_frames INTEGER,
    t_start REAL, t_end REAL
);
CREATE TABLE IF NOT EXISTS timings (
    frame_id INTEGER PRIMARY KEY REFERENCES frames(id), run_id INTEGER NOT NULL,
    queue_ms REAL, preprocess_ms REAL, infer_ms REAL, postprocess_ms REAL, output_ms REAL, latency_ms REAL
);
CREATE INDEX IF NOT EXISTS frames_run_t ON frames(run_id, t);
CREATE INDEX IF NOT EXISTS frames_verdict ON frames(run_id, verdict);
CREATE INDEX IF NOT EXISTS defects_frame ON defects(frame_id);
CREATE INDEX IF NOT EXISTS defects_run_class ON defects(run_id, class_name);
CREATE INDEX IF NOT EXISTS verdicts_run_verdict ON verdicts(run_id, verdict);
CREATE INDEX IF NOT EXISTS verdicts_t ON verdicts(t_end);
"""


def connect(path: str, create: bool = True) -> sqlite3.Connection:
    """Open (and create/upgrade-check) a records database; UserError when it cannot be used."""
    if not create and not os.path.isfile(path):
        raise UserError(f"inspection database {path} does not exist; run `ds2a inspect ... --db {path}` first")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        if create:
            os.makedirs(parent, exist_ok=True)
        con = sqlite3.connect(path, check_same_thread=False, timeout=10)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version == 0 and create:
            con.executescript(SCHEMA)
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            con.commit()
        elif version != SCHEMA_VERSION:
            con.close()
            raise UserError(f"inspection database {path} has schema version {version}, this ds2a reads "
                            f"version {SCHEMA_VERSION}; use a new --db file")
    except (OSError, sqlite3.Error) as exc:
        raise UserError(f"cannot use inspection database {path}: {exc}; pass a --db path in a writable "
                        "folder") from None
    return con


class Records:
    """One run's writer. Create in the main thread; then only the output thread writes."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.con = connect(path)
        self.run_id: Optional[int] = None

    def start_run(self, model: str, backend: str, source: str, classes: Iterable[str], rules: Dict[str, Any],
                  mm_per_pixel: Optional[float]) -> int:
        cur = self.con.execute(
            "INSERT INTO runs (started_at, status, model, backend, source, classes, rules, mm_per_pixel) "
            "VALUES (?, 'running', ?, ?, ?, ?, ?, ?)",
            (time.time(), model, backend, source, json.dumps(list(classes)), json.dumps(rules), mm_per_pixel))
        self.con.commit()
        self.run_id = int(cur.lastrowid)
        return self.run_id

    def add_frame(self, res: Any, image_path: Optional[str] = None, raw_path: Optional[str] = None) -> int:
        """Insert one Result (frame, its defects, its timings); not committed yet."""
        f = res.frame
        h, w = f.image.shape[:2]
        cur = self.con.execute(
            "INSERT INTO frames (run_id, seq, source_index, t, part_id, name, width, height, verdict, reasons, "
            "n_defects, image_path, raw_path) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (self.run_id, res.seq, f.index, f.t_wall, f.part_id, f.name or None, w, h, res.verdict,
             json.dumps(res.reasons) if res.reasons else None, len(res.defects), image_path, raw_path))
        frame_id = int(cur.lastrowid)
        if res.defects:
            self.con.executemany(
                "INSERT INTO defects (frame_id, run_id, class_id, class_name, area_px, area_mm2, x, y, w, h, "
                "cx, cy, confidence) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [(frame_id, self.run_id, d.class_id, d.class_name, d.area_px, d.area_mm2, *d.bbox,
                  d.centroid[0], d.centroid[1], d.confidence) for d in res.defects])
        ms = res.ms
        self.con.execute(
            "INSERT INTO timings (frame_id, run_id, queue_ms, preprocess_ms, infer_ms, postprocess_ms, "
            "output_ms, latency_ms) VALUES (?,?,?,?,?,?,?,?)",
            (frame_id, self.run_id, ms.get("queue"), ms.get("preprocess"), ms.get("infer"),
             ms.get("postprocess"), ms.get("output"), ms.get("latency")))
        return frame_id

    def add_verdict(self, pv: Any) -> None:
        self.con.execute(
            "INSERT INTO verdicts (run_id, part_id, level, verdict, reasons, first_seq, last_seq, n_frames, "
            "t_start, t_end) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (self.run_id, pv.part_id, pv.level, pv.verdict, json.dumps(pv.reasons) if pv.reasons else None,
             pv.first_seq, pv.last_seq, pv.n_frames, pv.t_start, pv.t_end))

    def commit(self) -> None:
        self.con.commit()

    def finish_run(self, status: str, stats: Dict[str, Any]) -> None:
        self.con.execute(
            "UPDATE runs SET ended_at=?, status=?, frames=?, dropped=?, corrupt=?, reconnects=?, e2e_fps=?, "
            "model_fps=?, stats=? WHERE id=?",
            (time.time(), status, stats.get("frames"), stats.get("dropped"), stats.get("corrupt"),
             stats.get("reconnects"), stats.get("e2e_fps"), stats.get("model_fps"), json.dumps(stats),
             self.run_id))
        self.con.commit()

    def close(self) -> None:
        try:
            self.con.commit()
        finally:
            self.con.close()
