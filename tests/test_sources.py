"""Frame sources by URI: files (every frame), folders/globs (corrupt images skipped), demo://,
and a real MJPEG-over-HTTP stream on loopback that goes away and comes back."""
from __future__ import annotations

import http.server
import socket
import socketserver
import threading
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import pytest

from ds2a.errors import UserError
from ds2a.sources import open_source
from ds2a.sources.capture import CaptureSource, csi_pipeline
from ds2a.sources.demo import DemoSource


# --- a tiny MJPEG camera: pure Python http.server in a thread ------------------------------
class MJPEGServer:
    """multipart/x-mixed-replace JPEG stream; frame k of epoch e is a flat image (B=e*100+50, G=k%250).

    `corrupt_every` sends garbage instead of every n-th JPEG. stop() drops live connections,
    like a camera losing power; start() again serves on the same port.
    """

    def __init__(self, port: int = 0, fps: float = 100.0, corrupt_every: Optional[int] = None) -> None:
        self.port, self.fps, self.corrupt_every = port, fps, corrupt_every
        self.epoch = -1
        self.sent = 0
        self._srv: Optional[socketserver.TCPServer] = None
        self._running = threading.Event()

    def start(self) -> "MJPEGServer":
        owner = self
        self.epoch += 1

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                k, epoch = 0, owner.epoch
                while owner._running.is_set() and epoch == owner.epoch:
                    img = np.zeros((48, 64, 3), np.uint8)
                    img[..., 0], img[..., 1] = epoch * 100 + 50, k % 250
                    data = cv2.imencode(".jpg", img)[1].tobytes()
                    if owner.corrupt_every and k % owner.corrupt_every == owner.corrupt_every - 1:
                        data = b"\xff\xd8 this is not a jpeg " * 4
                    try:
                        self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                         % len(data) + data + b"\r\n")
                    except OSError:
                        return
                    owner.sent += 1
                    k += 1
                    time.sleep(1.0 / owner.fps)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._srv = Server(("127.0.0.1", self.port), Handler)
        self.port = self._srv.server_address[1]
        self._running.set()
        threading.Thread(target=self._srv.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._running.clear()
        if self._srv is not None:
            self._srv.shutdown()
            self._srv.server_close()
            self._srv = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"


def _epoch(frame) -> int:
    return round((float(frame.image[..., 0].mean()) - 50) / 100)


def test_mjpeg_http_stream_is_live_and_reconnects_when_the_server_comes_back():
    server = MJPEGServer().start()
    src = open_source(server.url)
    try:
        assert isinstance(src, CaptureSource) and src.live
        src.backoff_s = 0.1
        first = [src.read() for _ in range(5)]
        assert all(f is not None and f.image.shape == (48, 64, 3) for f in first)
        assert [_epoch(f) for f in first] == [0] * 5
        assert [f.index for f in first] == [0, 1, 2, 3, 4]

        server.stop()  # the camera goes away ...
        restart = threading.Timer(1.0, server.start)  # ... and comes back a second later
        restart.start()
        t0 = time.perf_counter()
        later = []
        while len(later) < 3 and time.perf_counter() - t0 < 20:
            f = src.read()
            if f is not None and _epoch(f) == 1:
                later.append(f)
        assert len(later) == 3, "no frames after the server came back"
        assert src.stats.reconnects >= 1
        assert any("reconnected" in e for e in src.stats.events)
        assert later[0].index > first[-1].index
    finally:
        src.close()
        server.stop()


def test_inspection_loop_carries_on_through_a_camera_outage():
    from fakes.segmenter import ThresholdSegmenter

    from ds2a.inspect.loop import InspectionLoop

    server = MJPEGServer().start()
    src = open_source(server.url)
    src.backoff_s = 0.1
    seen = []
    loop = InspectionLoop(src, ThresholdSegmenter((16, 16)), lambda m, c, hw: ([], True, []),
                          lambda res: seen.append(_epoch(res.frame)))
    threading.Timer(0.6, server.stop).start()
    threading.Timer(1.6, server.start).start()
    try:
        stats = loop.run(duration=3.5)
    finally:
        server.stop()
    assert stats.reconnects >= 1 and stats.stop_reason == "duration reached"
    assert seen.count(0) > 3 and seen.count(1) > 3  # frames before and after the outage
    assert seen == sorted(seen)


def test_mjpeg_corrupt_frames_are_skipped_and_counted():
    server = MJPEGServer(corrupt_every=4).start()
    src = open_source(server.url)
    try:
        frames = [src.read() for _ in range(8)]
        assert all(f is not None and f.image.size for f in frames)
        assert src.stats.corrupt >= 1 and src.stats.reconnects == 0
    finally:
        src.close()
        server.stop()


def test_stop_interrupts_a_source_waiting_to_reconnect():
    server = MJPEGServer().start()
    src = open_source(server.url)
    src.backoff_s = 5.0
    assert src.read() is not None
    server.stop()
    threading.Timer(0.5, src.stop).start()
    t0 = time.perf_counter()
    while src.read() is not None and time.perf_counter() - t0 < 10:
        pass
    assert time.perf_counter() - t0 < 8  # stop() ended the backoff wait
    src.close()


def test_unreachable_stream_fails_at_start_with_a_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match="cannot open source"):
        open_source(f"http://127.0.0.1:{port}/none.mjpg")


