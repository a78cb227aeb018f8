"""SIGINT/SIGTERM/SIGHUP during an inspection: stop cleanly, never leave a run without its records, and
exit with the signal's conventional code (128 + its number) so a script can tell it from a complete run."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Dict, Optional

from .loop import InspectionLoop

logger = logging.getLogger(__name__)

# SIGHUP: the ssh session or terminal went away; flushed like SIGTERM (its default would kill without the records)
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143, "SIGHUP": 129}  # 128 + the signal number, as a shell reports it


def exit_code(stop_reason: str) -> int:
    """The exit status of `ds2a inspect` for a run that ended normally: 0, or 128+N when a signal stopped it."""
    return EXIT_CODES.get(stop_reason, 0)


class StopSignals:
    """SIGINT/SIGTERM/SIGHUP handling from before warm-up until the records are flushed.

    Before the loop exists the first signal is remembered (the loop stops as soon as it is
    made) and a second aborts start-up, when nothing is recorded yet. While the loop runs the
    first finishes cleanly and a second drops the queued frames. While the records are being
    flushed every signal waits for the flush, so no run is left `running` and no verdict lost.
    Handlers are installed only on the main thread (Python delivers signals there).
    """

    def __init__(self) -> None:
        self.count = 0
        self.previous: Dict[int, Any] = {}  # handlers to put back
        self.loop: Optional[InspectionLoop] = None
        self.pending: Optional[str] = None
        self.first = ""  # the run stopped because of the first signal, even when a second one aborts
        self.flushing = False

    def install(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def attach(self, loop: InspectionLoop) -> None:
        self.loop = loop
        if self.pending:
            loop.stop(self.pending)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        self.first = self.first or name  # set before anything else: a second signal may interrupt this handler
        if self.flushing:
            logger.info(f"\n{name}: writing the records; exiting as soon as they are flushed")
        elif self.loop is None:
            if self.count > 1:
                raise KeyboardInterrupt
            self.pending = name
            logger.info(f"\n{name}: stopping as soon as start-up is done (again to abort start-up)")
        elif self.count == 1:
            logger.info(f"\n{name}: finishing the frames in flight and flushing records (again to abort)")
            self.loop.stop(f"{name}")
        else:
            logger.info(f"\n{name}: dropping queued frames; what was recorded stays recorded")
            self.loop.abort(self.first)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}
