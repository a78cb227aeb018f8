"""The drift watch (ds2a/inspect/drift.py, docs/DRIFT.md): reference statistics in the model's metadata, the
CUSUM test on a running inspection, the JSON alarm, --drift stop/warn/off, recovery and acknowledgement.

End-to-end runs use the threshold ONNX of tests/fakes (32x32, so hundreds of frames take seconds) with a
reference recorded from one demo conveyor seed and inspected on another; the drift is injected by wrapping
the demo source, as a camera would see it (whole frame darker, blurred, colour-shifted).
"""
from __future__ import annotations

import io
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import Callable, Dict, List, Optional

import cv2
import numpy as np
import pytest
from fakes.onnx_models import threshold_onnx

from ds2a.data.picture_stats import DRIFT_KEY, Reference, reference_of
from ds2a.errors import UserError
from ds2a.export.metadata import attach_drift_reference_file, attach_golden_file, load_onnx, read_meta
from ds2a.inspect import drift as drift_mod
from ds2a.inspect import run as run_mod
from ds2a.inspect.drift import DriftWatch
from ds2a.inspect.drift_reference import line_frames
from ds2a.inspect.run import InspectOptions, inspect
from ds2a.sources import open_source
from ds2a.sources.demo import DemoSource
from ds2a.sources.uri import parse_source

DEMO = "demo://?frames={n}&width=320&height=180&speed=24&seed={seed}"
# Frames from drift onset to alarm that the tests allow. Measured here (deterministic: seeded source, fixed model):
# darker 54, blurred 44, colour-shifted 25; the demo model on the full conveyor: docs/DRIFT.md
ALARM_WITHIN = 60


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """The threshold ONNX with golden frames and a drift reference from 60 parts of demo seed 100."""
    path = threshold_onnx(tmp_path_factory.mktemp("drift") / "thr.onnx")
    attach_golden_file(path, [np.full((32, 32, 3), v, np.uint8) for v in (20, 200)], "test levels")
    frames = line_frames(open_source(DEMO.format(n=600, seed=100)), (32, 32), 60)
    attach_drift_reference_file(path, frames, "demo seed 100")
    return path


class Injected(DemoSource):
    """demo:// whose camera picture is changed by `change` on frames [start, stop) (a drift with onset and end)."""

    def __init__(self, uri: str, change: Callable[[np.ndarray], np.ndarray], start: int = 0,
                 stop: Optional[int] = None, at: Optional[Dict[int, Callable[[], None]]] = None) -> None:
        super().__init__(uri, **parse_source(uri).options)
        self.change, self.start, self.stop_at, self.at = change, start, stop, at or {}

    def read(self):
        frame = super().read()
        if frame is not None:
            if self.start <= frame.index and (self.stop_at is None or frame.index < self.stop_at):
                frame.image = self.change(frame.image)
            if frame.index in self.at:
                self.at[frame.index]()
        return frame


DARKER = lambda im: (im * 0.6).astype(np.uint8)  # noqa: E731
BLURRED = lambda im: cv2.GaussianBlur(im, (0, 0), 12.0)  # noqa: E731  (the 32x32 model sees 1/4 of the camera)
COLOUR = lambda im: np.clip(im * np.array([0.8, 1.0, 1.2]), 0, 255).astype(np.uint8)  # noqa: E731


def _run(model: Path, monkeypatch, source=None, n: int = 300, seed: int = 7, **kw) -> List[dict]:
    """Inspect; the JSON lines of the run (frames, parts, alarms)."""
    if source is not None:
        monkeypatch.setattr(run_mod, "open_source", lambda uri: source)
    out = io.StringIO()
    inspect(InspectOptions(model=str(model), source=DEMO.format(n=n, seed=seed), headless=True, jsonl=True, **kw),
            out=out, table=io.StringIO())
    return [json.loads(line) for line in out.getvalue().splitlines()]


def _alarms(lines: List[dict], state: str = "raised") -> List[dict]:
    return [x for x in lines if x["type"] == "alarm" and x.get("state") == state]


