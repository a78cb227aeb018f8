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
from urllib.parse import parse_qsl, urlsplit

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
    frame_hw: Optional[Tuple[int, int]] = None  # (height, width) when known before the first frame

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
        self.frame_hw = _capture_hw(self._cap)
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


# Options a URI may carry: name -> (type, smallest, largest). Bounds keep a typo such as
# width=60000 from allocating gigabytes or a negative seed from failing deep inside numpy.
Option = Tuple[type, float, float]
DEMO_OPTIONS: Dict[str, Option] = {"frames": (int, 1, 10**9), "fps": (float, 0.0, 1000.0),
                                   "seed": (int, 0, 2**32 - 1), "width": (int, 64, 7680),
                                   "height": (int, 64, 4320), "speed": (int, 1, 7680)}
CSI_OPTIONS: Dict[str, Option] = {"width": (int, 64, 7680), "height": (int, 64, 4320),
                                  "fps": (int, 1, 1000), "flip": (int, 0, 7)}
STREAM_SCHEMES = ("rtsp", "rtsps", "http", "https", "rtmp", "udp", "tcp", "srt")
FORMS = ("csi://N, v4l2:///dev/videoN, N, rtsp://..., http://..., gst://PIPELINE, file://PATH, "
         "a path/folder/glob, or demo://")


@dataclass
class SourceSpec:
    """A parsed, checked source URI: what to open, before anything is opened."""

    kind: str  # demo, csi, v4l2, stream, gst, path
    target: str  # sensor id, device, URL, pipeline or path
    options: Dict[str, float] = field(default_factory=dict)


def _number_option(uri: str, key: str, text: str, option: Option) -> float:
    kind, lo, hi = option
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        raise UserError(f"source {uri}: '{key}={text}' is not {what}; options are numbers "
                        "(example: demo://?frames=300&fps=30)") from None
    if not lo <= value <= hi:  # also refuses NaN
        raise UserError(f"source {uri}: '{key}={text}' is out of range; give {what} from {lo:g} to {hi:g}")
    return value


def _options(uri: str, query: str, allowed: Dict[str, Option]) -> Dict[str, float]:
    """Query options checked against `allowed`; a misspelt one is refused, not ignored."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise UserError(f"source {uri}: cannot read the options '{query}'; write them as "
                        "?key=value&key=value") from None
    q = dict(pairs)
    unknown = sorted(set(q) - set(allowed))
    if unknown:
        raise UserError(f"source {uri}: unknown option(s) {', '.join(unknown)}; valid: "
                        f"{', '.join(sorted(allowed)) or 'none'}")
    return {k: _number_option(uri, k, v, allowed[k]) for k, v in q.items()}


def parse_source(uri: str) -> SourceSpec:
    """Check a source URI without opening anything; UserError names the option and the accepted forms."""
    uri = str(uri).strip()
    if not uri or not uri.isprintable():
        raise UserError(f"source {uri!r} is empty or holds control characters (NUL, newline...); use one of {FORMS}")
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise UserError(f"source {uri}: {exc}; use one of {FORMS}") from None
    scheme = parts.scheme.lower() if len(parts.scheme) > 1 else ""  # 'C:' is a drive, not a scheme
    if scheme == "demo":
        spec = SourceSpec("demo", "", _options(uri, parts.query, DEMO_OPTIONS))
        width = int(spec.options.get("width", 1280))
        if spec.options.get("speed", 0) > width:
            raise UserError(f"source {uri}: speed {spec.options['speed']:g} is more than the frame width {width}")
        return spec
    if scheme == "csi":
        sensor = _number_option(uri, "sensor id", parts.netloc or "0", (int, 0, 15))
        return SourceSpec("csi", str(sensor), _options(uri, parts.query, CSI_OPTIONS))
    if scheme == "v4l2" or uri.isdigit():
        dev = uri if uri.isdigit() else (parts.path or parts.netloc)
        if not dev:
            raise UserError(f"source {uri}: name the device, for example v4l2:///dev/video0 or 0")
        return SourceSpec("v4l2", dev)
    if scheme in STREAM_SCHEMES:
        return SourceSpec("stream", uri)
    if scheme == "gst":  # gst://<any GStreamer pipeline ending in appsink>
        pipe = uri[len("gst://"):]
        if not pipe.strip():
            raise UserError(f"source {uri}: give a GStreamer pipeline ending in appsink after gst://")
        return SourceSpec("gst", pipe)
    if scheme == "file":
        return SourceSpec("path", parts.netloc + parts.path)
    if scheme:
        raise UserError(f"unknown source scheme '{scheme}' in {uri}; use {FORMS}")
    return SourceSpec("path", uri)


def _capture_hw(cap: cv2.VideoCapture) -> Optional[Tuple[int, int]]:
    """(height, width) an open capture reports, or None when it does not say."""
    h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    return (h, w) if h > 0 and w > 0 else None


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
    spec = parse_source(uri)
    if spec.kind == "demo":
        from .demo_source import DemoSource

        return DemoSource(uri, **spec.options)  # type: ignore[arg-type]
    if spec.kind == "csi":
        o = spec.options
        pipe = csi_pipeline(int(spec.target), int(o.get("width", 1280)), int(o.get("height", 720)),
                            int(o.get("fps", 30)), int(o.get("flip", 0)))
        if not _gstreamer_ok():
            raise UserError(f"source {uri} needs OpenCV built with GStreamer (JetPack's python3-opencv); "
                            "this OpenCV has no GStreamer. On a Jetson uninstall opencv-python from pip "
                            "so the system OpenCV is used")
        return CaptureSource(uri, lambda: cv2.VideoCapture(pipe, cv2.CAP_GSTREAMER), f"GStreamer: {pipe}")
    if spec.kind == "v4l2":
        target = int(spec.target) if spec.target.isdigit() else spec.target
        api = cv2.CAP_V4L2 if hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY
        return CaptureSource(uri, lambda: cv2.VideoCapture(target, api), f"V4L2 device {target}")
    if spec.kind == "stream":
        return CaptureSource(uri, _stream_capture(uri), "network stream via FFmpeg")
    if spec.kind == "gst":
        if not _gstreamer_ok():
            raise UserError(f"source {uri} needs OpenCV built with GStreamer; this OpenCV has none")
        return CaptureSource(uri, lambda: cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER),
                             f"GStreamer: {spec.target}")
    path = spec.target
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() in IMAGE_EXTS:
            return ImageFilesSource(uri, [path])
        return VideoFileSource(uri, path)
    paths = _file_paths(path)
    if not paths:
        raise UserError(f"source {uri}: no such file, or no images/videos in that folder or glob; "
                        "check the path (examples: clip.mp4, frames/, 'frames/*.png')")
    return ImageFilesSource(uri, paths)
