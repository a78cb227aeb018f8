"""The drift watch on the demo conveyor: false alarms on long clean runs, frames to alarm on injected drift,
cost per sample.

    python benchmarks/drift.py --model ds2a/assets/demo/ds2a_tiny_synth.int8.onnx \\
        [--clean-frames 10000 --seeds 1 2 3 --drift-frames 400 --drift-seeds 5 6 7]

The model's own drift reference (ModelMeta.extra["drift_reference"]) is used as the inspection uses
it: one sample per part (ds2a/inspect/drift.py, DriftStage), the frame prepared as the loop prepares
it (the part box resized to the model size). Only the first frame of each part is run through the
model: the watch samples nothing else. Drift is injected into the whole camera frame from frame 0
(onset); "frames to alarm" counts source frames (parts and the gaps between them) and inspected
frames. Results: docs/DRIFT.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from ds2a.data.picture_stats import reference_of, sample_of  # noqa: E402
from ds2a.inspect.drift import DriftWatch
from ds2a.preprocess import resize_frame
from ds2a.runtime import open_model
from ds2a.sources.demo import DemoSource

Transform = Optional[Callable[[np.ndarray], np.ndarray]]


def _scale(factors) -> Callable[[np.ndarray], np.ndarray]:
    f = np.asarray(factors, np.float32)
    return lambda im: np.clip(im.astype(np.float32) * f, 0, 255).astype(np.uint8)


def _smudge(im: np.ndarray) -> np.ndarray:
    """A hazy, blurred blot over the middle third of the picture (a smudged lens)."""
    h, w = im.shape[:2]
    m = np.zeros((h, w), np.float32)
    cv2.circle(m, (w // 2, h // 2), h // 3, 1.0, -1)
    m = (cv2.GaussianBlur(m, (0, 0), 40) * 0.85)[..., None]
    haze = cv2.GaussianBlur(im, (0, 0), 6).astype(np.float32) * 0.8 + 50
    return np.clip(im * (1 - m) + haze * m, 0, 255).astype(np.uint8)


def blur_sigma_halving(seed: int = 99, parts: int = 12) -> Tuple[float, float]:
    """The smallest Gaussian sigma (camera pixels) that halves the median sharpness (variance of the
    Laplacian) of the frames the model sees; returns (sigma, the ratio reached)."""
    crops = [f for f in DemoSource(seed=seed, frames=parts * 10) if f.roi is not None][::7][:parts]

    def sharp(im: np.ndarray, roi) -> float:
        x, y, w, h = roi
        g = cv2.cvtColor(resize_frame(im[y:y + h, x:x + w], (256, 256)), cv2.COLOR_BGR2GRAY)
        return float(cv2.Laplacian(g, cv2.CV_32F).var())

    base = [sharp(f.image, f.roi) for f in crops]
    for sigma in np.arange(0.5, 6.01, 0.25):
        ratio = statistics.median(sharp(cv2.GaussianBlur(f.image, (0, 0), sigma), f.roi) / b
                                  for f, b in zip(crops, base))
        if ratio <= 0.5:
            return float(sigma), float(ratio)
    return 6.0, float(ratio)


def run(model, seed: int, frames: int, transform: Transform, k: float, h: float, to_end: bool = False,
        ) -> Tuple[Optional[int], Optional[int], int, Optional[dict], List[float], Dict[str, float]]:
    """One run; returns (source frames to the first alarm, inspected frames to it, parts, the alarm, ms per
    sample, largest CUSUM sum per statistic). `to_end`: go on after an alarm (clean runs count them all)."""
    watch = DriftWatch(reference_of(model.meta), "stop", k=k, h=h)
    inspected = parts = 0
    last = None
    ms: List[float] = []
    top: Dict[str, float] = {}
    first = None
    for f in DemoSource(seed=seed, frames=frames):
        if f.roi is None:
            continue
        inspected += 1
        if f.part_id == last:
            continue
        last = f.part_id
        parts += 1
        image = f.image if transform is None else transform(f.image)
        x, y, w, hh = f.roi
        small = resize_frame(image[y:y + hh, x:x + w], model.input_size)
        out = model.infer(small)
        t0 = time.perf_counter()
        events = watch.observe(sample_of(small, out.class_map, out.logits, model.meta.num_classes), f.part_id)
        ms.append((time.perf_counter() - t0) * 1e3)
        for s in watch.stats:
            top[s.name] = max(top.get(s.name, 0.0), s.pos, s.neg)
        raised = [e for e in events if e["state"] == "raised"]
        if raised and first is None:
            first = (f.index + 1, inspected, raised[0])
            if not to_end:
                break
    alarms = watch.alarms
    if first is None:
        return None, None, parts, None, ms, top
    return first[0], first[1], parts, {**first[2], "alarms": alarms}, ms, top


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ds2a/assets/demo/ds2a_tiny_synth.int8.onnx")
    p.add_argument("--clean-frames", type=int, default=10000)
    p.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    p.add_argument("--drift-frames", type=int, default=400)
    p.add_argument("--drift-seeds", type=int, nargs="*", default=[5, 6, 7])
    p.add_argument("--k", type=float, default=None)
    p.add_argument("--h", type=float, default=None)
    args = p.parse_args()
    from ds2a.inspect import drift

    k = drift.K if args.k is None else args.k
    h = drift.H if args.h is None else args.h
    model = open_model(args.model, return_logits=True, intra_op_threads=1)
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} CPUs; model {args.model}; k={k:g} h={h:g}")
    print(reference_of(model.meta).line())
    sigma, ratio = blur_sigma_halving()
    drifts: Dict[str, Transform] = {
        "darker 40 %": _scale([0.6] * 3), "brighter 40 %": _scale([1.4] * 3),
        f"blur sigma {sigma:g} px (sharpness x{ratio:.2f})": lambda im: cv2.GaussianBlur(im, (0, 0), sigma),
        "colour shift (B x0.8, R x1.2)": _scale([0.8, 1.0, 1.2]), "smudged lens": _smudge,
    }
    costs: List[float] = []
    print("\n| drift | seed | source frames to alarm | inspected frames | parts | statistic |")
    print("|---|---|---|---|---|---|")
    for name, tf in drifts.items():
        for seed in args.drift_seeds:
            fr, ins, parts, alarm, ms, _ = run(model, seed, args.drift_frames, tf, k, h)
            costs += ms
            what = f"{alarm['statistic']} {alarm['direction']}" if alarm else f"no alarm in {args.drift_frames} frames"
            print(f"| {name} | {seed} | {fr if fr else '-'} | {ins if ins else '-'} | {parts} | {what} |", flush=True)
    print(f"\n| clean run | frames | parts | alarms | largest CUSUM sum per statistic (limit {h:g}) |")
    print("|---|---|---|---|---|")
    for seed in args.seeds:
        fr, _, parts, alarm, ms, top = run(model, seed, args.clean_frames, None, k, h, to_end=True)
        costs += ms
        what = f"{alarm['alarms']}, first at frame {fr}: {alarm['statistic']} {alarm['direction']}" if alarm else "0"
        sums = ", ".join(f"{name} {v:.2f}" for name, v in top.items())
        print(f"| demo://?seed={seed} | {args.clean_frames} | {parts} | {what} | {sums} |", flush=True)
    costs.sort()
    print(f"\ncost per sample (statistics + test, one thread): median {costs[len(costs) // 2]:.3f} ms, "
          f"p90 {costs[int(len(costs) * 0.9)]:.3f} ms over {len(costs)} samples; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
