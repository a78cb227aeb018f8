"""Per-operator time of ONNX models on ONNX Runtime CPU (its built-in profiler), as a markdown table.

    python benchmarks/ort_profile.py model.fp32.onnx model.int8.onnx --threads 1 --runs 20

Shows where the time goes after ORT's graph optimisations (so fused QLinearConv, QDQ islands,
float islands between them): for each op type the share of kernel time, node count and ms per run.
The frame is a fixed random uint8 frame at the model's input size.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np
import onnxruntime as ort


def profile(path: str, threads: int, runs: int) -> Tuple[Dict[str, Tuple[float, int]], float]:
    """op type -> (total µs over the runs, distinct nodes), and the median wall ms per run."""
    import time

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        opts.profile_file_prefix = os.path.join(tmp, "prof")
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        x = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        feed = {inp.name: x if inp.type == "tensor(uint8)" else x.astype(np.float32) / 255}
        for _ in range(3):
            sess.run(None, feed)
        wall: List[float] = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, feed)
            wall.append((time.perf_counter() - t0) * 1e3)
        events = json.load(open(sess.end_profiling()))
    per_op: Dict[str, List] = defaultdict(lambda: [0.0, set()])
    kernel = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    for e in kernel[-runs * len({k["name"] for k in kernel}):]:  # the timed runs only
        op = e.get("args", {}).get("op_name", "?")
        per_op[op][0] += float(e["dur"])
        per_op[op][1].add(e["name"])
    return {k: (v[0], len(v[1])) for k, v in per_op.items()}, float(np.median(wall))


def table(path: str, threads: int, runs: int) -> str:
    ops, wall = profile(path, threads, runs)
    total = sum(us for us, _ in ops.values()) or 1.0
    lines = [f"### {os.path.basename(path)}: median {wall:.1f} ms/run ({threads} thread(s), {runs} runs)", "",
             "| op type | share of kernel time | nodes | ms per run |", "|---|---|---|---|"]
    for op, (us, n) in sorted(ops.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {op} | {100 * us / total:.1f}% | {n} | {us / runs / 1e3:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--top", type=int, default=0, help="only the N most expensive op types (0: all)")
    args = ap.parse_args()
    for m in args.models:
        text = table(m, args.threads, args.runs)
        if args.top:
            head = text.splitlines()
            text = "\n".join(head[: 4 + args.top]) + "\n"
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
