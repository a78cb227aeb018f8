"""`ds2a report DB --check`: verify on any records database the invariants the station promises
(docs/ARCHITECTURE.md, "Invariants"), and list every violation.

1. every part that reached the station has exactly one verdict: no part id twice in a run, no frame
   in two parts, every frame of a part covered by its verdict, n_frames equal to the frames recorded;
2. PASS only for a part whose every frame was inspected and passed (no FAIL frame, no frame that was
   not inspected), by a model that did not fail its self-test, under rules that can fail a part;
4. the run's record tells the truth about itself: a known status, an end time once ended, no
   `running` run whose process is gone, frame and part counts equal to the rows plus the rows it
   says were not written, no unwritten rows, `finished` only when something was inspected;
5. (whole database only) the audit trail's hash chain is unbroken (ds2a/records/audit.py), and every
   review mark matches its audit row (ds2a/records/review.py).

Read-only (the connection comes from `connect(path, create=False, readonly=True)`); torch-free.
"""
from __future__ import annotations

import bisect
import json
import sqlite3
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import audit, review
from .database import run_status

STATUSES = ("running", "finished", "interrupted", "empty", "error")


def _stats(text: Optional[str]) -> Dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _in_view(verdict: str, reasons: Optional[str]) -> bool:
    """A frame of a part: judged (PASS/FAIL) or not inspected for a reason; NONE without a reason is a frame
    with no part in view."""
    return verdict != "NONE" or bool(reasons)


def check_run(con: sqlite3.Connection, run_id: int) -> List[str]:
    """The violations of run `run_id`, one line each (empty when it keeps every invariant)."""
    run = con.execute("SELECT id, status, started_at, ended_at, frames, stats, rules FROM runs WHERE id=?",
                      (run_id,)).fetchone()
    if run is None:
        return [f"run {run_id}: not in the database"]
    _, status, started, ended, n_frames, stats_text, rules_text = run
    stats = _stats(stats_text)
    out: List[str] = []
    now = run_status(status, stats_text, started)
    if status not in STATUSES:
        out.append(f"run {run_id}: unknown status {status!r}")
    if status == "running":
        if now != "running":
            out.append(f"run {run_id}: stored as running but its process is gone ({now}): it never recorded its "
                       "end, its open part and its counts are missing")
        return out  # counts and the open part are not final while it runs
    if ended is None:
        out.append(f"run {run_id}: status {status} but no end time")
    frames = con.execute("SELECT seq, verdict, reasons, part_id FROM frames WHERE run_id=? ORDER BY seq",
                         (run_id,)).fetchall()
    verdicts = con.execute("SELECT id, part_id, level, verdict, first_seq, last_seq, n_frames FROM verdicts "
                           "WHERE run_id=? ORDER BY first_seq, id", (run_id,)).fetchall()
    out += _one_verdict_per_part(run_id, frames, verdicts)
    out += _pass_only_when_inspected(run_id, frames, verdicts)
    out += _counts(run_id, status, n_frames, stats, len(frames), verdicts, rules_text)
    return out


def _one_verdict_per_part(run_id: int, frames: Sequence[Tuple], verdicts: Sequence[Tuple]) -> List[str]:
    out: List[str] = []
    seen: Dict[str, int] = {}
    for vid, part_id, level, _, first, last, _ in verdicts:
        if level == "part" and part_id is not None:
            if part_id in seen:
                out.append(f"run {run_id}: part {part_id} has more than one verdict (rows {seen[part_id]} and {vid})")
            seen.setdefault(part_id, vid)
        if first is None or last is None or last < first:
            out.append(f"run {run_id}: verdict row {vid} (part {part_id}) has no valid frame range")
    ranges = sorted((v[4], v[5], v[1], v[0]) for v in verdicts if v[4] is not None and v[5] is not None)
    for (f0, l0, p0, _), (f1, _, p1, _) in zip(ranges, ranges[1:]):
        if f1 <= l0:
            out.append(f"run {run_id}: parts {p0} and {p1} share frames (seq {f1}..{l0}): a frame in two parts")
    ids_mode = any(f[3] is not None for f in frames)  # parts from the source: frames without an id are no part
    starts = [r[0] for r in ranges]
    in_part: Dict[int, int] = {}
    uncovered: List[int] = []
    for seq, verdict, reasons, part_id in frames:
        if not _in_view(verdict, reasons) or (ids_mode and part_id is None):
            continue
        k = bisect.bisect_right(starts, seq) - 1
        if k >= 0 and ranges[k][0] <= seq <= ranges[k][1]:
            in_part[ranges[k][3]] = in_part.get(ranges[k][3], 0) + 1
        else:
            uncovered.append(seq)
    if uncovered:
        shown = ", ".join(map(str, uncovered[:10])) + (" ..." if len(uncovered) > 10 else "")
        out.append(f"run {run_id}: {len(uncovered)} frame(s) of a part with no part verdict (seq {shown})")
    for vid, part_id, _, _, _, _, n in verdicts:
        got = in_part.get(vid, 0)
        if n is not None and got != n:
            out.append(f"run {run_id}: part {part_id} says {n} frame(s) but {got} are recorded in its range")
    return out


