"""How far class maps legitimately move between ONNX Runtime settings, and how far an edited model moves them.

    python benchmarks/selftest_spread.py ds2a/assets/demo/ds2a_tiny_synth.int8.onnx [--fp32 m.fp32.onnx ...]

The self-test (ds2a/runtime/selftest.py) compares a model's golden frames with the class maps
stored when it was made; its tolerance must sit above the spread printed here (same model,
other threads / graph optimisation / kernels) and below the change of an edited model.
Frames: the model's golden frames plus noisy demo cells (ds2a/data/synth.py). For every
setting: the worst per-frame pixel agreement with the reference setting (ORT CPU defaults,
which is what `ds2a export` / `ds2a calibrate` store). Also the self-test's own time.
Results: docs/SELFTEST.md.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Dict, List, Tuple

import numpy as np
import onnx
import onnxruntime as ort

from ds2a.export.metadata import load_onnx, read_meta
from ds2a.runtime import open_model
from ds2a.runtime.selftest import agreement, defect_agreement, golden_of

SETTINGS: List[Tuple[str, Dict[str, object]]] = [
    ("threads=1", {"threads": 1}),
    ("threads=2", {"threads": 2}),
    ("opt=extended (no NCHWc conv kernels)", {"opt": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}),
    ("opt=basic", {"opt": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC}),
    ("opt=disable (QDQ as float ops)", {"opt": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}),
    ("session.disable_quant_qdq=1", {"config": {"session.disable_quant_qdq": "1"}}),
    ("session.disable_prepacking=1", {"config": {"session.disable_prepacking": "1"}}),
    ("sequential, 1 thread, no arena", {"threads": 1, "config": {"session.use_env_allocators": "0"}, "arena": False}),
]


def session(path: str, threads: int = 0, opt: object = None, config: Dict[str, str] = None,
            arena: bool = True) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.enable_cpu_mem_arena = arena
    if opt is not None:
        opts.graph_optimization_level = opt
    for k, v in (config or {}).items():
        opts.add_session_config_entry(k, v)
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def class_maps(sess: ort.InferenceSession, frames: np.ndarray) -> np.ndarray:
    """uint8 NHWC frames, one at a time (our exports are batch 1) -> class maps."""
    name = sess.get_inputs()[0].name
    outs = [o.name for o in sess.get_outputs()]
    maps = []
    for f in frames:
        o = dict(zip(outs, sess.run(None, {name: f[None]})))
        maps.append(o["class_map"][0] if "class_map" in o else o["logits"][0].argmax(0).astype(np.uint8))
    return np.stack(maps)


def frames_for(path: str, extra: int) -> Tuple[np.ndarray, np.ndarray]:
    """(golden frames, golden class maps) of the model, plus `extra` noisy demo cells (no stored maps)."""
    from ds2a.data.synth import render_cell

    meta = read_meta(load_onnx(path), path)
    golden = golden_of(meta, path)
    if golden is None:
        raise SystemExit(f"{path} carries no golden frames; export it with this ds2a first")
    h, w = meta.input_size
    cells = [render_cell(np.random.default_rng(500 + i), (h, w))[0] for i in range(extra)]
    return np.stack(list(golden.frames) + cells), np.stack(golden.class_maps)


def worst(a: np.ndarray, b: np.ndarray) -> Tuple[float, float]:
    """(worst per-frame pixel agreement, worst per-frame defect agreement)."""
    return (min(agreement(x, y) for x, y in zip(a, b)), min(defect_agreement(x, y) for x, y in zip(a, b)))


def pct(pair: Tuple[float, float]) -> str:
    return f"{100 * pair[0]:.3f} % / {100 * pair[1]:.2f} %"


def edited(path: str, scale: float, which: int) -> str:
    """A copy of the model with one weight tensor (the `which`-th largest initializer, INT8 ones too) scaled."""
    model = onnx.load(path)
    weights = sorted((t for t in model.graph.initializer if len(t.dims) >= 2), key=lambda t: -int(np.prod(t.dims)))
    t = weights[which]
    arr = onnx.numpy_helper.to_array(t)
    if arr.dtype in (np.int8, np.uint8):  # an INT8 weight: scale and saturate
        info = np.iinfo(arr.dtype)
        new = np.clip(np.round(arr.astype(np.float32) * scale), info.min, info.max).astype(arr.dtype)
    else:
        new = (arr.astype(np.float32) * np.float32(scale)).astype(arr.dtype)
    t.CopyFrom(onnx.numpy_helper.from_array(new, t.name))
    out = os.path.join(tempfile.mkdtemp(prefix="ds2a-edit-"), os.path.basename(path))
    onnx.save(model, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="an ONNX with golden frames (ds2a export / calibrate)")
    ap.add_argument("--compare", nargs="*", default=[], help="other precisions of the same model (fp32, fp16 ONNX)")
    ap.add_argument("--extra", type=int, default=12, help="noisy demo cells besides the golden frames")
    ap.add_argument("--repeat", type=int, default=5, help="self-test timings")
    args = ap.parse_args()

    frames, stored = frames_for(args.model, args.extra)
    ng = len(stored)
    ref = class_maps(session(args.model), frames)
    print(f"model {args.model}: {ng} golden frames + {args.extra} noisy demo cells, "
          f"onnxruntime {ort.__version__}, {os.cpu_count()} CPUs")
    print("worst frame: pixel agreement / defect agreement (ds2a/runtime/selftest.py)")
    print(f"| setting | vs stored golden maps ({ng} frames) | vs defaults (all {len(frames)} frames) |")
    print("|---|---|---|")
    print(f"| defaults (reference) | {pct(worst(ref[:ng], stored))} | - |")
    for label, kw in SETTINGS:
        maps = class_maps(session(args.model, **kw), frames)  # type: ignore[arg-type]
        print(f"| {label} | {pct(worst(maps[:ng], stored))} | {pct(worst(maps, ref))} |")
    for other in args.compare:
        maps = class_maps(session(other), frames)
        print(f"| other precision: {os.path.basename(other)} | {pct(worst(maps[:ng], stored))} | "
              f"{pct(worst(maps, ref))} |")
    print("\nedited weights (one weight tensor changed), golden frames vs stored maps:")
    for which, scale in ((0, 1.05), (0, 0.0), (1, 1.1), (3, 0.8), (6, 1.3), (12, 0.5), (-1, 1.2)):
        path = edited(args.model, scale, which)
        try:
            print(f"  tensor #{which} by size x{scale}: {pct(worst(class_maps(session(path), frames[:ng]), stored))}")
        except Exception as exc:  # noqa: BLE001 - an edit can break the graph: the self-test refuses that too
            print(f"  tensor #{which} by size x{scale}: does not run ({type(exc).__name__}): refused")
    times = []
    for _ in range(args.repeat):
        with open_model(args.model) as model:
            times.append(model.selftest.seconds)
    print(f"\nself-test time (open_model, {ng} frames, default threads): median {1000 * np.median(times):.0f} ms, "
          f"max {1000 * max(times):.0f} ms over {args.repeat} opens")
    t0 = time.perf_counter()
    with open_model(args.model, selftest=False):
        pass
    print(f"open without self-test: {1000 * (time.perf_counter() - t0):.0f} ms")


if __name__ == "__main__":
    main()
