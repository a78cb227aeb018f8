"""Trigger and result handshake (`ds2a inspect --trigger URL`): every trigger gets exactly one answer.

The line says "part N is in view" (an MQTT message or a PLC's trigger coil; ds2a/notify/handshake_mqtt.py,
handshake_modbus.py; ds2a/notify/trigger_line.py ties one run to them). The TriggerLedger numbers each trigger
(1, 2, 3... per run), hands it to the TriggerSource (ds2a/sources/trigger.py) which takes one frame for it,
and holds it until its answer: PASS or FAIL from the part's verdict, or NONE with the reason when the part
cannot be judged (camera stalled, model away, no part in view, deadline passed, too many triggers waiting, run
ended). A watchdog answers NONE shortly before `--trigger-timeout`, so the NONE is on the wire before the
PLC's own deadline; a verdict that comes later is counted, never sent twice. Answers leave in trigger order,
so the line can match them by sequence number.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ..sources.trigger import Trigger

logger = logging.getLogger(__name__)

# why a trigger was answered NONE; the number is the Modbus reason register (deploy/README.md)
CAUSES = {"": 0, "stalled": 1, "model": 2, "deadline": 3, "no_part": 4, "busy": 5, "stopped": 6,
          "bad_trigger": 7, "lost": 8, "unreadable": 9, "too_small": 10, "id_mismatch": 11, "recipe": 12}
RESULT_CODES = {"PASS": 1, "FAIL": 2, "NONE": 3}  # Modbus result register; 0 = no result yet
MAX_PART_ID = 128


@dataclass
class Answer:
    """The one answer to one trigger."""

    trigger: Trigger
    verdict: str  # PASS, FAIL or NONE
    reasons: List[str]
    cause: str = ""  # for NONE: a key of CAUSES
    t_perf: float = 0.0
    frame_seq: Optional[int] = None  # the loop's seq of the frame judged, None when no frame was
    recipe: Optional[str] = None  # the recipe in force for the part (--recipes); None: it never reached the loop

    @property
    def latency_ms(self) -> float:
        return (self.t_perf - self.trigger.t_perf) * 1e3

    def message(self, run: Optional[int]) -> Dict[str, Any]:
        """The JSON result (MQTT PREFIX/result). `recipe` is the recipe the part was judged with (for a NONE, the
        one in force): null when its frame never reached the model or the station has no recipes (one model, one
        rules file); `recipe_asked` echoes the trigger's."""
        t = self.trigger
        return {"seq": t.seq, "part_id": t.part_id, "verdict": self.verdict, "reasons": list(self.reasons),
                "cause": self.cause or None, "recipe": self.recipe, "recipe_asked": t.recipe, "run": run,
                "frame_seq": self.frame_seq,
                "t_trigger": round(t.t_wall, 3), "latency_ms": round(self.latency_ms, 2)}


