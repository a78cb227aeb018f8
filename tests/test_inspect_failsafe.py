"""`ds2a inspect` never says PASS about parts it did not judge, and never loses a record to a signal
or to a closed JSON reader: bad options and rules are refused at start, an empty run fails,
SIGTERM at any moment leaves a finished run, and `--jsonl | head -1` stops only the JSON."""
from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest
from fakes.onnx_models import threshold_onnx
from fakes.records import query_db as _db

from ds2a.cli import main
from ds2a.inspect.signals import StopSignals
from ds2a.meta import ModelMeta
from ds2a.runtime.base import InferResult, Segmenter

ROOT = Path(__file__).resolve().parents[1]
DEMO = "demo://?frames={n}&width=320&height=180&speed=24"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A threshold ONNX with golden frames, as `ds2a export` writes models (no self-test warning on stderr)."""
    from ds2a.export.metadata import attach_golden_file

    path = threshold_onnx(tmp_path_factory.mktemp("m") / "thr.onnx")
    levels = [np.full((32, 32, 3), v, np.uint8) for v in (20, 200)]
    attach_golden_file(path, levels, "test levels")
    return path


def _inspect(model: Path, *extra: str) -> List[str]:
    return ["inspect", "--model", str(model), "--headless", *extra]


# --- refused at start -------------------------------------------------------------------
@pytest.mark.parametrize("extra, words", [
    (["--mm-per-pixel", "nan"], "--mm-per-pixel nan: give the finite, positive size"),
    (["--mm-per-pixel", "inf"], "--mm-per-pixel inf: give the finite, positive size"),
    (["--mm-per-pixel", "0"], "--mm-per-pixel 0"),
    (["--duration", "nan"], "--duration nan: give a finite, positive number"),
    (["--duration", "inf"], "--duration inf"),
    (["--fps", "nan"], "--fps nan"),
    (["--fps=-2"], "--fps -2.0"),
    (["--alpha", "nan"], "--alpha nan"),
    (["--rules", "{tmp}/empty.yaml"], "is empty; a rules file must state at least one limit"),
    (["--rules", "{tmp}/noclasses.yaml"], "'classes' must map at least one defect class"),
    (["--rules", "{tmp}/nulls.yaml"], "classes.damage.max_count is None"),
    (["--rules", "{tmp}"], "is a folder"),
    (["--rules", "{tmp}/latin1.yaml"], "is not UTF-8"),
    (["--source", "demo://?width=60000"], "'width=60000' is out of range"),
    (["--source", "demo://?frames=0"], "'frames=0' is out of range"),
    (["--source", DEMO.format(n=3), "--roi", "400,10,50,50"], "--roi 400,10,50,50 lies outside the 320x180 frame"),
    (["--source", "{tmp}/clip.mp4", "--rules", "{tmp}/by_source.yaml"], "part.by is 'source' but"),
])
def test_inputs_that_would_pass_unjudged_parts_are_refused_at_start(tmp_path, model, capsys, extra, words):
    (tmp_path / "empty.yaml").write_text("# nothing but a comment\n")
    (tmp_path / "noclasses.yaml").write_text("level: frame\nclasses: {}\n")
    (tmp_path / "nulls.yaml").write_text("classes: {damage: {max_count: null}}\n")
    (tmp_path / "latin1.yaml").write_bytes("classes: {damage: {max_count: 0}}  # Größe\n".encode("latin-1"))
    (tmp_path / "by_source.yaml").write_text("part: {by: source}\nclasses: {damage: {max_count: 0}}\n")
    _video(tmp_path / "clip.mp4", 3)
    db = tmp_path / "r.sqlite"
    args = _inspect(model, "--db", str(db), *[a.replace("{tmp}", str(tmp_path)) for a in extra])
    if "--source" not in args:
        args += ["--source", DEMO.format(n=3)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not db.exists() or _db(db, "SELECT COUNT(*) FROM runs") == [(0,)]  # no run was started


def _video(path: Path, n: int, size=(96, 64)) -> Path:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, size)
    for _ in range(n):
        w.write(np.full((size[1], size[0], 3), 200, np.uint8))
    w.release()
    return path


def test_a_roi_reaching_past_the_frame_is_clipped_with_a_printed_note(tmp_path, model, capsys):
    assert main(_inspect(model, "--source", str(_video(tmp_path / "c.mp4", 2)), "--roi", "50,10,100,100")) == 0
    assert "--roi 50,10,100,100 reaches past the 96x64 frame; inspecting its part inside the frame, " \
           "50,10,46,54" in capsys.readouterr().out


# --- a run that inspects nothing fails ----------------------------------------------------
def test_a_folder_of_only_corrupt_images_fails_with_the_reason(tmp_path, model, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(3):
        (photos / f"p{k}.png").write_bytes(b"not an image")
    db = tmp_path / "r.sqlite"
    assert main(_inspect(model, "--source", str(photos), "--db", str(db))) == 2
    err = capsys.readouterr().err
    assert "nothing was inspected" in err and "3 unreadable or corrupt" in err
    assert _db(db, "SELECT status, frames FROM runs") == [("empty", 3)]  # each unreadable photo recorded, NONE
    assert _db(db, "SELECT verdict, COUNT(*) FROM verdicts GROUP BY verdict") == [("NONE", 3)]


def test_a_demo_run_that_never_sees_a_whole_part_fails(model, capsys):
    assert main(_inspect(model, "--source", DEMO.format(n=2))) == 2
    err = capsys.readouterr().err
    assert "nothing was inspected" in err and "2 without a part in view" in err


# --- min_confidence needs logits on every backend ------------------------------------------
class _Fake(Segmenter):
    backend = "tensorrt"

    def __init__(self, confidence: bool) -> None:
        super().__init__(ModelMeta(arch="fake", input_size=(32, 32)))
        self.confidence = confidence

    def infer_batch(self, frames):
        out = []
        for f in self.prepare_batch(frames):
            cm = (f.mean(axis=2) < 60).astype(np.uint8)
            out.append(InferResult(cm, confidence=np.ones(cm.shape, np.float32) if self.confidence else None))
        return out


@pytest.mark.parametrize("has_logits", [True, False])
def test_min_confidence_with_an_engine_asks_for_logits_or_is_refused(tmp_path, capsys, monkeypatch, has_logits):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    rules = tmp_path / "rules.yaml"
    rules.write_text("classes: {damage: {max_count: 0, min_confidence: 0.5}}\n")
    asked = {}

    def fake_open(path, backend=None, **options):
        asked.update(options, path=path)
        return _Fake(confidence=has_logits and bool(options.get("return_logits")))

    monkeypatch.setattr("ds2a.runtime.open_model", fake_open)
    rc = main(["inspect", "--model", str(engine), "--source", DEMO.format(n=10), "--headless", "--rules", str(rules)])
    assert asked["return_logits"] is True  # the TensorRT backend is asked for logits too
    if has_logits:
        assert rc == 0
    else:
        assert rc == 2 and "use min_confidence but" in capsys.readouterr().err


# --- signals ------------------------------------------------------------------------------
class _Loop:
    def __init__(self) -> None:
        self.calls: List[str] = []

    def stop(self, reason: str = "stopped") -> None:
        self.calls.append(f"stop {reason}")

    def abort(self, reason: str = "aborted") -> None:
        self.calls.append(f"abort {reason}")


def test_signal_handler_covers_start_up_the_run_and_the_flush(caplog):
    caplog.set_level(logging.INFO, logger="ds2a")
    signals = StopSignals().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # during warm-up: remembered, not fatal
        loop = _Loop()
        signals.attach(loop)  # type: ignore[arg-type]
        assert loop.calls == ["stop SIGTERM"]  # the loop stops as soon as it exists
        os.kill(os.getpid(), signal.SIGTERM)
        assert loop.calls == ["stop SIGTERM", "abort SIGTERM"]
        signals.flushing = True
        os.kill(os.getpid(), signal.SIGTERM)  # during the flush: waits for it
        os.kill(os.getpid(), signal.SIGINT)
        assert loop.calls == ["stop SIGTERM", "abort SIGTERM"]
        assert caplog.text.count("exiting as soon as they are flushed") == 2
    finally:
        signals.restore()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(signal.getsignal(signal.SIGTERM))
    second = StopSignals().install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):  # twice before anything is recorded: abort start-up
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
    finally:
        second.restore()


_SLOW_WARMUP = (
    "import sys, time\n"
    "import ds2a.runtime.base as b\n"
    "orig = b.Segmenter.warmup\n"
    "def slow(self, n=3):\n"
    "    print('WARMING', file=sys.stderr, flush=True)\n"
    "    time.sleep(float(sys.argv[1]))\n"
    "    orig(self, n)\n"
    "b.Segmenter.warmup = slow\n"
    "from ds2a.cli import main\n"
    "raise SystemExit(main(sys.argv[2:]))\n"
)


def _spawn(model: Path, db: Path, warmup_s: float = 0.0) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-c", _SLOW_WARMUP, str(warmup_s), "inspect", "--model", str(model), "--headless",
           "--jsonl", "--source", "demo://?width=320&height=180&speed=24", "--db", str(db)]  # endless
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_frames(db: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        assert proc.poll() is None, proc.stderr.read()
        try:
            if db.exists() and _db(db, "SELECT COUNT(*) FROM frames")[0][0] >= n:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)
    raise AssertionError("no frames recorded in time")


def _wait_for_line(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stderr:
        if line.strip() == text:
            return
    raise AssertionError(f"{text} never printed")


@pytest.mark.parametrize("gap_s", [0.0, 0.2])
def test_two_sigterms_close_together_leave_a_finished_record(tmp_path, model, gap_s):
    db = tmp_path / "r.sqlite"
    proc = _spawn(model, db)
    _wait_for_frames(db, 20, proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(gap_s)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    # 143 (128 + SIGTERM: not a complete run), or the default action of a signal that came after the records
    # were written and the handlers restored
    assert proc.returncode in (143, -signal.SIGTERM), err
    assert "stopped because       SIGTERM" in err  # the summary is printed after the records are flushed
    printed = [json.loads(line) for line in out.splitlines()]
    frames = [x for x in printed if x["type"] == "frame"]
    assert _db(db, "SELECT status, frames FROM runs") == [("interrupted", len(frames))]
    assert _db(db, "SELECT COUNT(*) FROM frames")[0][0] == len(frames) >= 20
    # the part open at the signals got its verdict, in the database and on stdout
    parts = [x for x in printed if x["type"] == "part"]
    assert _db(db, "SELECT COUNT(*) FROM verdicts")[0][0] == len(parts) >= 1
    inspected = [f for f in frames if f["verdict"] != "NONE"]
    if inspected and frames[-1]["verdict"] != "NONE":
        assert parts[-1]["last_seq"] == frames[-1]["seq"]


@pytest.mark.parametrize("sig, code", [(signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_sighup_and_sigint_flush_like_sigterm_and_exit_with_the_signal_code(tmp_path, model, sig, code):
    """SIGHUP (an ssh disconnect) used to kill without flushing (run left `running`, the open part lost);
    SIGINT exited 0 like a complete run."""
    db = tmp_path / "r.sqlite"
    proc = _spawn(model, db)
    _wait_for_frames(db, 10, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    printed = [json.loads(line) for line in out.splitlines()]
    frames = [x for x in printed if x["type"] == "frame"]
    parts = [x for x in printed if x["type"] == "part"]
    assert _db(db, "SELECT status, frames FROM runs") == [("interrupted", len(frames))]
    assert _db(db, "SELECT COUNT(*) FROM verdicts")[0][0] == len(parts) >= 1
    assert f"stopped because       {signal.Signals(sig).name}" in err


def test_sigterm_during_warmup_stops_cleanly_instead_of_killing_the_run(tmp_path, model):
    db = tmp_path / "r.sqlite"
    proc = _spawn(model, db, warmup_s=2.0)
    _wait_for_line(proc, "WARMING")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM: stopping as soon as start-up is done" in err
    assert _db(db, "SELECT status, frames FROM runs") == [("interrupted", 0)]


def test_two_sigterms_during_warmup_abort_before_anything_is_recorded(tmp_path, model):
    db = tmp_path / "r.sqlite"
    proc = _spawn(model, db, warmup_s=2.0)
    _wait_for_line(proc, "WARMING")
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert not db.exists() or _db(db, "SELECT COUNT(*) FROM runs WHERE status='running'") == [(0,)]


# --- --jsonl | head -1 ----------------------------------------------------------------------
def test_a_closed_jsonl_reader_stops_only_the_json_output(tmp_path, model):
    db = tmp_path / "r.sqlite"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    n = 200
    proc = subprocess.Popen([sys.executable, "-m", "ds2a", "inspect", "--model", str(model), "--headless", "--jsonl",
                             "--source", DEMO.format(n=n), "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    first = proc.stdout.readline()  # what `| head -1` does
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert json.loads(first)["type"] == "frame"
    assert proc.returncode == 0, err
    assert "note: JSON output stopped after" in err and "inspection and records continue" in err
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert _db(db, "SELECT status, frames FROM runs") == [("finished", n)]  # every frame inspected, recorded
    notes = json.loads(_db(db, "SELECT stats FROM runs")[0][0])["notes"]
    assert any("JSON output stopped" in x for x in notes)



def test_a_second_signal_inside_the_first_handler_keeps_the_first_as_the_reason():
    """Python may run a second handler between the bytecodes of the first (two SIGTERMs at once under load):
    the run must still say it stopped because of SIGTERM, not 'aborted'."""
    class Loop:
        def __init__(self) -> None:
            self.stats = type("S", (), {"stop_reason": ""})()
            self.aborted = False

        def stop(self, reason: str) -> None:
            signals._handle(signal.SIGTERM, None)  # the second signal arrives inside the first handler
            self.stats.stop_reason = self.stats.stop_reason or reason

        def abort(self, reason: str = "aborted") -> None:
            self.aborted = True
            self.stats.stop_reason = self.stats.stop_reason or reason

    signals = StopSignals()
    loop = Loop()
    signals.attach(loop)
    signals._handle(signal.SIGTERM, None)
    assert loop.aborted and loop.stats.stop_reason == "SIGTERM"