# --- files -----------------------------------------------------------------------------
def _write_video(path: Path, n: int = 12, size=(48, 64)) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (size[1], size[0]))
    assert w.isOpened()
    for k in range(n):
        w.write(np.full((size[0], size[1], 3), 10 + k * 20, np.uint8))
    w.release()


def test_video_file_written_by_opencv_gives_every_frame_in_order(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path)
    for uri in (str(path), f"file://{path}"):
        src = open_source(uri)
        assert not src.live and src.fps == pytest.approx(10)
        frames = list(src)
        assert len(frames) == 12
        assert [f.index for f in frames] == list(range(12))
        levels = [float(f.image.mean()) for f in frames]
        assert levels == sorted(levels) and levels[-1] - levels[0] > 150


def test_folder_and_glob_give_unreadable_images_as_parts_without_a_picture(tmp_path):
    """An unreadable file is still a part that reached the station: a frame with image None (the loop
    records it as NONE and counts it as corrupt), never a silent skip."""
    for k in range(3):
        cv2.imwrite(str(tmp_path / f"img_{k}.png"), np.full((8, 8), k * 50, np.uint8))
    (tmp_path / "img_1b.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    src = open_source(str(tmp_path))
    frames = list(src)
    assert [f.name for f in frames] == ["img_0.png", "img_1.png", "img_1b.png", "img_2.png"]
    assert [f.part_id for f in frames] == ["img_0.png", "img_1.png", "img_1b.png", "img_2.png"]  # one part per photo
    assert frames[2].image is None and all(f.image is not None for f in frames[:2] + frames[3:])
    assert any("img_1b.png is not an image" in e for e in src.stats.events)
    assert [f.name for f in open_source(str(tmp_path / "img_[02].png"))] == ["img_0.png", "img_2.png"]
    single = list(open_source(str(tmp_path / "img_2.png")))
    assert len(single) == 1 and single[0].image.shape == (8, 8)


@pytest.mark.parametrize("uri, words", [
    ("/no/such/clip.mp4", "no such file"),
    ("ftp://host/x", "unknown source scheme 'ftp'"),
    ("demo://?frame=3", "unknown option(s) frame"),
    ("demo://?frames=many", "options are numbers"),
    ("csi://0?fps=fast", "not a whole number"),
    # absurd options are refused before anything is allocated or opened
    ("demo://?width=60000", "'width=60000' is out of range"),
    ("demo://?height=10", "'height=10' is out of range"),
    ("demo://?frames=0", "'frames=0' is out of range"),
    ("demo://?fps=nan", "'fps=nan' is out of range"),
    ("demo://?fps=inf", "'fps=inf' is out of range"),
    ("demo://?seed=-1", "'seed=-1' is out of range"),
    ("demo://?speed=5000&width=320", "more than the frame width"),
    ("demo://?frames=" + "9" * 5000, "is not a whole number"),
    ("csi://0?widht=640", "unknown option(s) widht"),
    ("csi://99", "out of range"),
    ("csi://0?flip=9", "'flip=9' is out of range"),
    ("gst://", "give a GStreamer pipeline"),
    ("v4l2://", "name the device"),
    ("", "is empty"),
    ("clip\x00.mp4", "control characters"),
    ("clip.mp4\nrm -rf /", "control characters"),
    ("http://[::1", "Invalid IPv6 URL"),
])
def test_bad_source_uris_are_clear_errors(uri, words):
    with pytest.raises(UserError) as exc:
        open_source(uri)
    assert words in str(exc.value)


def test_not_a_video_fails_clearly(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(UserError, match="cannot read video"):
        open_source(str(bad))


def test_csi_pipeline_and_missing_gstreamer():
    pipe = csi_pipeline(1, 1920, 1080, 60)
    assert pipe.startswith("nvarguscamerasrc sensor-id=1 ")
    assert "width=1920, height=1080, framerate=60/1" in pipe and "appsink drop=true max-buffers=1" in pipe
    if "GStreamer:                   NO" in cv2.getBuildInformation():
        with pytest.raises(UserError, match="GStreamer"):
            open_source("csi://0")


# --- demo:// ---------------------------------------------------------------------------
def test_demo_conveyor_is_deterministic_with_part_ids_while_a_cell_is_fully_in_view():
    uri = "demo://?frames=24&width=320&height=180&speed=24&seed=3"
    a, b = list(open_source(uri)), list(open_source(uri))
    assert len(a) == 24 and a[0].image.shape == (180, 320, 3)
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    ids = [f.part_id for f in a]
    assert ids[0] is None  # the first cell has not fully entered yet
    seen = [i for i in dict.fromkeys(ids) if i]
    assert seen[:2] == ["cell-000000", "cell-000001"]
    # each id is one contiguous run of frames (a part passes the camera once)
    runs = [k for k in range(1, len(ids)) if ids[k] != ids[k - 1] and ids[k]]
    assert len(runs) == len(seen)
    assert not open_source(uri).live
    for f in a:  # the part box is given exactly while the part id is, and lies inside the frame
        assert (f.roi is None) == (f.part_id is None)
        if f.roi:
            x, y, w, h = f.roi
            assert x >= 0 and y >= 0 and x + w <= 320 and y + h <= 180


def test_demo_with_fps_is_paced_like_a_live_camera():
    src = open_source("demo://?frames=6&fps=50&width=128&height=96")
    assert isinstance(src, DemoSource) and src.live and src.gives_parts
    t0 = time.perf_counter()
    assert len(list(src)) == 6
    assert time.perf_counter() - t0 >= 5 / 50 * 0.9


# --- URI messages -------------------------------------------------------------------------
def test_a_small_demo_frame_blames_the_default_speed_not_the_size():
    with pytest.raises(UserError) as exc:
        open_source("demo://?width=64&height=64")
    msg = str(exc.value)
    assert "the default speed 96 (pixels per frame) is more than the frame width 64" in msg
    assert "speed=1..64" in msg and "width must be" not in msg
    with pytest.raises(UserError, match="speed 100 is more than the frame width 64; give speed=1..64$"):
        open_source("demo://?width=64&height=64&speed=100")
    src = open_source("demo://?width=64&height=64&speed=8&frames=3")
    assert src.read().image.shape[:2] == (64, 64)
    src.close()


@pytest.mark.parametrize("uri", ["demo://?frames=5&frames=6", "demo://?seed=1&fps=2&seed=1", "csi://0?flip=1&flip=2"])
def test_an_option_given_twice_is_refused(uri):
    with pytest.raises(UserError, match="is given twice; give each option once"):
        open_source(uri)
