"""The end of an inspection: what it did, as numbers (InspectionSummary) and as the table it prints."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..records.report import truth_line
from .loop import STAGES, LoopStats
from .parts import PartVerdict


@dataclass
class InspectionSummary:
    """One inspection's outcome; the same numbers are written to the run's row in the database."""

    status: str  # finished, interrupted or empty (`inspect` raises UserError after printing an empty run)
    run_id: Optional[int]  # the run's id in the database; None without one
    stats: LoopStats  # frames, drops, timings (the per-frame output times are the database's output_ms)
    parts: List[PartVerdict]
    frames_failed: int
    truth: Optional[Dict[str, Any]]  # escapes and overkill, when the source knows its parts' ground truth
    text: str  # the end-of-run table, as printed

    @property
    def parts_failed(self) -> int:
        return sum(1 for p in self.parts if p.verdict == "FAIL")

    @property
    def parts_none(self) -> int:
        """Parts not fully inspected (model unavailable, unreadable image): neither passed nor failed."""
        return sum(1 for p in self.parts if p.verdict == "NONE")

    @property
    def parts_passed(self) -> int:
        return sum(1 for p in self.parts if p.passed)


def summary_text(stats: LoopStats, publisher: Any, classes: List[str],
                 truth: Optional[Dict[str, Any]] = None) -> str:
    """The end-of-run table: per-stage ms, FPS (labelled), drops, parts and defects; escapes and
    overkill when the source knows its parts' ground truth (`truth`, from `TruthTally.summary`)."""
    head = ("per-stage time (ms; capture includes waiting for a live camera, queue = capture to model, "
            "latency = capture to output done):")
    lines = ["", head, stats.timings.table(STAGES)]
    parts = publisher.parts
    failed = sum(1 for p in parts if p.verdict == "FAIL")
    none = sum(1 for p in parts if p.verdict == "NONE")
    passed = len(parts) - failed - none
    lines += [
        "",
        (f"frames processed      {stats.frames}   (captured {stats.captured}, dropped {stats.dropped}, "
         f"corrupt/skipped {stats.corrupt}, reconnects {stats.reconnects})"),
        *([f"no part in view       {stats.no_part} frames (shown, recorded as NONE, not inspected)"]
          if stats.no_part else []),
        *([f"model unavailable     {stats.model_away} frames (dropped, recorded as NONE, not inspected)"]
          if stats.model_away else []),
        *([f"region too small      {stats.too_small} frames (smaller than the rules' minimum defect area, "
           "recorded as NONE)"] if stats.too_small else []),
        f"end-to-end FPS        {stats.e2e_fps:.1f}   (frames out / wall time, capture to output)",
        f"model-only FPS        {stats.model_fps:.1f}   (1000 / mean infer ms inside the loop)",
        f"verdicts ({parts[0].level if parts else 'part'})      {len(parts)}: {passed} PASS, {failed} FAIL"
        + (f", {none} NONE (not inspected)" if none else "")
        + (f"  (pass rate {100.0 * passed / len(parts):.1f}%)" if parts else ""),
        f"frames FAIL           {publisher.frames_failed}",
        *([f"ground truth          {truth_line(truth)}"] if truth else []),
        *([f"failure images lost   {publisher.images_failed} (not written: {publisher.image_error})"]
          if publisher.images_failed else []),
        *([f"database outages      {db.outages}, longest {db.max_delay_s:.1f} s, at most {db.max_backlog} rows "
           "waited in memory (none lost)"] if (db := publisher.records) is not None and db.outages else []),
        f"stopped because       {stats.stop_reason or 'source ended'}",
    ]
    return "\n".join(lines)
