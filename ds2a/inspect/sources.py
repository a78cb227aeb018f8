"""Frame sources by URI, so the inspection loop never branches on the camera kind.

`open_source(uri)` understands `csi://N`, `v4l2:///dev/videoN` or an index, `rtsp://`,
`http(s)://` (MJPEG or anything OpenCV's FFmpeg reads), `gst://PIPELINE`, `file://` or a path (video,
image, folder, glob) and `demo://` (the synthetic conveyor). Live sources reconnect with
backoff on their own; file sources end after their last frame.
"""
from __future__ import annotations

import glob
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np

from ..errors import UserError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpg", ".mjpeg", ".ts"}


@dataclass
class Frame:
    """One captured image and where it came from."""

    image: np.ndarray
    index: int  # position in the source; gaps mean frames the source skipped
    t_wall: float  # time.time() at capture, for records
    t_perf: float  # time.perf_counter() at capture, for latency
    part_id: Optional[str] = None  # set by sources that know which part is in view (demo://)
    name: str = ""  # file name for image sources
    roi: Optional[Tuple[int, int, int, int]] = None  # x, y, w, h of the part, when the source knows it


@dataclass
class SourceStats:
    """What went wrong while reading, so the run report can say it."""

    reconnects: int = 0
    corrupt: int = 0
    events: Deque[str] = field(default_factory=lambda: deque(maxlen=100))  # the latest, for the summary


