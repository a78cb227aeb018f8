"""The output stage: part verdicts, records, saved failures, JSON lines, then drawing into the sinks.

Runs on the loop's output thread, so nothing here can slow the model down. Records come
first: when the output thread is behind a live source it skips drawing, never recording.
Saved failure images carry the run's start time and a random tag in their names and never
replace an existing file, so an old database never points at a newer run's pictures; an
image that cannot be written (full disk) is counted, warned about and kept in the run's stats.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from typing import IO, Any, Callable, List, Optional, Sequence, Tuple

import cv2

from ..errors import UserError
from ..outputs import check_writable_dir, write_new
from ..records.database import Records
from ..records.evidence import frame_mask, mask_path
from .loop import Result
from .overlay import Renderer
from .parts import PartTracker, PartVerdict
from .sinks import Sink

logger = logging.getLogger(__name__)

KEEP_RAW = ("fail", "all", "sample:N")  # which frames keep their raw picture and class-map mask (--keep-raw)


def parse_keep_raw(text: str) -> Tuple[str, int]:
    """'fail' (failing frames), 'all' (every inspected frame) or 'sample:N' (failing frames and every frame of
    one part in N) as (mode, N); UserError for anything else. The disk each costs: benchmarks/results/evidence.md."""
    text = str(text).strip()
    if text in ("fail", "all"):
        return text, 1
    head, _, n = text.partition(":")
    if head == "sample" and n.isdigit() and int(n) >= 1:
        return "sample", int(n)
    raise UserError(f"--keep-raw {text}: choose fail, all or sample:N (N a whole number >= 1, e.g. sample:100)")


class Publisher:
    """Callable given to InspectionLoop as its `output`."""

    def __init__(self, renderer: Renderer, sinks: Sequence[Sink], tracker: PartTracker,
                 records: Optional[Records] = None, save_fail: Optional[str] = None,
                 jsonl: Optional[IO[str]] = None, on_stop: Optional[Callable[[str], None]] = None,
                 keep_raw: str = "fail") -> None:
        self.renderer, self.sinks, self.tracker = renderer, list(sinks), tracker
        self.records, self.save_fail, self.jsonl, self.on_stop = records, save_fail, jsonl, on_stop
        self.keep_mode, self.keep_n = parse_keep_raw(keep_raw)
        self._keep_unit: Any = None  # the part (or frame, without part ids) of the last frame, for sample:N
        self._keep_units = -1
        if save_fail:
            check_writable_dir(save_fail, "failed frames (--save-fail)")
        self.parts: List[PartVerdict] = []
        # told each frame and closed part after the records, res None at the end: the live web view, the
        # line notifiers (ds2a/web/live.py, ds2a/notify/notifier.py); they hand work to their own threads
        self.observers: List[Any] = []
        self.frames_failed = 0
        self.images_failed = 0  # failure images that could not be written
        self.image_error = ""
        self.run_tag = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]  # unique per run
        self._fps: Optional[float] = None
        self._t_prev: Optional[float] = None

    def __call__(self, res: Result) -> None:
        t0 = time.perf_counter()
        if self._t_prev is not None:
            inst = 1.0 / max(t0 - self._t_prev, 1e-6)
            self._fps = inst if self._fps is None else 0.9 * self._fps + 0.1 * inst
        self._t_prev = t0
        annotated = None
        if self.sinks and not res.behind:
            annotated = self._draw(res)
            for sink in self.sinks:
                if not sink.write(annotated) and self.on_stop:
                    self.on_stop("closed by the user")
        image_path = raw_path = None
        if res.inspected and not res.passed:
            self.frames_failed += 1
        if self.save_fail and self._keep(res):
            if annotated is None:
                annotated = self._draw(res)
            image_path, raw_path = self._save_fail(res, annotated)
        t1 = time.perf_counter()  # output done: one reading for the database, the loop's table and JSON lines
        res.ms["output"] = (t1 - t0) * 1e3
        res.ms["latency"] = (t1 - res.frame.t_perf) * 1e3
        # the part verdicts are made in one place, the tracker (ds2a/inspect/parts.py): a frame not judged
        # (model away, unreadable, too small) still belongs to its part, which then cannot PASS
        closed = self.tracker.feed(res.seq, res.frame.part_id, res.passed, res.reasons, res.frame.t_wall,
                                   inspected=res.inspected) if res.in_view else self.tracker.feed_gap()
        self._record(res, closed, image_path, raw_path)

    def _draw(self, res: Result):
        return self.renderer.render(res.frame.image, res.class_map, res.passed, res.reasons, res.defects,
                                    self._fps, res.frame.part_id, res.roi)

    def _keep(self, res: Result) -> bool:
        """Whether this frame's pictures are kept (--keep-raw): failing frames always; with sample:N also every
        frame of one part in N (counted by part id; each frame is its own unit when the source gives none)."""
        if not res.inspected:
            return False
        unit = res.frame.part_id if res.frame.part_id is not None else ("seq", res.seq)
        if unit != self._keep_unit:
            self._keep_unit, self._keep_units = unit, self._keep_units + 1
        return (not res.passed or self.keep_mode == "all"
                or (self.keep_mode == "sample" and self._keep_units % self.keep_n == 0))

    def _save_fail(self, res: Result, annotated) -> Tuple[Optional[str], Optional[str]]:
        run = f"run{self.records.run_id}_" if self.records is not None and self.records.run_id else ""
        part = re.sub(r"[^A-Za-z0-9._#-]", "_", res.frame.part_id or "frame")
        stem = os.path.join(self.save_fail or ".", f"{run}{self.run_tag}_{res.seq:06d}_{part}")
        ann, raw = stem + "_annotated.jpg", stem + "_raw.jpg"
        # raw as JPEG q95: a 720p PNG costs 40-80 ms of CPU, JPEG about 5 ms; the class map beside it as a
        # lossless PNG named after the raw frame (mask_path in ds2a/records/evidence.py)
        try:
            for path, image, params in ((ann, annotated, []), (raw, res.frame.image, [cv2.IMWRITE_JPEG_QUALITY, 95]),
                                        (mask_path(raw), frame_mask(res), [])):
                if image is None:
                    continue
                ok, buf = cv2.imencode(os.path.splitext(path)[1], image, params)
                if not ok:
                    raise ValueError("OpenCV could not encode the image")
                write_new(path, buf.tobytes())
        except (OSError, ValueError, cv2.error) as exc:
            self._image_failed(ann, exc)
            return (ann if os.path.isfile(ann) else None), (raw if os.path.isfile(raw) else None)
        return ann, raw

    def _image_failed(self, path: str, exc: BaseException) -> None:
        """Count, warn (first time, then every 100th) and keep in the run's stats; inspection goes on."""
        self.images_failed += 1
        self.image_error = f"{path}: {getattr(exc, 'strerror', None) or exc}"
        if self.images_failed == 1 or self.images_failed % 100 == 0:
            logger.warning(f"warning: could not save failure image {self.image_error} ({self.images_failed} so far); "
                           "the verdicts are still recorded")
        if self.records is not None:
            self.records.extra.update(fail_images_unsaved=self.images_failed, fail_images_error=self.image_error)

    def _record(self, res: Result, closed: List[PartVerdict], image_path: Optional[str],
                raw_path: Optional[str]) -> None:
        if self.records is not None:
            self.records.add_frame(res, image_path, raw_path)
            for pv in closed:
                self.records.add_verdict(pv)
            self.records.commit()  # per frame: a SIGKILL loses only frames in flight
        self.parts += closed
        for observer in self.observers:
            observer.publish(res, closed)
        if self.jsonl is not None:
            self._jsonl_frame(res)
            for pv in closed:
                self._jsonl_part(pv)
            self.jsonl.flush()

    def finish(self, close_sinks: bool = True) -> None:
        """Close the open part (and the sinks, unless their owner closes them); called once after the loop ends."""
        closed = self.tracker.flush()
        if self.records is not None:
            for pv in closed:
                self.records.add_verdict(pv)
            self.records.commit()
        self.parts += closed
        for observer in self.observers:
            observer.publish(None, closed)
        if self.jsonl is not None:
            for pv in closed:
                self._jsonl_part(pv)
            self.jsonl.flush()
        if close_sinks:
            for sink in self.sinks:
                sink.close()

    def _jsonl_frame(self, res: Result) -> None:
        line = {"type": "frame", "seq": res.seq, "index": res.frame.index, "t": round(res.frame.t_wall, 3),
                "part_id": res.frame.part_id, "verdict": res.verdict, "reasons": res.reasons,
                "defects": [d.to_dict() for d in res.defects], "ms": {k: round(v, 2) for k, v in res.ms.items()}}
        print(json.dumps(line), file=self.jsonl or sys.stdout)

    def _jsonl_part(self, pv: PartVerdict) -> None:
        line = {"type": "part", "part_id": pv.part_id, "level": pv.level, "verdict": pv.verdict,
                "reasons": pv.reasons, "first_seq": pv.first_seq, "last_seq": pv.last_seq, "n_frames": pv.n_frames}
        if pv.recipe is not None:  # --recipes: the recipe that judged this part
            line["recipe"], line["recipe_sha256"] = pv.recipe, pv.recipe_sha256
        print(json.dumps(line), file=self.jsonl or sys.stdout)