# --- the reference in the metadata -------------------------------------------------------------------------
def test_reference_round_trips_through_export_and_calibrate(tmp_path, tiny_checkpoint):
    """export stores the statistics of its frames (the golden candidates), calibrate those of all its calibration
    images; every other metadata key (the golden frames) stays."""
    pytest.importorskip("torch")
    from ds2a.data.synth import write_dataset
    from ds2a.export import ExportOptions, export_onnx
    from ds2a.precision import CalibrationOptions, calibrate
    from ds2a.runtime.selftest import golden_of

    fp32 = tmp_path / "m.onnx"
    result = export_onnx(tiny_checkpoint, fp32, ExportOptions())
    assert "drift reference: 12 frames" in result.summary()
    meta = read_meta(load_onnx(fp32), fp32)
    ref = reference_of(meta)
    assert ref.frames == 12 and ref.source == "ds2a/data/synth.py cells" and golden_of(meta) is not None
    assert {"brightness", "contrast", "sharpness", "blue_green", "red_green", "defect_area"} <= set(ref.stats)
    has_logits = "logits" in [o.name for o in load_onnx(fp32).graph.output]
    assert ("confidence" in ref.stats) == has_logits and (ref.note == "") == has_logits
    assert len(ref.hist) == 24 and abs(sum(ref.hist) - 3.0) < 1e-3 and ref.classes == meta.classes
    data = tmp_path / "data"
    write_dataset(data, 8, 1, (32, 32), seed=1)
    int8 = tmp_path / "m.int8.onnx"
    calibrate(fp32, int8, CalibrationOptions(str(data), "int8", target="onnxruntime", num_images=8))
    meta8 = read_meta(load_onnx(int8), int8)
    ref8 = reference_of(meta8)
    assert ref8.frames == 8 and ref8.source.startswith("calibration images") and golden_of(meta8) is not None
    assert ref8.stats["brightness"] != ref.stats["brightness"]  # measured on the calibration images, not copied


def test_the_demo_model_carries_a_reference_next_to_its_golden_frames():
    from ds2a.runtime.selftest import golden_of

    path = Path(__file__).resolve().parents[1] / "ds2a/assets/demo/ds2a_tiny_synth.int8.onnx"
    meta = read_meta(load_onnx(path), path)
    ref = reference_of(meta, str(path))
    assert ref is not None and ref.frames >= 100 and ref.source.startswith("demo://")
    assert "no logits" in ref.note and "confidence" not in ref.stats  # a class-map-only model says so
    assert golden_of(meta) is not None and meta.extra["precision"] == "int8"


def test_a_damaged_reference_is_a_clear_error(model):
    meta = read_meta(load_onnx(model), model)
    data = dict(meta.extra[DRIFT_KEY])
    assert Reference.from_dict(data, "m").to_dict() == data
    for broken in ({**data, "hist": [0.1] * 5}, {**data, "format": 9}, {**data, "stats": {"brightness": ["x", 1]}}):
        with pytest.raises(UserError, match="m: its drift reference statistics are unreadable"):
            Reference.from_dict(broken, "m")


# --- the test on a running inspection ----------------------------------------------------------------------
def test_a_clean_demo_run_raises_no_alarm(model, monkeypatch):
    lines = _run(model, monkeypatch, n=800, drift="stop")
    assert not [x for x in lines if x["type"] == "alarm"]
    parts = [x for x in lines if x["type"] == "part"]
    assert len(parts) > 60 and {"PASS", "FAIL"} <= {p["verdict"] for p in parts}
    assert not any(r.startswith("not judged: the picture drifted") for p in parts for r in p["reasons"])


@pytest.mark.parametrize("change, moved", [(DARKER, {"brightness", "defect_area", "sharpness", "contrast"}),
                                           (BLURRED, {"sharpness"}), (COLOUR, {"blue_green", "red_green"})],
                         ids=["darker", "blurred", "colour"])
def test_drift_alarms_within_bounded_frames_with_the_statistic_that_moved(model, monkeypatch, change, moved):
    onset = 40
    source = Injected(DEMO.format(n=onset + 200, seed=7), change, start=onset)
    lines = _run(model, monkeypatch, source, drift="warn")
    raised = _alarms(lines)
    assert len(raised) == 1, raised
    event = raised[0]
    assert {"type", "kind", "state", "statistic", "direction", "value", "reference", "sigma", "cusum", "limit",
            "seq", "t", "mode"} <= set(event)
    assert event["kind"] == "drift" and event["mode"] == "warn" and event["statistic"] in moved
    assert event["cusum"] > event["limit"] and event["value"] != event["reference"]
    assert onset < event["seq"] + 1 <= onset + ALARM_WITHIN  # seq: frames processed, one per source frame here