class Source:
    """Base class: `read()` gives the next Frame, or None when the source has ended or stopped."""

    live = False  # live sources keep only the newest frame; files process every frame
    gives_parts = False  # True when frames carry part ids (a trigger), e.g. demo://
    gives_roi = False  # True when frames carry the part's box, e.g. demo://
    fps: Optional[float] = None

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.stats = SourceStats()
        self._stop = threading.Event()

    def read(self) -> Optional[Frame]:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask a blocked `read()` (waiting for a reconnect) to give up; safe from any thread."""
        self._stop.set()

    def close(self) -> None:
        """Release the device; call from the thread that reads."""

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame

    def _frame(self, image: np.ndarray, index: int, **kw: object) -> Frame:
        return Frame(image=image, index=index, t_wall=time.time(), t_perf=time.perf_counter(), **kw)  # type: ignore[arg-type]


class CaptureSource(Source):
    """A live OpenCV capture (camera, RTSP, HTTP) that reconnects with exponential backoff.

    A few failed reads in a row are corrupt frames and skipped; `fail_limit` in a row means
    the stream is gone, so it is reopened, waiting backoff_s, 2*backoff_s, ... max_backoff_s.
    """

    live = True

    def __init__(self, uri: str, opener: Callable[[], cv2.VideoCapture], describe: str,
                 backoff_s: float = 0.5, max_backoff_s: float = 8.0, fail_limit: int = 3) -> None:
        super().__init__(uri)
        self._opener = opener
        self.describe = describe
        self.backoff_s, self.max_backoff_s, self.fail_limit = backoff_s, max_backoff_s, fail_limit
        self._index = 0
        self._cap = opener()
        if not self._cap.isOpened():
            self._cap.release()
            raise UserError(f"cannot open source {uri} ({describe}); check that it is connected and "
                            "reachable, or try --source demo:// to test without a camera")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None

    def read(self) -> Optional[Frame]:
        fails = 0
        while not self._stop.is_set():
            ok, image = self._cap.read() if self._cap is not None else (False, None)
            if ok and image is not None and image.size:
                self.stats.corrupt += fails
                self._index += 1
                return self._frame(image, self._index - 1)
            fails += 1
            if fails >= self.fail_limit:
                self._reconnect()
                fails = 0
        return None

    def _reconnect(self) -> None:
        """Reopen until it works or stop() is called; the wait doubles each time."""
        self.stats.reconnects += 1
        self.stats.events.append(f"{time.strftime('%H:%M:%S')} lost {self.uri}, reconnecting")
        if self._cap is not None:
            self._cap.release()
            self._cap = None
        wait = self.backoff_s
        while not self._stop.wait(wait):
            cap = self._opener()
            if cap.isOpened():
                self._cap = cap
                self.stats.events.append(f"{time.strftime('%H:%M:%S')} reconnected {self.uri}")
                return
            cap.release()
            wait = min(wait * 2, self.max_backoff_s)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class VideoFileSource(Source):
    """Every frame of a video file, in order."""

    def __init__(self, uri: str, path: str) -> None:
        super().__init__(uri)
        self.path = path
        self._cap = cv2.VideoCapture(path)
        if not self._cap.isOpened():
            raise UserError(f"cannot read video {path}: OpenCV (FFmpeg) does not open it; "
                            "check that the file is a complete video (mp4, avi, mkv...)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        self._index = 0

    def read(self) -> Optional[Frame]:
        if self._stop.is_set() or self._cap is None:
            return None
        ok, image = self._cap.read()
        if not ok or image is None:
            return None
        self._index += 1
        return self._frame(image, self._index - 1, name=os.path.basename(self.path))

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFilesSource(Source):
    """Images (and videos) from a list of files; unreadable images are skipped and counted.

    Each still image is its own part, named after its file, so a folder of part photos gets
    one verdict per photo.
    """

    gives_parts = True

    def __init__(self, uri: str, paths: List[str]) -> None:
        super().__init__(uri)
        self.paths = paths
        self._pos = 0
        self._video: Optional[VideoFileSource] = None
        self._index = 0

    def read(self) -> Optional[Frame]:
        while not self._stop.is_set():
            if self._video is not None:
                frame = self._video.read()
                if frame is not None:
                    frame.index = self._index
                    frame.part_id = f"{frame.name}#{frame.index}"
                    self._index += 1
                    return frame
                self._video.close()
                self._video = None
            if self._pos >= len(self.paths):
                return None
            path = self.paths[self._pos]
            self._pos += 1
            if os.path.splitext(path)[1].lower() in VIDEO_EXTS:
                try:
                    self._video = VideoFileSource(path, path)
                except UserError:
                    self.stats.corrupt += 1
                continue
            image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if image is None or not image.size:
                self.stats.corrupt += 1
                self.stats.events.append(f"skipped unreadable image {path}")
                continue
            self._index += 1
            name = os.path.basename(path)
            return self._frame(image, self._index - 1, name=name, part_id=name)
        return None

    def close(self) -> None:
        if self._video is not None:
            self._video.close()


def csi_pipeline(sensor_id: int, width: int = 1280, height: int = 720, fps: int = 30, flip: int = 0) -> str:
    """The GStreamer pipeline for a Jetson CSI camera: NVMM capture, hardware convert, BGR appsink."""
    return (
        f"nvarguscamerasrc sensor-id={sensor_id} ! "
        f"video/x-raw(memory:NVMM), width={width}, height={height}, framerate={fps}/1, format=NV12 ! "
        f"nvvidconv flip-method={flip} ! video/x-raw, format=BGRx ! "
        "videoconvert ! video/x-raw, format=BGR ! appsink drop=true max-buffers=1 sync=false"
    )


def _query(parts: object) -> Dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(getattr(parts, "query", "")).items()}


def _int_param(q: Dict[str, str], key: str, default: int, uri: str) -> int:
    try:
        return int(q.get(key, default))
    except ValueError:
        raise UserError(f"source {uri}: '{key}={q[key]}' is not a whole number") from None


def _gstreamer_ok() -> bool:
    info = cv2.getBuildInformation()
    return any("GStreamer" in line and "YES" in line for line in info.splitlines())


def _stream_capture(url: str) -> Callable[[], cv2.VideoCapture]:
    """FFmpeg with 5 s open/read timeouts (so a dead stream is noticed), else whatever OpenCV has
    (JetPack's OpenCV may lack FFmpeg but open the URL through GStreamer)."""
    timeouts = [getattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC", None), 5000,
                getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", None), 5000]

    def opener() -> cv2.VideoCapture:
        try:
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, timeouts) if None not in timeouts else \
                cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        except (cv2.error, TypeError):  # OpenCV < 4.5.2 has no params argument
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            cap = cv2.VideoCapture(url)
        return cap

    return opener


def _file_paths(spec: str) -> List[str]:
    if os.path.isdir(spec):
        names = sorted(os.listdir(spec))
        return [os.path.join(spec, n) for n in names
                if os.path.splitext(n)[1].lower() in IMAGE_EXTS | VIDEO_EXTS]
    return sorted(p for p in glob.glob(spec) if os.path.isfile(p))


def open_source(uri: str) -> Source:
    """A Source for a URI or path; UserError with the accepted forms when it cannot be opened."""
    uri = str(uri).strip()
    parts = urlsplit(uri)
    scheme = parts.scheme.lower() if len(parts.scheme) > 1 else ""  # 'C:' is a drive, not a scheme
    q = _query(parts)
    if scheme == "demo":
        from .demo_source import DemoSource

        return DemoSource.from_uri(uri)
    if scheme == "csi":
        sensor = _int_param({"id": parts.netloc or "0"}, "id", 0, uri)
        pipe = csi_pipeline(sensor, _int_param(q, "width", 1280, uri), _int_param(q, "height", 720, uri),
                            _int_param(q, "fps", 30, uri), _int_param(q, "flip", 0, uri))
        if not _gstreamer_ok():
            raise UserError(f"source {uri} needs OpenCV built with GStreamer (JetPack's python3-opencv); "
                            "this OpenCV has no GStreamer. On a Jetson uninstall opencv-python from pip "
                            "so the system OpenCV is used")
        return CaptureSource(uri, lambda: cv2.VideoCapture(pipe, cv2.CAP_GSTREAMER), f"GStreamer: {pipe}")
    if scheme == "v4l2" or uri.isdigit():
        dev = uri if uri.isdigit() else (parts.path or parts.netloc)
        target = int(dev) if dev.isdigit() else dev
        api = cv2.CAP_V4L2 if hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY
        return CaptureSource(uri, lambda: cv2.VideoCapture(target, api), f"V4L2 device {target}")
    if scheme in ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp", "srt"):
        return CaptureSource(uri, _stream_capture(uri), "network stream via FFmpeg")
    if scheme == "gst":  # gst://<any GStreamer pipeline ending in appsink>
        pipe = uri[len("gst://"):]
        if not _gstreamer_ok():
            raise UserError(f"source {uri} needs OpenCV built with GStreamer; this OpenCV has none")
        return CaptureSource(uri, lambda: cv2.VideoCapture(pipe, cv2.CAP_GSTREAMER), f"GStreamer: {pipe}")
    if scheme == "file":
        spec = parts.netloc + parts.path
    elif scheme:
        raise UserError(f"unknown source scheme '{scheme}' in {uri}; use csi://N, v4l2:///dev/videoN, "
                        "N, rtsp://..., http://..., gst://PIPELINE, file://PATH, a path/folder/glob, or demo://")
    else:
        spec = uri
    if os.path.isfile(spec):
        if os.path.splitext(spec)[1].lower() in IMAGE_EXTS:
            return ImageFilesSource(uri, [spec])
        return VideoFileSource(uri, spec)
    paths = _file_paths(spec)
    if not paths:
        raise UserError(f"source {uri}: no such file, or no images/videos in that folder or glob; "
                        "check the path (examples: clip.mp4, frames/, 'frames/*.png')")
    return ImageFilesSource(uri, paths)
