"""`ds2a export`: checkpoint -> ONNX (uint8 frames in, class map out), parity-checked, TensorRT-checked.

examples:
  ds2a export runs/tiny/best.pt --out model.onnx
  ds2a export best.pt --out model_b4.onnx --batch 4 --outputs both
  ds2a export best.pt --out model_dyn.onnx --dynamic-batch --input float
  ds2a export best.pt --out model_jp5.onnx --trt 8.5 --check-trt 8.5
  ds2a export best.pt --out model_plugin.onnx --deform-attn trt-plugin --check-trt 10
"""
from __future__ import annotations

import argparse
import sys

from ..cli.types import int_range
from ..meta import parse_size


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
    parser.add_argument("--deform-attn", choices=("grid-sample", "gather", "trt-plugin"), default=None,
                        help="how deformable attention is written (docs/DEFORM_ATTN.md): gather (default: no "
                             "GridSample, runs everywhere), grid-sample (GridSample ops, reported miscompiled by "
                             "TensorRT 10.14+), trt-plugin (NVIDIA's MultiscaleDeformableAttnPlugin_TRT, "
                             "TensorRT only)")
    parser.add_argument("--compact-weights", action="store_true",
                        help="store weights FP16 holds exactly as FP16 (lossless, a smaller file; TensorRT "
                             "builds and every runtime see the same FP32 values)")


def run(args: argparse.Namespace) -> int:
    from ..export import ExportOptions, export_onnx

    opts = ExportOptions(size=parse_size(args.size) if args.size else None, force_size=args.force_size,
                         batch=None if args.dynamic_batch else args.batch, outputs=args.outputs,
                         uint8_input=args.input == "uint8", trt=args.trt, opset=args.opset,
                         deform_attn=args.deform_attn, compact_weights=args.compact_weights)
    result = export_onnx(args.checkpoint, args.out, opts, data=args.data, check_trt=args.check_trt or ())
    for line in result.lines():
        print(line)
    if result.blocked:
        print(f"ds2a export: {result.blocked_message()}", file=sys.stderr)
        return 1
    return 0
