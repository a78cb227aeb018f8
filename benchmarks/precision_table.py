"""Accuracy and ORT CPU latency per precision (FP32, FP16, INT8-tensorrt, INT8-onnxruntime) as a markdown table.

    python benchmarks/precision_table.py ds2a/assets/demo/ds2a_tiny_synth.pt --data data/synth \
        --out benchmarks/results/precision_demo.md

Every model is produced with the shipped commands (`ds2a export`, `ds2a calibrate`) and scored
the same way `ds2a eval` scores: frames through ds2a.preprocess, class map back to the label
size, mmseg-style IoU on the test split. Latency: median of >= 20 single-frame ONNX Runtime CPU
runs per model, all in this one process, interleaved across the models, after 3 warm-ups.
"""
from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import onnxruntime as ort

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from ds2a.cli import main as ds2a_main  # noqa: E402
from ds2a.data import open_dataset  # noqa: E402
from ds2a.metrics import ConfusionMatrix  # noqa: E402
from ds2a.preprocess import class_map_to_frame, resize_frame  # noqa: E402
from ds2a.timing import summarize  # noqa: E402


def session(path: Path, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def score(path: Path, dataset, size, threads: int) -> Dict:
    """mIoU / per-class IoU on the split, and the class maps (for agreement with FP32)."""
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    conf = ConfusionMatrix(len(dataset.classes))
    maps: List[np.ndarray] = []
    for i in range(len(dataset)):
        s = dataset[i]
        cm = sess.run(["class_map"], {name: resize_frame(s.image, size)[None]})[0][0]
        maps.append(cm)
        conf.update(class_map_to_frame(cm, s.mask.shape[:2]), s.mask)
    return {"metrics": conf.metrics(list(dataset.classes)), "maps": maps, "size_mb": path.stat().st_size / 1e6}


def latencies(paths: Dict[str, Path], frame: np.ndarray, threads: int, runs: int) -> Dict[str, float]:
    """Median ms per model, runs interleaved (A B C D A B C D ...) so load drift on a shared CPU hits all alike."""
    sessions = {k: session(p, threads) for k, p in paths.items()}
    feeds = {k: {s.get_inputs()[0].name: frame} for k, s in sessions.items()}
    for k, s in sessions.items():
        for _ in range(3):
            s.run(["class_map"], feeds[k])
    ms: Dict[str, List[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(["class_map"], feeds[k])
            ms[k].append(1000 * (time.perf_counter() - t))
    return {k: summarize(v)["median"] for k, v in ms.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="checkpoint (.pt, exported first) or FP32 ONNX")
    ap.add_argument("--data", required=True, help="dataset root (train split calibrates, test split scores)")
    ap.add_argument("--work", default="runs/precision", help="where the produced ONNX files go")
    ap.add_argument("--num-images", type=int, default=64)
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse", action="store_true", help="reuse variant files already in --work")
    ap.add_argument("--note", default="", help="a line printed under the title (e.g. what the weights are)")
    ap.add_argument("--out", default="benchmarks/results/precision_demo.md")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    fp32 = Path(args.model)
    if fp32.suffix != ".onnx":
        fp32 = work / "fp32.onnx"
        assert ds2a_main(["export", args.model, "--out", str(fp32)]) == 0
    variants = {"FP32": fp32, "FP16": work / "fp16.onnx", "INT8-tensorrt": work / "int8_trt.onnx",
                "INT8-onnxruntime": work / "int8_ort.onnx"}
    common = ["--data", args.data, "--num-images", str(args.num_images), "--no-cache"]
    for label, prec, target in (("FP16", "fp16", "tensorrt"), ("INT8-tensorrt", "int8", "tensorrt"),
                                ("INT8-onnxruntime", "int8", "onnxruntime")):
        if args.reuse and variants[label].is_file():
            continue
        rc = ds2a_main(["calibrate", str(fp32), "--precision", prec, "--target", target,
                        "--out", str(variants[label]), *common])
        assert rc == 0, label
    test = open_dataset(args.data, split="test")
    from ds2a.export import load_onnx, read_meta

    size = tuple(read_meta(load_onnx(fp32), fp32).input_size)
    results = {label: score(p, test, size, args.threads) for label, p in variants.items()}
    lat = latencies(variants, resize_frame(test[0].image, size)[None], args.threads, args.runs)
    for label in results:
        results[label]["latency"] = lat[label]
    base = results["FP32"]
    classes = list(test.classes)
    head = ["precision", "mIoU", "ΔmIoU (pt)"] + [f"IoU {c}" for c in classes] + \
        ["class-map agreement vs FP32", "ORT CPU median ms", "speed vs FP32", "file MB"]
    lines = [f"# Accuracy per precision: {Path(args.model).name}", "",
             f"{args.note}" if args.note else "",
             f"Test split of `{args.data}` ({len(test)} images, model size {size[0]}x{size[1]}); calibration: "
             f"{args.num_images} train images (seed 0, class-stratified). Latency: ONNX Runtime {ort.__version__} CPU, "
             f"{args.threads} threads, batch 1, median of {args.runs} runs per model in one process, "
             f"interleaved across the four models; "
             f"{platform.processor() or platform.machine()}.",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, r in results.items():
        m = r["metrics"]
        ious = []
        for c in classes:
            iou = m["per_class"].get(c, {}).get("IoU")
            ious.append("n/a" if iou is None or iou != iou else f"{100 * iou:.2f}")
        agree = np.mean([np.mean(a == b) for a, b in zip(r["maps"], base["maps"])])
        cells = [label, f"{100 * m['mIoU']:.2f}", f"{100 * (m['mIoU'] - base['metrics']['mIoU']):+.2f}", *ious,
                 f"{100 * agree:.3f}%", f"{r['latency']:.1f}", f"{base['latency'] / r['latency']:.2f}x",
                 f"{r['size_mb']:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Targets: FP16 ΔmIoU >= -0.1 pt; INT8 (both) ΔmIoU >= -1.0 pt; INT8-onnxruntime faster than FP32.",
              f"Command: `python {shlex.join(sys.argv)}`", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
