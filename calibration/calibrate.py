"""Entry script: make the INT8 (TensorRT and ONNX Runtime placements) and FP16 variants of an export.

    python calibration/calibrate.py model.onnx --data data/synth [--num-images 64] [--seed 0]

Writes model.int8_trt.onnx, model.int8_ort.onnx and model.fp16.onnx next to the input, each
through `ds2a calibrate` (see calibration/README.md for choosing images and the manifest format).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from ds2a.cli import main as ds2a  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="FP32 ONNX from `ds2a export`")
    ap.add_argument("--data", required=True, help="dataset root, image folder or manifest (.txt)")
    ap.add_argument("--num-images", default="64")
    ap.add_argument("--seed", default="0")
    args = ap.parse_args()
    src = Path(args.model)
    jobs = [("int8_trt", ["--precision", "int8", "--target", "tensorrt"]),
            ("int8_ort", ["--precision", "int8", "--target", "onnxruntime"]),
            ("fp16", ["--precision", "fp16"])]
    for suffix, opts in jobs:
        out = src.with_name(f"{src.stem}.{suffix}.onnx")
        rc = ds2a(["calibrate", str(src), "--data", args.data, "--num-images", args.num_images,
                   "--seed", args.seed, *opts, "--out", str(out)])
        if rc != 0:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
