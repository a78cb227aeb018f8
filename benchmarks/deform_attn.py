"""CPU cost of each deformable-attention export variant (docs/DEFORM_ATTN.md), ONNX Runtime FP32.

Exports the demo checkpoint once per variant (the trt-plugin file runs as its CPU reference
expansion, ds2a/trt/deform_attn.py) and times one frame at the model size with one intra-op
thread. Prints a markdown table and the machine's load (`uptime`): rerun on a quiet machine.

    python benchmarks/deform_attn.py [--repeats 60] [--out benchmarks/results/deform_attn.md]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHECKPOINT = ROOT / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.pt"


def _time(path: str, frame: np.ndarray, repeats: int) -> list:
    import onnxruntime as ort

    from ds2a.trt.deform_attn import cpu_model_bytes

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(cpu_model_bytes(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for _ in range(5):
        sess.run(None, {name: frame})
    times = []
    for _ in range(repeats):  # (wall ms, CPU ms): CPU time is what a busy machine distorts least
        t0, c0 = time.perf_counter(), time.process_time()
        sess.run(None, {name: frame})
        times.append(((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3))
    return times


def _op_alone(variant: str, path: str, shapes, heads: int, d: int, points: int) -> dict:
    """The sampling alone at the demo model's encoder shapes (queries = every position of every level)."""
    import io
    import warnings

    import onnx
    import torch

    from ds2a.model.ms_deform_attn import DeformableSampler, deform_attn_variant

    class Op(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.sampler = DeformableSampler()

        def forward(self, value, ref, offsets, weights):
            return self.sampler(value, shapes, ref, offsets, weights)

    n = sum(h * w for h, w in shapes)
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, n, heads, d, generator=g), torch.rand(1, n, len(shapes), 2, generator=g),
            torch.randn(1, n, heads, len(shapes), points, 2, generator=g),
            torch.rand(1, n, heads, len(shapes), points, generator=g).softmax(-1))
    buf = io.BytesIO()
    with torch.no_grad(), deform_attn_variant(variant), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Op(), args, buf, opset_version=17, input_names=["value", "ref", "offsets", "weights"],
                          dynamo=False, custom_opsets={"trt": 1})
    onnx.save(onnx.load_from_string(buf.getvalue()), path)
    return dict(zip(["value", "ref", "offsets", "weights"], (a.numpy() for a in args)))


def _time_feeds(path: str, feeds: dict, repeats: int) -> list:
    import onnxruntime as ort

    from ds2a.trt.deform_attn import cpu_model_bytes

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(cpu_model_bytes(path), opts, providers=["CPUExecutionProvider"])
    for _ in range(5):
        sess.run(None, feeds)
    out = []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        sess.run(None, feeds)
        out.append(((time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--out", help="also write the markdown here")
    args = ap.parse_args()
    import onnx
    import onnxruntime as ort

    from ds2a.export.onnx_export import ExportOptions, build_onnx
    from ds2a.model import load_model
    from ds2a.trt.deform_attn import VARIANTS

    model = load_model(str(CHECKPOINT))
    size = tuple(model.meta.input_size)
    frame = np.random.default_rng(0).integers(0, 256, (1, *size, 3), dtype=np.uint8)
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for v in VARIANTS:
            paths[v] = os.path.join(tmp, f"{v}.onnx")
            onnx.save(build_onnx(model, model.meta, ExportOptions(deform_attn=v)), paths[v])
        results = {v: [] for v in VARIANTS}
        for _ in range(3):  # interleaved rounds: a load change hits every variant alike
            for v in VARIANTS:
                results[v] += _time(paths[v], frame, args.repeats // 3)
        for v in VARIANTS:
            t = sorted(w for w, _ in results[v])
            cpu = statistics.median(c for _, c in results[v])
            ops = {n.op_type for n in onnx.load(paths[v]).graph.node}
            rows.append((v, statistics.median(t), t[int(0.9 * (len(t) - 1))], cpu, os.path.getsize(paths[v]),
                         "GridSample" in ops))
        cfg = model.config if hasattr(model, "config") else None
        heads = getattr(cfg, "encoder_heads", 4)
        dim = getattr(cfg, "hidden_dim", 128)
        points = getattr(cfg, "encoder_points", 4)
        shapes = [(size[0] // s, size[1] // s) for s in (8, 16, 32)]
        op_rows = []
        for v in VARIANTS:
            path = os.path.join(tmp, f"op_{v}.onnx")
            feeds = _op_alone(v, path, shapes, heads, dim // heads, points)
            t = []
            for _ in range(3):
                t += _time_feeds(path, feeds, args.repeats // 3)
            op_rows.append((v, statistics.median(w for w, _ in t), statistics.median(c for _, c in t)))
    load_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lines = [
        f"Demo model {CHECKPOINT.name} at {size[0]}x{size[1]}, batch 1, ONNX Runtime {ort.__version__} FP32 "
        f"CPUExecutionProvider, 1 intra-op thread, {args.repeats} runs per variant in 3 interleaved rounds "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs).",
        f"Load before: `{load_before}`; after: `{load_after}`.",
        "",
        "| --deform-attn | median ms | p90 ms | median CPU ms | file MB | GridSample nodes |",
        "|---|---|---|---|---|---|",
    ]
    for v, med, p90, cpu, nbytes, gs in rows:
        lines.append(f"| {v} | {med:.1f} | {p90:.1f} | {cpu:.1f} | {nbytes / 1e6:.2f} | {'yes' if gs else 'no'} |")
    lines += ["", f"The sampling alone (one encoder layer's deformable attention: levels {shapes}, "
              f"{heads} heads x {dim // heads}, {points} points, every position a query):", "",
              "| --deform-attn | median ms | median CPU ms |", "|---|---|---|"]
    lines += [f"| {v} | {w:.2f} | {c:.2f} |" for v, w, c in op_rows]
    lines.append("")
    lines.append("trt-plugin runs here as its standard-op CPU reference (GatherND), not as NVIDIA's CUDA kernel.")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
