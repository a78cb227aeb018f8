"""`ds2a doctor --source URI`: frames grabbed for a few seconds, with size, measured rate, corrupt frames and
reconnects; a bad URI is a one-line usage error (exit 2), a problem exit 5."""
from __future__ import annotations

import json
import threading
import time

import cv2
import numpy as np
import pytest

import ds2a.doctor.camera as camera
from ds2a.cli import main
from ds2a.sources.capture import CaptureSource


class ScriptedCapture:
    """A cv2.VideoCapture stand-in (OpenCV videoio VideoCapture: isOpened/read/get/release) that plays a
    script of reads: an image, None for a failed read, or 'block' for a read that never returns; after the
    script, a read waits until the source is stopped (a camera with nothing more to say)."""

    def __init__(self, script, fps=25.0):
        self.script, self.fps = list(script), fps
        self.released = threading.Event()
        self.stopped = threading.Event()  # the reading source's stop flag, once attached

    def isOpened(self):  # noqa: N802 - OpenCV's name
        return True

    def read(self):
        item = self.script.pop(0) if self.script else "end"
        if isinstance(item, str) and item == "block":
            self.released.wait(30)
            return False, None
        if isinstance(item, str) and item == "end":
            self.stopped.wait(30)
            return False, None
        time.sleep(0.01)
        return (item is not None), item

    def get(self, prop):
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self):
        self.released.set()


def test_demo_source_reports_size_and_rate():
    r = camera.check_source("demo://?fps=10&width=128&height=64&speed=4", seconds=1.5)
    assert r["live"] and r["fps_claimed"] == 10 and r["sizes"] == {"128x64": r["frames"]}
    assert 5 <= r["frames"] <= 17 and 5.0 < r["fps_measured"] < 15.0  # paced at 10 FPS, measured not assumed
    assert r["corrupt"] == r["reconnects"] == 0 and r["ok"]


def test_image_folder_counts_unreadable_files(tmp_path, capsys):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"p{i}.png"), np.full((30, 40, 3), 50 * i, np.uint8))
    (tmp_path / "torn.jpg").write_bytes(b"\xff\xd8not a whole jpeg")
    assert main(["doctor", "--source", str(tmp_path), "--seconds", "2", "--json"]) == 5
    r = json.loads(capsys.readouterr().out)
    assert (r["frames"], r["corrupt"], r["sizes"], r["live"], r["source_ended"]) == (4, 1, {"40x30": 3}, False, True)
    assert any("torn.jpg" in e for e in r["events"]) and "unreadable file" in r["problems"][0]


def test_corrupt_frames_and_a_reconnect_are_counted(monkeypatch):
    img = np.zeros((48, 64, 3), np.uint8)
    caps = [ScriptedCapture([img, None, img, None, None, None]), ScriptedCapture([img, img, img])]

    def open_scripted(uri):
        source = CaptureSource(uri, lambda: caps.pop(0), "scripted", backoff_s=0.01, fail_limit=3)
        for cap in caps:
            cap.stopped = source._stop
        return source

    monkeypatch.setattr(camera, "open_source", open_scripted)
    r = camera.check_source("rtsp://cam/stream", seconds=0.6)
    assert r["frames"] == 5 and r["corrupt"] == 1 and r["reconnects"] == 1 and not r["ok"]
    text = camera.render_check(r)
    assert "reconnects    1" in text and "corrupt       1" in text and "PROBLEM" in text


def test_a_camera_that_stops_answering_is_reported_not_waited_for(monkeypatch):
    monkeypatch.setattr(camera, "STUCK_S", 0.2)
    cap = ScriptedCapture(["block"])
    monkeypatch.setattr(camera, "open_source", lambda uri: CaptureSource(uri, lambda: cap, "scripted"))
    t0 = time.monotonic()
    r = camera.check_source("v4l2:///dev/video0", seconds=0.3)
    assert time.monotonic() - t0 < 5 and r["frames"] == 0 and not r["ok"]
    assert any("no frame" in p for p in r["problems"]) and any("still blocked" in p for p in r["problems"])
    cap.release()


@pytest.mark.parametrize("uri, msg", [("nosuch://x", "unknown source scheme"),
                                      ("csi://0?fps=30&flip=9", "'flip=9' is out of range"),
                                      ("csi://0?exposure=3", "exposure"),
                                      ("no/such/folder", "no such file")])
def test_a_bad_source_is_a_one_line_usage_error(uri, msg, capsys):
    assert main(["doctor", "--source", uri, "--seconds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err and "Traceback" not in err


@pytest.mark.parametrize("extra, msg", [(["--smoke"], "camera check of its own"), (["--seconds", "0"], "--seconds 0")])
def test_source_with_another_check_or_no_time_is_refused(extra, msg, capsys):
    assert main(["doctor", "--source", "demo://", *extra]) == 2
    assert msg in capsys.readouterr().err
