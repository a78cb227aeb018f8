"""A shadow model's verdicts, recorded beside the live ones and never published (docs/SHADOW.md).

Table `shadow` (schema version 3, ds2a/records/database.py): one row per live part the candidate
model was offered (written by ds2a/inspect/shadow.py). `judged` is 1 when the candidate judged every
frame the live station judged, 0 when the part was sampled out (its bounded queue was full, or the run
ended first: `reasons` says which); the live verdict is repeated so agreement is one query, and `truth`
('good', 'defective') is filled when the source knew the part's ground truth (`demo://`), so both
models' escapes and overkill are counted on the same parts. `summary` is what `ds2a report --shadow`
and the page show. Read-only here; Python 3.8 compatible, torch-free.
"""
from __future__ import annotations

import json
import sqlite3
from typing import Any, Dict, List, Optional

TABLES = ("shadow",)
SCHEMA = """
CREATE TABLE IF NOT EXISTS shadow (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id), part_id TEXT, first_seq INTEGER, last_seq INTEGER,
    model TEXT NOT NULL, model_sha256 TEXT, judged INTEGER NOT NULL, verdict TEXT, reasons TEXT,
    live_verdict TEXT NOT NULL, n_frames INTEGER, infer_ms REAL, truth TEXT, t REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS shadow_run ON shadow(run_id, part_id);
"""
COLUMNS = ("run_id", "part_id", "first_seq", "last_seq", "model", "model_sha256", "judged", "verdict", "reasons",
           "live_verdict", "n_frames", "infer_ms", "truth", "t")
INSERT = f"INSERT INTO shadow ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
MAX_LISTED = 500  # part ids listed per kind of disagreement (the counts are always complete)


def has_shadow(con: sqlite3.Connection) -> bool:
    """Files of schema version 1 and 2 have no shadow table."""
    return con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='shadow'").fetchone() is not None


def _stats(con: sqlite3.Connection, run_id: int) -> Dict[str, Any]:
    row = con.execute("SELECT stats FROM runs WHERE id=?", (run_id,)).fetchone()
    try:
        stats = json.loads(row[0]) if row and row[0] else {}
    except (TypeError, ValueError):
        return {}
    found = stats.get("shadow") if isinstance(stats, dict) else None
    return found if isinstance(found, dict) else {}


def _errors(rows: List[sqlite3.Row], verdict_key: str) -> Dict[str, Any]:
    """Escapes (a defective part PASSed) and overkill (a good part FAILed) of one model; NONE is neither."""
    escaped = [r["part_id"] for r in rows if r["truth"] == "defective" and r[verdict_key] == "PASS"]
    overkill = [r["part_id"] for r in rows if r["truth"] == "good" and r[verdict_key] == "FAIL"]
    return {"escapes": len(escaped), "overkill": len(overkill), "escaped_parts": escaped[:MAX_LISTED],
            "overkill_parts": overkill[:MAX_LISTED]}


