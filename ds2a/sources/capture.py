"""OpenCV sources: live captures that reconnect with backoff (CSI, V4L2, network streams,
GStreamer), video files and image files/folders/globs."""
from __future__ import annotations

import glob
import os
import threading
import time
from typing import Callable, List, Optional, Tuple

import cv2
import numpy as np

from ..errors import UserError
from .base import IMAGE_EXTS, VIDEO_EXTS, Frame, Source

STREAM_TIMEOUT_S = 5.0  # how long a network stream may take to open or to send the next frame


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
        self.frame_hw = capture_hw(self._cap)
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


def read_image(path: str) -> Tuple[Optional[np.ndarray], str]:
    """(image, '') or (None, why): an image file decoded only when it is complete.

    libjpeg decodes a truncated JPEG without failing (it fills the lost part with grey and only
    warns on stderr), and libpng may do the same: a defect in the lost part would PASS. So a JPEG
    must end with its end-of-image marker (FF D9; trailing zero padding allowed) and a PNG with its
    IEND chunk before it is decoded (libjpeg jdmarker.c, the PNG specification section 11.2.5).
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror or exc}"
    if not data:
        return None, f"{path} is empty (0 bytes)"
    if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None, f"{path} is a truncated JPEG (no end-of-image marker)"
    if data[:8] == b"\x89PNG\r\n\x1a\n" and b"IEND" not in data[-12:]:
        return None, f"{path} is a truncated PNG (no IEND chunk)"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or not image.size:
        return None, f"{path} is not an image OpenCV can decode"
    return image, ""


class ImageFilesSource(Source):
    """Images (and videos) from a list of files.

    Each still image is its own part, named after its file, so a folder of part photos gets
    one verdict per photo. An unreadable image (empty, truncated, not an image) or video is still
    a part that reached the station: it is given as a frame without a picture (image None), which
    the loop records as NONE with the reason and counts as corrupt.
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
            name = os.path.basename(path)
            if os.path.splitext(path)[1].lower() in VIDEO_EXTS:
                try:
                    self._video = VideoFileSource(path, path)
                    continue
                except UserError:
                    image, why = None, f"{path}: OpenCV (FFmpeg) cannot open this video"
            else:
                image, why = read_image(path)
            if image is None:
                self.stats.events.append(f"unreadable: {why}")
            self._index += 1
            return self._frame(image, self._index - 1, name=name, part_id=name)  # type: ignore[arg-type]
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


def capture_hw(cap: cv2.VideoCapture) -> Optional[Tuple[int, int]]:
    """(height, width) an open capture reports, or None when it does not say."""
    h, w = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    return (h, w) if h > 0 and w > 0 else None


def gstreamer_ok() -> bool:
    info = cv2.getBuildInformation()
    return any("GStreamer" in line and "YES" in line for line in info.splitlines())


def stream_capture(url: str, timeout_s: float = STREAM_TIMEOUT_S) -> Callable[[], cv2.VideoCapture]:
    """FFmpeg with `timeout_s` open/read timeouts (so a dead stream is noticed), else whatever OpenCV has
    (JetPack's OpenCV may lack FFmpeg but open the URL through GStreamer). The fallback has no timeout
    of its own (FFmpeg's default is 30 s), so it gets `timeout_s` to open and is abandoned after that:
    a server that never answers is refused in about 2 x timeout_s, not 36 s."""
    ms = int(timeout_s * 1000)
    timeouts = [getattr(cv2, "CAP_PROP_OPEN_TIMEOUT_MSEC", None), ms,
                getattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC", None), ms]

    def opener() -> cv2.VideoCapture:
        try:
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG, timeouts) if None not in timeouts else \
                cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        except (cv2.error, TypeError):  # OpenCV < 4.5.2 has no params argument
            cap = cv2.VideoCapture(url, cv2.CAP_FFMPEG)
        if cap.isOpened():
            return cap
        cap.release()
        return open_within(lambda: cv2.VideoCapture(url), timeout_s)

    return opener


def open_within(open_capture: Callable[[], cv2.VideoCapture], timeout_s: float) -> cv2.VideoCapture:
    """open_capture() on a helper thread, given `timeout_s`; after that an unopened capture is returned and
    the late one, if it ever opens, is released by the helper thread (a blocked OpenCV call cannot be
    cancelled, only left behind)."""
    result: List[cv2.VideoCapture] = []
    lock = threading.Lock()
    abandoned = [False]
    done = threading.Event()

    def run() -> None:
        try:
            cap = open_capture()
            with lock:  # either handed over or released here, never both, never neither
                if abandoned[0]:
                    cap.release()
                else:
                    result.append(cap)
        except cv2.error:
            pass
        finally:
            done.set()

    threading.Thread(target=run, name="open-stream", daemon=True).start()
    done.wait(timeout_s)
    with lock:
        abandoned[0] = True
        if result:
            return result[0]
    return cv2.VideoCapture()  # not opened: the caller refuses the source (or retries with backoff)


def file_paths(spec: str) -> List[str]:
    if os.path.isdir(spec):
        names = sorted(os.listdir(spec))
        return [os.path.join(spec, n) for n in names
                if os.path.splitext(n)[1].lower() in IMAGE_EXTS | VIDEO_EXTS]
    return sorted(p for p in glob.glob(spec) if os.path.isfile(p))
