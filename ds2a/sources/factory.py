"""`open_source(uri)`: the one place a URI becomes a Source, so the loop never branches on the camera kind."""
from __future__ import annotations

import os

import cv2

from ..errors import UserError
from .base import IMAGE_EXTS, Source
from .capture import CaptureSource, ImageFilesSource, VideoFileSource, csi_pipeline, file_paths, gstreamer_ok, stream_capture
from .demo import DemoSource
from .uri import parse_source


def open_source(uri: str) -> Source:
    """A Source for a URI or path; UserError with the accepted forms when it cannot be opened."""
    uri = str(uri).strip()
    spec = parse_source(uri)
    if spec.kind == "demo":
        return DemoSource(uri, **spec.options)  # type: ignore[arg-type]
    if spec.kind == "csi":
        o = spec.options
        pipe = csi_pipeline(int(spec.target), int(o.get("width", 1280)), int(o.get("height", 720)),
                            int(o.get("fps", 30)), int(o.get("flip", 0)))
        if not gstreamer_ok():
            raise UserError(f"source {uri} needs OpenCV built with GStreamer (JetPack's python3-opencv); "
                            "this OpenCV has no GStreamer. On a Jetson uninstall opencv-python from pip "
                            "so the system OpenCV is used")
        return CaptureSource(uri, lambda: cv2.VideoCapture(pipe, cv2.CAP_GSTREAMER), f"GStreamer: {pipe}")
    if spec.kind == "v4l2":
        target = int(spec.target) if spec.target.isdigit() else spec.target
        api = cv2.CAP_V4L2 if hasattr(cv2, "CAP_V4L2") else cv2.CAP_ANY
        return CaptureSource(uri, lambda: cv2.VideoCapture(target, api), f"V4L2 device {target}")
    if spec.kind == "stream":
        return CaptureSource(uri, stream_capture(uri), "network stream via FFmpeg")
    if spec.kind == "gst":
        if not gstreamer_ok():
            raise UserError(f"source {uri} needs OpenCV built with GStreamer; this OpenCV has none")
        return CaptureSource(uri, lambda: cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER),
                             f"GStreamer: {spec.target}")
    path = spec.target
    if os.path.isfile(path):
        if os.path.splitext(path)[1].lower() in IMAGE_EXTS:
            return ImageFilesSource(uri, [path])
        return VideoFileSource(uri, path)
    paths = file_paths(path)
    if not paths:
        raise UserError(f"source {uri}: no such file, or no images/videos in that folder or glob; "
                        "check the path (examples: clip.mp4, frames/, 'frames/*.png')")
    return ImageFilesSource(uri, paths)
