"""How far precisions and kernels of one model legitimately differ, in the accuracy gate's own numbers.

    python benchmarks/gate_spread.py REFERENCE.onnx OTHER.onnx [OTHER.onnx ...] --data DATASET [--frames 48]

The engine build's gate (ds2a/engine/verify.py) compares an engine with ONNX Runtime on the same
ONNX. Its default thresholds per precision must let every legitimate engine through, so they are
set above what the CPU shows between precisions and kernels of the same model: each OTHER (an
FP16 or INT8 ONNX of the same model, or `FILE@basic` for the same ONNX with ORT's basic graph
optimisation, i.e. QDQ run as float ops) is compared with REFERENCE exactly as the gate compares
an engine (ds2a.engine.verify.compare). Results: docs/SELFTEST.md.
"""
from __future__ import annotations

import argparse
import os
from typing import List

import numpy as np

from ds2a.engine.verify import Reference, Thresholds, compare, load_frames
from ds2a.export.metadata import load_onnx, read_meta
from ds2a.runtime import open_model


def maps(spec: str, frames: np.ndarray) -> List[np.ndarray]:
    path, _, level = spec.partition("@")
    with open_model(path, backend="onnxruntime", selftest=False, optimization=level or "all") as model:
        return [r.class_map for r in model.infer_batch(frames)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reference")
    ap.add_argument("others", nargs="+")
    ap.add_argument("--data", required=True, help="labelled dataset (M-BSD layout)")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--split", default="test")
    args = ap.parse_args()
    meta = read_meta(load_onnx(args.reference), args.reference)
    frames, names, labels = load_frames(args.data, tuple(meta.input_size), args.frames, args.split)
    ref = Reference(frames, names, labels, maps(args.reference, frames), args.reference, args.data, None, None, [])
    never = Thresholds(0, 0, 0, 1)
    print(f"reference {args.reference}, {len(frames)} labelled frames from {args.data}")
    print("| compared | pixels agree | worst frame | defect pixels agree | worst class IoU | mIoU (ref) | mIoU delta "
          "| verdict flips (overkill/escapes) |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in args.others:
        n, _ = compare(maps(spec, frames), ref, meta.classes, "x", never)
        worst_class = min((v, k) for k, v in n["per_class_iou"].items() if v is not None)
        print(f"| {os.path.basename(spec)} | {100 * n['agreement']:.3f} % | "
              f"{100 * n['worst_frames'][0]['agreement']:.2f} % | {100 * n['defect_agreement']:.2f} % | "
              f"{worst_class[1]} {100 * worst_class[0]:.1f} % | {n['miou_reference']:.4f} | "
              f"{100 * n['miou_delta']:+.2f} pt | {n['verdict_flips']['overkill']}/{n['verdict_flips']['escapes']} |")


if __name__ == "__main__":
    main()
