"""Inspection records in SQLite (WAL): runs, frames, defects, part verdicts and per-frame timings.

Committed every frame (WAL + synchronous=NORMAL makes that cheap), so a killed process
loses at most the frames in flight. A database that is locked by another process or on a
full disk does not stop the line: records wait in a bounded in-memory queue and are
retried; only when that queue is full does the run stop (an error, never unrecorded PASSes).
Our files carry PRAGMA application_id (and the schema version in user_version); any other
SQLite file, one of a newer schema, or one whose tables have other columns, is refused before
anything writes to it (not even the switch to WAL). A running run keeps its pid, host and a
heartbeat in its stats, so a killed process shows as `killed`/`stale`, never `running` forever
(`run_status`). Rows the database never takes are counted in the run's stats and saved as JSON
lines beside it, else in a fallback folder (`unsaved_dirs`). `ds2a report` reads the same
tables, read-only.
Schema version 2 adds the audit trail and overrides (ds2a/records/audit.py); version 3 adds each part's
recipe and its sha256 (columns of `verdicts`), the shadow model's verdicts (ds2a/records/shadow.py) and
operator review marks (ds2a/records/review.py). Older files are read as they are and are brought up to
the current version, step by step in one transaction, when opened for writing; a new file is made by the
same steps, so a migrated file and a new one have the same tables. A ds2a that reads only an older
version refuses a newer file untouched (the newer-schema rule above). Run start and stop are audited
here (`start_run`, `finish_run`).
"""
from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import socket
import sqlite3
import tempfile
import time
import urllib.parse
from typing import Any, Deque, Dict, Iterable, List, Optional, Tuple

from ..errors import UserError
from ..outputs import write_new
from . import audit, review, shadow

