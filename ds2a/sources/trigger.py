"""A source driven by the line: one frame per trigger, carrying the part id the trigger named.

The line (a PLC over Modbus TCP, or MQTT: ds2a/notify/handshake.py) says when a part is in view
and which part it is. For each trigger this source hands the inspection loop exactly one frame:
from a camera (a live source) the first frame captured after the trigger arrived, from files
(an image folder, a video) simply the next frame. The frame carries its Trigger, so the loop,
the records and the answer to the line all name the triggered part, and each trigger is one
part of one frame. The source never decides a verdict: a trigger for which no frame comes in
time is answered NONE by the trigger ledger at its deadline, and this source moves on.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Optional

from .base import Frame, Source


@dataclass
class Trigger:
    """One "part N is in front of you" from the line; `seq` counts 1, 2, 3... per run in arrival order."""

    seq: int
    part_id: Optional[str]  # None: the trigger named no readable part (answered NONE at once)
    t_wall: float  # time.time() when the station saw it
    t_perf: float  # time.perf_counter() when the station saw it: latency is measured from here
    give_up_at: float  # perf_counter time by which a NONE goes out if no verdict has
    recipe: Optional[str] = None
    serial: Any = None  # what the PLC wrote (Modbus registers), echoed back with the result
    state: str = "queued"  # queued -> camera (waiting for a frame) -> inspecting -> answered
    answered: bool = False


@dataclass
class TriggeredFrame(Frame):
    """A camera frame taken for one trigger; `part_id` is the trigger's."""

    trigger: Optional[Trigger] = None


class TriggerSource(Source):
    """Wraps a camera (or file) source; `triggers` is the line's ledger: `take(stop, after)` gives the next
    Trigger once `after` is answered (None once stopped), in arrival order (ds2a/notify/handshake.py
    TriggerLedger), so one trigger is in work at a time."""

    live = False  # every triggered frame is inspected, in order: never the newest-frame-only slot
    gives_parts = True
    REMEMBER = 100000  # part ids (about 10 MB): a retry is recognised within this many parts

    def __init__(self, camera: Source, triggers: Any) -> None:
        super().__init__(camera.uri)
        self.camera, self.triggers = camera, triggers
        self.gives_roi = camera.gives_roi  # demo://'s part box still locates the part in the frame
        self.fps, self.frame_hw = camera.fps, camera.frame_hw
        self.stats = camera.stats  # reconnects and events of the camera reach the run's summary
        self._cond = threading.Condition()
        self._newest: Optional[Frame] = None
        self._ended = False
        self._error: Optional[BaseException] = None
        self._grabber: Optional[threading.Thread] = None
        self._count = 0
        self._last: Optional[Trigger] = None  # the trigger in work: the next is taken once it is answered
        self._seen: "OrderedDict[str, int]" = OrderedDict()  # part id -> times triggered

    def read(self) -> Optional[Frame]:
        """The frame for the next trigger; None when stopped or the camera has ended."""
        if self.camera.live and self._grabber is None:
            self._grabber = threading.Thread(target=self._grab, name="ds2a-trigger-camera", daemon=True)
            self._grabber.start()
        while not self._stop.is_set():
            trigger = self.triggers.take(self._stop, self._last)
            if trigger is None:
                return None
            self._last = trigger
            frame = self._live_frame(trigger) if self.camera.live else self.camera.read()
            if self._error is not None:
                raise self._error
            if frame is None:
                if self._ended or not self.camera.live:
                    return None  # the camera or the file has ended: the ledger answers what is left at close
                continue  # no frame in time: the ledger has answered NONE; next trigger
            trigger.state = "inspecting"
            self._count += 1
            return TriggeredFrame(image=frame.image, index=self._count - 1, t_wall=frame.t_wall, t_perf=frame.t_perf,
                                  part_id=self._record_id(trigger.part_id), name=frame.name, roi=frame.roi,
                                  trigger=trigger)
        return None

    def _record_id(self, part_id: Optional[str]) -> Optional[str]:
        """The id the records use: the trigger's, or ID#2, ID#3... when the line triggers the same part
        again (a retry), so each triggered part keeps its own verdict (docs/ARCHITECTURE.md, invariant 1).
        The answer to the line echoes the id as sent. Remembers the latest `REMEMBER` ids."""
        if part_id is None:
            return None
        n = self._seen.pop(part_id, 0) + 1
        self._seen[part_id] = n  # now the newest
        if len(self._seen) > self.REMEMBER:
            self._seen.popitem(last=False)
        return part_id if n == 1 else f"{part_id}#{n}"

    def _live_frame(self, trigger: Trigger) -> Optional[Frame]:
        """The first camera frame captured after the trigger arrived; None if the trigger is answered
        (its deadline passed: camera stalled) or the camera ended first."""
        trigger.state = "camera"
        with self._cond:
            while not self._stop.is_set() and not trigger.answered:
                frame = self._newest
                if frame is not None and frame.t_perf >= trigger.t_perf:
                    return frame
                if self._ended:
                    return None
                self._cond.wait(0.02)  # a new frame wakes it at once; the timeout notices the deadline
        return None

    def _grab(self) -> None:
        """Keeps the newest camera frame, so a trigger waits at most one frame interval."""
        try:
            while not self._stop.is_set():
                frame = self.camera.read()
                with self._cond:
                    if frame is None:
                        break
                    self._newest = frame
                    self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - raised on the loop's capture thread by read()
            self._error = exc
        finally:
            self.camera.close()
            with self._cond:
                self._ended = True
                self._cond.notify_all()
            self._stop.set()  # the camera has ended: read() stops waiting for triggers, the run ends

    def stop(self) -> None:
        super().stop()
        self.camera.stop()
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        self.stop()
        if self._grabber is None:
            self.camera.close()
        else:
            self._grabber.join(timeout=3.0)  # a camera blocked in read() is left to its daemon thread
