"""The threaded loop: a slow model never falls behind a live source; files lose no frame;
corrupt frames are skipped; errors and stop() end every thread."""
from __future__ import annotations

import threading
import time
from typing import List, Optional

import numpy as np
import pytest
from fakes.segmenter import ThresholdSegmenter

from ds2a.errors import UserError
from ds2a.inspect.loop import InspectionLoop, LatestSlot, Result
from ds2a.inspect.rules import analyser, default_rules
from ds2a.sources import Frame, Source

CLASSES = ("background", "damage", "smudge", "dust")


class CounterSource(Source):
    """Frames whose pixels hold their index; live ones arrive every `period_s` like a camera."""

    def __init__(self, n: Optional[int], live: bool, period_s: float = 0.0, bad=()) -> None:
        super().__init__("test://counter")
        self.n, self.live, self.period_s, self.bad = n, live, period_s, set(bad)
        self.i = 0
        self.closed = False

    def read(self) -> Optional[Frame]:
        if self._stop.is_set() or (self.n is not None and self.i >= self.n):
            return None
        if self.period_s:
            time.sleep(self.period_s)
        level = min(self.i * 20, 255)
        image = np.zeros((0, 0), np.uint8) if self.i in self.bad else np.full((24, 32, 3), level, np.uint8)
        self.i += 1
        return self._frame(image, self.i - 1)

    def close(self) -> None:
        self.closed = True


class Collect:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.results: List[Result] = []
        self.delay_s = delay_s

    def __call__(self, res: Result) -> None:
        if self.delay_s:
            time.sleep(self.delay_s)
        self.results.append(res)


def _no_loop_threads_left() -> bool:
    time.sleep(0.05)
    return not [t for t in threading.enumerate() if t.name.startswith("ds2a-")]


def _loop(source, model, out, **kw) -> InspectionLoop:
    return InspectionLoop(source, model, analyser(default_rules(CLASSES), CLASSES), out, **kw)


