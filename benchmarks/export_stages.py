#!/usr/bin/env python3
"""Memory of `ds2a export` stage by stage: resident now / peak so far (GiB) on entry and exit of each.

Wraps, in this process only, the export's stages (`torch_export`, `slim`, `build_onnx` in
ds2a/export/onnx_export.py; `check_parity`, `compare`, `_torch_logits` in ds2a/export/parity.py)
and `onnxruntime.InferenceSession` (onnxslim's constant folding and the parity check open them),
then runs `ds2a export` unchanged with the given arguments. One line per event on stderr:

    python benchmarks/export_stages.py runs/mem/ds2a_r50_512.pt --out runs/mem/r50_512.onnx --data synth512

benchmarks/results/memory.md ("re-run with a memory trace per stage") ran it under
benchmarks/peak_memory.py. Linux only (/proc/self/status).
"""
from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

GIB = 1024.0 ** 3
STAGES = {"ds2a.export.onnx_export": ("torch_export", "slim", "build_onnx"),
          "ds2a.export.parity": ("check_parity", "compare", "_torch_logits")}
T0 = time.monotonic()


def memory() -> Dict[str, float]:
    """VmRSS (resident now) and VmHWM (peak resident so far) of this process, GiB."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) * 1024 / GIB
    return out


def log(event: str) -> None:
    m = memory()
    print(f"{time.monotonic() - T0:7.1f} s  {event:<36} rss {m['VmRSS']:.2f}  peak {m['VmHWM']:.2f} GiB",
          file=sys.stderr, flush=True)


def traced(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        log(f"{name} start")
        try:
            return fn(*args, **kwargs)
        finally:
            log(f"{name} end")
    return wrapper


def install() -> None:
    """Replace the stage functions by traced ones (they are looked up by module attribute at call time)."""
    import importlib

    import onnxruntime

    for module_name, names in STAGES.items():
        module = importlib.import_module(module_name)
        for name in names:
            setattr(module, name, traced(name, getattr(module, name)))
    onnxruntime.InferenceSession = traced("InferenceSession", onnxruntime.InferenceSession)


def main(argv: Any = None) -> int:
    from ds2a.cli import main as ds2a_main

    log("start")
    install()
    log("imports done")
    rc = ds2a_main(["export", *(sys.argv[1:] if argv is None else argv)])
    log(f"ds2a export done (rc {rc})")
    return rc


if __name__ == "__main__":
    sys.exit(main())
