"""Where annotated frames go, by URI: `display://0`, a video file (.mp4/.avi/.mkv), an image folder, `none`.

Each sink is checked when opened (window possible? folder writable?) so a bad path fails
before the first frame, not an hour into a shift.
"""
from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..errors import UserError
from ..outputs import check_outputs, check_writable_dir, write_new
from ..sources.capture import file_paths

logger = logging.getLogger(__name__)

VIDEO_EXTS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}


class Sink:
    """Takes annotated BGR frames. `write` returns False when the user asked to stop (display 'q')."""

    uri = ""

    def write(self, image: np.ndarray) -> bool:
        return True

    def close(self) -> None:
        pass


class NullSink(Sink):
    uri = "none"


class DisplaySink(Sink):
    """An OpenCV window; q or Esc stops the run."""

    def __init__(self, uri: str = "display://0", title: str = "ds2a inspect") -> None:
        self.uri, self.title = uri, title
        no_desktop = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                              or os.environ.get("WAYLAND_DISPLAY"))
        try:
            if no_desktop:  # GTK would print a warning and exit the process; fail politely instead
                raise cv2.error("no DISPLAY")
            cv2.namedWindow(self.title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise UserError("cannot open a display window (OpenCV without GUI support, or no desktop/DISPLAY); "
                            "use --headless with --output FILE.mp4, or install opencv-python instead of "
                            "opencv-python-headless") from None

    def write(self, image: np.ndarray) -> bool:
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


class VideoSink(Sink):
    """A video file; opened on the first frame (size known then), later frames resized to it."""

    def __init__(self, path: str, fps: float = 30.0) -> None:
        self.uri, self.path, self.fps = path, path, float(fps) if fps and fps > 0 else 30.0
        ext = os.path.splitext(path)[1].lower()
        self.fourcc = VIDEO_EXTS[ext]
        check_writable_dir(os.path.dirname(os.path.abspath(path)), "the output video")
        if os.path.isdir(path):
            raise UserError(f"output {path} is a folder; give a file name such as {path.rstrip('/')}.mp4")
        self._writer: Optional[cv2.VideoWriter] = None
        self._size: Optional[Tuple[int, int]] = None
        self.frames = 0

    def write(self, image: np.ndarray) -> bool:
        h, w = image.shape[:2]
        if self._writer is None:
            self._size = (w, h)
            self._writer = cv2.VideoWriter(self.path, cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self._writer.isOpened():
                raise UserError(f"OpenCV cannot write video {self.path} ({self.fourcc}); try an .avi output")
        if (w, h) != self._size:
            image = cv2.resize(image, self._size)
        self._writer.write(image)
        self.frames += 1
        return True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            self._check_playable()

    def _check_playable(self) -> None:
        """OpenCV's VideoWriter reports no write error: a full disk leaves an mp4 without its index
        (unplayable) in silence. Reopen the file and warn when it does not give its frames back."""
        cap = cv2.VideoCapture(self.path)
        try:
            ok = cap.isOpened() and cap.read()[0]
        finally:
            cap.release()
        if not ok:
            free = _free_bytes(os.path.dirname(os.path.abspath(self.path)))
            disk = f"; {free // 2**20} MiB free on its disk" if free is not None else ""
            logger.warning(f"warning: output video {self.path} cannot be read back after {self.frames} frame(s): it is "
                           f"probably incomplete and unplayable (disk full?{disk}); the records are not affected")


def _free_bytes(folder: str) -> Optional[int]:
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


class ImageFolderSink(Sink):
    """Numbered JPEG files in a folder, named per run (start time + random tag) and never replacing a file,
    so a second run into the same folder keeps the first run's frames."""

    def __init__(self, path: str, ext: str = ".jpg") -> None:
        self.uri, self.path, self.ext = path, path, ext
        check_writable_dir(path, "output images")
        self.run_tag = time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.count = 0

    def write(self, image: np.ndarray) -> bool:
        name = os.path.join(self.path, f"{self.run_tag}_{self.count:06d}{self.ext}")
        ok, data = cv2.imencode(self.ext, image)
        try:
            if not ok:
                raise OSError("the image could not be encoded")
            write_new(name, data.tobytes())
        except OSError as exc:
            raise UserError(f"cannot write {name}: {exc.strerror or exc}; check free space and permissions") from None
        self.count += 1
        return True


def _file_uri(uri: str) -> str:
    uri = str(uri).strip()
    return uri[len("file://"):] if uri.startswith("file://") else uri  # Python 3.8: no removeprefix


def check_run_outputs(outputs: Sequence[str], db: Optional[str], inputs: Sequence[Tuple[str, Optional[str]]]) -> None:
    """Before the model opens: no video --output or --db may be an input (model, rules, the source: a file, or
    any file of a folder or glob source) or each other, and their folders must be writable."""
    files: List[Tuple[str, Optional[str]]] = [("--db", db)]
    for uri in outputs:
        path = _file_uri(uri)
        if os.path.splitext(path)[1].lower() in VIDEO_EXTS:
            files.append(("the output video --output", path))
    ins: List[Tuple[str, Optional[str]]] = []
    for label, p in inputs:
        if p is None:
            continue
        path = _file_uri(p)
        if label == "--source" and "://" not in path and not os.path.isfile(path):
            # a folder or glob source reads exactly the files the image source lists (ds2a/sources/capture.py)
            ins += [(f"--source {f}", f) for f in file_paths(path)]
        else:
            ins.append((label, path))
    check_outputs(files, ins)  # URIs (demo://, csi://, triton://) read no local file and are skipped there


def open_sink(uri: str, fps: float = 30.0) -> Sink:
    """A Sink for `display://N`, `none`, `FILE.mp4|.avi|.mkv|.mov` (file:// allowed) or a folder."""
    uri = str(uri).strip()
    if uri in ("none", "null", "none://", "null://"):
        return NullSink()
    if uri.startswith("display"):
        return DisplaySink(uri)
    path = _file_uri(uri)
    ext = os.path.splitext(path)[1].lower()
    if ext in VIDEO_EXTS:
        return VideoSink(path, fps)
    if ext:
        raise UserError(f"output {uri}: unknown video type '{ext}'; use one of {', '.join(VIDEO_EXTS)}, "
                        "a folder for images, display://0 or none")
    return ImageFolderSink(path)
