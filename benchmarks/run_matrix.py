#!/usr/bin/env python3
"""Benchmark matrix: PyTorch, ONNX Runtime FP32/FP16/INT8 (both Q/DQ placements) and TensorRT
(where available) for ds2a_tiny and ds2a_r18 at 256x256 and 512x512.

Writes OUT.json (everything, raw samples), OUT.md (the table, targets, machine, command) and
OUT.png (latency distribution per row, accuracy against latency).

    python benchmarks/run_matrix.py --data data/synth --out benchmarks/results/cpu_matrix
    python benchmarks/run_matrix.py --models ds2a_tiny --sizes 256 --merge   # re-run one group
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile

from ds2a.bench.matrix import run_matrix, write_report
from ds2a.errors import UserError
from ds2a.meta import parse_size

DEMO = os.path.join("ds2a", "assets", "demo", "ds2a_tiny_synth.pt")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ds2a_tiny", "ds2a_r18"])
    p.add_argument("--sizes", nargs="+", default=["256", "512"], help="HxW or one number (square)")
    p.add_argument("--demo", default=DEMO, help="trained checkpoint used for its arch (mIoU rows)")
    p.add_argument("--data", help="synthetic dataset (M-BSD layout): mIoU of the demo model and parity frames")
    p.add_argument("--calib-data", help="calibration images (default: --data)")
    p.add_argument("--calib-images", type=int, default=16, help="calibration images per INT8 model (default 16)")
    p.add_argument("--limit", type=int, default=50, help="test images scored for mIoU (default 50)")
    p.add_argument("--parity-frames", type=int, default=2, help="frames compared with PyTorch (default 2)")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "ds2a_bench_work"),
                   help="exported/calibrated files, cached between runs (default: a temp folder)")
    p.add_argument("--rebuild", action="store_true", help="export and calibrate again even when files exist")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "cpu_matrix"), help="output prefix")
    p.add_argument("--merge", action="store_true", help="keep groups of an existing OUT.json not measured now")
    p.add_argument("--warmup-s", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=5.0, help="timed seconds per row (default 5)")
    p.add_argument("--min-iterations", type=int, default=5, help="at least this many timed runs (default 5)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = all)")
    p.add_argument("--tensorrt", action="store_true", help="also build and time TensorRT engines")
    p.add_argument("--gpu-torch", action="store_true", help="run the PyTorch rows on CUDA when available")
    p.add_argument("--note", dest="notes", action="append", help="free text stored with the results")
    args = p.parse_args(argv)
    args.sizes = [parse_size(s) for s in args.sizes]
    args.command = "python benchmarks/run_matrix.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    args.bench = argparse.Namespace(batch=1, warmup_s=args.warmup_s, iterations=None, duration=args.duration,
                                    min_iterations=args.min_iterations, threads=args.threads, device=None,
                                    cuda_graph=False, split="test", limit=args.limit, size=None)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731
    previous = None
    if args.merge and os.path.isfile(args.out + ".json"):
        with open(args.out + ".json") as f:
            previous = json.load(f)
    try:
        report = run_matrix(args, log, previous)
    except UserError as exc:
        print(f"run_matrix: error: {exc}", file=sys.stderr)
        return 2
    write_report(report, args.out)
    print(f"wrote {args.out}.json, {args.out}.md, {args.out}.png")
    for note in report["notes"]:
        print("-", note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
