#!/usr/bin/env python3
"""How much the inspection loop costs on top of the model: end-to-end FPS vs model-only FPS, and
CPU time per frame spent outside the model, with a 1280x720 source on ONNX Runtime.

Targets: end-to-end FPS >= 90% of model-only throughput; CPU outside the model <= 5 ms
per frame. Prints the numbers and, with --markdown, writes them to a results file.

    python benchmarks/inspect_e2e.py --model ds2a/assets/demo/ds2a_tiny_synth.int8.onnx --frames 200 \
        --markdown benchmarks/results/inspect_e2e.md

Source: 24 demo:// conveyor frames (1280x720) rendered once and replayed, so capture costs what a
camera driver hands over (a ready buffer); `--source demo` renders every frame instead.
CPU outside the model is measured two ways: (a) process CPU of the run minus the model-only CPU
per frame times the frames (time.process_time, includes ONNX Runtime's own threads), and (b) the
thread CPU of our capture/infer/output threads minus the infer thread's CPU inside model.infer.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import cv2
import numpy as np

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from ds2a.inspect.loop import STAGES, InspectionLoop  # noqa: E402
from ds2a.inspect.overlay import Renderer  # noqa: E402
from ds2a.inspect.parts import PartTracker  # noqa: E402
from ds2a.inspect.publish import Publisher  # noqa: E402
from ds2a.inspect.rules import analyser, default_rules  # noqa: E402
from ds2a.inspect.sinks import open_sink  # noqa: E402
from ds2a.preprocess import resize_frame  # noqa: E402
from ds2a.records.database import Records  # noqa: E402
from ds2a.runtime import open_model  # noqa: E402
from ds2a.sources import Frame, Source  # noqa: E402
from ds2a.sources.demo import DemoSource  # noqa: E402


class ReplaySource(Source):
    """N frames from a few pre-captured 1280x720 images, as fast as they are taken (every frame)."""

    gives_parts = True

    def __init__(self, frames: List[Frame], n: int) -> None:
        super().__init__("replay://demo")
        self.frames, self.n, self.i = frames, n, 0

    def read(self) -> Optional[Frame]:
        if self._stop.is_set() or self.i >= self.n:
            return None
        f = self.frames[self.i % len(self.frames)]
        self.i += 1
        return self._frame(f.image, self.i - 1, part_id=f.part_id)


def model_only(model: Any, frames: List[np.ndarray], n: int) -> Dict[str, float]:
    """Back-to-back model.infer on frames already at the model size."""
    for f in frames[:3]:
        model.infer(f)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        model.infer(frames[i % len(frames)])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"fps": n / wall, "ms": wall / n * 1e3, "cpu_ms": cpu / n * 1e3}


def end_to_end(model: Any, source: Source, video: Optional[str], db: str) -> Dict[str, Any]:
    classes = list(model.meta.classes)
    rules = default_rules(classes)
    records = Records(db)
    records.start_run("bench", model.backend, source.uri, classes, rules.to_dict(), None)
    sinks = [open_sink(video, 30.0)] if video else []
    pub = Publisher(Renderer(classes, model.meta.palette), sinks, PartTracker(rules, True), records)
    loop = InspectionLoop(source, model, analyser(rules, classes), pub)
    c0 = time.process_time()
    stats = loop.run()
    cpu = time.process_time() - c0
    pub.finish()
    records.close()
    ours = sum(stats.cpu_s.values()) - stats.cpu_model_s
    return {"stats": stats, "cpu_ms": cpu / stats.frames * 1e3, "ours_cpu_ms": ours / stats.frames * 1e3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ds2a/assets/demo/ds2a_tiny_synth.int8.onnx")
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3, help="alternate model-only and end-to-end runs")
    ap.add_argument("--source", choices=("replay", "demo"), default="replay")
    ap.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0 = its default)")
    ap.add_argument("--video", action="store_true", help="also time a run writing an annotated mp4")
    ap.add_argument("--markdown", help="write the results table here")
    ap.add_argument("--note", default="", help="a line added under the title (e.g. where the model came from)")
    args = ap.parse_args()

    model = open_model(args.model, intra_op_threads=args.threads)
    h, w = model.input_size
    captured = list(DemoSource("demo://", frames=24, width=1280, height=720))
    small = [resize_frame(f.image, (h, w)) for f in captured]
    tmp = tempfile.mkdtemp(prefix="ds2a-bench-")

    def source(i: int) -> Source:
        if args.source == "demo":
            return DemoSource("demo://", frames=args.frames, seed=i)
        return ReplaySource(captured, args.frames)

    mo, e2e, vid = [], [], []
    for r in range(args.repeats):
        mo.append(model_only(model, small, args.frames))
        e2e.append(end_to_end(model, source(r), None, os.path.join(tmp, f"r{r}.sqlite")))
        if args.video:
            vid.append(end_to_end(model, source(r), os.path.join(tmp, f"r{r}.mp4"), os.path.join(tmp, f"v{r}.sqlite")))
    mo.append(model_only(model, small, args.frames))

    mo_fps = statistics.median(m["fps"] for m in mo)
    mo_cpu = statistics.median(m["cpu_ms"] for m in mo)

    def row(name: str, runs: List[Dict[str, Any]]) -> Dict[str, Any]:
        fps = statistics.median(x["stats"].e2e_fps for x in runs)
        cpu = statistics.median(x["cpu_ms"] for x in runs)
        ours = statistics.median(x["ours_cpu_ms"] for x in runs)
        return {"name": name, "fps": fps, "ratio": fps / mo_fps, "outside_a": cpu - mo_cpu, "outside_b": ours,
                "stats": runs[len(runs) // 2]["stats"]}

    rows = [row("headless + SQLite records", e2e)] + ([row("+ overlay + mp4 video", vid)] if vid else [])
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0, 0, 0)
    lines = [
        "# Inspection loop: end-to-end vs model-only (ONNX Runtime CPU)",
        "",
        *([args.note, ""] if args.note else []),
        (f"- model: `{args.model}` ({h}x{w}, {model.backend}); source: {args.source} 1280x720, "
         f"{args.frames} frames x {args.repeats} repeats (medians)"),
        (f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
         f"load average at the end {load[0]:.1f} / {load[1]:.1f}; Python {platform.python_version()}, "
         f"OpenCV {cv2.__version__}, onnxruntime {__import__('onnxruntime').__version__}"),
        (f"- command: `python benchmarks/inspect_e2e.py --model {args.model} --frames {args.frames} "
         f"--repeats {args.repeats} --threads {args.threads}{' --video' if args.video else ''}`"),
        "",
        (f"model-only: {mo_fps:.1f} FPS ({1000 / mo_fps:.1f} ms/frame), {mo_cpu:.1f} ms CPU per frame "
         "(all ONNX Runtime threads)"),
        "",
        ("| configuration | end-to-end FPS | vs model-only (target >= 90%) | CPU outside model, ms/frame "
         "(a) process (target <= 5) | (b) our threads |"),
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['name']} | {r['fps']:.1f} | {100 * r['ratio']:.1f}% | {r['outside_a']:.2f} | "
                     f"{r['outside_b']:.2f} |")
    st = rows[0]["stats"]
    lines += ["", f"per-stage time, {rows[0]['name']} (ms; capture = taking a ready frame):", "",
              "```", st.timings.table(STAGES), "```", "",
              "thread CPU seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in st.cpu_s.items())
              + f"; of which inside model.infer (infer thread) {st.cpu_model_s:.2f}"]
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text + "\n")
        print(f"\nwrote {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
