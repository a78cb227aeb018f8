"""The live view: the Publisher's observer keeps a reference to the newest result; the picture is drawn
and JPEG-encoded only when a viewer asks for it, on the web server's thread, so the loop pays nothing
for the page (see benchmarks/results/web.md). When the run ends, the view keeps the run's summary for
the pages still open (ds2a/web/station.py waits briefly until they have seen it)."""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import cv2


class LiveView:
    """`publish(res, closed)` from the output thread; `jpeg()` and `state()` from the web thread."""

    def __init__(self, renderer: Any, max_width: int = 960, quality: int = 80, records: Any = None) -> None:
        self.renderer, self.max_width, self.quality = renderer, int(max_width), int(quality)
        self.records = records  # the run's writer: its run id says which run of the database this view shows
        self.classes: List[str] = list(getattr(renderer, "classes", []))
        self.palette: List[Tuple[int, int, int]] = list(getattr(renderer, "palette", []))  # the overlay's colours
        self._lock = threading.Lock()
        self._res: Any = None
        self._jpeg: Tuple[int, Optional[bytes]] = (-1, None)
        self._render_lock = threading.Lock()  # one drawing at a time, however many viewers
        self.running = True
        self.parts = self.passed = self.failed = self.none = self.frames = 0  # NONE is neither pass nor fail
        self.last_part: Dict[str, Any] = {}
        self._times: "collections.deque[float]" = collections.deque(maxlen=30)  # frame rate over the last frames
        self.viewers_last = 0.0  # monotonic time of the last picture served
        self.polled_last = 0.0  # monotonic time of the last state served
        self.shown: Optional[Dict[str, Any]] = None  # the frame of the last picture served: what viewers see
        self.ended: Optional[Dict[str, Any]] = None  # the run's summary once it ended
        self.end_seen = False  # a viewer was told that the run ended
        self._alarm: Optional[Tuple[float, str]] = None  # (time, text) until acknowledged on the page
        self._alarms = 0  # alarms since the last acknowledgement

    @property
    def run_id(self) -> Optional[int]:
        return getattr(self.records, "run_id", None)

    def publish(self, res: Any, closed: List[Any]) -> None:
        with self._lock:
            if res is not None:
                self._times.append(time.monotonic())
                self._res = res
                self.frames += 1
            for pv in closed:
                self.parts += 1
                self.passed += pv.verdict == "PASS"
                self.failed += pv.verdict == "FAIL"
                self.none += pv.verdict == "NONE"
                self.last_part = {"part_id": pv.part_id, "verdict": pv.verdict, "reasons": list(pv.reasons)}
                if pv.verdict == "NONE":  # an unsure station is never silent: the page asks for an acknowledgement
                    self._raise(f"part {pv.part_id} could not be judged (NONE): "
                                f"{'; '.join(pv.reasons) or 'no reason recorded'}")

    def _raise(self, text: str) -> None:
        self._alarm, self._alarms = (time.time(), str(text)[:500]), self._alarms + 1

    def raise_alarm(self, text: str) -> None:
        """An alarm on the page (kept until a viewer with the right acknowledges it: ds2a/web/actions.py)."""
        with self._lock:
            self._raise(text)

    def alarm_state(self) -> Dict[str, Any]:
        with self._lock:
            return self._alarm_dict()

    def _alarm_dict(self) -> Dict[str, Any]:
        a = self._alarm
        return {"active": a is not None, "t": None if a is None else a[0], "text": None if a is None else a[1],
                "count": self._alarms}

    def acknowledge(self) -> None:
        with self._lock:
            self._alarm, self._alarms = None, 0

    def close(self, ended: Optional[Dict[str, Any]] = None) -> None:
        """The run ended; `ended` (status and counts, as `ds2a report` gives them) is what open pages show."""
        with self._lock:
            self.ended = dict(ended or {"run": self.run_id, "status": None, "parts": self.parts,
                                        "pass": self.passed, "fail": self.failed, "none": self.none,
                                        "frames": self.frames})
            self.running = False

    def state(self) -> Dict[str, Any]:
        with self._lock:
            res = self._res
            self.polled_last = time.monotonic()
            self.end_seen = self.end_seen or not self.running
            return {
                "running": self.running, "run": self.run_id, "ended": self.ended,
                "seq": -1 if res is None else res.seq, "frames": self.frames,
                "verdict": None if res is None else res.verdict, "part_id": None if res is None else res.frame.part_id,
                "reasons": [] if res is None else list(res.reasons), "fps": round(self._rate(), 1),
                "parts": self.parts, "pass": self.passed, "fail": self.failed, "none": self.none,
                "last_part": dict(self.last_part), "shown": None if self.shown is None else dict(self.shown),
                "alarm": self._alarm_dict(),
            }

    def _rate(self) -> float:
        t = self._times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else 0.0

    def jpeg(self) -> Optional[bytes]:
        """The newest annotated frame as JPEG (cached per frame); None before the first frame."""
        with self._render_lock:
            with self._lock:
                res = self._res
                seq, cached = self._jpeg
            if res is None:
                return None
            self.viewers_last = time.monotonic()
            with self._lock:  # the page's "in view" line describes this picture, not a newer frame
                self.shown = {"seq": res.seq, "part_id": res.frame.part_id, "verdict": res.verdict,
                              "reasons": list(res.reasons)}
            if seq == res.seq and cached is not None:
                return cached
            image = self.renderer.render(res.frame.image, res.class_map, res.passed, res.reasons, res.defects,
                                         self._rate() or None, res.frame.part_id, res.roi)
            h, w = image.shape[:2]
            if w > self.max_width:
                image = cv2.resize(image, (self.max_width, int(round(h * self.max_width / w))),
                                   interpolation=cv2.INTER_AREA)
            ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
            data = buf.tobytes() if ok else None
            with self._lock:
                self._jpeg = (res.seq, data)
            return data
