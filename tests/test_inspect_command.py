"""`ds2a inspect` end to end through ONNX Runtime: demo:// and video sources, video/image/db/fail
outputs, JSON lines, clear errors at start, and clean shutdown on SIGINT/SIGTERM (SIGKILL loses
only frames in flight)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from fakes.onnx_models import threshold_onnx
from fakes.records import query_db as _db

from ds2a.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEMO = "demo://?frames={n}&width=320&height=180&speed=24"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return threshold_onnx(tmp_path_factory.mktemp("m") / "thr.onnx")


def _counter_video(path: Path, n: int = 10) -> Path:
    """Frames 0..n-1; odd frames have a dark 16x16 square (a defect for the threshold model)."""
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (96, 64))
    for k in range(n):
        img = np.full((64, 96, 3), 200, np.uint8)
        if k % 2:
            img[20:36, 40:56] = 0
        w.write(img)
    w.release()
    return path


def test_demo_run_writes_video_records_failures_and_a_summary(tmp_path, model, capsys):
    out = tmp_path / "runs" / "inspect.mp4"
    db, fail = tmp_path / "runs" / "inspect.sqlite", tmp_path / "runs" / "fail"
    rc = main(["inspect", "--model", str(model), "--source", DEMO.format(n=30), "--headless",
               "--output", str(out), "--db", str(db), "--save-fail", str(fail)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "rules   (built-in default" in text and "max_count: 0" in text  # default rules are printed
    assert "end-to-end FPS" in text and "model-only FPS" in text and "infer" in text
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (320, 180)
    cap.release()
    assert _db(db, "SELECT status, frames, dropped FROM runs") == [("finished", 30, 0)]
    assert _db(db, "SELECT COUNT(*) FROM frames")[0][0] == 30
    parts = _db(db, "SELECT part_id FROM verdicts ORDER BY id")
    assert parts and parts[0][0] == "cell-000000"  # parts come from the demo conveyor
    # frames between two cells show no whole part: recorded as NONE, not inspected
    n_none = _db(db, "SELECT COUNT(*) FROM frames WHERE verdict='NONE'")[0][0]
    assert n_none > 0 and n_none == _db(db, "SELECT COUNT(*) FROM frames WHERE part_id IS NULL")[0][0]
    n_fail = _db(db, "SELECT COUNT(*) FROM frames WHERE verdict='FAIL'")[0][0]
    saved = _db(db, "SELECT image_path, raw_path FROM frames WHERE verdict='FAIL'")
    assert len(list(fail.glob("*_annotated.jpg"))) == len(list(fail.glob("*_raw.jpg"))) == n_fail
    assert all(os.path.isfile(a) and os.path.isfile(r) for a, r in saved)


def test_video_file_source_every_frame_with_known_verdicts_and_jsonl(tmp_path, model, capsys):
    video = _counter_video(tmp_path / "clip.mp4")
    frames_dir = tmp_path / "frames"
    rules = tmp_path / "rules.yaml"
    rules.write_text("level: frame\nmin_area_px: 10\nclasses: {damage: {max_count: 0}}\n")
    rc = main(["inspect", "--model", str(model), "--source", str(video), "--headless", "--rules", str(rules),
               "--output", str(frames_dir), "--jsonl", "--mode", "side"])
    captured = capsys.readouterr()
    assert rc == 0
    lines = [json.loads(line) for line in captured.out.splitlines()]  # stdout is pure JSON lines
    frames = [x for x in lines if x["type"] == "frame"]
    assert [f["index"] for f in frames] == list(range(10))
    assert [f["verdict"] for f in frames] == ["PASS", "FAIL"] * 5
    odd = frames[1]["defects"]
    assert len(odd) == 1 and odd[0]["class_name"] == "damage" and 150 <= odd[0]["area_px"] <= 400
    assert len([x for x in lines if x["type"] == "part"]) == 10  # frame-level verdicts
    assert "end-to-end FPS" in captured.err
    images = sorted(frames_dir.glob("*.jpg"))
    assert len(images) == 10 and cv2.imread(str(images[0])).shape == (64, 192, 3)  # side by side


def test_gray_bgra_and_16_bit_images_of_any_size_are_inspected(tmp_path, model, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    gray = np.full((50, 70), 220, np.uint8)
    gray[10:30, 10:30] = 0
    bgra = np.full((90, 40, 4), 220, np.uint8)
    deep = np.full((64, 64, 3), 60000, np.uint16)
    for name, img in (("a_gray.png", gray), ("b_bgra.png", bgra), ("c_16bit.png", deep)):
        cv2.imwrite(str(photos / name), img)
    out = tmp_path / "out"
    assert main(["inspect", "--model", str(model), "--source", str(photos), "--headless", "--jsonl",
                 "--output", str(out)]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    parts = {x["part_id"]: x["verdict"] for x in lines if x["type"] == "part"}
    assert parts == {"a_gray.png": "FAIL", "b_bgra.png": "PASS", "c_16bit.png": "PASS"}  # one part per photo
    shapes = [cv2.imread(str(p)).shape for p in sorted(out.glob("*.jpg"))]
    assert shapes == [(50, 70, 3), (90, 40, 3), (64, 64, 3)]


@pytest.mark.parametrize("extra, words", [
    (["--db", "{tmp}/file.txt/db.sqlite"], "writable folder"),
    (["--output", "{tmp}/file.txt/out.mp4"], "cannot write the output video"),
    (["--save-fail", "{tmp}/file.txt/fail"], "cannot write failed frames"),
    (["--output", "{tmp}/out.gif"], "unknown video type '.gif'"),
    (["--output", "display://0"], "cannot open a display window"),
    (["--rules", "{tmp}/rules.yaml"], "class 'scratch' is not a defect class"),
    (["--max-frames", "0"], "--max-frames 0"),
    (["--roi", "10,10,5"], "--roi 10,10,5: give X,Y,W,H"),
    (["--threads", "0"], "--threads 0: give at least 1"),
    (["--mm-per-pixel", "-1"], "--mm-per-pixel -1"),
    (["--source", "{tmp}/missing.mp4"], "no such file"),
])
def test_bad_setup_fails_at_start_with_a_clear_error(tmp_path, model, capsys, monkeypatch, extra, words):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "rules.yaml").write_text("classes: {scratch: {max_count: 0}}\n")
    args = ["inspect", "--model", str(model), "--source", DEMO.format(n=3), "--headless"]
    args += [a.replace("{tmp}", str(tmp_path)) for a in extra]
    t0 = time.perf_counter()
    assert main(args) == 2
    assert words in capsys.readouterr().err
    assert time.perf_counter() - t0 < 10


def test_min_confidence_with_a_model_without_logits_is_refused_at_start(tmp_path, model, capsys):
    rules = tmp_path / "rules.yaml"
    rules.write_text("classes: {damage: {max_count: 0, min_confidence: 0.5}}\n")
    assert main(["inspect", "--model", str(model), "--source", DEMO.format(n=2), "--headless",
                 "--rules", str(rules)]) == 2
    assert "use min_confidence but" in capsys.readouterr().err


def test_no_display_without_headless_falls_back_with_a_note(tmp_path, model, capsys, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["inspect", "--model", str(model), "--source", DEMO.format(n=10)]) == 0  # a cell in view
    assert "no display available, running headless" in capsys.readouterr().out


def _spawn(model: Path, db: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "ds2a", "inspect", "--model", str(model), "--headless", "--jsonl",
           "--source", "demo://?width=320&height=180&speed=24", "--db", str(db)]  # endless
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_frames(db: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        assert proc.poll() is None, proc.stderr.read()
        if db.exists():
            try:
                if _db(db, "SELECT COUNT(*) FROM frames")[0][0] >= n:
                    return
            except sqlite3.OperationalError:
                pass
        time.sleep(0.1)
    raise AssertionError("no frames recorded in time")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_shuts_down_cleanly_with_every_record_flushed(tmp_path, model, sig):
    db = tmp_path / "r.sqlite"
    proc = _spawn(model, db)
    _wait_for_frames(db, 20, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig, err  # 130/143: flushed, but not a complete run
    assert "end-to-end FPS" in err and signal.Signals(sig).name in err
    printed = [json.loads(line) for line in out.splitlines()]
    frames = [x for x in printed if x["type"] == "frame"]
    assert _db(db, "SELECT COUNT(*) FROM frames")[0][0] == len(frames) >= 20
    status = _db(db, "SELECT status, frames FROM runs")[0]
    assert status == ("interrupted", len(frames))
    # the part still open at the signal was closed and recorded too
    assert _db(db, "SELECT COUNT(*) FROM verdicts")[0][0] == len([x for x in printed if x["type"] == "part"])
    assert _db(db, "SELECT MAX(last_seq) FROM verdicts")[0][0] >= frames[-1]["seq"] - 3


@pytest.mark.records_check_skip("a SIGKILLed run is left `running`: the test checks that --check reports it")
def test_sigkill_loses_only_frames_in_flight(tmp_path, model, capsys):
    db = tmp_path / "r.sqlite"
    proc = _spawn(model, db)
    _wait_for_frames(db, 15, proc)
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    printed = [json.loads(line) for line in out.splitlines() if line.endswith("}")]
    frames = [x for x in printed if x["type"] == "frame"]
    assert _db(db, "PRAGMA integrity_check") == [("ok",)]
    recorded = _db(db, "SELECT seq FROM frames ORDER BY seq")
    # every frame that reached the output before the kill is in the database, with no gaps
    assert [r[0] for r in recorded] == list(range(len(recorded)))
    assert len(recorded) >= len(frames) >= 1
    assert _db(db, "SELECT status FROM runs") == [("running",)]
    assert main(["report", str(db)]) == 0 and "(killed, started" in capsys.readouterr().out  # not `running`
    assert main(["report", str(db), "--check"]) == 1
    assert "stored as running but its process is gone (killed)" in capsys.readouterr().out
