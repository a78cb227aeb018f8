"""The inspection loop: capture | infer | output on three threads joined by bounded queues.

The model thread never waits on I/O: capture runs ahead of it and drawing, encoding and
database writes run behind it. A live source hands over only its newest frame (older ones
are dropped and counted) so verdicts never fall behind the line; a file source hands over
every frame and capture simply waits when the model is slower.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from ..errors import UserError
from ..preprocess import resize_frame
from ..runtime import ModelUnavailable
from ..sources import Frame, Source
from ..timing import Stopwatch
from .quantify import Defect

STAGES = ("capture", "queue", "preprocess", "infer", "postprocess", "output", "latency")
_END = object()


@dataclass
class Result:
    """One inspected frame on its way to the outputs."""

    seq: int  # order of processing (0, 1, 2, ...), unlike frame.index which has gaps after drops
    frame: Frame
    class_map: Optional[np.ndarray]  # uint8 at model size; None when not inspected
    defects: List[Defect]
    passed: bool
    reasons: List[str]
    ms: Dict[str, float] = field(default_factory=dict)
    roi: Optional[Tuple[int, int, int, int]] = None  # x, y, w, h the model looked at; None = whole frame
    behind: bool = False  # the output thread is behind a live source: draw nothing, record everything
    inspected: bool = True  # False: not judged (no part in view, model unavailable, unreadable, too small)
    in_view: bool = True  # False: the source said no part is in view (reasons empty); else the frame is a part's
    recipe: Optional[str] = None  # the recipe that judged it (--recipes, ds2a/inspect/recipes.py); None without
    recipe_sha256: Optional[str] = None

    @property
    def verdict(self) -> str:
        return "NONE" if not self.inspected else "PASS" if self.passed else "FAIL"

    @property
    def unreadable(self) -> bool:
        """The source gave no usable image (its picture here is a grey placeholder)."""
        return UNREADABLE in self.reasons


@dataclass
class LoopStats:
    """What the run did, for the summary table, the database and the benchmark."""

    frames: int = 0
    captured: int = 0
    dropped: int = 0
    corrupt: int = 0
    no_part: int = 0  # frames with no part in view (sources with part boxes): not inspected
    inspected: int = 0  # frames the model judged (PASS or FAIL); the rest are NONE
    too_small: int = 0  # frames whose inspected region is smaller than the rules' minimum defect area: NONE
    model_away: int = 0  # frames dropped while a served model was unreachable: not inspected, also in dropped
    reconnects: int = 0
    wall_s: float = 0.0
    stop_reason: str = ""
    cpu_s: Dict[str, float] = field(default_factory=dict)  # thread CPU seconds per thread
    cpu_model_s: float = 0.0  # CPU of the infer thread while inside model.infer
    timings: Stopwatch = field(default_factory=Stopwatch)
    events: List[str] = field(default_factory=list)

    @property
    def e2e_fps(self) -> float:
        """End-to-end frames per second: frames fully output / wall time from first capture to last output."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def model_fps(self) -> float:
        """Model-only frames per second: 1000 / mean time inside model.infer during the run."""
        s = self.timings.samples.get("infer", [])
        return 1000.0 * len(s) / sum(s) if s and sum(s) > 0 else 0.0

    def to_dict(self) -> Dict[str, Any]:
        return {"frames": self.frames, "captured": self.captured, "dropped": self.dropped,
                "corrupt": self.corrupt, "no_part": self.no_part, "model_away": self.model_away,
                "inspected": self.inspected, "too_small": self.too_small,
                "reconnects": self.reconnects,
                "wall_s": round(self.wall_s, 3),
                "e2e_fps": round(self.e2e_fps, 2), "model_fps": round(self.model_fps, 2),
                "stop_reason": self.stop_reason, "cpu_s": {k: round(v, 4) for k, v in self.cpu_s.items()},
                "cpu_model_s": round(self.cpu_model_s, 4), "timings": self.timings.summary()}


