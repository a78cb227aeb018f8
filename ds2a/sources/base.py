"""What every frame source gives the inspection loop: a Frame (image, index, capture times, part id
and box when known), its SourceStats and the Source base class."""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, Iterator, Optional, Tuple

import numpy as np

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
    id_conflict: Optional[str] = None  # why the part's own id disagrees with the line's (ds2a/sources/barcode.py)


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