def _pass_only_when_inspected(run_id: int, frames: Sequence[Tuple], verdicts: Sequence[Tuple]) -> List[str]:
    out: List[str] = []
    by_seq = {f[0]: f for f in frames}
    for _, part_id, _, verdict, first, last, _ in verdicts:
        if verdict != "PASS" or first is None or last is None:
            continue
        bad = [by_seq[s] for s in range(first, last + 1) if s in by_seq and by_seq[s][1] != "PASS"
               and _in_view(by_seq[s][1], by_seq[s][2])]
        if bad:
            seq, fv, reasons, _ = bad[0]
            why = "FAIL" if fv == "FAIL" else f"not inspected ({', '.join(json.loads(reasons or '[]'))[:120]})"
            out.append(f"run {run_id}: part {part_id} is PASS but frame {seq} was {why}")
    return out


def _rules_can_fail(rules_text: Optional[str]) -> bool:
    """A rules dict as stored by the run: at least one class with a limit (else no part could fail)."""
    rules = _stats(rules_text)
    classes = rules.get("classes")
    if not isinstance(classes, dict):
        return True  # not recorded: nothing to say
    limits = ("max_count", "max_total_area_px", "max_total_area_mm2", "max_area_px", "max_area_mm2")
    return any(isinstance(c, dict) and any(c.get(k) is not None for k in limits) for c in classes.values())


def _counts(run_id: int, status: str, n_frames: Optional[int], stats: Dict[str, Any], rows: int,
            verdicts: Sequence[Tuple], rules_text: Optional[str]) -> List[str]:
    out: List[str] = []
    lost = int(stats.get("db_unwritten") or 0)
    lost_frames = int(stats.get("db_unwritten_frames", lost) or 0)
    lost_parts = int(stats.get("db_unwritten_verdicts", 0) or 0)
    if lost:
        where = stats.get("db_unsaved_file") or "saved nowhere: lost"
        out.append(f"run {run_id}: {lost} row(s) were never written to the database ({where})")
    if n_frames is not None and n_frames != rows + lost_frames:
        out.append(f"run {run_id}: the run says {n_frames} frame(s), the database holds {rows}"
                   + (f" and {lost_frames} were not written" if lost_frames else ""))
    parts = stats.get("parts")
    if isinstance(parts, int) and parts != len(verdicts) + lost_parts:
        out.append(f"run {run_id}: the run says {parts} part verdict(s), the database holds {len(verdicts)}")
    if not lost:
        for key, verdict in (("parts_failed", "FAIL"), ("parts_none", "NONE")):
            told = stats.get(key)
            have = sum(1 for v in verdicts if v[3] == verdict)
            if isinstance(told, int) and told != have:
                out.append(f"run {run_id}: the run says {told} {verdict} part(s), the database holds {have}")
    if status == "finished" and stats.get("inspected") == 0:
        out.append(f"run {run_id}: status finished but no frame was inspected (should be empty)")
    if status == "empty" and any(v[3] in ("PASS", "FAIL") for v in verdicts):
        out.append(f"run {run_id}: status empty but it has judged parts")
    if any(v[3] == "PASS" for v in verdicts) and not _rules_can_fail(rules_text):
        out.append(f"run {run_id}: PASS verdicts under rules that cannot fail a part (no class has a limit)")
    selftest = stats.get("selftest")
    if isinstance(selftest, dict) and selftest.get("status") == "failed" and any(v[3] == "PASS" for v in verdicts):
        out.append(f"run {run_id}: PASS verdicts from a model that failed its self-test (ds2a/runtime/selftest.py)")
    return out


def check_database(con: sqlite3.Connection, run_id: Optional[int] = None) -> Tuple[int, List[str]]:
    """(runs checked, violations) for every run, or only `run_id`."""
    ids = [run_id] if run_id is not None else [r[0] for r in con.execute("SELECT id FROM runs ORDER BY id")]
    out: List[str] = []
    for rid in ids:
        out += check_run(con, rid)
    if run_id is None:  # one pass of SHA-256 over the audit rows: cheap
        out += audit.verify(con)[1] + review.verify(con)
    return len(ids), out


def format_check(path: str, runs: int, violations: Sequence[str]) -> str:
    if not violations:
        return (f"check {path}: OK, {runs} run(s): one verdict per part, PASS only for fully inspected parts, "
                "run records consistent")
    return "\n".join([f"check {path}: {len(violations)} violation(s) in {runs} run(s):"]
                     + [f"  {v}" for v in violations])