def test_stop_judges_no_part_while_drifted_and_judges_again_once_the_picture_is_back(model, monkeypatch, tmp_path):
    onset, end = 30, 110
    source = Injected(DEMO.format(n=400, seed=7), DARKER, start=onset, stop=end)
    db = tmp_path / "run.sqlite"
    lines = _run(model, monkeypatch, source, drift="stop", db=str(db))
    raised, cleared = _alarms(lines), _alarms(lines, "cleared")
    assert len(raised) == 1 and len(cleared) == 1
    a, b = raised[0]["seq"], cleared[0]["seq"]
    assert onset < a < end < b  # back only after the picture is
    drifted = [x for x in lines if x["type"] == "frame" and a <= x["seq"] < b and x["part_id"]]
    assert drifted and all(f["verdict"] == "NONE" for f in drifted)
    assert all(f["reasons"][0].startswith("not judged: the picture drifted") for f in drifted)
    parts = [x for x in lines if x["type"] == "part"]
    during = [p for p in parts if p["last_seq"] >= a and p["first_seq"] < b]
    assert during and all(p["verdict"] == "NONE" for p in during)
    after = [p for p in parts if p["first_seq"] > b]
    assert "PASS" in {p["verdict"] for p in after}  # judged again
    stats = json.loads(sqlite3.connect(str(db)).execute("SELECT stats FROM runs").fetchone()[0])
    assert stats["drift"]["alarms"] == 1 and stats["drift"]["frames_not_judged"] == len(drifted)
    assert [e["state"] for e in stats["drift"]["events"]] == ["raised", "cleared"]
    assert any("DRIFT ALARM" in n for n in stats["notes"])


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="SIGUSR1 is POSIX")
def test_stop_judges_again_after_an_engineer_acknowledges(model, monkeypatch):
    ack_at = 150
    source = Injected(DEMO.format(n=300, seed=7), DARKER, start=20,
                      at={ack_at: lambda: os.kill(os.getpid(), signal.SIGUSR1)})
    lines = _run(model, monkeypatch, source, drift="stop")
    raised, acked = _alarms(lines), _alarms(lines, "acknowledged")
    assert len(raised) == 1 and len(acked) == 1 and acked[0]["by"] == "SIGUSR1"
    assert not _alarms(lines, "cleared")  # still dark: acknowledged, not back
    parts = [x for x in lines if x["type"] == "part"]
    assert all(p["verdict"] == "NONE" for p in parts if raised[0]["seq"] <= p["last_seq"] < acked[0]["seq"])
    assert {"PASS", "FAIL"} & {p["verdict"] for p in parts if p["first_seq"] > acked[0]["seq"]}


def test_warn_alarms_but_keeps_judging_and_off_watches_nothing(model, monkeypatch):
    warn = _run(model, monkeypatch, Injected(DEMO.format(n=200, seed=7), DARKER), drift="warn")
    assert len(_alarms(warn)) == 1
    assert not any(r.startswith("not judged: the picture drifted") for x in warn if x["type"] == "part"
                   for r in x["reasons"])
    off = _run(model, monkeypatch, Injected(DEMO.format(n=200, seed=7), DARKER), drift="off")
    assert not [x for x in off if x["type"] == "alarm"]


def test_a_model_without_reference_runs_with_the_watch_off_and_says_so(tmp_path, monkeypatch, caplog):
    bare = threshold_onnx(tmp_path / "bare.onnx")
    attach_golden_file(bare, [np.full((32, 32, 3), v, np.uint8) for v in (20, 200)], "test levels")
    db = tmp_path / "run.sqlite"
    with caplog.at_level("INFO"):
        lines = _run(bare, monkeypatch, n=30, drift="stop", db=str(db))
    assert "drift watch off" in caplog.text and "carries no drift reference statistics" in caplog.text
    assert not [x for x in lines if x["type"] == "alarm"]
    stats = json.loads(sqlite3.connect(str(db)).execute("SELECT stats FROM runs").fetchone()[0])
    assert stats["drift"]["mode"] == "off" and "no drift reference" in stats["drift"]["why"]


