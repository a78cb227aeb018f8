"""Read-only queries behind the page; the counts come from `ds2a report`'s own summarise() (ds2a/records/report.py)."""
from __future__ import annotations

import json
import os
import sqlite3
from typing import Any, Dict, List, Optional, Tuple

from ..errors import UserError
from ..meta import default_palette
from ..records import shadow as shadow_records
from ..records.database import connect, run_status
from ..records.report import summarise

IMAGE_EXTS = (".jpg", ".jpeg", ".png")
STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def open_readonly(path: str) -> sqlite3.Connection:
    """The records opened with mode=ro (never written, not even marked); UserError when unusable."""
    con = connect(path, create=False, readonly=True)
    con.row_factory = sqlite3.Row
    return con


def runs(con: sqlite3.Connection, limit: int = 200) -> List[Dict[str, Any]]:
    rows = con.execute("SELECT r.id, r.started_at, r.status, r.stats, r.source, r.model, "
                       "(SELECT COUNT(*) FROM verdicts v WHERE v.run_id=r.id) AS parts "
                       "FROM runs r ORDER BY r.id DESC LIMIT ?", (limit,)).fetchall()
    # a killed run keeps 'running' in the file: show what it means now (killed/stale)
    return [{**{k: r[k] for k in r.keys() if k != "stats"},
             "status": run_status(r["status"], r["stats"], r["started_at"])} for r in rows]


def pick_run(con: sqlite3.Connection, run: Optional[str], path: str) -> Optional[int]:
    """The run asked for (?run=N), else the latest; None when the database has no runs yet."""
    if run:
        try:
            run_id = int(run)
        except ValueError:
            raise UserError(f"run '{run}' is not a run number") from None
        if con.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone() is None:
            raise UserError(f"run {run_id} is not in {path}")
        return run_id
    row = con.execute("SELECT MAX(id) FROM runs").fetchone()
    return None if row[0] is None else int(row[0])


def summary(con: sqlite3.Connection, run_id: int) -> Dict[str, Any]:
    """Exactly `ds2a report`'s numbers."""
    return summarise(con, run_id)


def notify_stats(con: sqlite3.Connection, run_id: int) -> List[Dict[str, Any]]:
    """What `--notify` delivered and what it did not, from the run's stats (kept when the run ended)."""
    row = con.execute("SELECT stats FROM runs WHERE id=?", (run_id,)).fetchone()
    try:
        stats = json.loads(row[0]) if row and row[0] else {}
    except ValueError:
        return []
    found = stats.get("notify") if isinstance(stats, dict) else None
    return [n for n in found if isinstance(n, dict)] if isinstance(found, list) else []


def interval_for(span_s: float, buckets: int = 30) -> int:
    """A round interval (1 s ... 1 day) that cuts the run into at most about `buckets` bars."""
    for step in STEPS_S:
        if span_s / step <= buckets:
            return step
    return STEPS_S[-1]


