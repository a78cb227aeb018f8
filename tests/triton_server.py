"""Test helper: a real `ds2a serve` (PyTriton + tritonserver) on 127.0.0.1 free ports, started as a user would."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"


def serve_skip_reason() -> Optional[str]:
    """Why `ds2a serve` cannot run in this environment (None: it can)."""
    try:
        import pytriton  # noqa: F401
        import tritonclient.grpc  # noqa: F401
    except ImportError as exc:
        return f"ds2a serve needs nvidia-pytriton and tritonclient (pip install -e '.[serve]'): {exc}"
    from ds2a.errors import UserError
    from ds2a.serve.server import check_numpy

    try:
        check_numpy()
    except UserError as exc:
        return str(exc)
    return None


def free_ports(n: int) -> List[int]:
    """n distinct free TCP ports on 127.0.0.1 (held together while chosen, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ServeProcess:
    """`python -m ds2a serve MODEL` with its own ports; `stop()` is SIGTERM, like an operator."""

    def __init__(self, log: Path, model: Path = DEMO_MODEL, ports: Optional[Sequence[int]] = None,
                 extra: Sequence[str] = ()) -> None:
        self.http, self.grpc, self.metrics = ports or free_ports(3)
        self.model, self.log_path, self.extra = model, log, list(extra)
        self.proc: Optional[subprocess.Popen] = None

    @property
    def grpc_url(self) -> str:
        return f"triton://127.0.0.1:{self.grpc}/ds2a"

    @property
    def http_url(self) -> str:
        return f"triton+http://127.0.0.1:{self.http}/ds2a"

    def start(self, timeout_s: float = 120.0) -> "ServeProcess":
        env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}  # `ds2a serve` must fix it itself
        cmd = [sys.executable, "-m", "ds2a", "serve", str(self.model), "--host", "127.0.0.1",
               "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
               "--threads", "1", *self.extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ds2a serve exited {self.proc.returncode}:\n{self.log()}")
            if "ready (Ctrl-C" in self.log():
                return self
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"ds2a serve not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tritonserver_pid(self) -> int:
        """The tritonserver child of this `ds2a serve` (to kill it like a crash)."""
        assert self.proc is not None
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid), "-f", "tritonserver"], capture_output=True,
                             text=True).stdout.split()
        return int(out[0])

    def wait_exit(self, timeout_s: float = 30.0) -> Optional[int]:
        """The exit code once `ds2a serve` ends by itself (None if it is still running after timeout_s)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout_s: float = 30.0) -> Optional[int]:
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only what it started
                proc.wait(timeout=10)
        return proc.returncode