SCHEMA_VERSION = 3
OLDEST_VERSION = 1  # versions this ds2a reads (and migrates when it writes)
APPLICATION_ID = 0x44533241  # "DS2A" in the SQLite file header (offset 68)
TABLES = ("runs", "frames", "defects", "verdicts", "timings")  # the inspection tables (version 1)
ALL_TABLES = TABLES + audit.TABLES + shadow.TABLES + review.TABLES  # version 3
TABLES_OF = {1: TABLES, 2: TABLES + audit.TABLES, 3: ALL_TABLES}  # the tables each schema version has
BUSY_MS = 100  # how long one write waits for another process's lock before the rows are queued
HEARTBEAT_S = 5.0  # a running run's heartbeat (in its stats) is renewed this often while frames are written
STALE_S = 120.0  # a `running` run on another host with no heartbeat for this long is shown as `stale`
UNSAVED_ENV = "DS2A_UNSAVED_DIR"  # where unwritable rows go when the database's own folder refuses them
SQLITE_MAGIC = b"SQLite format 3\x00"
V1_SCHEMA = """
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


def statements(script: str) -> List[str]:
    """A schema script as single statements (a migration runs them inside its own transaction;
    executescript would commit first)."""
    out: List[str] = []
    buf = ""
    for line in script.strip().splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    return out


# what each version adds to the one before (version 1 is V1_SCHEMA); new files are made by the same steps
UPGRADES: Dict[int, List[str]] = {
    2: statements(audit.SCHEMA),
    3: ["ALTER TABLE verdicts ADD COLUMN recipe TEXT", "ALTER TABLE verdicts ADD COLUMN recipe_sha256 TEXT"]
    + statements(shadow.SCHEMA) + statements(review.SCHEMA),
}
SCHEMA = ";\n".join([V1_SCHEMA.strip().rstrip(";")] + [x.rstrip(";") for v in sorted(UPGRADES)
                                                         for x in UPGRADES[v]]) + ";\n"


def _not_ours(path: str, why: str) -> UserError:
    return UserError(f"database {path} {why}: not a ds2a inspection database, left untouched; "
                     "give --db a new file name")


def _expected_columns(version: int = SCHEMA_VERSION) -> Dict[str, List[str]]:
    """The columns of every table of a file at `version`, as ds2a writes (or migrates) it."""
    con = sqlite3.connect(":memory:")
    con.executescript(V1_SCHEMA)
    for v in range(2, version + 1):
        for statement in UPGRADES[v]:
            con.execute(statement)
    cols = {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in TABLES_OF[version]}
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
    if app_id not in (0, APPLICATION_ID):
        raise _not_ours(path, f"belongs to another application (SQLite application_id 0x{app_id:08x})")
    try:  # read-only: the version and the tables are checked before anything may write to the file
        con = sqlite3.connect(_ro_uri(path), uri=True)
        try:
            version = con.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            tables.discard("sqlite_sequence")
            cols = {t: [r[1] for r in con.execute(f"PRAGMA table_info({t})")] for t in tables if t in ALL_TABLES}
        finally:
            con.close()
    except sqlite3.Error as exc:
        if app_id == APPLICATION_ID:  # ours, but SQLite cannot read it: connect() says it is damaged
            return "ours"
        raise _not_ours(path, f"cannot be read as SQLite ({exc})") from None
    if app_id == APPLICATION_ID or (tables & set(TABLES) and version):
        if version > SCHEMA_VERSION:
            raise UserError(f"inspection database {path} has schema version {version}, written by a newer ds2a; "
                            f"this ds2a reads version {SCHEMA_VERSION}: left untouched. Upgrade ds2a to read it, "
                            "or give --db a new file")
    known = max(OLDEST_VERSION, min(version, SCHEMA_VERSION))  # an unversioned legacy file: version 1's tables
    want = set(TABLES_OF[known])
    expected = _expected_columns(known)
    if tables == want and cols == {t: expected[t] for t in want}:
        return "ours" if app_id == APPLICATION_ID else "legacy"
    if app_id == APPLICATION_ID and not tables:
        return "ours"  # marked but empty (a creation cut short): the schema is created on connect
    mine = sorted(t for t in tables if t in ALL_TABLES)
    if mine:
        odd = [t for t in mine if cols.get(t) != expected.get(t, cols.get(t))]
        missing = sorted(want - tables)
        what = (f"table(s) {', '.join(odd)} with other columns than ds2a's" if odd else
                f"ds2a's table names but not {', '.join(missing)}" if missing else "tables ds2a does not write")
        raise _not_ours(path, f"has {what} (SQLite file of another program, or damaged)")
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
        kind = identify(path)  # read-only: a file we must refuse is refused here, unchanged
        if kind == "new":
            if not create:
                raise UserError(f"inspection database {path} is empty; run `ds2a inspect ... --db {path}` first")
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            _create(path)
        elif kind == "ours" and not readonly and _empty_schema(path):
            _create(path)
        if readonly:
            con = _connect_ro(path)
        else:
            con = sqlite3.connect(path, check_same_thread=False, timeout=10)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if not OLDEST_VERSION <= version <= SCHEMA_VERSION:
            con.close()
            raise UserError(f"inspection database {path} has schema version {version}, this ds2a reads "
                            f"versions {OLDEST_VERSION} to {SCHEMA_VERSION}; use a new --db file")
        if version < SCHEMA_VERSION and not readonly:
            _migrate(con)
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


def _migrate(con: sqlite3.Connection) -> None:
    """Bring an older file up to SCHEMA_VERSION, every step in one transaction (another process may have
    done it first: the version is read again under the write lock)."""
    con.execute("BEGIN IMMEDIATE")
    try:
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version < SCHEMA_VERSION:
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in UPGRADES[v]:
                    con.execute(statement)
            con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        con.commit()
    except BaseException:
        con.rollback()
        raise


def _empty_schema(path: str) -> bool:
    con = sqlite3.connect(_ro_uri(path), uri=True)
    try:
        return con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.Error:
        return False
    finally:
        con.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by another user
    return True


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _started(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc/PID/stat field 22; '' elsewhere):
    with the boot id it tells our process from a later one that got the same pid."""
    stat = _read(f"/proc/{pid}/stat")
    fields = stat.rsplit(")", 1)[-1].split() if stat else []
    return fields[19] if len(fields) > 19 else ""


