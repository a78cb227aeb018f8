#!/usr/bin/env python3
"""Latency benchmark of one or more models: the same as `ds2a bench` (see `--help`).

    python benchmarks/latency.py --model ds2a/assets/demo/ds2a_tiny_synth.int8.onnx --duration 10 \\
        --markdown benchmarks/results/latency.md
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from ds2a.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