class LatestSlot:
    """A one-frame mailbox: a new frame replaces an unread one (counted as dropped)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._has = False
        self._closed = False
        self.dropped = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._has:
                self.dropped += 1
            self._item, self._has = item, True
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def get(self) -> Any:
        """The newest frame, or _END once closed and empty."""
        with self._cond:
            while not self._has and not self._closed:
                self._cond.wait()
            if not self._has:
                return _END
            item, self._item, self._has = self._item, None, False
            return item


Region = Tuple[int, int, int, int]  # x, y, w, h in frame pixels
_PLACEHOLDER = np.full((48, 64, 3), 96, np.uint8)  # what the outputs show for an unreadable frame


@dataclass
class _Prepared:
    """A frame cropped and resized for the model (small None: not inspected, `why` says why; no
    `why`: no part in view)."""

    small: Optional[np.ndarray]
    region: Region
    roi: Optional[Region]
    preprocess_ms: float
    why: str = ""
    generation: int = 0  # the recipe it was prepared for: a frame prepared ahead of a changeover is prepared again


UNREADABLE = "not inspected: unreadable or corrupt image"
Analyse = Callable[[np.ndarray, Optional[np.ndarray], Region], Tuple[List[Defect], bool, List[str]]]


def clip_roi(roi: Optional[Region], frame_hw: Tuple[int, int]) -> Optional[Region]:
    """The part of `roi` inside the frame; None for the whole frame (no ROI, or it covers the frame).

    UserError when less than 2x2 pixels of the window lie in the frame: inspecting the whole
    frame instead would judge something the operator did not ask for.
    """
    if roi is None:
        return None
    fh, fw = frame_hw
    x0, y0 = max(0, int(roi[0])), max(0, int(roi[1]))
    x1, y1 = min(fw, int(roi[0] + roi[2])), min(fh, int(roi[1] + roi[3]))
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise UserError(f"--roi {','.join(map(str, roi))} lies outside the {fw}x{fh} frame; give a window "
                        f"inside it (X+W <= {fw}, Y+H <= {fh}) or leave --roi out to inspect the whole frame")
    if (x0, y0, x1, y1) == (0, 0, fw, fh):
        return None
    return x0, y0, x1 - x0, y1 - y0


class InspectionLoop:
    """Runs source -> model -> analyse -> output until the source ends, max_frames, or stop().

    The model sees `roi` (a fixed inspection window) if given, else the part box the source
    reports (demo://), else the whole frame. Every frame that reaches the station becomes one
    Result, judged or not: an unreadable frame is a NONE result, never a silent skip, and a region
    smaller than `min_region_px` (where no defect could reach the rules' minimum area) is not judged.

    With `recipes` (a started RecipeBook, ds2a/inspect/recipes.py) model, analysis, window and minimum
    region are the recipe in force's, and they change only on this thread, before a frame that starts a
    part (`boundary`), so that no part is judged by two recipes.
    """

    def __init__(self, source: Source, model: Any, analyse: Analyse, output: Callable[[Result], None],
                 max_frames: Optional[int] = None, queue_size: int = 4, output_queue_size: int = 8,
                 roi: Optional[Region] = None, min_region_px: float = 0.0, recipes: Any = None,
                 boundary: Any = None) -> None:
        self.source, self.model, self.analyse, self.output = source, model, analyse, output
        self.max_frames, self.roi, self.min_region_px = max_frames, roi, float(min_region_px)
        self.recipes, self.boundary = recipes, boundary
        self.active: Any = None
        if recipes is not None:
            self._use(recipes.active)
        self._view = (0, self.roi, tuple(self.model.input_size))  # generation, window, model size: one read
        self.stats = LoopStats()
        self._stop = threading.Event()
        self._abort = threading.Event()
        self._capture_done = threading.Event()
        self._in: Any = LatestSlot() if source.live else queue.Queue(maxsize=queue_size)
        self._out: "queue.Queue[Any]" = queue.Queue(maxsize=output_queue_size)
        self._errors: List[BaseException] = []
        self._model_away = False
        self._t_first: Optional[float] = None
        self._t_last: Optional[float] = None
        self.notes: List[str] = []  # things the operator should know, printed with the summary
        self._clipped: set = set()  # frame sizes for which the --roi clipping note was given

    # -- control -------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Finish cleanly: stop capturing, process and record what is already queued. Any thread."""
        if not self._stop.is_set():
            self.stats.stop_reason = self.stats.stop_reason or reason
            self._stop.set()
            self.source.stop()
            if isinstance(self._in, LatestSlot):
                self._in.close()  # wake the model thread even if the camera never sends again

    def abort(self, reason: str = "aborted") -> None:
        """Stop now: drop queued frames (what was already output stays recorded)."""
        self._abort.set()
        self.stop(reason)

    # -- threads -------------------------------------------------------------------------
    def _guard(self, name: str, body: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            c0 = time.thread_time()
            try:
                body()
            except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                self._errors.append(exc)
                self.stop(f"error in {name} thread")
                self._abort.set()
            finally:
                self.stats.cpu_s[name] = time.thread_time() - c0
        return run

    def _use(self, active: Any) -> None:
        """The recipe `active` judges from the next frame on (this thread, or before the threads start)."""
        self.active = active
        self.model, self.analyse, self.roi, self.min_region_px = (active.model, active.analyse, active.roi,
                                                                  float(active.min_region_px))
        self._view = (active.generation, self.roi, tuple(self.model.input_size))

    def _capture(self) -> None:
        sw = self.stats.timings
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                frame = self.source.read()
                if frame is None:
                    self.stop("source ended")
                    break
                sw.add("capture", (time.perf_counter() - t0) * 1e3)
                self.stats.captured += 1
                if isinstance(self._in, LatestSlot):
                    self._in.put(frame)
                else:  # every frame of a file is inspected: resize it here, while the model runs
                    item = (frame, self._prepare(frame, self._view))
                    while not self._stop.is_set():
                        try:
                            self._in.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue
        finally:
            self.source.close()
            self._capture_done.set()
            if isinstance(self._in, LatestSlot):
                self._in.close()
            else:
                try:
                    self._in.put_nowait(_END)  # when full, the model thread sees _capture_done instead
                except queue.Full:
                    pass

    def _put_end(self, q: "queue.Queue[Any]") -> None:
        while True:
            try:
                q.put(_END, timeout=0.1)
                return
            except queue.Full:
                if self._abort.is_set():
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass

    def _take(self) -> Any:
        """Next frame for the model, or _END when capture has finished and nothing is left."""
        if isinstance(self._in, LatestSlot):
            return self._in.get()
        while True:
            try:
                return self._in.get(timeout=0.05)
            except queue.Empty:
                if self._capture_done.is_set() and self._in.empty():
                    return _END

    def _prepare(self, frame: Frame, view: Tuple[int, Optional[Region], Tuple[int, ...]],
                 count: bool = True) -> _Prepared:
        """Crop to the region and resize to the model size (`why` set for a corrupt frame); `view` is the
        recipe's (generation, window, model size).

        Runs on the capture thread for file sources (pipelined with the model), on the model
        thread for live ones (only the newest frame is worth resizing).
        """
        gen, window, size = view
        t0 = time.perf_counter()
        image = frame.image
        if image is None or not getattr(image, "size", 0):
            self.stats.corrupt += int(count)
            return _Prepared(None, (0, 0, 0, 0), None, 0.0, UNREADABLE, gen)
        if window is None and self.source.gives_roi and frame.roi is None:  # no part in view
            return _Prepared(None, (0, 0, 0, 0), None, 0.0, generation=gen)
        roi = clip_roi(window or frame.roi, image.shape[:2])  # UserError: --roi is outside the frame
        if window is not None and (image.shape[:2], window) not in self._clipped:
            self._note_clip(image.shape[:2], roi, window)
        try:
            if roi is not None:
                x, y, w, h = roi
                image = image[y:y + h, x:x + w]
            region = roi or (0, 0, image.shape[1], image.shape[0])
            small = resize_frame(image, size)  # type: ignore[arg-type]
        except (ValueError, TypeError, IndexError, cv2.error):  # odd shape or type
            self.stats.corrupt += int(count)
            return _Prepared(None, (0, 0, 0, 0), None, 0.0, UNREADABLE, gen)
        return _Prepared(small, region, roi, (time.perf_counter() - t0) * 1e3, generation=gen)

    def _inspect(self, frame: Frame, prep: _Prepared, seq: int, queue_ms: float) -> Result:
        """One prepared frame through the model and the analysis."""
        sw = self.stats.timings
        ms = {"queue": max(0.0, queue_ms)}
        if prep.small is None and prep.why:  # unreadable: recorded as NONE for its part, drawn as a grey frame
            image = frame.image if getattr(frame.image, "ndim", 0) == 3 and frame.image.size else _PLACEHOLDER
            shown = dataclasses.replace(frame, image=image)
            return Result(seq, shown, None, [], False, [prep.why], ms, None, inspected=False)
        if prep.small is None:
            self.stats.no_part += 1
            return Result(seq, frame, None, [], True, [], ms, None, inspected=False, in_view=False)
        small, region, roi = prep.small, prep.region, prep.roi
        if region[2] * region[3] < self.min_region_px:  # no region could reach the minimum area: cannot fail
            self.stats.too_small += 1
            why = (f"not inspected: the inspected region is {region[2]}x{region[3]} px, smaller than the rules' "
                   f"minimum defect area {self.min_region_px:g} px, so no defect could be found")
            return Result(seq, frame, None, [], False, [why], ms, roi, inspected=False)
        t1 = time.perf_counter()
        c1 = time.thread_time()
        try:
            out = self.model.infer(small)
        except ModelUnavailable as exc:  # a served model is away: dropped, recorded as not inspected, never PASS
            if not self._model_away:
                self.notes.append(f"{time.strftime('%H:%M:%S')} model unavailable: {exc}")
            self.stats.model_away += 1
            self._model_away = True
            return Result(seq, frame, None, [], False, [f"not inspected: {exc}"], ms, None, inspected=False)
        if self._model_away:
            self._model_away = False
            self.notes.append(f"{time.strftime('%H:%M:%S')} model back after {self.stats.model_away} dropped frame(s)")
        self.stats.cpu_model_s += time.thread_time() - c1
        t2 = time.perf_counter()
        defects, passed, reasons = self.analyse(out.class_map, out.confidence, region)
        t3 = time.perf_counter()
        ms.update(preprocess=prep.preprocess_ms, infer=(t2 - t1) * 1e3, postprocess=(t3 - t2) * 1e3)
        for k in ("queue", "preprocess", "infer", "postprocess"):
            sw.add(k, ms[k])
        self.stats.inspected += 1
        return Result(seq, frame, out.class_map, defects, passed, reasons, ms, roi)

    def _recipe_for(self, frame: Frame, prep: _Prepared, seq: int) -> Tuple[_Prepared, str]:
        """Before a frame: at a part boundary, the recipe the frame's trigger asks for (waiting for it until the
        trigger's deadline), else any changeover that is ready. Returns the frame prepared for the recipe in
        force and, when the trigger's recipe cannot judge it, why."""
        trigger = getattr(frame, "trigger", None)
        wanted = getattr(trigger, "recipe", None)
        in_view = not (prep.small is None and not prep.why)
        if self.boundary.free(self.active.rules, in_view, frame.part_id):
            wait_s = max(0.0, trigger.give_up_at - time.perf_counter()) if wanted is not None else 0.0
            new, refused = self.recipes.at_boundary(wanted, wait_s)
            if refused:
                return prep, refused
            if new is not None:
                self.recipes.mark(seq, new)  # before this frame is output: the tracker stamps its part with `new`
                self._use(new)
                self.boundary.reset()
        if prep.generation != self.active.generation:  # prepared ahead for the recipe before: again, for this one
            prep = self._prepare(frame, self._view, count=False)
        return prep, ""

    def _note_clip(self, frame_hw: Tuple[int, int], roi: Optional[Region], window: Region) -> None:
        """Say once per frame size when --roi reaches past the frame and only its inside is inspected."""
        self._clipped.add((frame_hw, window))
        x, y, w, h = window
        got = roi or (0, 0, frame_hw[1], frame_hw[0])
        if got != (x, y, w, h):
            self.notes.append(f"note: --roi {x},{y},{w},{h} reaches past the {frame_hw[1]}x{frame_hw[0]} frame; "
                              f"inspecting its part inside the frame, {','.join(map(str, got))}")

    def _infer(self) -> None:
        seq = 0
        try:
            while not self._abort.is_set():
                item = self._take()
                if item is _END:
                    break
                t_take = time.perf_counter()
                if isinstance(item, tuple):  # prepared on the capture thread
                    frame, prep = item
                    ahead = prep.preprocess_ms
                else:
                    frame, prep, ahead = item, self._prepare(item, self._view), 0.0
                refused = ""
                if self.recipes is not None:
                    prep, refused = self._recipe_for(frame, prep, seq)
                queue_ms = (time.perf_counter() if refused else t_take) - frame.t_perf
                if refused:  # the trigger asked for a recipe that cannot judge it: NONE, never another recipe's PASS
                    res = Result(seq, frame, None, [], False, [f"not inspected: {refused}"], {"queue": queue_ms * 1e3},
                                 None, inspected=False)
                else:
                    res = self._inspect(frame, prep, seq, queue_ms * 1e3 - ahead)
                if self.active is not None:
                    res.recipe, res.recipe_sha256 = self.active.name, self.active.sha256
                    self.boundary.after(self.active.rules, res.in_view, frame.part_id)
                seq += 1
                while not self._abort.is_set():  # blocks only on a slow output; abort frees it
                    try:
                        self._out.put(res, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.max_frames is not None and seq >= self.max_frames:
                    self.stop("max frames")
                    break
        finally:
            self._put_end(self._out)
            if isinstance(self._in, LatestSlot):
                self.stats.dropped = self._in.dropped
            self.stats.dropped += self.stats.model_away

    def _output(self) -> None:
        sw = self.stats.timings
        while True:
            res = self._out.get()
            if res is _END:
                break
            if self._abort.is_set() and self._errors:
                continue
            res.behind = self.source.live and self._out.qsize() > 1
            t0 = time.perf_counter()
            self.output(res)
            t1 = time.perf_counter()
            # an output that records its own times (Publisher, before they go to the database) keeps them,
            # so the summary's table and the database hold the same numbers
            res.ms.setdefault("output", (t1 - t0) * 1e3)
            res.ms.setdefault("latency", (t1 - res.frame.t_perf) * 1e3)
            sw.add("output", res.ms["output"])
            sw.add("latency", res.ms["latency"])
            if self._t_first is None:
                self._t_first = res.frame.t_perf
            self._t_last = t1
            self.stats.frames += 1

    # -- run -----------------------------------------------------------------------------
    def run(self, duration: Optional[float] = None) -> LoopStats:
        """Run to the end (or `duration` seconds); re-raises the first error of any thread."""
        threads = [threading.Thread(target=self._guard(n, f), name=f"ds2a-{n}", daemon=True)
                   for n, f in (("capture", self._capture), ("infer", self._infer), ("output", self._output))]
        t0 = time.perf_counter()
        c0 = time.thread_time()
        for t in threads:
            t.start()
        deadline = None if duration is None else t0 + duration
        while threads[-1].is_alive():  # the output thread ends last, after everything was recorded
            if deadline is not None and time.perf_counter() >= deadline:
                self.stop("duration reached")
                deadline = None
            threads[-1].join(timeout=0.25)  # signals still interrupt the wait
        for t in threads[:-1]:  # a camera blocked in read() gets a moment, then is left (daemon)
            t.join(timeout=3.0)
        self.stats.cpu_s["main"] = time.thread_time() - c0
        st = self.stats
        st.reconnects, st.corrupt = self.source.stats.reconnects, st.corrupt + self.source.stats.corrupt
        st.events = self.notes + list(self.source.stats.events)
        if self._t_first is not None and self._t_last is not None:
            st.wall_s = self._t_last - self._t_first
        if self._errors:
            raise self._errors[0]
        return st
