"""Drift watch: is the picture still the one the model was calibrated on? (docs/DRIFT.md)

`ds2a export` and `ds2a calibrate` store reference statistics of their frames in the model's
metadata (`ModelMeta.extra["drift_reference"]`, next to the golden frames of
ds2a/runtime/selftest.py): brightness, contrast, sharpness (variance of the Laplacian), a coarse
colour histogram, the per-class area fractions of the model's class maps and, when the model
gives logits, its confidence (margin between the two best classes). `python -m ds2a.inspect.drift_reference
MODEL.onnx --source URI` records them from the line's own picture instead.

During `ds2a inspect` every inspected part (every frame when the source names no parts) is one
sample; each watched statistic is standardised against the reference, clipped, and fed to a
two-sided CUSUM. When a sum passes its limit the station raises a drift alarm (a JSON line, the
run's records, the log, OPC UA through the NONE parts) and, with `--drift stop`, judges no part
(NONE, never PASS) until the picture is back (no sum passes its limit for `RECOVERY` samples
after a reset) or an engineer acknowledges (SIGUSR1, or touching the acknowledge file).
The limits were measured on the demo conveyor (benchmarks/drift.py). Torch-free, Python 3.8.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from ..data.picture_stats import (
    RECORDED_ONLY,
    WATCHED,
    Reference,
    reference_of,
    sample_of,
)
from ..errors import UserError

logger = logging.getLogger(__name__)

MODES = ("stop", "warn", "off")
# warn, not stop, by default: a reference from export/calibration frames is not the line's picture (measured:
# docs/DRIFT.md), so stop would hold every new station at NONE; `--drift stop` once the line's reference is recorded
DEFAULT_MODE = "warn"

# CUSUM on z = clip((x - mean) / sigma, -CLIP, CLIP): S+ = max(0, S+ + z - K), S- = max(0, S- - z - K),
# alarm when either passes H. Chosen from benchmarks/drift.py (docs/DRIFT.md): no alarm in the clean runs,
# an alarm within the measured number of frames of the injected drifts.
K = 1.0
H = 6.0
CLIP = 3.0
RECOVERY = 20  # samples in a row without a sum passing H (after a reset) before the picture counts as back
ACK_POLL_S = 0.5  # how often the acknowledge file is looked at


@dataclass
class _Stat:
    """One watched statistic: its reference and its two CUSUM sums."""

    name: str
    mean: float
    sigma: float
    direction: int
    pos: float = 0.0
    neg: float = 0.0
    ewma: Optional[float] = None  # recent level, for the alarm's message (weight 0.2 per sample)
    last: float = 0.0

    def update(self, value: float, k: float, clip: float) -> float:
        self.last = value
        self.ewma = value if self.ewma is None else 0.8 * self.ewma + 0.2 * value
        z = max(-clip, min(clip, (value - self.mean) / self.sigma))
        self.pos = max(0.0, self.pos + z - k)
        self.neg = 0.0 if self.direction > 0 else max(0.0, self.neg - z - k)
        return max(self.pos, self.neg)

    def reset(self) -> None:
        self.pos = self.neg = 0.0


class DriftWatch:
    """Two-sided CUSUM per statistic against the model's reference; the state a verdict is judged under.

    `observe` takes one sample (see `sample_of`) and returns the events it caused (alarm raised,
    cleared); frames of the part last sampled are not sampled again (they show the same object).
    `blocking` is True while `mode` is "stop", the picture is drifted and no one acknowledged it.
    """

    def __init__(self, reference: Reference, mode: str = DEFAULT_MODE, k: float = K, h: float = H,
                 clip: float = CLIP, recovery: int = RECOVERY, ack_file: Optional[str] = None,
                 clock: Callable[[], float] = time.time) -> None:
        if mode not in MODES:
            raise UserError(f"--drift {mode} is unknown; choose one of {', '.join(MODES)}")
        self.reference, self.mode, self.k, self.h, self.clip, self.recovery = reference, mode, k, h, clip, recovery
        self.ack_file, self.clock = ack_file, clock
        self.stats = [_Stat(name, reference.stats[name][0], max(reference.stats[name][1], floor), direction)
                      for name, (direction, floor) in WATCHED.items()
                      if name in reference.stats and name not in RECORDED_ONLY]
        self.samples = 0
        self.drifted = False
        self.acknowledged = False
        self.since_sample: Optional[int] = None  # sample that raised the current alarm
        self.moved: Optional[Dict[str, Any]] = None  # the alarm in force
        self.quiet = 0  # samples in a row without a sum over h, while drifted
        self.alarms = 0
        self.events: List[Dict[str, Any]] = []  # every event of the run, for the records
        self.last_part: Optional[str] = None
        self._ack_requested: Optional[str] = None  # set from a signal handler, acted on in `observe`
        self._ack_checked = 0.0
        self._ack_mtime = self._mtime()

    @property
    def blocking(self) -> bool:
        return self.mode == "stop" and self.drifted and not self.acknowledged

    def request_ack(self, by: str) -> None:
        """Ask to acknowledge the alarm in force (safe from a signal handler: acted on at the next frame)."""
        self._ack_requested = by

    def _mtime(self) -> float:
        try:
            return os.stat(self.ack_file).st_mtime if self.ack_file else 0.0
        except OSError:
            return 0.0

    def _poll_ack(self) -> None:
        now = time.monotonic()
        if self.ack_file and now - self._ack_checked >= ACK_POLL_S:
            self._ack_checked = now
            mtime = self._mtime()
            if mtime > self._ack_mtime:  # touched since it was last looked at
                self._ack_mtime = mtime
                self.request_ack(f"file {self.ack_file}")

    def poll(self) -> List[Dict[str, Any]]:
        """Act on an acknowledgement (signal or file); returns the event, if any."""
        self._poll_ack()
        by, self._ack_requested = self._ack_requested, None
        if by is None or not self.drifted or self.acknowledged:
            return []
        self.acknowledged = True
        return [self._event("acknowledged", self.moved or {}, by=by)]

    def observe(self, sample: Optional[Dict[str, Any]], part_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Feed one frame's statistics (None: nothing new to sample); returns the events it caused."""
        events = self.poll()
        if sample is None or (part_id is not None and part_id == self.last_part):
            return events
        self.last_part = part_id
        self.samples += 1
        worst: Optional[_Stat] = None
        for st in self.stats:
            value = sample.get(st.name)
            if value is None:
                continue
            if st.update(float(value), self.k, self.clip) > self.h and (
                    worst is None or max(st.pos, st.neg) > max(worst.pos, worst.neg)):
                worst = st
        if worst is not None:
            moved = self._moved(worst)
            for st in self.stats:  # sums start again: a drift that persists passes h again within a few samples
                st.reset()
            self.quiet = 0
            if not self.drifted:
                self.drifted, self.acknowledged, self.moved = True, False, moved
                self.since_sample = self.samples
                self.alarms += 1
                events.append(self._event("raised", moved))
            return events
        if self.drifted:
            self.quiet += 1
            if self.quiet >= self.recovery:
                events.append(self._event("cleared", self.moved or {}, quiet_samples=self.quiet))
                self.drifted = self.acknowledged = False
                self.moved = None
        return events

    def _moved(self, st: _Stat) -> Dict[str, Any]:
        return {"statistic": st.name, "direction": "high" if st.pos >= st.neg else "low",
                "value": round(float(st.ewma if st.ewma is not None else st.last), 6), "last": round(st.last, 6),
                "reference": round(st.mean, 6), "sigma": round(st.sigma, 6),
                "cusum": round(max(st.pos, st.neg), 3), "limit": self.h}

    def _event(self, state: str, moved: Dict[str, Any], **more: Any) -> Dict[str, Any]:
        event = {"type": "alarm", "kind": "drift", "state": state, "t": round(self.clock(), 3), "mode": self.mode,
                 "sample": self.samples, **moved, **more}
        self.events.append(event)
        return event

    def reason(self) -> str:
        """Why a part judged now is NONE (the reason recorded with it)."""
        m = self.moved or {}
        return (f"not judged: the picture drifted from the model's reference ({m.get('statistic', '?')} "
                f"{m.get('value', float('nan')):.4g}, reference {m.get('reference', float('nan')):.4g} ± "
                f"{m.get('sigma', float('nan')):.3g}); PASS again once the picture is back or an engineer "
                "acknowledges (docs/DRIFT.md)")

    def summary(self) -> Dict[str, Any]:
        """What the run's records keep."""
        return {"mode": self.mode, "reference": self.reference.line(), "samples": self.samples,
                "alarms": self.alarms, "drifted_at_end": self.drifted, "k": self.k, "h": self.h, "clip": self.clip,
                "recovery": self.recovery, "events": self.events[-100:]}


