"""Run a ModelOpt step in a child Python process.

ModelOpt patches onnxruntime's calibrators when imported, which would break a later
`--target onnxruntime` run in the same process (tests, benchmarks). A plain `python -m` child
(not multiprocessing's spawn, which re-imports the caller's __main__) keeps every caller safe.
"""
from __future__ import annotations

import importlib
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ..errors import UserError


def run_isolated(func_path: str, *args: Any) -> None:
    """Call `module:function(*args)` in a child process; its output streams through, failures raise UserError."""
    with tempfile.TemporaryDirectory(prefix="ds2a_iso_") as tmp:
        job = Path(tmp) / "job.pkl"
        with open(job, "wb") as fh:
            pickle.dump((func_path, args), fh)
        proc = subprocess.run([sys.executable, "-m", "ds2a.precision.isolated", str(job)])
    if proc.returncode != 0:
        raise UserError(f"{func_path.split(':')[-1].lstrip('_')} failed in its worker process (exit code "
                        f"{proc.returncode}; its log is above); a negative code means it was killed, "
                        "e.g. out of memory")


def _main(job: str) -> int:
    with open(job, "rb") as fh:
        func_path, args = pickle.load(fh)
    module, name = func_path.split(":")
    getattr(importlib.import_module(module), name)(*args)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1]))
