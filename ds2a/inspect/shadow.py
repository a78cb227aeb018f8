"""A shadow model on the live line: `ds2a inspect --shadow MODEL` (docs/SHADOW.md).

A candidate model judges the parts the live model judges, with the live run's rules, ROI/part box and
analyser, and its verdicts go to the records' `shadow` table (ds2a/records/shadow.py) beside the live
ones. It is never published: it is a Publisher observer that hands work over and tells no one (no
`--notify`, trigger answer, OPC UA, live page verdict or JSON line), and it never delays the live verdict:

- the output thread only crops and resizes an admitted frame to the candidate's size (the prepared small
  image, never a full frame) and appends it to a bounded queue; it never waits on the candidate;
- one worker thread judges the queue at a lower priority (Linux: `os.setpriority` on its native thread
  id; the candidate's ONNX Runtime / PyTorch run on that thread, one intra-op thread);
- a documented sample when the candidate is slower than the line: a part is taken only when it begins
  while the queue is at most half full, and a part whose frame finds the queue full is dropped from the
  sample (its queued frames are skipped). Every part offered gets a row: judged=0 with the reason when
  sampled out, never silently dropped.

The shadow's part verdict is made by the same rule (ds2a/inspect/parts.py PartVerdict): PASS only when
every frame of the part was judged and passed. Frames the live station could not judge (unreadable,
too small, model away, drift) are not judged by the candidate either. Torch-free, Python 3.8.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from ..errors import UserError
from ..meta import file_sha256_or_empty
from ..preprocess import resize_frame
from ..records import shadow as table
from .parts import PartVerdict
from .quantify import quantify
from .rules import Rules, analyser, judge
from .truth import IGNORE_INDEX, TruthTally, min_floor

logger = logging.getLogger(__name__)

QUEUE_FRAMES = 16  # frames at the candidate's size waiting for it (a 256x256 frame is 192 kB)
NICE = 10  # how much lower the worker thread runs than the rest (Linux thread niceness)
END_PATIENCE_S = 10.0  # at the end of the run, how long the queued parts may still be judged
MAX_UNWRITTEN = 5000  # shadow rows kept for a retry while the database refuses writes
SAMPLED_QUEUE = "queue full (the candidate is behind the line; the part was left out of the sample)"
SAMPLED_CUT = "queue full (the candidate fell behind during the part; it was left out of the sample)"
SAMPLED_END = "run ended (the candidate had not judged the part when the run stopped)"
SAMPLED_RECIPE = "another recipe (the shadow judges with the rules the run started with; docs/SHADOW.md)"


@dataclass
class _Part:
    """The shadow's view of one live part while its frames pass: which were queued, and their answers."""

    admitted: bool
    why: str = ""
    frames: Dict[int, str] = field(default_factory=dict)  # seq -> queued | out | live (not judged live)
    answers: Dict[int, Tuple[bool, List[str]]] = field(default_factory=dict)  # seq -> (passed, reasons)
    errors: Dict[int, str] = field(default_factory=dict)  # seq -> why the candidate could not judge it
    infer_ms: float = 0.0
    pv: Optional[PartVerdict] = None


_END = object()


