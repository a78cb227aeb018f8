"""`ds2a build-engine`: compile an ONNX into a TensorRT engine for the GPU this runs on."""
from __future__ import annotations

import argparse

from ..cli.types import finite_float, int_range
from ..engine.builder import HW_COMPAT, BuildOptions, build_engine, parse_batch
from ..engine.verify import DEFAULT_FRAMES, VerifyOptions

EXAMPLES = """examples:
  ds2a build-engine model.int8.onnx --out model.engine                 # INT8 (Q/DQ from ds2a calibrate)
  ds2a build-engine model.fp16.onnx --out model.engine --timing-cache trt.cache
  ds2a build-engine model.onnx --out model.engine --fp16               # TensorRT 8.5-10.x only
  ds2a build-engine model.int8.onnx --out dla.engine --dla-core 0 --gpu-fallback
  ds2a build-engine model.onnx --out model.engine --batch 1:4:8        # dynamic-batch ONNX
  ds2a build-engine model.int8.onnx --verify-data data/synth           # gate on labelled test frames
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("onnx", help="ONNX from `ds2a export` or `ds2a calibrate`")
    parser.add_argument("--out", help="engine file to write (default: ONNX name with .engine); "
                        "its metadata goes to OUT.json")
    parser.add_argument("--workspace", type=float, metavar="GiB", help="builder workspace memory limit in GiB")
    parser.add_argument("--timing-cache", metavar="FILE", help="load (if present) and save TensorRT's "
                        "timing cache; rebuilds on the same GPU get much faster")
    parser.add_argument("--dla-core", type=int, metavar="N", help="build for Jetson DLA core N (FP16/INT8; TensorRT 8.x "
                        "runs no Q/DQ INT8 ONNX on DLA: give it the FP16 one)")
    parser.add_argument("--gpu-fallback", action="store_true",
                        help="with --dla-core: run unsupported layers on the GPU")
    parser.add_argument("--batch", metavar="MIN:OPT:MAX",
                        help="batch range for an ONNX with a dynamic batch (default 1:1:1; with a minimum above 1, "
                        "fewer frames are padded up to it at run time)")
    parser.add_argument("--fp16", action="store_true", help="let TensorRT 8.5-10.x run an FP32 ONNX in FP16 "
                        "(norm/softmax layers kept FP32); on TensorRT 11 use `ds2a calibrate --precision fp16`")
    parser.add_argument("--int8", action="store_true", help="require INT8 (the ONNX must have Q/DQ nodes)")
    parser.add_argument("--calib-cache", metavar="FILE", help="legacy implicit INT8 on TensorRT 8.5-10.x: "
                        "FP32 ONNX + a TensorRT calibration cache (explicit Q/DQ ONNX preferred)")
    parser.add_argument("--version-compatible", action="store_true",
                        help="8.6+: the engine also loads in later TensorRT releases (later ones of its "
                        "major; 8.x engines in 10.x, 10.x engines in 11.x; see deploy/README.md)")
    parser.add_argument("--hardware-compat", choices=HW_COMPAT, default="none",
                        help="ampere+: one engine for all Ampere+ GPUs; "
                        "same-cc: GPUs of this compute capability (10.9+)")
    parser.add_argument("--builder-optimization-level", type=int, metavar="N", help="0..5 (TensorRT default 3; "
                        "higher builds longer, may run faster)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index to build on (default 0); made "
                        "current for the whole build under cuda-python and pycuda alike")
    parser.add_argument("--verbose", action="store_true", help="TensorRT's verbose log and detailed layer info")
    gate = parser.add_argument_group("accuracy gate", "the new engine is compared with ONNX Runtime (CPU) on the same "
                                     "ONNX and installed only when it agrees (docs/SELFTEST.md)")
    gate.add_argument("--verify-data", metavar="DIR", help="frames to compare on: a dataset (labelled: mIoU too), an "
                      "image folder or a manifest (default: the golden frames the ONNX carries)")
    gate.add_argument("--verify-frames", type=int_range(1), default=DEFAULT_FRAMES,
                      help=f"frames taken from --verify-data (default {DEFAULT_FRAMES})")
    share = finite_float(0, 1)
    gate.add_argument("--min-agreement", type=share, help="share of pixels with the same class, all frames "
                      "(default 0.995 for FP32/FP16, 0.98 for INT8)")
    gate.add_argument("--min-frame-agreement", type=share, help="the same on the worst frame (default 0.95 / 0.85)")
    gate.add_argument("--min-defect-agreement", type=share, help="share of the pixels either calls a defect with the "
                      "same class (default 0.90 / 0.80)")
    gate.add_argument("--max-miou-drop", type=share, help="labelled --verify-data: mIoU the engine may lose against "
                      "ONNX Runtime (default 0.005; INT8 0.01)")
    gate.add_argument("--accept-mismatch", action="store_true", help="install an engine that fails the gate anyway "
                      "(recorded in its sidecar)")


def messages_to_stderr(args: argparse.Namespace) -> bool:
    """Progress on stderr; stdout carries the result line."""
    return True


def run(args: argparse.Namespace) -> int:
    opts = BuildOptions(
        workspace_gib=args.workspace, timing_cache=args.timing_cache, dla_core=args.dla_core,
        gpu_fallback=args.gpu_fallback, batch=parse_batch(args.batch) if args.batch else None,
        fp16=args.fp16, int8=args.int8 or bool(args.calib_cache), calib_cache=args.calib_cache,
        version_compatible=args.version_compatible, hardware_compat=args.hardware_compat,
        optimization_level=args.builder_optimization_level, verbose=args.verbose, device=args.device,
        verify=VerifyOptions(data=args.verify_data, frames=args.verify_frames, min_agreement=args.min_agreement,
                             min_frame_agreement=args.min_frame_agreement,
                             min_defect_agreement=args.min_defect_agreement, max_miou_drop=args.max_miou_drop,
                             accept_mismatch=args.accept_mismatch),
    )
    report = build_engine(args.onnx, args.out, opts)
    gate = report.verification or {}
    verdict = "passed" if gate.get("passed") else "FAILED, installed with --accept-mismatch"
    print(f"{report.engine_path}: {report.precision.upper()} engine, TensorRT {report.tensorrt_version}, "
          f"built in {report.build_seconds:.1f} s; accuracy gate {verdict} "
          f"({100 * gate.get('agreement', 0):.2f} % of pixels agree with {gate.get('reference', '?')})")
    return 0