def parse_payload(payload: bytes) -> Tuple[str, Optional[str]]:
    """(part_id, recipe) from an MQTT trigger: a JSON object with part_id (and optionally recipe), a JSON
    string, or plain text (the part id itself). ValueError with the reason for anything else."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError("the trigger payload is not UTF-8 text") from None
    recipe = None
    try:
        data: Any = json.loads(text)
    except ValueError:
        data = text
    if isinstance(data, dict):
        part_id, recipe = data.get("part_id"), data.get("recipe")
        if recipe is not None and not isinstance(recipe, str):
            raise ValueError(f"recipe must be a string, not {json.dumps(recipe)[:40]}")
        if isinstance(part_id, bool) or not isinstance(part_id, (str, int)):
            raise ValueError("a JSON trigger needs part_id (a string or a whole number)")
        data = str(part_id)
    elif not isinstance(data, str):  # 12345 or 1.5 as JSON: the text as sent is the id
        data = text
    part_id = data.strip()
    if not part_id or len(part_id) > MAX_PART_ID or not part_id.isprintable():
        raise ValueError(f"the part id must be 1..{MAX_PART_ID} printable characters, got {part_id[:40]!r}")
    return part_id, recipe


class TriggerLedger:
    """Numbers triggers, queues them for the source, and sends each one answer, in order, in time."""

    def __init__(self, timeout_s: float, deliver: Callable[[Answer], None], max_waiting: int = 1000) -> None:
        self.timeout_s, self.deliver, self.max_waiting = float(timeout_s), deliver, int(max_waiting)
        self.guard_s = min(0.05, self.timeout_s / 10)  # the NONE leaves this early, to reach the PLC in time
        self._cond = threading.Condition()
        self._seq = 0
        self._queue: Deque[Trigger] = deque()  # waiting for the source
        self._pending: "OrderedDict[int, Trigger]" = OrderedDict()  # not yet answered
        self._ready: Dict[int, Answer] = {}  # answered, waiting for an earlier trigger's answer to go first
        self._next = 1  # the next seq to deliver
        self._closed = False
        self._recipe_warned = False
        self.recipes: Any = None  # the run's RecipeBook (ds2a/inspect/recipes.py): a named recipe starts opening
        self.counts: Dict[str, int] = {"triggers": 0, "PASS": 0, "FAIL": 0, "NONE": 0, "late_verdicts": 0}
        self.causes: Dict[str, int] = {}
        self.none_parts: List[Dict[str, Any]] = []  # the first 100 NONE answers, for the run's records
        self.latencies_ms: Deque[float] = deque(maxlen=10000)  # the latest: p50/p99 of a long run stay bounded
        self._watchdog = threading.Thread(target=self._watch, name="ds2a-trigger-watchdog", daemon=True)
        self._watchdog.start()

    # -- the line's side ------------------------------------------------------------------
    def add(self, part_id: Optional[str], recipe: Optional[str] = None, serial: Any = None,
            bad: str = "") -> Trigger:
        """A trigger as it arrives (any thread); `bad` (or no part id) answers it NONE at once."""
        now = time.perf_counter()
        with self._cond:
            self._seq += 1
            t = Trigger(self._seq, part_id, time.time(), now, now + self.timeout_s - self.guard_s, recipe, serial)
            self.counts["triggers"] += 1
            self._pending[t.seq] = t
            if recipe is not None and self.recipes is not None:
                self.recipes.prepare(recipe)  # opened and self-tested now; in force when this trigger is served
            elif recipe is not None and not self._recipe_warned:
                self._recipe_warned = True
                logger.warning(f"warning: trigger {t.seq} asks for recipe {recipe!r}; this station has no recipes and "
                               "judges every part with its one model and rules file (results say recipe null)")
            if bad or not part_id:
                self._answer(t, "NONE", [f"bad trigger: {bad or 'no part id'}"], "bad_trigger")
            elif self._closed:
                self._answer(t, "NONE", ["the station is stopping"], "stopped")
            elif len(self._queue) >= self.max_waiting:
                self._answer(t, "NONE", [f"station busy: {len(self._queue)} triggers already waiting"], "busy")
            else:
                self._queue.append(t)
            self._cond.notify_all()
            return t

    # -- the source's side ----------------------------------------------------------------
    def take(self, stop: threading.Event, after: Optional[Trigger] = None) -> Optional[Trigger]:
        """The oldest trigger not yet answered, once `after` (the one taken before) is answered; None once
        `stop` is set or the ledger is closed. One trigger in work at a time: a frame whose trigger was
        answered NONE at its deadline never queues up in front of the next part's (at most the one frame
        being inspected then is judged for the records only)."""
        with self._cond:
            while not stop.is_set() and not self._closed:
                if after is None or after.answered:
                    while self._queue and self._queue[0].answered:
                        self._queue.popleft()
                    if self._queue:
                        return self._queue.popleft()
                self._cond.wait(0.1)  # a trigger or an answer wakes it at once; the timeout notices `stop`
        return None

    # -- the verdict's side ---------------------------------------------------------------
    def answer(self, trigger: Trigger, verdict: str, reasons: List[str], cause: str = "",
               frame_seq: Optional[int] = None, recipe: Optional[str] = None) -> bool:
        """The part's verdict (or NONE); False when the trigger was already answered (a late verdict)."""
        with self._cond:
            if trigger.answered:
                if verdict != "NONE":
                    self.counts["late_verdicts"] += 1
                return False
            for t in list(self._pending.values()):  # frames go through the loop in order: an earlier
                if t.seq >= trigger.seq:  # trigger still inspecting lost its frame (unreadable, dropped)
                    break
                if t.state == "inspecting":
                    self._answer(t, "NONE", ["its frame was lost before a verdict (unreadable or dropped)"], "lost")
            self._answer(trigger, verdict, reasons, cause, frame_seq, recipe)
            return True

    def _answer(self, t: Trigger, verdict: str, reasons: List[str], cause: str = "",
                frame_seq: Optional[int] = None, recipe: Optional[str] = None) -> None:
        """Under the lock: record the answer, then deliver every answer whose turn has come."""
        t.answered, t.state = True, "answered"
        self._pending.pop(t.seq, None)
        self._cond.notify_all()  # the source waits for this answer before it takes the next trigger
        a = Answer(t, verdict, list(reasons), cause if verdict == "NONE" else "", time.perf_counter(), frame_seq,
                   recipe)
        self._ready[t.seq] = a
        self.counts[verdict] += 1
        if verdict == "NONE":
            self.causes[a.cause] = self.causes.get(a.cause, 0) + 1
            if len(self.none_parts) < 100:
                self.none_parts.append({"seq": t.seq, "part_id": t.part_id, "cause": a.cause, "reason": "; ".join(reasons)})
            n = self.counts["NONE"]
            if n == 1 or n % 100 == 0:
                logger.warning(f"ALARM   trigger {t.seq} ({t.part_id}) answered NONE: {'; '.join(reasons)} "
                               f"({n} NONE so far)")
        while self._next in self._ready:
            out = self._ready.pop(self._next)
            self._next += 1
            out.t_perf = time.perf_counter()  # handed over now: after any earlier trigger's answer
            self.latencies_ms.append(out.latency_ms)
            self.deliver(out)  # the endpoint only queues it: never blocks here

    def _watch(self) -> None:
        """NONE for every trigger whose give-up time has come, oldest first, with what it was waiting for."""
        with self._cond:
            while True:
                if self._closed and not self._pending:
                    return
                now = time.perf_counter()
                first = next(iter(self._pending.values()), None)
                if first is None:
                    self._cond.wait(0.5)
                    continue
                if first.give_up_at > now:
                    self._cond.wait(first.give_up_at - now)
                    continue
                self._answer(first, "NONE", [self._late_reason(first)], self._late_cause(first))

    def _late_cause(self, t: Trigger) -> str:
        return {"queued": "busy", "camera": "stalled"}.get(t.state, "deadline")

    def _late_reason(self, t: Trigger) -> str:
        limit = f"{self.timeout_s:g} s"
        if t.state == "queued":
            return (f"deadline {limit} passed before the station could take it (still busy with earlier triggers; "
                    f"{len(self._queue)} waiting)")
        if t.state == "camera":
            return f"no camera frame within {limit} of the trigger (camera stalled)"
        return f"no verdict within {limit} of the trigger (the model or the output is too slow)"

    def close(self, reason: str = "the run ended before a verdict") -> None:
        """Answer every trigger still open NONE (never silence), then stop the watchdog."""
        with self._cond:
            self._closed = True
            for t in list(self._pending.values()):
                self._answer(t, "NONE", [reason], "stopped")
            self._cond.notify_all()
        self._watchdog.join(timeout=2.0)

    def stats(self) -> Dict[str, Any]:
        lat = sorted(self.latencies_ms)
        pick = (lambda q: round(lat[max(0, math.ceil(q * len(lat)) - 1)], 2)) if lat else (lambda q: None)  # nearest rank
        return {**self.counts, "none_causes": dict(self.causes), "none_parts": list(self.none_parts),
                "timeout_s": self.timeout_s, "latency_ms": {"p50": pick(0.5), "p99": pick(0.99),
                                                            "max": round(lat[-1], 2) if lat else None}}
