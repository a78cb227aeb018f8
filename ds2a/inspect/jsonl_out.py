"""stdout for `ds2a inspect --jsonl` that outlives its reader.

`ds2a inspect --jsonl | head -1` closes the pipe after one line. The station must keep
inspecting and recording; only the JSON output stops, and the operator is told once.
"""
from __future__ import annotations

import errno
import logging
import os
from typing import IO, Optional

logger = logging.getLogger(__name__)


class JsonlOut:
    """A text stream whose write/flush stop quietly (after one note) when the reader has gone."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lines = 0  # lines handed to the reader before it left
        self.stopped: Optional[str] = None  # why the output stopped, for the summary and the records

    def write(self, text: str) -> int:
        if self.stopped is None:
            try:
                n = self.stream.write(text)
                self.lines += text.count("\n")
                return n
            except (BrokenPipeError, ValueError, OSError) as exc:  # ValueError: stream closed
                self._stop(exc)
        return len(text)

    def flush(self) -> None:
        if self.stopped is None:
            try:
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError) as exc:
                self._stop(exc)

    def _stop(self, exc: BaseException) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, BrokenPipeError) and exc.errno != errno.EPIPE:
            what = f"{exc.strerror or exc}"
        else:
            what = "the reader closed the pipe"
        self.stopped = f"JSON output stopped after {self.lines} line(s): {what}; inspection and records continue"
        logger.info(f"note: {self.stopped}")
        try:  # the interpreter's final flush of stdout would fail on the same pipe
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
