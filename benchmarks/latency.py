#!/usr/bin/env python3
"""Latency benchmark of one or more models: the same as `ds2a bench` (see `--help`).

    python benchmarks/latency.py --model ds2a/assets/demo/ds2a_tiny_synth.int8.onnx --duration 10 \\
        --markdown benchmarks/results/latency.md
"""
import sys

from ds2a.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
