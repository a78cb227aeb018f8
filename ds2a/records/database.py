"""Inspection records in SQLite (WAL): runs, frames, defects, part verdicts and per-frame timings.

Committed every frame (WAL + synchronous=NORMAL makes that cheap), so a killed process
loses at most the frames in flight. A database that is locked by another process or on a
full disk does not stop the line: records wait in a bounded in-memory queue and are
retried; only when that queue is full does the run stop (an error, never unrecorded PASSes).
Our files carry PRAGMA application_id (and the schema version in user_version); any other
SQLite file is refused before it is touched. `ds2a report` reads the same tables, read-only.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import sqlite3
import time
import urllib.parse
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

from ..errors import UserError
from ..outputs import write_new

SCHEMA_VERSION = 1
APPLICATION_ID = 0x44533241  # "DS2A" in the SQLite file header (offset 68)
TABLES = ("runs", "frames", "defects", "verdicts", "timings")
BUSY_MS = 100  # how long one write waits for another process's lock before the rows are queued
SQLITE_MAGIC = b"SQLite format 3\x00"
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


def _not_ours(path: str, why: str) -> UserError:
    return UserError(f"database {path} {why}: not a ds2a inspection database, left untouched; "
                     "give --db a new file name")


def _expected_columns() -> Dict[str, List[str]]:
    con = sqlite3.connect(":memory:")
    con.executescript(SCHEMA)
    cols = {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in TABLES}
    con.close()
    return cols


def _ro_uri(path: str, immutable: bool = False) -> str:
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro" + ("&immutable=1" if immutable else "")


def identify(path: str) -> str:
    """'new' (missing or empty file), 'ours' (our application_id) or 'legacy' (our tables from before the
    mark); anything else is refused with a UserError, reading the file but never writing it."""
    if not os.path.lexists(path):
        return "new"
    if os.path.isdir(path):
        raise UserError(f"--db {path} is a folder; give a file name such as {os.path.join(path, 'inspect.sqlite')}")
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
    except OSError as exc:
        raise UserError(f"cannot read inspection database {path}: {exc.strerror or exc}") from None
    if not header:
        return "new"
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise _not_ours(path, "is not a SQLite file")
    app_id = int.from_bytes(header[68:72], "big")
    if app_id == APPLICATION_ID:
        return "ours"
    if app_id != 0:
        raise _not_ours(path, f"belongs to another application (SQLite application_id 0x{app_id:08x})")
    try:  # no mark: ours only if it has exactly our tables (files written before the mark existed)
        con = sqlite3.connect(_ro_uri(path), uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            tables.discard("sqlite_sequence")
            cols = {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in tables if t in TABLES}
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise _not_ours(path, f"cannot be read as SQLite ({exc})") from None
    if tables == set(TABLES) and cols == _expected_columns():
        return "legacy"
    if "runs" in tables:
        raise _not_ours(path, "has a `runs` table of another layout")
    raise _not_ours(path, f"has no ds2a tables (tables: {', '.join(sorted(tables)) or 'none'})")


def _create(path: str) -> None:
    """Schema and marks committed in rollback-journal mode, so the file's own header carries the mark
    from the first moment (in WAL mode it could sit in the -wal file until a checkpoint)."""
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=DELETE")
        con.execute(f"PRAGMA application_id={APPLICATION_ID}")
        con.executescript(SCHEMA)
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        con.commit()
    finally:
        con.close()


def connect(path: str, create: bool = True, readonly: bool = False) -> sqlite3.Connection:
    """Open a records database (creating it when `create`); UserError when it cannot be used or is not ours.

    `readonly` (for `ds2a report`) opens it with mode=ro: it works on a file the user cannot write
    and never changes it (no WAL switch, no mark).
    """
    if not create and not os.path.isfile(path):
        raise UserError(f"inspection database {path} does not exist; run `ds2a inspect ... --db {path}` first")
    try:
        kind = identify(path)
        if kind == "new":
            if not create:
                raise UserError(f"inspection database {path} is empty; run `ds2a inspect ... --db {path}` first")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            _create(path)
        if readonly:
            con = _connect_ro(path)
        else:
            con = sqlite3.connect(path, check_same_thread=False, timeout=10)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version != SCHEMA_VERSION:
            con.close()
            raise UserError(f"inspection database {path} has schema version {version}, this ds2a reads "
                            f"version {SCHEMA_VERSION}; use a new --db file")
        if kind == "legacy" and not readonly:
            con.execute(f"PRAGMA application_id={APPLICATION_ID}")
            con.commit()
    except (OSError, sqlite3.OperationalError) as exc:
        raise UserError(f"cannot use inspection database {path}: {exc}; pass a --db path in a writable "
                        "folder") from None
    except sqlite3.Error as exc:  # a damaged file of ours
        raise UserError(f"inspection database {path} is damaged ({exc}); keep it for recovery and pass a new "
                        "--db file") from None
    return con


def _connect_ro(path: str) -> sqlite3.Connection:
    """mode=ro; if a WAL file's shared memory cannot be opened (a folder the user cannot write), read the
    file as it is on disk (immutable), which is what an operator's report needs."""
    con = sqlite3.connect(_ro_uri(path), uri=True, check_same_thread=False, timeout=10)
    try:
        con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.OperationalError:
        con.close()
        return sqlite3.connect(_ro_uri(path, immutable=True), uri=True, check_same_thread=False)


