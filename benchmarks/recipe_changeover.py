#!/usr/bin/env python3
"""How long a recipe changeover takes (`ds2a inspect --recipes`, docs/RECIPES.md): from the request to the
switch, from the request to the first part judged under the new recipe, and the candidate's model open +
golden-frame self-test + warm-up, which runs on the recipe book's own thread while the old recipe judges.

    python benchmarks/recipe_changeover.py --switches 8 --markdown benchmarks/results/recipe_changeover.md

Two recipes on the demo models (INT8 and FP16 ONNX, ONNX Runtime on the CPU) alternate on a paced demo
conveyor (`demo://?fps=F`, newest frame only, like a camera); a request is made every `--every` seconds, as
the page or OPC UA would (`RecipeBook.request`). Each number is the median (and min/max) over the switches;
`uptime`'s load is recorded before and after, because the machine's cores may be shared.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

MODELS = {"int8": "ds2a/assets/demo/ds2a_tiny_synth.int8.onnx", "fp16": "ds2a/assets/demo/ds2a_tiny_synth.fp16.onnx"}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "uptime unavailable"


def measure(switches: int, every: float, fps: float) -> Dict[str, Any]:
    """One inspection with `switches` changeovers; the times of each."""
    import ds2a.inspect.run as run_module
    from ds2a.inspect.run import InspectOptions, inspect

    logging.getLogger("ds2a").setLevel(logging.WARNING)
    root = _HERE.parent
    box: Dict[str, Any] = {}
    judged: List[Tuple[float, str]] = []  # (perf_counter when a part's verdict was published, its recipe)

    class Book(run_module.RecipeBook):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            box["book"] = self

    class Publisher(run_module.Publisher):
        def _record(self, res: Any, closed: List[Any], *args: Any) -> None:
            super()._record(res, closed, *args)
            now = time.perf_counter()
            judged.extend((now, pv.recipe) for pv in closed)

    run_module.RecipeBook, run_module.Publisher = Book, Publisher
    requests: List[Tuple[float, str]] = []

    def operator() -> None:
        """One changeover at a time: request, wait until a part was judged under it, pause, next."""
        while "book" not in box or box["book"].active is None:
            time.sleep(0.05)
        book = box["book"]
        for i in range(switches):
            time.sleep(every)
            name = "fp16" if i % 2 == 0 else "int8"
            t_req = time.perf_counter()
            requests.append((t_req, name))
            book.request(name, "benchmark", "engineer", "benchmarks/recipe_changeover.py")
            end = t_req + 60
            while time.perf_counter() < end and not any(t >= t_req and r == name for t, r in list(judged)):
                time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)  # ends the run as Ctrl-C would: records flushed

    with tempfile.TemporaryDirectory() as tmp:
        for name, model in MODELS.items():
            Path(tmp, f"{name}.yaml").write_text(f"model: {root / model}\n"
                                                 "rules: {classes: {damage: {max_count: 0}}}\n")
        t = threading.Thread(target=operator, daemon=True)
        t.start()
        duration = (every + 60) * switches  # a limit only: the operator ends the run
        opts = InspectOptions(model="", recipes=tmp, recipe="int8", source=f"demo://?fps={fps:g}", headless=True,
                              db=os.path.join(tmp, "r.sqlite"), duration=duration, drift="off")
        inspect(opts, out=open(os.devnull, "w"), table=open(os.devnull, "w"))
    book = box["book"]
    first_part = []
    for t_req, name in requests:
        later = [t for t, recipe in judged if t >= t_req and recipe == name]
        if later:
            first_part.append((later[0] - t_req) * 1e3)
    applied = [c for c in book.changeovers if c["status"] == "applied"]
    return {"requests": len(requests), "applied": len(applied),
            "refused": sum(1 for c in book.changeovers if c["status"] == "refused"),
            "open_ms": [c["open_ms"] for c in applied], "switch_ms": [c["request_to_switch_ms"] for c in applied],
            "first_part_ms": first_part, "parts": len(judged)}


def row(name: str, values: List[float]) -> str:
    if not values:
        return f"| {name} | - | - | - | 0 |"
    return (f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | {max(values):.0f} | "
            f"{len(values)} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--switches", type=int, default=8)
    ap.add_argument("--every", type=float, default=3.0, help="seconds between requests (default 3)")
    ap.add_argument("--fps", type=float, default=15.0, help="the demo conveyor's pace (default 15)")
    ap.add_argument("--markdown", help="write the results here")
    args = ap.parse_args()
    before = uptime()
    got = measure(args.switches, args.every, args.fps)
    after = uptime()
    lines = [
        "# Recipe changeover time",
        "",
        f"`python benchmarks/recipe_changeover.py --switches {args.switches} --every {args.every:g} --fps "
        f"{args.fps:g}`: two recipes on the demo models (INT8 and FP16 ONNX, ONNX Runtime, CPU) alternating on "
        f"`demo://?fps={args.fps:g}` (paced like a camera, newest frame only), a request every {args.every:g} s "
        "(docs/RECIPES.md).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
        f"{platform.platform()}.",
        f"Load before: `{before}`; after: `{after}`.",
        "",
        f"{got['requests']} requests, {got['applied']} applied, {got['refused']} refused, {got['parts']} parts judged.",
        "",
        "| ms | median | min | max | n |",
        "|---|---|---|---|---|",
        row("candidate model open + self-test (golden frames) + warm-up, off the inspection thread", got["open_ms"]),
        row("request -> switch (the first frame judged by the new recipe)", got["switch_ms"]),
        row("request -> first part judged under the new recipe", got["first_part_ms"]),
        "",
        "The switch waits for the open and self-test, then for the next part boundary; the first part under the "
        "new recipe is then judged when its last frame has been seen (a demo cell spans several frames), so the "
        "last row includes the part's own time in view. The old recipe judges every part until the switch.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
