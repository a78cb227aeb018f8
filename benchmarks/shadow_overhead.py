#!/usr/bin/env python3
"""What a shadow model costs the live line (`ds2a inspect --shadow`, docs/SHADOW.md): live frame latency
p50/p99 and end-to-end throughput without a shadow, with one (its worker thread at nice +10, the default),
and with one at the live threads' priority (nice 0), plus how many parts the shadow judged.

    python benchmarks/shadow_overhead.py --runs 3 --markdown benchmarks/results/shadow_overhead.md

The demo INT8 model is both the live model and the candidate (the worst case for a shadow: as slow as the
live model), on `demo://?frames=300` (every frame inspected, as fast as the model goes) and on a paced
camera-like `demo://?frames=300&fps=8` (newest frame only). Each run is its own process (`--one`), the
configurations alternate, and every number is the median of `--runs` runs; `uptime`'s load is recorded
before each run, because the machine's cores may be shared.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

MODEL = "ds2a/assets/demo/ds2a_tiny_synth.int8.onnx"
SOURCES = ("demo://?frames=300", "demo://?frames=300&fps=8")
CONFIGS = ("no shadow", "shadow, nice +10", "shadow, nice 0")


def one(config: str, source: str, model: str) -> Dict[str, Any]:
    """One inspection in this process; its live numbers from the records, as `ds2a report` reads them."""
    import numpy as np

    import ds2a.inspect.shadow as shadow
    from ds2a.inspect.run import InspectOptions, inspect

    logging.getLogger("ds2a").setLevel(logging.WARNING)
    if config.endswith("nice 0"):
        shadow.NICE = 0
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "r.sqlite")
        t0 = time.perf_counter()
        inspect(InspectOptions(model=model, source=source, headless=True, db=db,
                               shadow=None if config == "no shadow" else model), out=open(os.devnull, "w"))
        wall = time.perf_counter() - t0
        con = sqlite3.connect(db)
        lat = [r[0] for r in con.execute("SELECT t.latency_ms FROM timings t JOIN frames f ON f.id=t.frame_id "
                                         "WHERE f.verdict IN ('PASS','FAIL')")]
        infer = [r[0] for r in con.execute("SELECT infer_ms FROM timings WHERE infer_ms IS NOT NULL")]
        fps, stats_text = con.execute("SELECT e2e_fps, stats FROM runs").fetchone()
        stats = json.loads(stats_text)
        con.close()
    sh = stats.get("shadow") or {}
    return {"config": config, "source": source, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "e2e_fps": fps, "infer_ms": float(np.median(infer)),
            "frames": stats.get("frames"), "dropped": stats.get("dropped"), "parts": stats.get("parts"),
            "offered": sh.get("offered"), "judged": sh.get("judged"), "nice": sh.get("nice"), "wall_s": wall}


def load() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def med(rows: List[Dict[str, Any]], key: str) -> float:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def table(rows: List[Dict[str, Any]], source: str) -> List[str]:
    out = [f"### `{source}`", "",
           "| configuration | live p50 ms | live p99 ms | end-to-end FPS | live infer ms | dropped | parts "
           "| shadow judged / offered |", "|---|---|---|---|---|---|---|---|"]
    for config in CONFIGS:
        mine = [r for r in rows if r["config"] == config and r["source"] == source]
        if not mine:
            continue
        judged = "-" if config == "no shadow" else f"{med(mine, 'judged'):.0f} / {med(mine, 'offered'):.0f}"
        out.append(f"| {config} | {med(mine, 'p50_ms'):.0f} | {med(mine, 'p99_ms'):.0f} | {med(mine, 'e2e_fps'):.1f} "
                   f"| {med(mine, 'infer_ms'):.1f} | {med(mine, 'dropped'):.0f} | {med(mine, 'parts'):.0f} | {judged} |")
    out.append("")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=MODEL)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--source", action="append", help=f"repeatable (default: {', '.join(SOURCES)})")
    ap.add_argument("--markdown", help="write the results here")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # CONFIG|SOURCE: one run, its numbers as JSON
    args = ap.parse_args()
    if args.one:
        config, source = args.one.split("|", 1)
        print(json.dumps(one(config, source, args.model)))
        return 0
    rows: List[Dict[str, Any]] = []
    sources = args.source or list(SOURCES)
    for source in sources:
        for i in range(args.runs):
            for config in CONFIGS:  # alternating, so a change in the machine's load hits every configuration
                before = load()
                got = subprocess.run([sys.executable, __file__, "--model", args.model, "--one", f"{config}|{source}"],
                                     capture_output=True, text=True, check=True)
                row = json.loads(got.stdout.strip().splitlines()[-1])
                row["load_before"] = before
                rows.append(row)
                print(f"{source} run {i + 1} {config}: p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms, "
                      f"{row['e2e_fps']:.1f} FPS, shadow {row['judged']}/{row['offered']} ({before})", flush=True)
    if args.markdown:
        import onnxruntime

        lines = ["# Shadow model overhead on the live line (CPU)", "",
                 f"`python benchmarks/shadow_overhead.py --runs {args.runs} --markdown {args.markdown}`, "
                 f"{time.strftime('%Y-%m-%d')}: the INT8 demo model (`{args.model}`) is the live model and the "
                 "candidate, records on, headless; medians of "
                 f"{args.runs} runs per configuration, each its own process, configurations alternating.", "",
                 f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs, not idle: each run's 1/5/15-minute "
                 "load average (`uptime`) is in the last table, and the spread between runs shows the noise; Python "
                 f"{platform.python_version()}, onnxruntime {onnxruntime.__version__}; live model: ONNX Runtime "
                 "default threads; candidate: one intra-op thread on the shadow's worker thread",
                 "- live latency: capture to output done, of the frames the live model judged (PASS/FAIL); FPS: "
                 "frames out / wall time", ""]
        for source in sources:
            lines += table(rows, source)
        lines += ["## Every run", "", "| source | configuration | p50 ms | p99 ms | FPS | judged/offered | nice | "
                  "load before (uptime) |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| `{r['source']}` | {r['config']} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
                         f"{r['e2e_fps']:.1f} | {r['judged']}/{r['offered']} | {r['nice'] or '-'} | "
                         f"{r['load_before'].split('load average:')[-1].strip()} |")
        Path(args.markdown).write_text("\n".join(lines) + "\n")
        print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
