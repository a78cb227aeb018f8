"""A network stream that never answers is refused within about its stated timeouts: FFmpeg gets its open/read
timeouts, and OpenCV's fallback open (which has none: FFmpeg's default is 30 s) is given the same time on a
helper thread and then abandoned."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from ds2a.sources import capture


class _FakeCap:
    """Just what stream_capture uses of cv2.VideoCapture (OpenCV videoio: isOpened, release)."""

    def __init__(self, opened: bool) -> None:
        self.opened, self.released = opened, False

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self.opened

    def release(self) -> None:
        self.released = True


class _FakeVideoCapture:
    """FFmpeg (called with CAP_FFMPEG) gives up within its timeout; the fallback (url alone) blocks until
    `unblock` is set, like OpenCV opening a silent server without a timeout."""

    def __init__(self, ffmpeg_opens: bool = False, fallback_opens: bool = False, fallback_s: float = 60.0) -> None:
        self.ffmpeg_opens, self.fallback_opens, self.fallback_s = ffmpeg_opens, fallback_opens, fallback_s
        self.unblock = threading.Event()
        self.made = []

    def __call__(self, *args):
        if not args:
            cap = _FakeCap(False)
        elif len(args) >= 2:  # (url, CAP_FFMPEG[, params])
            cap = _FakeCap(self.ffmpeg_opens)
        else:
            self.unblock.wait(self.fallback_s)
            cap = _FakeCap(self.fallback_opens)
        self.made.append((args, cap))
        return cap


@pytest.fixture
def fake_cv2(monkeypatch):
    fakes = []

    def make(**kw):
        fake = _FakeVideoCapture(**kw)
        monkeypatch.setattr(capture.cv2, "VideoCapture", fake)
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.unblock.set()


def test_a_fallback_that_never_returns_is_abandoned_after_the_timeout(fake_cv2):
    fake = fake_cv2()
    t0 = time.monotonic()
    cap = capture.stream_capture("http://10.0.0.1/x.mjpg", timeout_s=0.3)()
    assert not cap.isOpened() and time.monotonic() - t0 < 3.0  # the fallback alone would block 60 s
    fake.unblock.set()
    time.sleep(0.2)
    late = [c for args, c in fake.made if len(args) == 1]
    assert late and late[0].released  # the capture that came too late is not leaked


def test_ffmpeg_opening_is_used_as_is(fake_cv2):
    fake = fake_cv2(ffmpeg_opens=True)
    cap = capture.stream_capture("rtsp://cam/1", timeout_s=0.3)()
    assert cap.isOpened() and [len(a) >= 2 for a, _ in fake.made] == [True]  # FFmpeg only: no fallback


def test_a_fallback_that_opens_in_time_is_kept(fake_cv2):
    fake_cv2(fallback_opens=True, fallback_s=0.05)
    cap = capture.stream_capture("http://cam/x.mjpg", timeout_s=2.0)()
    assert cap.isOpened() and not cap.released


def test_the_timeouts_given_to_ffmpeg_are_the_stated_ones(fake_cv2):
    if not hasattr(capture.cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC"):
        pytest.skip("this OpenCV (< 4.5.2) takes no timeouts")
    fake = fake_cv2(ffmpeg_opens=True)
    capture.stream_capture("rtsp://cam/1", timeout_s=1.5)()
    params = fake.made[0][0][2]
    assert params[1] == 1500 and params[3] == 1500


def test_a_real_server_that_never_answers_is_refused_in_about_its_timeouts():
    """Real OpenCV on loopback: a socket that accepts and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    try:
        t0 = time.monotonic()
        cap = capture.stream_capture(f"http://127.0.0.1:{server.getsockname()[1]}/x.mjpg", timeout_s=1.0)()
        took = time.monotonic() - t0
        assert not cap.isOpened()
        assert took < 8.0, f"took {took:.1f} s with 1 s timeouts"  # was 30 s more: the fallback had none
    finally:
        stop.set()
        for c in held:
            c.close()
        server.close()
