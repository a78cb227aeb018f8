"""Which OpenCV ds2a runs on, and the fix when there is none.

OpenCV is an extra (`pip install 'ds2a-edge[opencv]'`, which `make demo` and `make test`
install), so that on a Jetson pip's OpenCV, built without GStreamer, never shadows JetPack's
`python3-opencv`, which `csi://` cameras need.
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

MISSING = ("OpenCV (cv2) is not installed: on a desktop `pip install 'ds2a-edge[opencv]'` (or `make demo`); on a "
           "Jetson `sudo apt install python3-opencv` (JetPack's build has GStreamer, which csi:// needs)")
PIP_WHEELS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless")


def gstreamer_in_build(build_info: str) -> Optional[bool]:
    """Read `GStreamer: YES (1.20.3)` / `NO` from cv2.getBuildInformation(); None if the line is absent."""
    match = re.search(r"^\s*GStreamer:\s*(\S+)", build_info, flags=re.MULTILINE)
    if match is None:
        return None
    return match.group(1).upper() not in ("NO", "OFF")


def pip_wheels() -> List[str]:
    """The pip OpenCV distributions installed (none on a Jetson using JetPack's python3-opencv)."""
    from importlib import metadata  # noqa: PLC0415 - Python 3.8+

    found = []
    for name in PIP_WHEELS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found


def opencv_info(cv2: Any = None) -> Dict[str, Any]:
    """Version, file, GStreamer support and pip wheels of the OpenCV this Python imports."""
    if cv2 is None:
        try:
            import cv2  # noqa: PLC0415
        except ImportError as exc:
            return {"installed": False, "error": str(exc), "fix": MISSING, "pip_wheels": pip_wheels()}
    build = cv2.getBuildInformation() if hasattr(cv2, "getBuildInformation") else ""
    return {"installed": True, "version": str(getattr(cv2, "__version__", "?")),
            "file": str(getattr(cv2, "__file__", "") or ""), "gstreamer": gstreamer_in_build(build),
            "pip_wheels": pip_wheels()}