def test_the_flags_reach_the_options_and_a_wrong_mode_is_refused():
    import argparse

    from ds2a.cli.inspect import add_arguments, options_from

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--model", "m.onnx", "--drift", "stop", "--drift-ack", "ack.txt"])
    options = options_from(args)
    assert options.drift == "stop" and options.drift_ack == "ack.txt"
    assert options_from(p.parse_args(["--model", "m.onnx"])).drift == drift_mod.DEFAULT_MODE
    with pytest.raises(UserError, match="--drift sometimes: choose one of stop, warn, off"):
        run_mod.check_options(InspectOptions(model="m.onnx", drift="sometimes"))


# --- the watch itself --------------------------------------------------------------------------------------
def _reference() -> Reference:
    return Reference(100, "unit", "unit", {"brightness": (100.0, 10.0), "sharpness": (4.0, 0.5)},
                     [1 / 8] * 24, [(1.0, 0.0)], ["background"])


def test_the_watch_samples_a_part_once_and_needs_recovery_samples_to_clear():
    w = DriftWatch(_reference(), "stop", k=1.0, h=8.0, clip=4.0, recovery=5)
    # z = -4 (clipped): 3 above k per sample, so h = 8 is passed at the third sample
    events = [w.observe({"brightness": 60.0, "sharpness": 4.0}, f"p{i}") for i in range(3)]
    assert events[:2] == [[], []] and [e["state"] for e in events[2]] == ["raised"]
    assert w.blocking and w.moved["statistic"] == "brightness" and w.moved["direction"] == "low"
    assert w.observe({"brightness": 100.0, "sharpness": 4.0}, "p2") == [] and w.samples == 3  # same part: no sample
    states = [e["state"] for i in range(5) for e in w.observe({"brightness": 100.0, "sharpness": 4.0}, f"q{i}")]
    assert states == ["cleared"] and not w.blocking


def test_the_acknowledge_file_is_acted_on_when_touched_after_the_start(tmp_path, monkeypatch):
    monkeypatch.setattr(drift_mod, "ACK_POLL_S", 0.0)
    ack = tmp_path / "ack"
    ack.write_text("")
    os.utime(ack, (1, 1))
    w = DriftWatch(_reference(), "stop", k=1.0, h=8.0, clip=4.0, ack_file=str(ack))
    for i in range(3):
        w.observe({"brightness": 160.0, "sharpness": 4.0}, f"p{i}")
    assert w.blocking
    os.utime(ack, None)  # touched now
    events = w.observe({"brightness": 160.0, "sharpness": 4.0}, "p3")
    assert [e["state"] for e in events] == ["acknowledged"] and events[0]["by"] == f"file {ack}"
    assert not w.blocking and w.drifted


def test_the_stage_tells_opcua_records_and_jsonl_once_and_makes_drifted_frames_none():
    """What `ds2a inspect` wires (ds2a/inspect/run.py): on_alarm is the OPC UA server's raise_alarm."""
    from ds2a.inspect.drift import DriftStage
    from ds2a.inspect.loop import Result
    from ds2a.sources.base import Frame

    class Records:
        def __init__(self) -> None:
            self.extra: dict = {}

    told, out, seen = [], io.StringIO(), []
    records = Records()
    stage = DriftStage(DriftWatch(_reference(), "stop", k=1.0, h=8.0, clip=4.0), seen.append, 1, out, records,
                       [], told.append)
    dark = np.full((32, 32, 3), 40, np.uint8)  # brightness 40: z = -6, clipped to -4
    for i in range(5):
        cm = np.zeros((32, 32), np.uint8)
        stage.keep(cm, dark, None)
        stage(Result(i, Frame(dark, i, 0.0, 0.0, part_id=f"p{i}"), cm, [], True, []))
    assert [r.verdict for r in seen] == ["PASS", "PASS", "NONE", "NONE", "NONE"]  # alarm at the third part
    assert len(told) == 1 and "DRIFT ALARM (stop): brightness low" in told[0]
    event = json.loads(out.getvalue())
    assert event["type"] == "alarm" and event["kind"] == "drift" and event["seq"] == 2
    assert event["statistic"] == "brightness" and event["reference"] == 100.0 and event["value"] < 100.0
    assert records.extra["drift"]["alarms"] == 1 and records.extra["drift"]["events"][0]["state"] == "raised"
    stage.publish(None, [])  # the end of the run: the summary with its counts goes into the run's stats
    assert records.extra["drift"]["frames_not_judged"] == 3 and records.extra["drift"]["samples"] == 5
    assert len(stage.notes) == 1 and records.extra["drift"]["ms_per_sample_median"] > 0


