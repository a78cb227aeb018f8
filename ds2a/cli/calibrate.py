"""`ds2a calibrate`: FP32 ONNX -> INT8 (symmetric Q/DQ) or FP16 (mixed) ONNX, on the CPU.

examples:
  ds2a calibrate model.onnx --data data/synth --precision int8 --out model.int8.onnx
  ds2a calibrate model.onnx --data data/synth --precision int8 --target onnxruntime --out model.int8cpu.onnx
  ds2a calibrate model.onnx --data calib.txt --precision int8 --method minmax --exclude Softmax --out m.onnx
  ds2a calibrate model.onnx --data data/synth --precision fp16 --out model.fp16.onnx
"""
from __future__ import annotations

import argparse

from ..cli.types import int_range


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="FP32 ONNX written by `ds2a export`")
    parser.add_argument("--data", required=True,
                        help="calibration images: dataset root (M-BSD layout), image folder, or manifest file")
    parser.add_argument("--precision", choices=("int8", "fp16"), required=True)
    parser.add_argument("--target", choices=("tensorrt", "onnxruntime"), default="tensorrt",
                        help="INT8 Q/DQ placement: tensorrt (NVIDIA ModelOpt) or onnxruntime (fast on ORT CPU)")
    parser.add_argument("--num-images", type=int_range(1), default=64, help="calibration images (default 64)")
    parser.add_argument("--min-images", type=int_range(1), help="fail when fewer readable images (default min(8, N))")
    parser.add_argument("--method", choices=("entropy", "minmax", "percentile"),
                        help="activation range method (default: minmax for --target tensorrt, entropy for "
                             "onnxruntime; measured in benchmarks/results/precision_demo.md)")
    parser.add_argument("--exclude", default="", help="comma-separated op types or node names (regex) kept in float")
    parser.add_argument("--split", default="train", help="dataset split to calibrate on (default train)")
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="image selection seed")
    parser.add_argument("--cache", help="calibration cache (default: OUT with .calib.json)")
    parser.add_argument("--no-cache", action="store_true", help="neither read nor write a calibration cache")
    parser.add_argument("--recalibrate", action="store_true", help="ignore and overwrite an existing cache")
    parser.add_argument("--out", required=True, help="output .onnx path")
    parser.add_argument("--compact-weights", action="store_true",
                        help="store weights FP16 holds exactly as FP16 (lossless, a smaller file; TensorRT "
                             "builds and every runtime see the same values)")


def run(args: argparse.Namespace) -> int:
    from ..precision import CalibrationOptions, calibrate

    opts = CalibrationOptions(
        data=args.data, precision=args.precision, target=args.target, num_images=args.num_images,
        min_images=args.min_images, method=args.method, exclude=args.exclude.split(",") if args.exclude else None,
        split=args.split, seed=args.seed, cache=args.cache, use_cache=not args.no_cache,
        recalibrate=args.recalibrate, compact_weights=args.compact_weights)
    result = calibrate(args.model, args.out, opts)
    print(result.summary())
    return 0