def test_slow_model_never_falls_behind_a_fast_live_source():
    source = CounterSource(None, live=True, period_s=0.002)  # ~500 fps camera
    model = ThresholdSegmenter((16, 16), delay_s=0.04)  # ~25 fps model
    out = Collect()
    loop = _loop(source, model, out)
    stats = loop.run(duration=1.2)
    assert 10 <= stats.frames <= 40
    assert stats.dropped > 5 * stats.frames  # most camera frames are dropped, and counted
    assert stats.captured >= stats.frames + stats.dropped
    idx = [r.frame.index for r in out.results]
    assert idx == sorted(idx) and max(np.diff(idx)) > 5  # jumps over stale frames
    # each inspected frame was fresh: it waited at most about one model period, not a growing backlog
    waits = [r.ms["queue"] for r in out.results]
    assert max(waits[len(waits) // 2:]) < 300  # a backlog would grow to seconds
    assert stats.timings.samples["infer"] and min(stats.timings.samples["infer"]) >= 35
    assert source.closed


def test_file_source_processes_every_frame_in_order_with_a_slow_model():
    source = CounterSource(15, live=False)
    out = Collect()
    stats = _loop(source, ThresholdSegmenter((16, 16), delay_s=0.01), out, queue_size=2).run()
    assert stats.frames == 15 and stats.dropped == 0 and stats.stop_reason == "source ended"
    assert [r.frame.index for r in out.results] == list(range(15))
    assert [r.seq for r in out.results] == list(range(15))
    # frame i has gray level 20*i: dark (< 60) for i < 3: the fake model flags them as damage
    assert not out.results[0].passed and out.results[-1].passed
    assert all(set(r.ms) >= {"queue", "preprocess", "infer", "postprocess", "output", "latency"} for r in out.results)


def test_the_model_sees_only_the_region_of_interest():
    class Spot(CounterSource):
        """Bright frames with a dark 8x8 spot at (x=20, y=10): only a ROI holding it finds damage."""

        def read(self):
            f = super().read()
            if f is not None:
                f.image = np.full((48, 64, 3), 200, np.uint8)
                f.image[10:18, 20:28] = 0
                f.roi = (16, 8, 16, 16) if f.index == 1 else None  # the source's part box, frame 1 only
            return f

    rules = default_rules(CLASSES)
    rules.min_area_px = 0
    out = Collect()
    InspectionLoop(Spot(3, live=False), ThresholdSegmenter((16, 16)), analyser(rules, CLASSES), out).run()
    whole, boxed, _ = out.results
    assert whole.roi is None and boxed.roi == (16, 8, 16, 16)
    assert boxed.defects[0].bbox == (20, 10, 8, 8)  # found inside the box, reported in frame pixels
    wx, wy = whole.defects[0].bbox[:2]  # whole frame at 1/3-1/4 scale: the same spot, coarser
    assert abs(wx - 20) <= 4 and abs(wy - 10) <= 3
    # a fixed window without the spot overrides the source's box: nothing found
    out2 = Collect()
    InspectionLoop(Spot(3, live=False), ThresholdSegmenter((16, 16)), analyser(rules, CLASSES), out2,
                   roi=(40, 20, 20, 20)).run()
    assert all(r.passed and r.roi == (40, 20, 20, 20) for r in out2.results)


def test_frames_without_a_part_are_shown_but_not_inspected_when_the_source_locates_parts():
    class Conveyor(CounterSource):
        gives_roi = True

        def read(self):
            f = super().read()
            if f is not None and f.index % 3:
                f.roi, f.part_id = (0, 0, 16, 16), f"p{f.index // 3}"
            return f

    model = ThresholdSegmenter((16, 16))
    out = Collect()
    stats = _loop(Conveyor(9, live=False), model, out).run()
    assert stats.frames == 9 and stats.no_part == 3 and model.calls == 6
    assert [r.verdict for r in out.results][::3] == ["NONE"] * 3
    assert all(r.class_map is None and r.defects == [] for r in out.results[::3])
    assert len(stats.timings.samples["infer"]) == 6  # model-only FPS counts real inferences only


def test_corrupt_frames_are_recorded_as_not_inspected_and_counted():
    """A corrupt frame is never skipped silently: it reaches the outputs as NONE with the reason, so its
    part cannot PASS and the records show it."""
    out = Collect()
    stats = _loop(CounterSource(6, live=False, bad={1, 4}), ThresholdSegmenter((16, 16)), out).run()
    assert stats.frames == 6 and stats.corrupt == 2 and stats.inspected == 4
    assert [r.frame.index for r in out.results] == [0, 1, 2, 3, 4, 5]
    bad = [r for r in out.results if r.frame.index in (1, 4)]
    assert all(r.verdict == "NONE" and r.unreadable and r.in_view and r.frame.image.ndim == 3 for r in bad)
    assert all(r.verdict != "NONE" for r in out.results if r.frame.index not in (1, 4))


def test_a_region_smaller_than_the_minimum_defect_area_is_not_judged():
    """A 4x4 frame under a 64 px minimum area can never fail: NONE with the reason, never PASS."""
    out = Collect()
    source = CounterSource(2, live=False)
    loop = _loop(source, ThresholdSegmenter((16, 16)), out, min_region_px=64, roi=(0, 0, 4, 4))
    stats = loop.run()
    assert [r.verdict for r in out.results] == ["NONE", "NONE"] and stats.too_small == 2 and stats.inspected == 0
    assert "smaller than the rules' minimum defect area 64 px" in out.results[0].reasons[0]
    out2 = Collect()
    _loop(CounterSource(2, live=False), ThresholdSegmenter((16, 16)), out2, min_region_px=64, roi=(0, 0, 8, 8)).run()
    assert all(r.inspected and r.class_map is not None for r in out2.results)  # exactly the minimum area: judged


def test_max_frames_stops_an_endless_source():
    out = Collect()
    stats = _loop(CounterSource(None, live=False), ThresholdSegmenter((16, 16)), out, max_frames=7).run()
    assert stats.frames == 7 and stats.stop_reason == "max frames"
    assert _no_loop_threads_left()


def test_stop_from_another_thread_outputs_everything_already_inferred():
    model = ThresholdSegmenter((16, 16), delay_s=0.01)
    out = Collect(delay_s=0.02)  # slow output: results are queued when stop comes
    loop = _loop(CounterSource(None, live=False), model, out)
    threading.Timer(0.4, loop.stop, args=("test",)).start()
    stats = loop.run()
    assert stats.stop_reason == "test"
    assert stats.frames == len(out.results) == model.calls  # nothing inferred was lost
    assert stats.frames > 3 and _no_loop_threads_left()


def test_a_model_error_stops_all_threads_and_is_raised():
    class Broken(ThresholdSegmenter):
        def infer_batch(self, frames):
            if self.calls >= 3:
                raise RuntimeError("device lost")
            return super().infer_batch(frames)

    source = CounterSource(None, live=True, period_s=0.001)
    loop = _loop(source, Broken((16, 16)), Collect())
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="device lost"):
        loop.run()
    assert time.perf_counter() - t0 < 5 and source.closed
    assert _no_loop_threads_left()


def test_an_output_error_is_raised_even_when_the_queue_is_full():
    def boom(res):
        raise OSError("disk full")

    loop = _loop(CounterSource(None, live=False), ThresholdSegmenter((16, 16)), boom, output_queue_size=1)
    t0 = time.perf_counter()
    with pytest.raises(OSError, match="disk full"):
        loop.run()
    assert time.perf_counter() - t0 < 3 and _no_loop_threads_left()


def test_slow_output_behind_a_live_source_skips_drawing_not_records():
    out = Collect(delay_s=0.03)
    stats = _loop(CounterSource(None, live=True, period_s=0.001), ThresholdSegmenter((16, 16)), out,
                  output_queue_size=8).run(duration=1.0)
    assert stats.frames == len(out.results) > 5
    assert any(r.behind for r in out.results)


def test_latest_slot_keeps_only_the_newest():
    slot = LatestSlot()
    for i in range(5):
        slot.put(i)
    assert slot.get() == 4 and slot.dropped == 4
    slot.put(9)
    slot.close()
    assert slot.get() == 9
    assert slot.get() != 9  # closed and empty: the end marker


def test_a_roi_outside_the_frame_is_refused_not_replaced_by_the_whole_frame():
    out = Collect()
    loop = _loop(CounterSource(3, live=False), ThresholdSegmenter((16, 16)), out, roi=(40, 30, 20, 20))
    with pytest.raises(UserError, match="--roi 40,30,20,20 lies outside the 32x24 frame"):
        loop.run()
    assert out.results == [] and _no_loop_threads_left()  # not one frame was judged


def test_a_roi_reaching_past_the_frame_is_clipped_with_a_note():
    out = Collect()
    stats = _loop(CounterSource(3, live=False), ThresholdSegmenter((16, 16)), out, roi=(20, 10, 40, 40)).run()
    assert [r.roi for r in out.results] == [(20, 10, 12, 14)] * 3
    notes = [e for e in stats.events if "--roi 20,10,40,40 reaches past the 32x24 frame" in e]
    assert len(notes) == 1 and notes[0].endswith("20,10,12,14")
    inside = _loop(CounterSource(2, live=False), ThresholdSegmenter((16, 16)), Collect(), roi=(2, 2, 8, 8)).run()
    assert not [e for e in inside.events if "--roi" in e]  # a window inside the frame needs no note


@pytest.mark.parametrize("live, thread", [(False, "ds2a-capture"), (True, "ds2a-infer")])
def test_file_frames_are_resized_on_the_capture_thread_while_the_model_runs(monkeypatch, live, thread):
    """File sources: resizing overlaps inference (pipelined); live ones resize only the newest frame."""
    import ds2a.inspect.loop as loop_mod

    where: List[str] = []
    real = loop_mod.resize_frame

    def spy(image, size):
        where.append(threading.current_thread().name)
        return real(image, size)

    monkeypatch.setattr(loop_mod, "resize_frame", spy)
    out = Collect()
    stats = _loop(CounterSource(5, live=live, period_s=0.01 if live else 0.0), ThresholdSegmenter((16, 16)), out).run()
    assert stats.frames == len(where) >= 3 and set(where) == {thread}
    assert all(r.ms["preprocess"] >= 0 and r.ms["queue"] >= 0 for r in out.results)
