"""`ds2a export`: checkpoint -> ONNX (uint8 frames in, class map out), parity-checked, TensorRT-checked.

examples:
  ds2a export runs/tiny/best.pt --out model.onnx
  ds2a export best.pt --out model_b4.onnx --batch 4 --outputs both
  ds2a export best.pt --out model_dyn.onnx --dynamic-batch --input float
  ds2a export best.pt --out model_jp5.onnx --trt 8.5 --check-trt 8.5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli.types import int_range
from ..errors import UserError
from ..meta import parse_size
from ..outputs import check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="ds2a checkpoint (.pt) written by `ds2a train` or `save_checkpoint`")
    parser.add_argument("--out", required=True, help="output .onnx path")
    parser.add_argument("--size", help="HxW input size, multiples of 32 (default: the checkpoint's size)")
    parser.add_argument("--force-size", action="store_true", help="allow a --size other than the trained size")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--batch", type=int_range(1, 4096), default=1, help="fixed batch size (default 1)")
    group.add_argument("--dynamic-batch", action="store_true", help="symbolic batch dimension 'batch'")
    parser.add_argument("--outputs", choices=("classmap", "logits", "both"), default="classmap",
                        help="class_map uint8 (default), logits float32, or both")
    parser.add_argument("--input", choices=("uint8", "float"), default="uint8",
                        help="uint8 NHWC BGR frames (default; normalised in the graph) or float NCHW normalised RGB")
    parser.add_argument("--trt", metavar="VERSION",
                        help="oldest TensorRT to parse the file (8.5 decomposes LayerNormalization, which 8.5 lacks)")
    parser.add_argument("--check-trt", metavar="VERSION", action="append",
                        help="report nodes each TensorRT version cannot parse (8.5, 8.6, 10, 11 or 'all'); "
                             "exit code 1 when the named version is blocked")
    parser.add_argument("--data", help="images for the parity check (dataset dir, image folder or manifest); "
                                       "default: synthetic battery-cell frames")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")


def run(args: argparse.Namespace) -> int:
    from ..model import load_model
    from ..trt.compat import SUPPORTED, blockers, check_versions, format_report
    from ..trt.versions import target_version
    from ..export.onnx_export import ExportOptions, build_onnx, check_opset, check_size, keep_outputs, save
    from ..export.parity import check_parity

    check_opset(args.opset)  # before loading anything: an unknown opset fails deep in the exporter
    if args.batch < 1:
        raise UserError(f"--batch {args.batch} must be at least 1 (or use --dynamic-batch)")
    check = [] if not args.check_trt else (list(SUPPORTED) if "all" in args.check_trt else args.check_trt)
    for v in check + ([args.trt] if args.trt else []):
        target_version(v)
    out = Path(args.out)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out} should end in .onnx")
    check_outputs([("--out", args.out)], [("CHECKPOINT", args.checkpoint), ("--data", args.data)])
    model = load_model(args.checkpoint)
    meta = model.meta
    size = parse_size(args.size) if args.size else tuple(meta.input_size)
    check_size(size, tuple(meta.input_size), args.force_size)
    opts = ExportOptions(size=size, batch=None if args.dynamic_batch else args.batch, outputs=args.outputs,
                         uint8_input=args.input == "uint8", trt=args.trt, opset=args.opset)
    onnx_model = build_onnx(model, meta, opts)
    real = None
    if args.data:
        from ..precision.calib_data import select_calibration_set

        n = max(2, opts.batch or 2)
        real = select_calibration_set(args.data, size, num_images=n, num_classes=meta.num_classes, min_images=1).frames
    for r in check_parity(onnx_model, model, size, meta.mean, meta.std, opts.batch, real_frames=real):
        print(r.line())
    keep_outputs(onnx_model, args.outputs)
    save(onnx_model, out)
    batch = "dynamic" if opts.batch is None else opts.batch
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB): input images {args.input} batch {batch} "
          f"{size[0]}x{size[1]}, outputs {args.outputs}, opset {args.opset}")
    status = 0
    if check:
        results = check_versions(onnx_model, check)
        print(format_report(results))
        blocked = [v for v, f in results.items() if blockers(f)]
        if blocked:
            print(f"ds2a export: {out} cannot be parsed by TensorRT {', '.join(blocked)} as it is (see fixes above)",
                  file=sys.stderr)
            status = 1
    return status