class ShadowStage:
    """The candidate's queue, worker and rows; a Publisher observer (ds2a/inspect/publish.py)."""

    def __init__(self, model: Any, path: str, sha256: str, rules: Rules, classes: List[str], records: Any,
                 truth: Optional[TruthTally] = None, queue_frames: int = QUEUE_FRAMES, nice: int = NICE,
                 end_patience_s: float = END_PATIENCE_S) -> None:
        if queue_frames < 1:
            raise UserError(f"shadow queue of {queue_frames} frames: give at least 1")
        self.model, self.path, self.sha256, self.records, self.truth = model, path, sha256, records, truth
        self.analyse = analyser(rules, classes)
        self.rules, self.classes = rules, list(classes)
        self.size = tuple(model.input_size)
        self.capacity, self.admit_below = int(queue_frames), max(1, int(queue_frames) // 2)
        self.nice, self.end_patience_s = int(nice), float(end_patience_s)
        self._items: Deque[Any] = collections.deque()  # frames and part ends, in order; frames are bounded
        self._frames = 0  # frames in _items
        self._cond = threading.Condition()
        self._open: Optional[_Part] = None
        self._done: Deque[tuple] = collections.deque()  # rows the worker finished, written by the output thread
        self._unwritten: List[tuple] = []
        self._ending = False
        self._recipe: Any = False  # the recipe of the first frame (False: none seen yet); --recipes changeovers
        self.offered = self.judged = self.sampled = self.lost = 0
        self.max_queued = 0
        self.niced: Optional[str] = None  # how the worker's priority was lowered, or why not
        self.worker_errors = 0
        self._thread = threading.Thread(target=self._work, name="ds2a-shadow", daemon=True)
        self._thread.start()

    # -- the output thread ---------------------------------------------------------------------------
    def publish(self, res: Any, closed: List[PartVerdict]) -> None:
        """Told each frame and closed part after the live records (res None: the end of the run)."""
        seq = None if res is None else res.seq
        for pv in closed:  # parts closed by a later frame (the next part's first frame, a gap, the end)
            if seq is None or pv.last_seq < seq:
                self._close(pv)
        if res is not None and res.in_view:
            try:
                self._frame(res)
            except Exception as exc:  # noqa: BLE001 - the shadow's trouble never reaches the live line
                self.worker_errors += 1
                if self._open is not None:
                    self._open.admitted, self._open.why = False, f"frame not prepared for the candidate ({exc})"[:300]
                    self._open.frames[res.seq] = "out"
        for pv in closed:  # parts this frame completed (N frames, frame level, a trigger)
            if seq is not None and pv.last_seq >= seq:
                self._close(pv)
        if res is None:
            self._end()
        self._write()
        if res is None and self.records is not None:
            self.records.extra["shadow"] = self.stats()  # into the run's stats by finish_run, which follows

    def _frame(self, res: Any) -> None:
        part = self._open
        if part is None:  # a part begins: in the sample only when the candidate keeps up
            with self._cond:
                room = self._frames < self.admit_below
            part = self._open = _Part(room, "" if room else SAMPLED_QUEUE)
        if not res.inspected:
            part.frames[res.seq] = "live"  # the live station could not judge it: neither does the candidate
            return
        recipe = getattr(res, "recipe", None)
        if self._recipe is False:
            self._recipe = recipe
        if recipe != self._recipe and part.admitted:  # after a changeover the live rules are another recipe's
            part.admitted, part.why = False, SAMPLED_RECIPE
        if not part.admitted:
            part.frames[res.seq] = "out"
            return
        image = res.frame.image
        roi = res.roi
        if roi is not None:
            x, y, w, h = roi
            image = image[y:y + h, x:x + w]
        region = roi or (0, 0, image.shape[1], image.shape[0])
        small = np.ascontiguousarray(resize_frame(image, self.size))  # a copy at model size, never the frame
        with self._cond:
            if self._frames >= self.capacity:
                part.admitted, part.why = False, SAMPLED_CUT
                part.frames[res.seq] = "out"
                return
            self._items.append((part, res.seq, small, region))
            self._frames += 1
            self.max_queued = max(self.max_queued, self._frames)
            self._cond.notify()
        part.frames[res.seq] = "queued"

    def _close(self, pv: PartVerdict) -> None:
        part, self._open = self._open or _Part(True), None  # no frame seen: recorded as frames missing
        part.pv = pv
        self.offered += 1
        with self._cond:  # part ends carry no image: they never count against the bound
            self._items.append(part)
            self._cond.notify()

    def _end(self) -> None:
        """Let the worker judge what is queued for up to end_patience_s; every part left gets its row."""
        self._open = None
        with self._cond:
            self._items.append(_END)
            self._cond.notify()
        self._thread.join(self.end_patience_s)
        with self._cond:
            self._ending = True  # the worker skips the frames still queued and closes their parts
            self._cond.notify()
        self._thread.join(2.0)
        with self._cond:
            left, self._items = list(self._items), collections.deque()
            self._frames = 0
        for item in left:  # the worker is stuck in the candidate: its parts are closed here
            if isinstance(item, _Part):
                self._row(item, SAMPLED_END)
        s = self.stats()
        logger.info(f"shadow  {self.path}: {s['judged']} of {s['offered']} parts judged, {s['sampled_out']} "
                    f"sampled out (never published; `ds2a report DB --shadow`)")

    def _write(self) -> None:
        """The finished rows, written on the output thread after the live rows (one extra commit per part);
        kept for a retry while the database refuses, counted as unwritten beyond MAX_UNWRITTEN."""
        while self._done:
            self._unwritten.append(self._done.popleft())
        records = self.records
        if not self._unwritten or records is None or records.run_id is None or records.pending:
            self._trim()
            return  # the live rows wait for the database: the shadow's wait behind them
        rows = [(records.run_id,) + r for r in self._unwritten]
        try:
            records.con.executemany(table.INSERT, rows)
            records.con.commit()
        except sqlite3.Error:
            try:
                records.con.rollback()
            except sqlite3.Error:
                pass
            self._trim()
            return
        self._unwritten.clear()

    def _trim(self) -> None:
        if len(self._unwritten) > MAX_UNWRITTEN:
            self.lost += len(self._unwritten) - MAX_UNWRITTEN
            del self._unwritten[:len(self._unwritten) - MAX_UNWRITTEN]
            if self.records is not None:
                self.records.extra["shadow"] = self.stats()

    # -- the worker thread ---------------------------------------------------------------------------
    def _lower_priority(self) -> None:
        if not self.nice:
            self.niced = "not lowered (nice 0)"
            return
        native = getattr(threading, "get_native_id", None)
        if not hasattr(os, "setpriority") or native is None:
            self.niced = "not lowered (no per-thread priority on this system)"
            return
        try:  # on Linux a thread is a task: its own niceness, inherited by threads it starts
            os.setpriority(os.PRIO_PROCESS, native(), os.getpriority(os.PRIO_PROCESS, native()) + self.nice)
            self.niced = f"nice +{self.nice}"
        except OSError as exc:
            self.niced = f"not lowered ({exc.strerror or exc})"

    def _work(self) -> None:
        self._lower_priority()
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._items.popleft()
                if isinstance(item, tuple):
                    self._frames -= 1
                ending = self._ending
            if item is _END:
                return
            if isinstance(item, _Part):
                self._row(item, SAMPLED_END if ending and self._unjudged(item) else "")
                continue
            part, seq, small, region = item
            if not part.admitted or ending:
                continue  # the part left the sample: its queued frames are skipped
            try:
                t0 = time.perf_counter()
                out = self.model.infer(small)
                part.infer_ms += (time.perf_counter() - t0) * 1e3
                _, passed, reasons = self.analyse(out.class_map, out.confidence, region)
                part.answers[seq] = (bool(passed), list(reasons))
            except Exception as exc:  # noqa: BLE001 - the candidate's trouble never reaches the live line
                self.worker_errors += 1
                part.errors[seq] = f"not judged by the candidate: {type(exc).__name__}: {exc}"[:300]

    @staticmethod
    def _unjudged(part: _Part) -> bool:
        return any(s == "queued" and seq not in part.answers and seq not in part.errors
                   for seq, s in part.frames.items())

    def _row(self, part: _Part, sampled: str) -> None:
        """The part's row: its verdict by the live part rule, or judged=0 with why it left the sample."""
        pv = part.pv
        if pv is None:
            return
        seqs = sorted(s for s in part.frames if pv.first_seq <= s <= pv.last_seq)
        why = sampled or part.why
        if not why and len(seqs) != pv.n_frames:  # fail-safe: never a verdict on frames it did not see
            why = f"frames missing ({len(seqs)} of the part's {pv.n_frames} reached the shadow)"
        if not why and any(part.frames[s] == "out" for s in seqs):
            why = SAMPLED_CUT
        verdict, reasons, judged = None, [why], 0
        if not why:
            failed, uninspected, reasons = False, 0, []
            for s in seqs:
                ans = part.answers.get(s)
                if ans is None:  # not judged live, or the candidate failed on it
                    uninspected += 1
                    text = part.errors.get(s, "not inspected by the live station")
                    reasons += [text] if text not in reasons else []
                    continue
                failed = failed or not ans[0]
                reasons += [r for r in ans[1] if r not in reasons]
            v = PartVerdict(pv.part_id, pv.level, not failed and uninspected == 0, reasons, pv.first_seq,
                            pv.last_seq, len(seqs), pv.t_start, pv.t_end, none=not failed and uninspected > 0,
                            uninspected=uninspected)
            verdict, judged = v.verdict, 1
            self.judged += 1
        else:
            self.sampled += 1
        truth = self._truth(pv.part_id) if judged else None
        self._done.append((pv.part_id, pv.first_seq, pv.last_seq, self.path, self.sha256, judged, verdict,
                           json.dumps(reasons) if reasons else None, pv.verdict, len(seqs),
                           round(part.infer_ms, 3) if judged else None, truth, time.time()))

    def _truth(self, part_id: Optional[str]) -> Optional[str]:
        """'good' or 'defective' by the same rules, when the source knows the part's ground truth (demo://)."""
        if self.truth is None or not part_id:
            return None
        try:
            got = self.truth.truth(part_id)
            if got is None:
                return None
            mask, size = got
            defects = quantify(np.where(mask == IGNORE_INDEX, 0, mask).astype(np.uint8), self.classes, size,
                               self.rules.mm_per_pixel, min_floor(self.rules))
            return "good" if judge(self.rules, defects)[0] else "defective"
        except Exception:  # noqa: BLE001 - no truth is better than a wrong one; never stops the line
            return None

    # -- the run ---------------------------------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        """What the run's stats keep (`ds2a report --shadow` reads them with the rows)."""
        test = getattr(self.model, "selftest", None)
        return {"model": self.path, "model_sha256": self.sha256, "backend": getattr(self.model, "backend", ""),
                "selftest": test.to_dict() if test is not None else {"status": "not run"},
                "queue_frames": self.capacity, "admit_below": self.admit_below, "nice": self.niced,
                "offered": self.offered, "judged": self.judged, "sampled_out": self.sampled,
                "max_queued": self.max_queued, "worker_errors": self.worker_errors,
                "unwritten": self.lost + len(self._unwritten)}

    def close(self) -> None:
        """Stop the worker (what it has not judged is already recorded as such) and close the candidate."""
        with self._cond:
            self._ending = True
            self._items.append(_END)
            self._cond.notify()
        self._thread.join(2.0)
        if not self._thread.is_alive():  # a candidate stuck in a call is left to the process's exit
            self.model.close()


def shadow_options(options: Any, confidence: bool) -> Dict[str, Any]:
    """The candidate's backend keywords: one intra-op thread on the CPU (it must not take the live model's
    cores), the live run's device when both use the same backend, logits when the rules need confidence."""
    from ..runtime import backend_for

    name = backend_for(options.shadow)
    out: Dict[str, Any] = {}
    if name == backend_for(options.model, options.backend) and "device" in options.backend_options:
        out["device"] = options.backend_options["device"]
    if name == "onnxruntime":
        out.update(intra_op_threads=1, inter_op_threads=1)
    elif name == "pytorch":
        out["threads"] = 1
    if confidence:
        out["return_logits"] = True
    return out


def open_shadow(options: Any, rules: Rules, classes: List[str], records: Any, publisher: Any,
                stack: Any, open_model: Optional[Callable[..., Any]] = None) -> Optional[ShadowStage]:
    """The shadow for `--shadow MODEL`, or None without it: the candidate is opened by the same open_model
    (its golden-frame self-test runs; a candidate that fails it is refused here, before the run starts),
    must have the live model's classes (the same rules judge both) and give confidence when the rules use
    it. Registered last among the Publisher's observers, so its end-of-run wait comes after every live
    observer has the last part; closed with the run's ExitStack."""
    path = getattr(options, "shadow", None)
    if not path:
        return None
    if records is None:
        raise UserError(f"--shadow {path} needs --db FILE: the shadow's verdicts are only recorded, never published")
    if path == options.model:
        logger.info(f"note: --shadow {path} is the live model itself: the shadow measures only its own overhead")
    if open_model is None:
        from ..runtime import open_model
    try:
        model = open_model(path, **shadow_options(options, rules.needs_confidence))
    except UserError as exc:
        raise UserError(f"--shadow {path}: the candidate model is refused: {exc}") from None
    try:
        got = list(model.meta.classes)
        if got != list(classes):
            raise UserError(f"--shadow {path} has classes {', '.join(got)} but the live model {options.model} has "
                            f"{', '.join(classes)}; a shadow is judged by the same rules, so give a candidate "
                            "trained on the same classes")
        model.warmup(1)
        h, w = model.input_size
        if rules.needs_confidence and model.infer(np.zeros((h, w, 3), np.uint8)).confidence is None:
            raise UserError(f"--shadow {path} gives no confidence but rules {rules.origin} use min_confidence: "
                            "export the candidate with `ds2a export ... --outputs both`")
    except BaseException:
        model.close()
        raise
    truth = next((o for o in publisher.observers if isinstance(o, TruthTally)), None)
    stage = ShadowStage(model, path, file_sha256_or_empty(path), rules, classes, records, truth,
                        queue_frames=QUEUE_FRAMES, nice=NICE, end_patience_s=END_PATIENCE_S)  # read now: a benchmark or test may set them
    stack.callback(stage.close)
    publisher.observers.append(stage)
    records.extra["shadow"] = stage.stats()
    test = model.selftest.status if getattr(model, "selftest", None) else "not run"
    logger.info(f"shadow  {path} ({model.backend}, {h}x{w}, self-test {test}): judged beside the live model, never "
                f"published; queue {stage.capacity} frames, sampled when behind")
    return stage
