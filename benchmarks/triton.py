"""Stations through one Triton server vs the model in-process (writes benchmarks/results/triton.md).

Runs the demo model (ONNX Runtime INT8, 256x256) in this process, then starts `ds2a serve` on
127.0.0.1 (one configuration after another) and drives 1, 2 and 4 stations at it as threads of
this process, each a `triton://` Segmenter sending frames back to back. Per phase: median and
p99 per-frame latency, aggregate frames/s, and the batches Triton formed (average from its
Prometheus metrics endpoint, nv_inference_count / nv_inference_exec_count; the size histogram
from its statistics API). The hop is the station's round trip minus the server's own compute
time per request (Triton's statistics: queue + compute), i.e. what serving adds.

    python benchmarks/triton.py                                 # ~1 minute, the committed result
    python benchmarks/triton.py --duration 3 --out runs/triton.md
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]
ROOT = str(_HERE.parent)
sys.path.insert(1, os.path.join(ROOT, "tests"))  # tests/triton_server.py starts and stops the server

from ds2a.preprocess import resize_frame  # noqa: E402
from ds2a.runtime import open_model  # noqa: E402
from ds2a.sources.demo import DemoSource  # noqa: E402

DEMO_MODEL = os.path.join(ROOT, "ds2a", "assets", "demo", "ds2a_tiny_synth.int8.onnx")
CONFIGS = {"1": ("1 instance x 1 thread", ["--instances", "1", "--threads", "1"]),
           "2": ("2 instances x 1 thread", ["--instances", "2", "--threads", "1"]),
           "2b4": ("2 instances x 1 thread, --max-batch 4", ["--instances", "2", "--threads", "1", "--max-batch", "4"])}


def frames(n: int = 16) -> List[np.ndarray]:
    """Demo frames already at the model size, so every setup times the same model input."""
    src = DemoSource.from_uri(f"demo://?frames={n}&seed=5")
    return [resize_frame(f.image, (256, 256)) for f in iter(src.read, None)]


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run_stations(make, count: int, images: List[np.ndarray], duration: float,
                 snapshot=lambda: None) -> Dict[str, Any]:
    """`count` stations (threads), each sending frames back to back for `duration` s.

    `snapshot()` is taken right before and after the timed phase (the server's counters)."""
    stations = [make() for _ in range(count)]
    for s in stations:
        s.infer(images[0])  # connect and warm up outside the timed phase
    before = snapshot()
    lat: List[List[float]] = [[] for _ in stations]
    start = threading.Barrier(count + 1)
    stop_at: List[float] = [0.0]

    def work(i: int) -> None:
        s, k = stations[i], i
        start.wait()
        while time.perf_counter() < stop_at[0]:
            t0 = time.perf_counter()
            s.infer(images[k % len(images)])
            lat[i].append((time.perf_counter() - t0) * 1e3)
            k += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + duration
    t0 = time.perf_counter()
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    after = snapshot()
    for s in stations:
        s.close()
    every = [v for per in lat for v in per]
    return {"stations": count, "frames": len(every), "median_ms": statistics.median(every), "p99_ms": pct(every, 99),
            "mean_ms": statistics.fmean(every), "fps": len(every) / wall, "counters": (before, after)}


def metrics(port: int) -> Dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success",
                 "nv_inference_compute_infer_duration_us", "nv_inference_queue_duration_us"):
        m = re.search(rf"^{name}{{[^}}]*}} ([0-9.e+]+)$", text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def batch_histogram(grpc_port: int) -> Dict[int, int]:
    import tritonclient.grpc as g

    client = g.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    try:
        stats = client.get_inference_statistics("ds2a", as_json=True)["model_stats"][0]
        return {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats.get("batch_stats", [])}
    finally:
        client.close()


def serve(name: str, extra: Sequence[str], log_dir: str):
    from triton_server import ServeProcess

    return ServeProcess(Path(log_dir) / f"serve_{name}.log", extra=extra).start()


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3.0, help="seconds per phase (default 3)")
    ap.add_argument("--stations", default="1,2,4")
    ap.add_argument("--configs", default="1,2,2b4", help=f"server configurations: {', '.join(CONFIGS)}")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "triton.md"))
    args = ap.parse_args(list(argv) or None)
    counts = [int(c) for c in args.stations.split(",")]
    load_before = os.getloadavg()
    images = frames()
    rows: List[Dict[str, Any]] = []

    local = open_model(DEMO_MODEL, intra_op_threads=1)
    local.warmup(2)
    r = run_stations(lambda: local, 1, images, args.duration)
    r.pop("counters")
    local_median = r["median_ms"]
    rows.append({"setup": "in-process ONNX Runtime, 1 thread", **r, "batches": "-"})
    print(rows[-1], flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for key in args.configs.split(","):
            name, extra = CONFIGS[key]
            srv = serve(key, extra, tmp)
            try:
                for count in counts:
                    r = run_stations(lambda: open_model(srv.grpc_url), count, images, args.duration,
                                     snapshot=lambda: (metrics(srv.metrics), batch_histogram(srv.grpc)))
                    (before, hist0), (after, hist1) = r.pop("counters")
                    d = {k: after[k] - before[k] for k in after}
                    reqs = max(1.0, d["nv_inference_request_success"])
                    server_ms = (d["nv_inference_compute_infer_duration_us"] + d["nv_inference_queue_duration_us"]) \
                        / reqs / 1e3
                    avg_batch = d["nv_inference_count"] / max(1.0, d["nv_inference_exec_count"])
                    rows.append({"setup": f"`ds2a serve` {name}", **r, "vs_local_ms": r["median_ms"] - local_median,
                                 "server_ms": server_ms, "hop_ms": r["mean_ms"] - server_ms,
                                 "batches": f"{avg_batch:.2f}",
                                 "hist": {k: v - hist0.get(k, 0) for k, v in hist1.items() if v > hist0.get(k, 0)}})
                    print(rows[-1], flush=True)
            finally:
                srv.stop()
    local = open_model(DEMO_MODEL, intra_op_threads=1)  # again: how much the machine's load drifted meanwhile
    r = run_stations(lambda: local, 1, images, args.duration)
    r.pop("counters")
    rows.append({"setup": "in-process ONNX Runtime, 1 thread (again, at the end)", **r, "batches": "-"})
    load_after = os.getloadavg()
    write(args.out, rows, load_before, load_after, args.duration, local_median)
    print(f"wrote {args.out}")
    return 0


def write(path: str, rows: List[Dict[str, Any]], load_before: Tuple[float, ...], load_after: Tuple[float, ...],
          duration: float, local_median: float) -> None:
    lines = ["# Stations through one Triton server (`ds2a serve`) vs in-process", "",
             f"Demo model `ds2a_tiny_synth.int8.onnx` (ONNX Runtime INT8, 256x256, batch 1), frames sent at the model "
             f"size (196 KB each) over gRPC on 127.0.0.1; each station sends back to back for {duration:.0f} s. "
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}. Load average (1/5/15 min) before: "
             f"{' / '.join(f'{v:.2f}' for v in load_before)}, after: {' / '.join(f'{v:.2f}' for v in load_after)}. "
             "`python benchmarks/triton.py` reproduces it.", "",
             "| setup | stations | frames | median ms | p99 ms | frames/s | median vs in-process ms | "
             "server queue+compute ms/request | hop ms (round trip - server) | avg batch (metrics) | batch sizes formed |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v: Any, fmt: str = ".1f") -> str:
        return "-" if v is None else format(v, fmt)

    for r in rows:
        hist = r.get("hist")
        lines.append(f"| {r['setup']} | {r['stations']} | {r['frames']} | {r['median_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['fps']:.1f} | {f(r.get('vs_local_ms'), '+.1f')} | {f(r.get('server_ms'))} | "
                     f"{f(r.get('hop_ms'))} | {r['batches']} | "
                     f"{', '.join(f'{k}: {v}' for k, v in sorted(hist.items())) if hist else '-'} |")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