class RecordsBackedUp(UserError):
    """The in-memory queue of unwritten records is full: the station must stop, not pass parts unrecorded."""


Item = Tuple[str, tuple, list, tuple]  # kind, row, defect rows, timing row


logger = logging.getLogger(__name__)


class Records:
    """One run's writer. Create in the main thread; then only the output thread writes.

    Rows are queued and written per `commit()`. When the database is locked or the disk is
    full, they stay queued (at most `max_pending` frames and verdicts, a few hundred bytes each),
    retried every `retry_s`; the outage and its length are reported and kept in the run's stats.
    """

    def __init__(self, path: str, max_pending: int = 3000, retry_s: float = 0.5) -> None:
        self.path, self.max_pending, self.retry_s = path, int(max_pending), float(retry_s)
        self.con = connect(path)
        self.run_id: Optional[int] = None
        self._pending: Deque[Item] = collections.deque()
        self._since: Optional[float] = None  # when the current outage began
        self._next_try = 0.0
        self._halted = False
        self.last_error = ""
        self.outages = 0
        self.max_delay_s = 0.0
        self.max_backlog = 0
        self.written = 0
        self.extra: Dict[str, Any] = {}  # more facts for the run's stats (e.g. unsaved failure images)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start_run(self, model: str, backend: str, source: str, classes: Iterable[str], rules: Dict[str, Any],
                  mm_per_pixel: Optional[float]) -> int:
        try:
            cur = self.con.execute(
                "INSERT INTO runs (started_at, status, model, backend, source, classes, rules, mm_per_pixel) "
                "VALUES (?, 'running', ?, ?, ?, ?, ?, ?)",
                (time.time(), model, backend, source, json.dumps(list(classes)), json.dumps(rules), mm_per_pixel))
            self.con.commit()
        except sqlite3.Error as exc:
            raise UserError(f"cannot write inspection database {self.path}: {exc}; free the disk or stop the "
                            "process holding it, or pass another --db") from None
        self.run_id = int(cur.lastrowid)
        self.con.execute(f"PRAGMA busy_timeout={BUSY_MS}")  # from now on a lock queues records, never stalls the loop
        return self.run_id

    def add_frame(self, res: Any, image_path: Optional[str] = None, raw_path: Optional[str] = None) -> None:
        """Queue one Result (frame, its defects, its timings); written by the next commit()."""
        f = res.frame
        h, w = (None, None) if getattr(res, "unreadable", False) else f.image.shape[:2]
        row = (self.run_id, res.seq, f.index, f.t_wall, f.part_id, f.name or None, w, h, res.verdict,
               json.dumps(res.reasons) if res.reasons else None, len(res.defects), image_path, raw_path)
        defects = [(self.run_id, d.class_id, d.class_name, d.area_px, d.area_mm2, *d.bbox,
                    d.centroid[0], d.centroid[1], d.confidence) for d in res.defects]
        ms = res.ms
        timing = (self.run_id, ms.get("queue"), ms.get("preprocess"), ms.get("infer"), ms.get("postprocess"),
                  ms.get("output"), ms.get("latency"))
        self._pending.append(("frame", row, defects, timing))

    def add_verdict(self, pv: Any) -> None:
        row = (self.run_id, pv.part_id, pv.level, pv.verdict, json.dumps(pv.reasons) if pv.reasons else None,
               pv.first_seq, pv.last_seq, pv.n_frames, pv.t_start, pv.t_end)
        self._pending.append(("verdict", row, [], ()))

    def _apply(self, item: Item) -> None:
        kind, row, defects, timing = item
        if kind == "verdict":
            self.con.execute(
                "INSERT INTO verdicts (run_id, part_id, level, verdict, reasons, first_seq, last_seq, n_frames, "
                "t_start, t_end) VALUES (?,?,?,?,?,?,?,?,?,?)", row)
            return
        cur = self.con.execute(
            "INSERT INTO frames (run_id, seq, source_index, t, part_id, name, width, height, verdict, reasons, "
            "n_defects, image_path, raw_path) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
        frame_id = int(cur.lastrowid)
        if defects:
            self.con.executemany(
                "INSERT INTO defects (frame_id, run_id, class_id, class_name, area_px, area_mm2, x, y, w, h, "
                "cx, cy, confidence) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", [(frame_id, *d) for d in defects])
        self.con.execute(
            "INSERT INTO timings (frame_id, run_id, queue_ms, preprocess_ms, infer_ms, postprocess_ms, "
            "output_ms, latency_ms) VALUES (?,?,?,?,?,?,?,?)", (frame_id, *timing))

    def _flush(self) -> bool:
        """Write every queued row in one transaction; False (rows kept) when the database refuses."""
        try:
            for item in self._pending:
                self._apply(item)
            self.con.commit()
        except sqlite3.OperationalError as exc:  # locked, busy, disk full, I/O error: keep and retry
            try:
                self.con.rollback()
            except sqlite3.Error:
                pass
            self.last_error = str(exc)
            return False
        self.written += len(self._pending)
        self._pending.clear()
        return True

    def commit(self) -> None:
        """Write what is queued (called per frame). During an outage: retry every retry_s; raise
        RecordsBackedUp once more than max_pending rows wait."""
        now = time.monotonic()
        if not self._pending or (self._since is not None and now < self._next_try):
            self._check_backlog(now)
            return
        backlog = len(self._pending)
        if self._flush():
            if self._since is not None:
                delay = now - self._since
                self.max_delay_s = max(self.max_delay_s, delay)
                # a warning, like the outage it ends: a log filtered to warnings shows both
                logger.warning(f"records: {self.path} writable again after {delay:.1f} s; "
                               f"{backlog} queued rows written, nothing lost")
                self._since = None
                self.con.execute(f"PRAGMA busy_timeout={BUSY_MS}")
            return
        if self._since is None:
            self._since = now
            self.outages += 1
            self.con.execute("PRAGMA busy_timeout=5")  # retries must not stall the output thread
            logger.warning(f"warning: records: cannot write {self.path} ({self.last_error}); inspection goes on, "
                           f"records wait in memory (up to {self.max_pending}) and are retried every {self.retry_s:g} s")
        self._next_try = now + self.retry_s
        self._check_backlog(now)

    def _check_backlog(self, now: float) -> None:
        self.max_backlog = max(self.max_backlog, len(self._pending))
        if self._since is not None:
            self.max_delay_s = max(self.max_delay_s, now - self._since)
        if len(self._pending) > self.max_pending and not self._halted:
            self._halted = True  # raise once; the shutdown that follows still tries to write
            raise RecordsBackedUp(
                f"ALARM: inspection database {self.path} has refused writes for {now - (self._since or now):.0f} s "
                f"({self.last_error}) and {len(self._pending)} records wait in memory, the limit; stopping the "
                "station so that no part passes unrecorded. Free the disk or the lock, then restart")

    def health(self) -> Dict[str, Any]:
        """What the run's stats keep about database outages."""
        return {"db_outages": self.outages, "db_max_delay_s": round(self.max_delay_s, 2),
                "db_max_backlog": self.max_backlog, "db_unwritten": len(self._pending),
                **({"db_last_error": self.last_error} if self.last_error else {})}

    def drain(self, patience_s: float = 10.0) -> str:
        """Try to write everything queued for up to `patience_s` (end of run). Returns '' when all is
        written, else what happened to the rest (saved as JSON lines next to the database, or lost)."""
        deadline = time.monotonic() + patience_s
        while self._pending:
            if self._flush():
                break
            if time.monotonic() >= deadline:
                return self._dump()
            time.sleep(min(self.retry_s, 0.5))
        if self._since is not None:
            self.max_delay_s = max(self.max_delay_s, time.monotonic() - self._since)
            self._since = None
        return ""

    def _dump(self) -> str:
        """Last resort: the unwritten rows as JSON lines beside the database (a new file, never replacing)."""
        n, err = len(self._pending), self.last_error
        path = f"{self.path}.unsaved-run{self.run_id}-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
        lines = "".join(json.dumps({"table": "frames" if k == "frame" else "verdicts", "row": row,
                                    "defects": d, "timing": t}) + "\n" for k, row, d, t in self._pending)
        try:
            write_new(path, lines.encode("utf-8"))
            where = f"saved to {path}"
        except OSError as exc:
            where = f"they could not be saved elsewhere either ({exc.strerror or exc}): LOST"
        self._pending.clear()
        msg = f"{n} records could not be written to {self.path} ({err}); {where}"
        logger.error(f"ERROR: records: {msg}")
        return msg

    finish_patience_s = 10.0  # how long the end of a run waits for a locked or full database

    def finish_run(self, status: str, stats: Dict[str, Any]) -> None:
        """Write what is queued, then the run's end row; UserError when records could not be written."""
        unwritten = self.drain(self.finish_patience_s)
        stats = {**stats, **self.extra, **self.health()}
        try:
            self.con.execute(
                "UPDATE runs SET ended_at=?, status=?, frames=?, dropped=?, corrupt=?, reconnects=?, e2e_fps=?, "
                "model_fps=?, stats=? WHERE id=?",
                (time.time(), status, stats.get("frames"), stats.get("dropped"), stats.get("corrupt"),
                 stats.get("reconnects"), stats.get("e2e_fps"), stats.get("model_fps"), json.dumps(stats),
                 self.run_id))
            self.con.commit()
        except sqlite3.OperationalError as exc:
            logger.error(f"ERROR: records: cannot mark run {self.run_id} {status} in {self.path}: {exc}")
        if unwritten and not self._halted:  # after the alarm, the alarm stays the error the user sees
            raise UserError(f"records incomplete: {unwritten}")

    def close(self) -> None:
        try:
            if self._pending:
                self.drain(patience_s=2.0)
        finally:
            self.con.close()
