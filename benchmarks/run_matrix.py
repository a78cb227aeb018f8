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
import logging
import os
import shlex
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from ds2a.bench import BenchOptions  # noqa: E402
from ds2a.bench.matrix import MatrixOptions, run_matrix, write_report  # noqa: E402
from ds2a.errors import UserError  # noqa: E402
from ds2a.meta import parse_size  # noqa: E402

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
    p.add_argument("--work", default=os.path.join("runs", "bench_work"),
                   help="exported/calibrated files, cached between runs (default: runs/bench_work)")
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
    return p.parse_args(argv)


def matrix_options(args: argparse.Namespace, argv=None) -> MatrixOptions:
    """The flags as library options."""
    bench = BenchOptions(warmup_s=args.warmup_s, duration=args.duration, min_iterations=args.min_iterations,
                         threads=args.threads, limit=args.limit)
    return MatrixOptions(
        models=args.models, sizes=[parse_size(s) for s in args.sizes], work=args.work, demo=args.demo,
        data=args.data, calib_data=args.calib_data, calib_images=args.calib_images,
        parity_frames=args.parity_frames, rebuild=args.rebuild, tensorrt=args.tensorrt, gpu_torch=args.gpu_torch,
        notes=list(args.notes or []), bench=bench,
        command="python benchmarks/run_matrix.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])))


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger("ds2a").addHandler(logging.StreamHandler())  # progress on stderr, one bare line each
    logging.getLogger("ds2a").setLevel(logging.INFO)
    previous = None
    if args.merge and os.path.isfile(args.out + ".json"):
        with open(args.out + ".json") as f:
            previous = json.load(f)
    try:
        report = run_matrix(matrix_options(args, argv), previous)
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