def event_text(event: Dict[str, Any]) -> str:
    """One line for the log and the run's notes."""
    what = f"{event.get('statistic', '?')} {event.get('direction', '')} {event.get('value', '')} " \
           f"(reference {event.get('reference', '')} ± {event.get('sigma', '')})"
    if event["state"] == "raised":
        return f"{time.strftime('%H:%M:%S')} DRIFT ALARM ({event['mode']}): {what} after {event['sample']} samples"
    if event["state"] == "acknowledged":
        return f"{time.strftime('%H:%M:%S')} drift alarm acknowledged by {event.get('by')}: {what}"
    return f"{time.strftime('%H:%M:%S')} drift alarm cleared: the picture is back ({event.get('quiet_samples')} samples)"


class WatchedModel:
    """The model as the loop sees it: every answer's input frame and logits are kept, by class map, for
    the output thread (so the statistics cost the model thread nothing)."""

    def __init__(self, model: Any, stage: "DriftStage") -> None:
        self._model, self._stage = model, stage
        where = str(getattr(model, "path", None) or getattr(model, "backend", "the model"))
        self.where, self.reference = where, reference_of(model.meta, where)  # this model's own picture

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def infer(self, frame: np.ndarray) -> Any:
        out = self._model.infer(frame)
        self._stage.keep(out.class_map, frame, out.logits, self)
        return out


