"""Run a ModelOpt step in a child Python process.

ModelOpt patches onnxruntime's calibrators when imported, which would break a later
`--target onnxruntime` run in the same process (tests, benchmarks). A plain `python -m` child
(not multiprocessing's spawn, which re-imports the caller's __main__) keeps every caller safe.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import pickle
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

from ..errors import UserError


class Terminated(SystemExit):
    """SIGTERM/SIGHUP arrived while a worker ran: unwinds the caller so its cleanup (worker, temp files) runs."""


@contextlib.contextmanager
def signals_unwind() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into `Terminated` while the worker runs (main thread only), then restore."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(128 + signum)

    names = [n for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)]
    old = {n: signal.signal(getattr(signal, n), handler) for n in names}
    try:
        yield
    finally:
        for n, h in old.items():
            signal.signal(getattr(signal, n), h)


def _die_with_parent() -> None:
    """In the child (Linux): get SIGTERM when the parent dies, even by SIGKILL, so no worker outlives it."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _stop(proc: "subprocess.Popen[bytes]", grace_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_isolated(func_path: str, *args: Any) -> None:
    """Call `module:function(*args)` in a child process; its output streams through, failures raise UserError.

    The child never outlives this call: a signal or an exception here stops it, and its temp files go.
    """
    proc: Optional["subprocess.Popen[bytes]"] = None
    with tempfile.TemporaryDirectory(prefix="ds2a_iso_") as tmp:
        job = Path(tmp) / "job.pkl"
        with open(job, "wb") as fh:
            pickle.dump((func_path, args, logging.getLogger("ds2a").getEffectiveLevel()), fh)
        with signals_unwind():
            try:
                proc = subprocess.Popen([sys.executable, "-m", "ds2a.precision.isolated", str(job)],
                                        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
                proc.wait()
            finally:
                if proc is not None:
                    _stop(proc)
    if proc.returncode != 0:
        raise UserError(f"{func_path.split(':')[-1].lstrip('_')} failed in its worker process (exit code "
                        f"{proc.returncode}; its log is above); a negative code means it was killed, "
                        "e.g. out of memory")


def _main(job: str) -> int:
    with open(job, "rb") as fh:
        func_path, args, level = pickle.load(fh)
    ds2a_logger = logging.getLogger("ds2a")  # the worker's progress lines, printed as the caller would see them
    ds2a_logger.addHandler(logging.StreamHandler(sys.stdout))
    ds2a_logger.setLevel(level)
    module, name = func_path.split(":")
    getattr(importlib.import_module(module), name)(*args)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
