"""What an inspection database says about one run: counts, pass rate, defects, latency, failure reasons.

`ds2a report` prints it, `ds2a web` and the benchmarks show the same numbers. Read-only: the
connection comes from `records.connect(path, create=False, readonly=True)`.
"""
from __future__ import annotations

import csv
import json
import math
import sqlite3
import time
from typing import Any, Dict, List, Optional

from ..errors import UserError
from ..outputs import atomic_write
from ..timing import summarize
from . import audit
from .database import run_status

SQLITE_MIN_INT, SQLITE_MAX_INT = -(2 ** 63), 2 ** 63 - 1  # a larger id cannot be bound: OverflowError
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would run as a formula (OWASP)
LATENCY_COLUMNS = ("queue_ms", "preprocess_ms", "infer_ms", "postprocess_ms", "output_ms", "latency_ms")


def run_row(con: sqlite3.Connection, run_id: Optional[int], path: str) -> sqlite3.Row:
    """The run asked for, else the latest; UserError naming the runs there are."""
    if run_id is None:
        row = con.execute("SELECT * FROM runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            raise UserError(f"inspection database {path} has no runs yet; run `ds2a inspect ... --db {path}`")
        return row
    in_range = isinstance(run_id, int) and SQLITE_MIN_INT <= run_id <= SQLITE_MAX_INT  # SQLite ids are 64-bit
    row = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone() if in_range else None
    if row is None:
        ids = [r[0] for r in con.execute("SELECT id FROM runs ORDER BY id")]
        shown = (["..."] if len(ids) > 20 else []) + [str(i) for i in ids[-20:]]
        what = str(run_id) if len(str(run_id)) <= 30 else str(run_id)[:27] + "..."
        raise UserError(f"run {what} is not in {path}; runs there: {', '.join(shown) or 'none'}")
    return row


def summarise(con: sqlite3.Connection, run_id: int) -> Dict[str, Any]:
    """Everything the report prints, as a dict; the web page shows the same numbers (ds2a/web/data.py)."""
    run = con.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
    verdicts = con.execute("SELECT verdict, COUNT(*) FROM verdicts WHERE run_id=? GROUP BY verdict",
                           (run_id,)).fetchall()
    counts = {v: n for v, n in verdicts}
    parts = sum(counts.values())
    # NONE without reasons: no part in view; NONE with reasons: not inspected (model unavailable, unreadable)
    frames = con.execute("SELECT COUNT(*), SUM(verdict='FAIL'), MIN(t), MAX(t), SUM(verdict='NONE' AND reasons IS NULL), "
                         "SUM(verdict='NONE' AND reasons IS NOT NULL) FROM frames "
                         "WHERE run_id=?", (run_id,)).fetchone()
    defects = {name: {"regions": n, "frames": nf, "area_px": round(a or 0.0, 1),
                      "area_mm2": None if m is None else round(m, 3)}
               for name, n, nf, a, m in con.execute(
                   "SELECT class_name, COUNT(*), COUNT(DISTINCT frame_id), SUM(area_px), SUM(area_mm2) "
                   "FROM defects WHERE run_id=? GROUP BY class_name ORDER BY class_name", (run_id,))}
    cols = ", ".join(LATENCY_COLUMNS)
    rows = con.execute(f"SELECT {cols} FROM timings WHERE run_id=?", (run_id,)).fetchall()
    latency = {c: summarize(r[i] for r in rows if r[i] is not None) for i, c in enumerate(LATENCY_COLUMNS)}
    reasons: Dict[str, int] = {}
    for (text,) in con.execute("SELECT reasons FROM verdicts WHERE run_id=? AND verdict='FAIL'", (run_id,)):
        for r in json.loads(text or "[]"):
            key = f"{r.split(':')[0]}: {r.split('>')[-1].split()[0]}" if ">" in r else r  # class: rule
            reasons[key] = reasons.get(key, 0) + 1
    level = con.execute("SELECT level FROM verdicts WHERE run_id=? LIMIT 1", (run_id,)).fetchone()
    try:  # escapes/overkill, kept in the run's stats when the source knew its parts' ground truth
        stats = json.loads(run["stats"] or "{}") or {}
        truth = stats.get("truth")
    except (ValueError, TypeError, AttributeError):
        stats, truth = {}, None
    return {
        "run": run_id, "status": run_status(run["status"], run["stats"], run["started_at"]),
        "model": run["model"], "source": run["source"],
        "started": run["started_at"], "ended": run["ended_at"],
        "level": level[0] if level else None, "parts": parts, "pass": counts.get("PASS", 0),
        "fail": counts.get("FAIL", 0), "pass_rate": counts.get("PASS", 0) / parts if parts else None,
        "frames": frames[0] or 0, "frames_fail": frames[1] or 0, "frames_no_part": frames[4] or 0,
        "frames_not_inspected": frames[5] or 0, "none": counts.get("NONE", 0),
        "span_s": (frames[3] - frames[2]) if frames[0] else 0.0,
        "dropped": run["dropped"], "corrupt": run["corrupt"], "reconnects": run["reconnects"],
        "e2e_fps": run["e2e_fps"], "model_fps": run["model_fps"],
        "defects": defects, "latency_ms": latency, "fail_reasons": reasons,
        "truth": truth if isinstance(truth, dict) else None,
        "model_checks": model_checks(stats if isinstance(stats, dict) else {}),
        "overrides": audit.overrides(con, run_id),  # beside the original verdicts, which are never changed
    }


def model_checks(stats: Dict[str, Any]) -> str:
    """How the run's model proved itself: its self-test at open (ds2a/runtime/selftest.py) and, for an engine,
    the build's accuracy gate against ONNX Runtime (ds2a/engine/verify.py), as the run recorded them."""
    test, gate = stats.get("selftest"), stats.get("build_gate")
    parts = [f"self-test {test.get('status', '?')}" if isinstance(test, dict) else "self-test not recorded"]
    if isinstance(gate, dict):
        status = "passed" if gate.get("passed") else ("accepted mismatch" if gate.get("accepted_mismatch") else "failed")
        agree = gate.get("agreement")
        parts.append(f"build gate {status}" + (f" ({100 * float(agree):.2f} % of pixels agree with "
                                                f"{gate.get('reference', 'the reference')})" if agree is not None else ""))
    return ", ".join(parts)


def format_report(s: Dict[str, Any]) -> str:
    """summarise()'s dict as the text `ds2a report` prints."""
    t0 = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s["started"])) if s["started"] else "?"
    rate = f"{100.0 * s['pass_rate']:.1f}%" if s["pass_rate"] is not None else "n/a"
    lines = [
        f"run {s['run']}  ({s['status']}, started {t0})",
        f"  model {s['model']}",
        f"  checks {s.get('model_checks') or 'not recorded'}",
        f"  source {s['source']}",
        (f"{s['level'] or 'part'}s         {s['parts']}: {s['pass']} PASS, {s['fail']} FAIL, "
         + (f"{s['none']} NONE (not inspected), " if s.get("none") else "") + f"pass rate {rate}"),
        (f"frames        {s['frames']} ({s['frames_no_part']} with no part in view, "
         f"{s.get('frames_not_inspected', 0)} not inspected), {s['frames_fail']} FAIL, "
         f"over {s['span_s']:.1f} s"),
        (f"dropped       {s['dropped'] if s['dropped'] is not None else 'unknown (run did not finish)'}"
         f"   corrupt/skipped {s['corrupt'] if s['corrupt'] is not None else '?'}"
         f"   reconnects {s['reconnects'] if s['reconnects'] is not None else '?'}"),
    ]
    if s["e2e_fps"] is not None:
        lines.append(f"FPS           {s['e2e_fps']:.1f} end-to-end, {s['model_fps']:.1f} model-only")
    if s.get("truth"):
        try:
            lines.append(f"ground truth  {truth_line(s['truth'])}")
        except (KeyError, TypeError, ValueError):
            lines.append("ground truth  (unreadable in this run's stats)")
    lines.append("defects per class:")
    lines.append(f"  {'class':<14}{'regions':>8}{'frames':>8}{'area px':>12}{'area mm2':>11}")
    for name, d in s["defects"].items():
        mm = f"{d['area_mm2']:.2f}" if d["area_mm2"] is not None else "-"
        lines.append(f"  {name:<14}{d['regions']:>8}{d['frames']:>8}{d['area_px']:>12.0f}{mm:>11}")
    if not s["defects"]:
        lines.append("  (none)")
    if s["fail_reasons"]:
        lines.append("failure reasons (parts):")
        for r, n in sorted(s["fail_reasons"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:>6}  {r}")
    if s.get("overrides"):
        lines.append("overrides (the verdicts above are the originals):")
        for o in s["overrides"]:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(o["t"]))
            what = f"{o['original']} -> {o['verdict']}" if o["kind"] == "override" else f"{o['original']}, doubtful"
            who = f"{o['user']} ({o['role']})" if o["role"] else f"{o['user']} (unverified)"
            lines.append(f"  part {o['part_id']}: {what} by {who} at {when}: {o['reason']}")
    lines.append("latency (ms):")
    lines.append(f"  {'stage':<16}{'count':>7}{'min':>9}{'median':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for c, st in s["latency_ms"].items():
        if st.get("count"):
            lines.append(f"  {c[:-3]:<16}{st['count']:>7}{st['min']:>9.2f}{st['median']:>9.2f}{st['p90']:>9.2f}"
                         f"{st['p99']:>9.2f}{st['max']:>9.2f}")
    return "\n".join(lines)


def cell(value: Any) -> Any:
    """A text cell a spreadsheet shows as text: one starting with = + - @ tab or CR gets a leading quote.

    Part ids come from file names and sources (`=HYPERLINK(...)`, `@SUM(...)`): written raw they would
    run as formulas when the CSV is opened (OWASP "CSV Injection"). Numbers are left as numbers.
    """
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_csv(con: sqlite3.Connection, run_id: int, out: str) -> int:
    """One row per part verdict with its defect counts per class; returns the row count."""
    names = con.execute("SELECT classes FROM runs WHERE id=?", (run_id,)).fetchone()[0]
    classes: List[str] = json.loads(names or "[]")[1:]
    rows = con.execute("SELECT * FROM verdicts WHERE run_id=? ORDER BY id", (run_id,)).fetchall()
    with atomic_write(out, "w", label="--csv", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["run", "part_id", "level", "verdict", "reasons", "first_seq", "last_seq", "n_frames",
                    "t_start", "t_end"] + [cell(f"{c}_regions") for c in classes])
        for v in rows:
            per_class = dict(con.execute(
                "SELECT d.class_name, COUNT(*) FROM defects d JOIN frames f ON d.frame_id=f.id "
                "WHERE f.run_id=? AND f.seq BETWEEN ? AND ? GROUP BY d.class_name",
                (run_id, v["first_seq"], v["last_seq"])).fetchall())
            reasons = "; ".join(json.loads(v["reasons"] or "[]"))
            w.writerow([run_id, cell(v["part_id"]), cell(v["level"]), cell(v["verdict"]), cell(reasons),
                        v["first_seq"], v["last_seq"],
                        v["n_frames"], f"{v['t_start']:.3f}", f"{v['t_end']:.3f}"] +
                       [per_class.get(c, 0) for c in classes])
    return len(rows)


def truth_line(t: Dict[str, Any]) -> str:
    """One line for summaries and reports: escapes and overkill against the source's ground truth."""
    def pct(x: Optional[float]) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"

    return (f"{t['total']} parts judged against ground truth ({t['defective']} defective): "
            f"escapes {t['escapes']} ({pct(t['escape_rate'])} of defective), "
            f"overkill {t['overkill']} ({pct(t['overkill_rate'])} of good)")