def process_identity() -> Dict[str, Any]:
    """What a running run keeps in its stats so that `run_status` can tell whether its process still lives."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "boot": _read("/proc/sys/kernel/random/boot_id"),
            "pid_start": _started(os.getpid())}


def run_status(status: str, stats: Any, started_at: Optional[float] = None, now: Optional[float] = None) -> str:
    """What a run's stored status means now: a `running` run whose process is gone is `killed` (same host,
    its pid no longer exists) or `stale` (no heartbeat for STALE_S seconds); other statuses as stored."""
    if status != "running":
        return status
    try:
        info = json.loads(stats) if isinstance(stats, str) else dict(stats or {})
    except (ValueError, TypeError):
        info = {}
    now = time.time() if now is None else now
    pid, host = info.get("pid"), info.get("host")
    if isinstance(pid, int) and host == socket.gethostname():
        if info.get("boot") and info["boot"] != _read("/proc/sys/kernel/random/boot_id"):
            return "killed"  # the machine restarted since
        if info.get("pid_start") and info["pid_start"] != _started(pid):
            return "killed"  # the pid is gone, or now belongs to another process
        return "running" if _alive(pid) else "killed"
    beat = info.get("heartbeat", started_at)
    if not isinstance(beat, (int, float)) or now - beat > STALE_S:
        return "stale"
    return "running"


def unsaved_dirs(db_path: str) -> List[str]:
    """Where rows the database refused are saved, in order: beside the database, $DS2A_UNSAVED_DIR,
    ~/.ds2a/unsaved, the temporary folder (a full disk may be only the database's disk)."""
    dirs = [os.path.dirname(os.path.abspath(db_path))]
    if os.environ.get(UNSAVED_ENV):
        dirs.append(os.environ[UNSAVED_ENV])
    dirs += [os.path.join(os.path.expanduser("~"), ".ds2a", "unsaved"), tempfile.gettempdir()]
    return list(dict.fromkeys(dirs))


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
        self.unwritten: Dict[str, int] = {"frames": 0, "verdicts": 0}  # rows given up on (saved elsewhere or lost)
        self.unsaved_file = ""  # where they were saved ('' when nowhere)
        self.extra: Dict[str, Any] = {}  # more facts for the run's stats (e.g. unsaved failure images)
        self._alive: Dict[str, Any] = process_identity()
        self._beat = 0.0
        self.user, self.origin = audit.local_user(), audit.local_origin()  # who starts and stops the run, where

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start_run(self, model: str, backend: str, source: str, classes: Iterable[str], rules: Dict[str, Any],
                  mm_per_pixel: Optional[float]) -> int:
        now = time.time()
        rules_text = json.dumps(rules)
        try:
            cur = self.con.execute(
                "INSERT INTO runs (started_at, status, model, backend, source, classes, rules, mm_per_pixel, stats) "
                "VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?)",
                (now, model, backend, source, json.dumps(list(classes)), rules_text, mm_per_pixel,
                 json.dumps({**self.extra, **self._alive, "heartbeat": now})))
            self.run_id = int(cur.lastrowid)
            self._audit_start(model, backend, source, rules_text, now)  # same transaction: both or neither
            self.con.execute("UPDATE runs SET stats=? WHERE id=?",
                             (json.dumps({**self.extra, **self._alive, "heartbeat": now}), self.run_id))
            self.con.commit()
        except sqlite3.Error as exc:
            self.con.rollback()
            self.run_id = None
            raise UserError(f"cannot write inspection database {self.path}: {exc}; free the disk or stop the "
                            "process holding it, or pass another --db") from None
        self._beat = time.monotonic()
        self.con.execute(f"PRAGMA busy_timeout={BUSY_MS}")  # from now on a lock queues records, never stalls the loop
        return self.run_id

    def _audit_start(self, model: str, backend: str, source: str, rules_text: str, now: float) -> None:
        """The run_start audit row (and a rules_change row when the rules differ from the previous run's),
        written in the caller's transaction, which already holds the write lock (the run's INSERT)."""
        sha = hashlib.sha256(rules_text.encode("utf-8")).hexdigest()
        before = self.con.execute("SELECT id, rules FROM runs WHERE id < ? ORDER BY id DESC LIMIT 1",
                                  (self.run_id,)).fetchone()
        ids = self.extra.setdefault("audit", {})
        if before is not None and before[1] != rules_text:
            old = hashlib.sha256((before[1] or "").encode("utf-8")).hexdigest()
            ids["rules_change"], _ = audit.append(
                self.con, "rules_change", self.user, self.origin, run_id=self.run_id, t=now,
                detail={"previous_run": before[0], "rules_sha256_before": old, "rules_sha256": sha})
        ids["run_start"], _ = audit.append(
            self.con, "run_start", self.user, self.origin, run_id=self.run_id, t=now,
            detail={"model": model, "backend": backend, "source": source, "rules_sha256": sha,
                    **{k: v for k, v in self.extra.get("evidence", {}).items()  # which model judged, from the chain alone
                       if k in ("model_sha256", "engine_sha256", "recipe", "recipe_sha256") and v}})

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
               pv.first_seq, pv.last_seq, pv.n_frames, pv.t_start, pv.t_end,
               getattr(pv, "recipe", None), getattr(pv, "recipe_sha256", None))
        self._pending.append(("verdict", row, [], ()))

    def _apply(self, item: Item) -> None:
        kind, row, defects, timing = item
        if kind == "verdict":
            self.con.execute(
                "INSERT INTO verdicts (run_id, part_id, level, verdict, reasons, first_seq, last_seq, n_frames, "
                "t_start, t_end, recipe, recipe_sha256) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)
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
            if self.run_id is not None and time.monotonic() - self._beat >= HEARTBEAT_S:  # the run is alive
                self.con.execute("UPDATE runs SET stats=? WHERE id=? AND status='running'",
                                 (json.dumps({**self.extra, **self._alive, "heartbeat": time.time()}), self.run_id))
                self._beat = time.monotonic()
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
        """What the run's stats keep about database outages; db_unwritten counts every row the database
        did not take (still queued, saved to db_unsaved_file, or lost when that is empty)."""
        queued = collections.Counter("frames" if k == "frame" else "verdicts" for k, *_ in self._pending)
        frames, verdicts = self.unwritten["frames"] + queued["frames"], self.unwritten["verdicts"] + queued["verdicts"]
        return {"db_outages": self.outages, "db_max_delay_s": round(self.max_delay_s, 2),
                "db_max_backlog": self.max_backlog, "db_unwritten": frames + verdicts,
                "db_unwritten_frames": frames, "db_unwritten_verdicts": verdicts,
                **({"db_unsaved_file": self.unsaved_file} if self.unsaved_file else {}),
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

    def _dump(self, end_row: Optional[Dict[str, Any]] = None) -> str:
        """Last resort: the unwritten rows (and, when even the run's end could not be written, the run's
        end row) as JSON lines in a new file beside the database, else in the first of unsaved_dirs that
        takes it. The rows are counted in `unwritten` before the queue is cleared."""
        n, err = len(self._pending), self.last_error
        name = f"{os.path.basename(self.path)}.unsaved-run{self.run_id}-{time.strftime('%Y%m%dT%H%M%S')}.jsonl"
        lines = "".join(json.dumps({"table": "frames" if k == "frame" else "verdicts", "row": row,
                                    "defects": d, "timing": t}) + "\n" for k, row, d, t in self._pending)
        if end_row is not None:
            lines += json.dumps({"table": "runs", "row": end_row}) + "\n"
        for kind, *_ in self._pending:
            self.unwritten["frames" if kind == "frame" else "verdicts"] += 1
        self._pending.clear()
        tried = []
        if self.unsaved_file:  # this run already has its file: one file per run, appended to, never replaced
            try:
                with open(self.unsaved_file, "a", encoding="utf-8") as f:
                    f.write(lines)
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as exc:
                tried.append(f"{self.unsaved_file}: {exc.strerror or exc}")
            else:
                return self._dump_message(n, end_row, err, f"saved to {self.unsaved_file}")
        for folder in unsaved_dirs(self.path):
            path = os.path.join(folder, name)
            try:
                os.makedirs(folder, exist_ok=True)
                write_new(path, lines.encode("utf-8"))
            except OSError as exc:
                tried.append(f"{folder}: {exc.strerror or exc}")
                continue
            self.unsaved_file = path
            where = f"saved to {path}"
            break
        else:
            where = f"they could not be saved anywhere ({'; '.join(tried)}): LOST"
        return self._dump_message(n, end_row, err, where)

    def _dump_message(self, n: int, end_row: Optional[Dict[str, Any]], err: Any, where: str) -> str:
        what = f"{n} records" if end_row is None or n else "the run's end"
        msg = f"{what} could not be written to {self.path} ({err}); {where}"
        logger.error(f"ERROR: records: {msg}")
        return msg

    finish_patience_s = 10.0  # how long the end of a run waits for a locked or full database

    def finish_run(self, status: str, stats: Dict[str, Any]) -> None:
        """Write what is queued, then the run's end row (whose stats count what was not written);
        UserError when records could not be written. If even the end row is refused, it is saved with
        the rows (see _dump) and the run stays `running` in the file: `run_status` shows it `killed`."""
        unwritten = self.drain(self.finish_patience_s)
        ended = time.time()
        try:
            if not self.con.in_transaction:
                self.con.execute("BEGIN IMMEDIATE")  # the stop row's place in the chain and the run's end together
            if self.run_id is not None:
                self.extra.setdefault("audit", {})["run_stop"], _ = audit.append(
                    self.con, "run_stop", self.user, self.origin, run_id=self.run_id, t=ended,
                    detail={"status": status, "frames": stats.get("frames"), "parts": stats.get("parts")})
        except sqlite3.Error as exc:
            self.con.rollback()
            self.extra.get("audit", {}).pop("run_stop", None)
            logger.error(f"ERROR: records: cannot write the run_stop audit row to {self.path}: {exc}")
        stats = {**stats, **self.extra, **self.health(), **self._alive}
        row = (ended, status, stats.get("frames"), stats.get("dropped"), stats.get("corrupt"),
               stats.get("reconnects"), stats.get("e2e_fps"), stats.get("model_fps"), json.dumps(stats), self.run_id)
        try:
            self.con.execute(
                "UPDATE runs SET ended_at=?, status=?, frames=?, dropped=?, corrupt=?, reconnects=?, e2e_fps=?, "
                "model_fps=?, stats=? WHERE id=?", row)
            self.con.commit()
        except sqlite3.Error as exc:
            self.last_error = str(exc)
            if "run_stop" in stats.get("audit", {}):  # rolled back with the end row: its id is not in the chain
                stats["audit"] = {k: v for k, v in stats["audit"].items() if k != "run_stop"}
            if not self._mark_compact(status, stats, row[0]):
                logger.error(f"ERROR: records: cannot mark run {self.run_id} {status} in {self.path}: {exc}")
                ended = self._dump({"id": self.run_id, "ended_at": row[0], "status": status, "stats": stats})
                unwritten = f"{unwritten}; {ended}" if unwritten else ended
        if unwritten and not self._halted:  # after the alarm, the alarm stays the error the user sees
            raise UserError(f"records incomplete: {unwritten}")

    def _mark_compact(self, status: str, stats: Dict[str, Any], ended_at: float) -> bool:
        """A full disk may refuse the end row with all its stats but take a few bytes: the status, the
        counts of what was not written and where it went. False when even that is refused."""
        try:
            self.con.rollback()
        except sqlite3.Error:
            pass
        keep = ("frames", "dropped", "corrupt", "parts", "db_unwritten", "db_unwritten_frames",
                "db_unwritten_verdicts", "db_unsaved_file", "db_last_error", "pid", "host", "boot", "pid_start")
        small = {k: stats[k] for k in keep if k in stats}
        try:
            self.con.execute("UPDATE runs SET ended_at=?, status=?, frames=?, stats=? WHERE id=?",
                             (ended_at, status, stats.get("frames"), json.dumps(small), self.run_id))
            self.con.commit()
            return True
        except sqlite3.Error:
            try:
                self.con.rollback()
            except sqlite3.Error:
                pass
            return False

    def close(self) -> None:
        try:
            if self._pending:
                self.drain(patience_s=2.0)
        finally:
            self.con.close()