class DriftStage:
    """Drift watch between the inspection loop and its Publisher: samples each inspected frame, emits the
    alarm events (JSON line, records, log, `on_alarm`) and, while the watch blocks, makes the frame NONE.

    With recipes (ds2a/inspect/recipes.py) the watch follows the model that judged each frame: the first
    frame judged by another recipe's model starts a fresh watch on that model's reference (or none, said so,
    when it carries none); what the earlier watches saw stays in the records (`recipes`)."""

    def __init__(self, watch: DriftWatch, output: Callable[[Any], None], num_classes: int,
                 jsonl: Any = None, records: Any = None, notes: Optional[List[str]] = None,
                 on_alarm: Optional[Callable[[str], None]] = None, model: Any = None) -> None:
        self.watch: Optional[DriftWatch] = watch
        self.output, self.num_classes = output, int(num_classes)
        self.mode, self.ack_file = watch.mode, watch.ack_file
        self.jsonl, self.records, self.notes, self.on_alarm = jsonl, records, notes, on_alarm
        self.judged_by = model  # the model whose reference the watch holds (None: take the first seen)
        self.earlier: List[Dict[str, Any]] = []  # the summaries of the watches of earlier recipes
        self._kept: Dict[int, Tuple[np.ndarray, Optional[np.ndarray], Optional[WatchedModel]]] = {}
        self._lock = threading.Lock()
        self.ms: Deque[float] = collections.deque(maxlen=10000)  # cost per sample (statistics + test), latest
        self.not_judged = 0  # frames made NONE by the drift watch
        if records is not None:
            records.extra["drift"] = watch.summary()

    def wrap(self, model: Any) -> WatchedModel:
        return WatchedModel(model, self)

    def keep(self, class_map: np.ndarray, frame: np.ndarray, logits: Optional[np.ndarray],
             by: Optional[WatchedModel] = None) -> None:
        with self._lock:
            self._kept[id(class_map)] = (frame, logits, by)
            while len(self._kept) > 64:  # results dropped by an abort never reach the output
                self._kept.pop(next(iter(self._kept)))

    def __call__(self, res: Any) -> None:
        t0 = time.perf_counter()
        sample = None
        if res.inspected and res.class_map is not None:
            with self._lock:
                kept = self._kept.pop(id(res.class_map), None)
            by = kept[2] if kept is not None else None
            if by is not None and self.judged_by is not None and by._model is not self.judged_by:
                self._follow(by)  # another recipe's model judged this frame: its own reference from now on
            part = res.frame.part_id
            watch = self.watch
            if kept is not None and watch is not None and (part is None or part != watch.last_part):
                sample = sample_of(kept[0], res.class_map, kept[1], self.num_classes)  # a part is sampled once
        if self.watch is not None:
            for event in self.watch.observe(sample, res.frame.part_id):
                event["seq"] = res.seq  # the frame it happened at: the frame and part JSON lines carry the same
                self._emit(event)
        if sample is not None:
            self.ms.append((time.perf_counter() - t0) * 1e3)
        if self.watch is not None and self.watch.blocking and res.inspected:
            res.inspected = False  # NONE, never PASS, while the picture is not the model's
            res.reasons = [self.watch.reason()] + list(res.reasons)
            self.not_judged += 1
        self.output(res)

    def _follow(self, by: WatchedModel) -> None:
        """A changeover: watch the new model's picture, with fresh sums (the old alarm was about the old product)."""
        if self.watch is not None:
            self.earlier.append(self.watch.summary())
        self.judged_by = by._model
        self.watch = DriftWatch(by.reference, self.mode, ack_file=self.ack_file) if by.reference is not None else None
        text = (f"{time.strftime('%H:%M:%S')} drift watch follows the recipe's model {by.where}: "
                + (by.reference.line() if by.reference is not None else "off (it carries no drift reference)"))
        logger.info(text)
        if self.notes is not None:
            self.notes.append(text)
        if self.records is not None:
            self.records.extra["drift"] = self._summary()

    def _summary(self) -> Dict[str, Any]:
        now = self.watch.summary() if self.watch is not None else {"mode": "off", "why": "the recipe's model "
                                                                                          "carries no drift reference"}
        return {**now, "frames_not_judged": self.not_judged, **({"recipes": self.earlier} if self.earlier else {})}

    def _emit(self, event: Dict[str, Any]) -> None:
        text = event_text(event)
        (logger.warning if event["state"] == "raised" else logger.info)(text)
        if self.notes is not None:
            self.notes.append(text)
        if self.jsonl is not None:
            print(json.dumps(event), file=self.jsonl)
            self.jsonl.flush()
        if self.records is not None:
            self.records.extra["drift"] = self._summary()
        if self.on_alarm is not None and event["state"] == "raised":
            self.on_alarm(text)

    def publish(self, res: Any, closed: List[Any]) -> None:
        """As the Publisher's observer: the end of the run (res None) writes the summary into the records."""
        if res is None:
            self.finish()

    def install_ack_signal(self) -> Callable[[], None]:
        """SIGUSR1 acknowledges the alarm in force (main thread only; POSIX); returns the undo."""
        import signal

        sig = getattr(signal, "SIGUSR1", None)
        if sig is None or threading.current_thread() is not threading.main_thread():
            return lambda: None
        previous = signal.signal(sig, lambda *_: self.watch.request_ack("SIGUSR1") if self.watch else None)
        return lambda: signal.signal(sig, previous)

    def finish(self) -> Dict[str, Any]:
        """The watch's summary with the cost per sample, for the run's stats."""
        ms = sorted(self.ms)
        summary = {**self._summary(), "ms_per_sample_median": round(ms[len(ms) // 2], 3) if ms else None}
        if self.records is not None:
            self.records.extra["drift"] = summary
        return summary


def open_drift(mode: str, model: Any, output: Callable[[Any], None], jsonl: Any = None, records: Any = None,
               ack_file: Optional[str] = None, on_alarm: Optional[Callable[[str], None]] = None,
               ) -> Optional[DriftStage]:
    """The drift stage for a run, or None (mode off, or a model without reference statistics: said, with the
    fix, and kept in the run's records: the station never claims a watch it does not have)."""
    where = getattr(model, "path", None) or getattr(model, "backend", "the model")
    if mode not in MODES:
        raise UserError(f"--drift {mode} is unknown; choose one of {', '.join(MODES)}")
    ref = reference_of(model.meta, str(where)) if mode != "off" else None
    if ref is None:
        why = ("--drift off" if mode == "off" else f"{where} carries no drift reference statistics; record them "
               f"with `python -m ds2a.inspect.drift_reference MODEL.onnx --source URI` or re-export/calibrate it")
        if mode != "off":
            logger.info(f"note: drift watch off: {why}")
        if records is not None:
            records.extra["drift"] = {"mode": "off", "why": why}
        return None
    watch = DriftWatch(ref, mode, ack_file=ack_file)
    stage = DriftStage(watch, output, model.meta.num_classes, jsonl, records, on_alarm=on_alarm, model=model)
    ack = f"kill -USR1 {os.getpid()}" + (f" or touch {ack_file}" if ack_file else "")
    logger.info(f"drift   {mode}: {ref.line()}; limits k={watch.k:g} h={watch.h:g}, back after {watch.recovery} "
                f"samples; acknowledge: {ack}")
    return stage
