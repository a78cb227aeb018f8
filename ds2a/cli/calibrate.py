"""`ds2a calibrate`: FP32 ONNX -> INT8 (symmetric Q/DQ) or FP16 (mixed) ONNX, on the CPU.

examples:
  ds2a calibrate model.onnx --data data/synth --precision int8 --out model.int8.onnx
  ds2a calibrate model.onnx --data data/synth --precision int8 --target onnxruntime --out model.int8cpu.onnx
  ds2a calibrate model.onnx --data calib.txt --precision int8 --method minmax --exclude Softmax --out m.onnx
  ds2a calibrate model.onnx --data data/synth --precision fp16 --out model.fp16.onnx
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..cli.types import int_range
from ..errors import UserError
from ..outputs import atomic_path, check_outputs


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


# Measured on the demo model: ModelOpt with entropy lost 8.8 mIoU points, with minmax 0.2;
# ORT quantize_static with entropy lost 0.7.
DEFAULT_METHOD = {"tensorrt": "minmax", "onnxruntime": "entropy"}


def run(args: argparse.Namespace) -> int:
    args.method = args.method or DEFAULT_METHOD[args.target]
    final = Path(args.out)
    cache = None if args.no_cache else str(args.cache or final.with_suffix(".calib.json"))
    check_outputs([("--out", args.out), ("--cache", cache)], [("MODEL", args.model), ("--data", args.data)])
    from ..precision.isolated import signals_unwind

    # SIGTERM unwinds (stopping any ModelOpt worker) so temp files and the partial --out are removed
    with signals_unwind(), atomic_path(args.out, label="--out") as tmp:  # --out appears only once complete
        return _calibrate(args, final, Path(tmp))


def _calibrate(args: argparse.Namespace, final: Path, out: Path) -> int:
    """The conversion, written to `out` (a temp file next to `final`)."""
    from ..export.metadata import read_meta, write_meta
    from ..meta import file_sha256
    from ..precision.calib_data import select_calibration_set
    from ..precision.model_info import final_compute_nodes, inspect_model, precision_of, resolve_exclusions

    info = inspect_model(args.model)
    exclude_ops, exclude_nodes = resolve_exclusions(info, args.exclude.split(","))
    calib = select_calibration_set(args.data, info.meta.input_size, args.num_images, args.seed, args.split,
                                   info.meta.num_classes, args.min_images)
    print(f"calibration: {len(calib.names)} images from {args.data} (seed {args.seed}); "
          f"{len(calib.skipped)} unreadable skipped; images per class: {calib.class_counts or 'n/a (no masks)'}")
    for name, why in calib.skipped[:5]:
        print(f"  skipped {name}: {why}")
    t0 = time.perf_counter()
    reused = False
    if args.precision == "int8":
        from ..precision.int8 import DEFAULT_EXCLUDE_OPS, calibrate_int8

        if not args.exclude:  # defaults measured in benchmarks/results/precision_exclusions.md
            present = set(info.op_types())
            exclude_ops = [o for o in DEFAULT_EXCLUDE_OPS if o in present]
            exclude_nodes = final_compute_nodes(info.model, depth=1)
        cache = None if args.no_cache else Path(args.cache or final.with_suffix(".calib.json"))
        reused = calibrate_int8(info, calib, out, args.target, args.method, exclude_ops, exclude_nodes,
                                cache, args.recalibrate, file_sha256(args.model))
    else:
        from ..precision.fp16 import convert_fp16

        convert_fp16(info, calib, out, exclude_ops, exclude_nodes)
    import onnx

    result = onnx.load(str(out))
    meta = read_meta(info.model, args.model)
    meta.extra = {**meta.extra, "precision": args.precision, "source_onnx_sha256": file_sha256(args.model),
                  "calibration": {"images": len(calib.names), "method": args.method, "seed": args.seed,
                                  "target": args.target if args.precision == "int8" else None,
                                  "exclude_ops": list(exclude_ops), "exclude_nodes": list(exclude_nodes)}}
    write_meta(result, meta)
    onnx.save(result, str(out))
    if precision_of(result) != args.precision:
        raise UserError(f"{final} came out as {precision_of(result)}, not {args.precision}: nothing was converted; "
                        f"check --exclude (it may exclude every convertible op)")
    agreement = _agreement(args.model, str(out), calib.frames[: max(info.batch, 4)], info)
    print(f"wrote {final} ({out.stat().st_size / 1e6:.1f} MB, {args.precision}"
          f"{', ' + args.target if args.precision == 'int8' else ''}) in {time.perf_counter() - t0:.1f} s"
          f"{' (calibration cache reused)' if reused else ''}; class maps agree with FP32 on "
          f"{100 * agreement:.2f}% of calibration pixels")
    return 0


def _agreement(fp32_path: str, new_path: str, frames: np.ndarray, info) -> float:
    """Share of pixels where the converted model's class map equals the FP32 model's (sanity, not accuracy)."""
    import onnxruntime as ort

    from ..preprocess import normalize

    maps = []
    for path in (fp32_path, new_path):
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        outs = [o.name for o in sess.get_outputs()]
        res = []
        step = info.batch
        for i in range(0, len(frames) - len(frames) % step, step):
            x = frames[i : i + step]
            x = normalize(x, info.meta.mean, info.meta.std) if info.float_input else x
            o = dict(zip(outs, sess.run(None, {name: x})))
            res.append(o["class_map"] if "class_map" in o else o["logits"].argmax(1))
        maps.append(np.concatenate(res))
    return float((maps[0] == maps[1]).mean())