def test_a_drift_alarm_is_raised_on_the_page_as_well(model, monkeypatch):
    """`ds2a inspect --web`: the drift alarm reaches the operator's page too, not only OPC UA and the JSON lines."""
    pytest.importorskip("aiohttp")
    pytest.importorskip("matplotlib")
    from ds2a.web import live
    from ds2a.web.station import StationOptions

    shown: List[str] = []
    real = live.LiveView.raise_alarm
    monkeypatch.setattr(live.LiveView, "raise_alarm", lambda self, text: (shown.append(text), real(self, text)))
    onset = 40
    source = Injected(DEMO.format(n=onset + 200, seed=7), DARKER, start=onset)
    lines = _run(model, monkeypatch, source, drift="warn", station=StationOptions(web="127.0.0.1:0"))
    assert len(_alarms(lines)) == 1
    drift_alarms = [t for t in shown if "DRIFT ALARM (warn)" in t]
    assert len(drift_alarms) == 1 and _alarms(lines)[0]["statistic"] in drift_alarms[0]


def test_with_recipes_the_watch_follows_the_model_that_judged_each_frame():
    """A changeover to a product whose picture differs starts a fresh watch on the new model's reference (no
    false alarm, no parts made NONE for being another product); a model without a reference turns it off, said
    so; what the earlier watch saw stays in the records."""
    from types import SimpleNamespace

    from ds2a.inspect.drift import DriftStage
    from ds2a.inspect.loop import Result
    from ds2a.meta import ModelMeta
    from ds2a.sources.base import Frame

    def model(mean: Optional[float]) -> SimpleNamespace:
        ref = None if mean is None else Reference(100, "unit", "unit", {"brightness": (mean, 10.0)}, [1 / 8] * 24,
                                                  [(1.0, 0.0)], ["background"])
        meta = ModelMeta(arch="unit", classes=["background"], extra={DRIFT_KEY: ref.to_dict()} if ref else {})
        cm = np.zeros((32, 32), np.uint8)
        return SimpleNamespace(meta=meta, path=f"m{mean}.onnx",
                               infer=lambda frame: SimpleNamespace(class_map=cm.copy(), logits=None))

    bright, dark, bare = model(100.0), model(40.0), model(None)
    records, notes, seen, told = SimpleNamespace(extra={}), [], [], []
    stage = DriftStage(DriftWatch(reference_of(bright.meta), "stop", k=1.0, h=8.0, clip=4.0), seen.append, 1,
                       None, records, notes, told.append, model=bright)
    picture = np.full((32, 32, 3), 40, np.uint8)  # the dark product, z = -6 against the bright one's reference
    seq = 0
    for judge, parts in ((bright, 4), (dark, 6), (bare, 2)):
        watched = stage.wrap(judge)
        for _ in range(parts):
            out = watched.infer(picture)
            stage(Result(seq, Frame(picture, seq, 0.0, 0.0, part_id=f"p{seq}"), out.class_map, [], True, []))
            seq += 1
    verdicts = [r.verdict for r in seen]
    assert verdicts[:4] == ["PASS", "PASS", "NONE", "NONE"] and len(told) == 1  # drifted from the bright product
    assert verdicts[4:] == ["PASS"] * 8  # the dark product judged against its own picture; then no watch at all
    assert sum("drift watch follows the recipe's model" in n for n in notes) == 2 and "off (it carries no" in notes[-1]
    summary = stage.finish()
    assert summary["mode"] == "off" and [s["alarms"] for s in summary["recipes"]] == [1, 0]
    assert summary["frames_not_judged"] == 2 and records.extra["drift"]["recipes"][1]["samples"] == 6
