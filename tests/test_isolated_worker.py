"""The ModelOpt worker process never outlives `ds2a calibrate`: SIGTERM stops both and removes the temp files."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _wait_for(cond, timeout: float = 30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_to_the_parent_stops_the_worker_and_removes_temp_files(tmp_path: Path, sig) -> None:
    (tmp_path / "slow_worker.py").write_text(textwrap.dedent("""
        import os, time
        def hold(pid_file):
            open(pid_file, "w").write(str(os.getpid()))
            time.sleep(120)
    """))
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    pid_file = tmp_path / "worker.pid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)]), "TMPDIR": str(tmp)}
    code = f"from ds2a.precision.isolated import run_isolated; run_isolated('slow_worker:hold', {str(pid_file)!r})"
    parent = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        assert _wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip()), "worker did not start"
        worker = int(pid_file.read_text())
        assert list(tmp.glob("ds2a_*"))  # the job file's folder exists while the worker runs
        parent.send_signal(sig)
        assert parent.wait(timeout=30) == 128 + sig
        assert _wait_for(lambda: not _alive(worker), 15), "the worker outlived its parent"
        assert list(tmp.glob("ds2a_*")) == []
    finally:
        if parent.poll() is None:
            parent.kill()


def test_the_worker_dies_with_a_killed_parent(tmp_path: Path) -> None:
    (tmp_path / "slow_worker.py").write_text("import os, time\n"
                                             "def hold(p):\n    open(p, 'w').write(str(os.getpid()))\n"
                                             "    time.sleep(120)\n")
    pid_file = tmp_path / "worker.pid"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    code = f"from ds2a.precision.isolated import run_isolated; run_isolated('slow_worker:hold', {str(pid_file)!r})"
    parent = subprocess.Popen([sys.executable, "-c", code], env=env)
    assert _wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip())
    worker = int(pid_file.read_text())
    parent.kill()
    parent.wait(timeout=30)
    assert _wait_for(lambda: not _alive(worker), 15), "the worker outlived a SIGKILLed parent"