def summary(con: sqlite3.Connection, run_id: int) -> Optional[Dict[str, Any]]:
    """The run's shadow: parts offered, judged, sampled out (and why), agreement on the judged parts, the
    parts the candidate would have let through (live FAIL, shadow PASS) or rejected (live PASS, shadow FAIL),
    other disagreements (a NONE on one side), and with ground truth both models' escapes and overkill on the
    judged parts. None when the run had no shadow (or the file predates the table)."""
    stats = _stats(con, run_id)
    if not has_shadow(con):
        return None
    con_rf = con.row_factory
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT * FROM shadow WHERE run_id=? ORDER BY first_seq, id", (run_id,)).fetchall()
    finally:
        con.row_factory = con_rf
    if not rows and not stats:
        return None
    judged = [r for r in rows if r["judged"]]
    why: Dict[str, int] = {}
    for r in rows:
        if not r["judged"]:
            for reason in json.loads(r["reasons"] or "[]") or ["not recorded"]:
                key = reason.split(" (")[0]  # the kind, without the part's details
                why[key] = why.get(key, 0) + 1
    agree = sum(1 for r in judged if r["verdict"] == r["live_verdict"])
    let_through = [r["part_id"] for r in judged if r["live_verdict"] == "FAIL" and r["verdict"] == "PASS"]
    rejected = [r["part_id"] for r in judged if r["live_verdict"] == "PASS" and r["verdict"] == "FAIL"]
    other = [{"part_id": r["part_id"], "live": r["live_verdict"], "shadow": r["verdict"]} for r in judged
             if r["verdict"] != r["live_verdict"] and r["part_id"] not in let_through and r["part_id"] not in rejected]
    with_truth = [r for r in judged if r["truth"] in ("good", "defective")]
    truth = None
    if with_truth:
        truth = {"parts": len(with_truth), "defective": sum(1 for r in with_truth if r["truth"] == "defective"),
                 "live": _errors(with_truth, "live_verdict"), "shadow": _errors(with_truth, "verdict")}
    ms = sorted(r["infer_ms"] / max(1, r["n_frames"] or 1) for r in judged if r["infer_ms"] is not None)
    first = rows[0] if rows else None
    return {
        "model": stats.get("model") or (first["model"] if first else None),
        "model_sha256": stats.get("model_sha256") or (first["model_sha256"] if first else None),
        "selftest": stats.get("selftest"), "queue_frames": stats.get("queue_frames"), "nice": stats.get("nice"),
        "offered": len(rows), "judged": len(judged), "sampled_out": len(rows) - len(judged), "sampled_why": why,
        "agree": agree, "agreement": agree / len(judged) if judged else None,
        "let_through": let_through[:MAX_LISTED], "rejected": rejected[:MAX_LISTED], "other": other[:MAX_LISTED],
        "n_let_through": len(let_through), "n_rejected": len(rejected), "n_other": len(other),
        "infer_ms_per_frame_median": round(ms[len(ms) // 2], 3) if ms else None,
        "truth": truth, "unwritten": stats.get("unwritten", 0),
    }


def format_shadow(s: Optional[Dict[str, Any]]) -> str:
    """summary()'s dict as the lines `ds2a report --shadow` prints."""
    if s is None:
        return "shadow        none (run without `ds2a inspect --shadow MODEL`)"
    rate = "n/a" if s["agreement"] is None else f"{100.0 * s['agreement']:.1f}%"
    test = s.get("selftest") or {}
    lines = [f"shadow        {s['model']} (sha256 {str(s.get('model_sha256') or '?')[:12]}, self-test "
             f"{test.get('status', 'not recorded') if isinstance(test, dict) else test}); never published",
             f"  parts       {s['offered']} offered, {s['judged']} judged, {s['sampled_out']} sampled out; "
             f"agreement {rate} ({s['agree']} of {s['judged']} judged parts)"]
    for why, n in sorted(s["sampled_why"].items(), key=lambda kv: -kv[1]):
        lines.append(f"  sampled out {n:>5}  {why}")
    if s.get("unwritten"):
        lines.append(f"  NOT WRITTEN {s['unwritten']} shadow row(s): the database refused them (see the run's stats)")

    def listed(ids: List[str], n: int) -> str:
        return (", ".join(map(str, ids[:20])) + (f" ... ({n} in all)" if n > 20 else "")) if n else "none"

    lines.append(f"  would have let through (live FAIL, shadow PASS): {listed(s['let_through'], s['n_let_through'])}")
    lines.append(f"  would have rejected (live PASS, shadow FAIL):    {listed(s['rejected'], s['n_rejected'])}")
    if s["n_other"]:
        lines.append("  other disagreements: " + ", ".join(f"{o['part_id']} live {o['live']} / shadow {o['shadow']}"
                                                         for o in s["other"][:20]))
    t = s.get("truth")
    if t:
        lines.append(f"  ground truth on the {t['parts']} judged parts ({t['defective']} defective): live escapes "
                     f"{t['live']['escapes']}, overkill {t['live']['overkill']}; shadow escapes "
                     f"{t['shadow']['escapes']}, overkill {t['shadow']['overkill']}")
    return "\n".join(lines)