def trend(con: sqlite3.Connection, run_id: int) -> Dict[str, Any]:
    """Parts, pass rate and defect regions per class per interval, aggregated in SQL."""
    t0, t1 = con.execute("SELECT MIN(t), MAX(t) FROM frames WHERE run_id=?", (run_id,)).fetchone()
    if t0 is None:
        return {"interval_s": 1, "t0": 0.0, "n": 0, "parts": [], "passed": [], "pass_rate": [], "defects": {}}
    step = interval_for(t1 - t0)
    n = int((t1 - t0) // step) + 1
    parts, passed = [0] * n, [0] * n
    for b, total, ok in con.execute(
            "SELECT CAST((t_end - ?) / ? AS INTEGER) AS b, COUNT(*), SUM(verdict='PASS') FROM verdicts "
            "WHERE run_id=? GROUP BY b", (t0, step, run_id)):
        b = n - 1 if b is None else min(max(int(b), 0), n - 1)  # no end time: counted in the last interval
        parts[b] += total
        passed[b] += ok or 0
    defects: Dict[str, List[int]] = {}
    for b, name, count in con.execute(
            "SELECT CAST((f.t - ?) / ? AS INTEGER) AS b, d.class_name, COUNT(*) FROM defects d "
            "JOIN frames f ON f.id=d.frame_id WHERE d.run_id=? GROUP BY b, d.class_name", (t0, step, run_id)):
        defects.setdefault(str(name), [0] * n)[min(max(int(b), 0), n - 1)] += count
    rate = [None if p == 0 else ok / p for ok, p in zip(passed, parts)]
    return {"interval_s": step, "t0": t0, "n": n, "parts": parts, "passed": passed, "pass_rate": rate,
            "defects": dict(sorted(defects.items()))}


def palette(con: sqlite3.Connection, run_id: int) -> Tuple[List[str], List[Tuple[int, int, int]]]:
    """The run's classes and the model's BGR palette: kept in the run's stats (ds2a/inspect/run.py), else the
    palette a model without its own colours gets (ds2a/meta.py default_palette), as the overlay painted it."""
    row = con.execute("SELECT classes, stats FROM runs WHERE id=?", (run_id,)).fetchone()
    try:
        classes = [str(c) for c in json.loads(row[0] or "[]")] if row else []
    except ValueError:
        classes = []
    try:
        stats = json.loads(row[1]) if row and row[1] else {}
        kept = stats.get("palette") if isinstance(stats, dict) else None
        colours = [(int(c[0]), int(c[1]), int(c[2])) for c in kept] if isinstance(kept, list) else []
    except (ValueError, TypeError, IndexError):
        colours = []
    if len(colours) < len(classes):
        colours = colours + default_palette(len(classes))[len(colours):]
    return classes, colours


def failed_parts(con: sqlite3.Connection, run_id: int, limit: int = 12, frames_per_part: int = 6
                 ) -> List[Dict[str, Any]]:
    """The most recent FAIL parts, newest first, each with its FAIL frames (up to `frames_per_part`, in order)."""
    parts = con.execute("SELECT id, part_id, reasons, first_seq, last_seq, n_frames, t_start, t_end FROM verdicts "
                        "WHERE run_id=? AND verdict='FAIL' ORDER BY id DESC LIMIT ?", (run_id, limit)).fetchall()
    out = []
    for p in parts:
        if p["first_seq"] is not None and p["last_seq"] is not None:
            where, args = "seq BETWEEN ? AND ?", (p["first_seq"], p["last_seq"])
        else:
            where, args = "part_id IS ?", (p["part_id"],)
        frames = con.execute(f"SELECT id, seq, t, part_id, reasons, n_defects, image_path, raw_path FROM frames "
                             f"WHERE run_id=? AND verdict='FAIL' AND {where} ORDER BY seq", (run_id, *args)).fetchall()
        out.append({**dict(p), "reasons": json.loads(p["reasons"] or "[]"), "n_fail_frames": len(frames),
                    "frames": [{**dict(f), "reasons": json.loads(f["reasons"] or "[]")}
                               for f in frames[:frames_per_part]]})
    return out


def version(con: sqlite3.Connection, run_id: int) -> str:
    """Changes whenever the run's records change (a part decided, a frame written, the run ended)."""
    row = con.execute("SELECT (SELECT COUNT(*) FROM verdicts WHERE run_id=?), (SELECT MAX(id) FROM frames WHERE "
                      "run_id=?), (SELECT status FROM runs WHERE id=?)", (run_id, run_id, run_id)).fetchone()
    return f"{row[0]}-{row[1] or 0}-{row[2]}"


def snapshot(con: sqlite3.Connection, run_id: int) -> Dict[str, Any]:
    """Everything the page shows of a run, read in ONE read transaction: tiles, charts' data, failures and
    colours all describe the same moment, however the run writes meanwhile (SQLite WAL snapshot isolation)."""
    began = not con.in_transaction
    if began:
        con.execute("BEGIN")
    try:
        classes, colours = palette(con, run_id)
        return {"run": run_id, "version": version(con, run_id),
                "summary": with_shadow(con, run_id, summary(con, run_id)),  # as report --shadow --json
                "trend": trend(con, run_id), "failed_parts": failed_parts(con, run_id),
                "classes": classes, "palette": colours}
    finally:
        if began:
            con.execute("COMMIT")


def with_shadow(con: sqlite3.Connection, run_id: int, s: Dict[str, Any]) -> Dict[str, Any]:
    """The summary with its `shadow` (data.shadow_panel) when the run had one; exactly the report's otherwise."""
    sh = shadow_panel(con, run_id)
    return {**s, "shadow": sh} if sh is not None else s


def shadow_panel(con: sqlite3.Connection, run_id: int, limit: int = 12) -> Optional[Dict[str, Any]]:
    """The shadow model beside the live one (`ds2a report --shadow`'s numbers, ds2a/records/shadow.py) and its
    latest disagreeing parts, each with the live part's FAIL frames that kept a picture; None without a shadow."""
    s = shadow_records.summary(con, run_id)
    if s is None:
        return None
    pairs = []
    for r in con.execute("SELECT part_id, verdict, live_verdict, reasons, first_seq, last_seq FROM shadow "
                         "WHERE run_id=? AND judged=1 AND verdict IS NOT live_verdict ORDER BY id DESC LIMIT ?",
                         (run_id, limit)).fetchall():
        frames = con.execute("SELECT id, seq FROM frames WHERE run_id=? AND seq BETWEEN ? AND ? AND verdict='FAIL' "
                             "AND image_path IS NOT NULL ORDER BY seq LIMIT 3", (run_id, r[4], r[5])).fetchall()
        pairs.append({"part_id": r[0], "shadow": r[1], "live": r[2], "shadow_reasons": json.loads(r[3] or "[]"),
                      "frames": [{"id": f[0], "seq": f[1]} for f in frames]})
    return {**s, "pairs": pairs}


def failure(con: sqlite3.Connection, frame_id: int) -> Optional[Dict[str, Any]]:
    """One frame and its defect regions, or None."""
    row = con.execute("SELECT * FROM frames WHERE id=?", (frame_id,)).fetchone()
    if row is None:
        return None
    defects = [dict(d) for d in con.execute(
        "SELECT class_name, area_px, area_mm2, x, y, w, h, confidence FROM defects WHERE frame_id=? ORDER BY id",
        (frame_id,))]
    return {**dict(row), "reasons": json.loads(row["reasons"] or "[]"), "defects": defects}


def image_file(con: sqlite3.Connection, frame_id: int, kind: str, db_path: str) -> Optional[str]:
    """The saved image of a frame; only paths the records hold are ever served. A relative path is taken
    from the current folder, else from the database's folder or one above it (where `ds2a inspect` ran)."""
    column = {"annotated": "image_path", "raw": "raw_path"}.get(kind)
    if column is None:
        return None
    row = con.execute(f"SELECT {column} FROM frames WHERE id=?", (frame_id,)).fetchone()
    if row is None or not row[0]:
        return None
    path = str(row[0])
    if os.path.splitext(path)[1].lower() not in IMAGE_EXTS:  # whatever a database says, only pictures leave
        return None
    bases, here = [""], os.path.dirname(os.path.abspath(db_path))
    for _ in range(4):
        bases.append(here)
        here = os.path.dirname(here)
    for base in bases if not os.path.isabs(path) else [""]:
        if os.path.isfile(os.path.join(base, path)):
            return os.path.join(base, path)
    return None
