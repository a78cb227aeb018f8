#!/usr/bin/env python3
"""Does the operator's page slow the inspection loop? Runs the same short demo inspection without --web,
with --web and nobody watching, and with a headless Chromium showing the page (live view and polling),
alternating, and writes benchmarks/results/web.md with the load average around each run.

    python benchmarks/web_viewer.py --frames 120 --reps 2      # about a minute on 2 cores
"""
from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]
ROOT = _HERE.parent

from ds2a.records.report import summarise  # noqa: E402
from ds2a.web.page import REFRESH_S  # noqa: E402


def browser() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


class HttpViewer:
    """What the page asks for, without a browser's own CPU on this machine: the live picture ~4 per
    second, the verdict every 0.5 s, one snapshot (counts and tables) and both charts every 10 s
    (ds2a/web/page.py REFRESH_S)."""

    def __init__(self, url: str) -> None:
        import threading

        self.url, self.pictures, self.stop = url, 0, threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(path, period), daemon=True)
                        for path, period in (("live.jpg", 0.25), ("api/live", 0.5), ("api/snapshot", 10.0),
                                             ("chart/pass_rate.svg", 10.0), ("chart/defects.svg", 10.0))]
        for t in self.threads:
            t.start()

    def _loop(self, path: str, period: float) -> None:
        import urllib.request

        while not self.stop.is_set():
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as resp:
                    resp.read()
                    self.pictures += path == "live.jpg" and resp.status == 200
            except OSError:
                pass
            self.stop.wait(period)

    def close(self) -> int:
        self.stop.set()
        for t in self.threads:
            t.join(6)
        return self.pictures


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process, all its threads (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(mode: str, args: argparse.Namespace, tmp: Path, driver: Any) -> Dict[str, Any]:
    db = tmp / f"{mode}-{time.time_ns()}.sqlite"
    cmd = [sys.executable, "-m", "ds2a", "inspect", "--model", args.model, "--headless", "--threads", "1",
           "--source", f"demo://?frames={args.frames}&width=1280&height=720", "--db", str(db)]
    if mode != "no --web":
        cmd += ["--web", "127.0.0.1:0"]
    load0 = os.getloadavg()[0]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed: "run N" marks the loop's start
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: List[str] = []
    cpu_at_start = None
    seen: Optional[str] = None
    pictures = None
    poller = None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("run ") and cpu_at_start is None:
            cpu_at_start = process_cpu_s(proc.pid)
        if line.startswith("web ") and mode == "--web, viewer attached":
            if driver is None:
                poller = HttpViewer(line.split()[1])
                continue
            driver.get(line.split()[1])  # the page is open before the loop starts (warm-up comes after)
            driver.execute_script("window.__pictures = 0; document.getElementById('live-img')"
                                  ".addEventListener('load', () => window.__pictures++);")
    _, status, usage = os.wait4(proc.pid, 0)  # the inspect process's own CPU time, whatever the machine's load
    proc.returncode = os.WEXITSTATUS(status)
    if poller is not None:
        pictures = poller.close()
    elif mode == "--web, viewer attached":
        seen = driver.find_element("id", "live-seq").text
        pictures = driver.execute_script("return window.__pictures")
    text = "".join(lines)
    if proc.returncode != 0:
        raise SystemExit(f"inspection failed ({mode}):\n{text[-2000:]}")
    con = sqlite3.connect(str(db))
    con.row_factory = sqlite3.Row
    s = summarise(con, 1)
    con.close()
    return {"mode": mode, "e2e_fps": float(re.search(r"end-to-end FPS\s+([\d.]+)", text).group(1)),
            "model_fps": float(re.search(r"model-only FPS\s+([\d.]+)", text).group(1)),
            "latency_p50": s["latency_ms"]["latency_ms"]["median"], "latency_p90": s["latency_ms"]["latency_ms"]["p90"],
            "infer_p50": s["latency_ms"]["infer_ms"]["median"], "frames": s["frames"],
            "cpu_ms_per_frame": 1000.0 * (usage.ru_utime + usage.ru_stime - (cpu_at_start or 0.0)) / max(s["frames"], 1),
            "load_before": load0, "load_after": os.getloadavg()[0], "viewer_last_seq": seen, "pictures": pictures}


def refresh_cost(tmp: Path, n: int = 5) -> float:
    """Median ms of CPU for one page refresh of a 600-frame run: the snapshot (data.snapshot) and both
    charts drawn from it, as the server does at most once per REFRESH_S while someone watches."""
    from ds2a.web.server import Site

    db = tmp / "refresh.sqlite"
    subprocess.run([sys.executable, "-m", "ds2a", "inspect", "--model", "ds2a/assets/demo/ds2a_tiny_synth.int8.onnx",
                    "--source", "demo://?frames=600&width=320&height=180", "--headless", "--db", str(db)],
                   cwd=str(ROOT), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ms = []
    for _ in range(n):
        site = Site(str(db))  # a new site each time: nothing cached
        t0 = time.thread_time()
        snap = site.snapshot(1)
        site.chart("pass_rate", 1, snap["version"])
        site.chart("defects", 1, snap["version"])
        ms.append(1000.0 * (time.thread_time() - t0))
        site.close()
    return sorted(ms)[len(ms) // 2]


def picture_cost(n: int = 30) -> float:
    """Median ms of CPU for one live picture (draw the overlay, scale to 960 wide, JPEG) of a 1280x720 frame."""
    import numpy as np

    from ds2a.inspect.loop import Result
    from ds2a.inspect.overlay import Renderer
    from ds2a.meta import default_palette
    from ds2a.sources.demo import DemoSource
    from ds2a.web.live import LiveView

    live = LiveView(Renderer(["background", "damage", "smudge", "dust"], default_palette(4)))
    src = DemoSource(frames=n)
    ms = []
    for seq in range(n):
        frame = src.read()
        cm = np.zeros((256, 256), np.uint8)
        cm[100:140, 60:200] = 1 + seq % 3
        live.publish(Result(seq, frame, cm, [], False, ["damage: count 1 > max_count 0"], roi=frame.roi), [])
        t0 = time.thread_time()
        live.jpeg()
        ms.append(1000.0 * (time.thread_time() - t0))
    return sorted(ms)[len(ms) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ds2a/assets/demo/ds2a_tiny_synth.int8.onnx")
    ap.add_argument("--frames", type=int, default=120)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--viewer", choices=("chromium", "http"), default="chromium",
                    help="chromium: the real page in headless Chromium on this machine; http: its requests only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "web.md"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ds2a-webbench-"))
    driver = browser() if args.viewer == "chromium" else None
    rows = []
    try:
        for _ in range(args.reps):
            for mode in ("no --web", "--web, nobody watching", "--web, viewer attached"):
                rows.append(one_run(mode, args, tmp, driver))
                print(rows[-1], flush=True)
    finally:
        if driver is not None:
            driver.quit()
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    out = [f"## Viewer: {args.viewer}", "",
           f"`python benchmarks/web_viewer.py --frames {args.frames} --reps {args.reps} --viewer {args.viewer}` on "
           f"{os.cpu_count()} "
           f"CPU cores (shared with other work: the load average is recorded), {time.strftime('%Y-%m-%d %H:%M')}.",
           f"Model `{args.model}` on ONNX Runtime, one intra-op thread; source "
           f"`demo://?frames={args.frames}&width=1280&height=720` (unpaced: every frame is processed, so the "
           "end-to-end FPS is the loop's throughput); records in SQLite. "
           + ("The viewer is headless Chromium on this machine showing the page" if args.viewer == "chromium" else
              "The viewer is a Python client making the page's requests (no browser CPU on this machine)")
           + ": the live JPEG refreshed continuously (at most about 4 per second), the verdict polled every 0.5 s, "
           "one snapshot (counts, tables) and both charts every 10 s.", "",
           "| run | e2e FPS | model-only FPS | infer p50 ms | latency p50 ms | latency p90 ms | CPU ms/frame | "
           "live pictures shown | load before/after |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['mode']} | {r['e2e_fps']:.1f} | {r['model_fps']:.1f} | {r['infer_p50']:.1f} | "
                   f"{r['latency_p50']:.1f} | {r['latency_p90']:.1f} | {r['cpu_ms_per_frame']:.1f} | "
                   f"{'-' if r['pictures'] is None else r['pictures']} | "
                   f"{r['load_before']:.2f} / {r['load_after']:.2f} |")
    out += ["", "Means per configuration (CPU ms/frame: the inspect process's user+system CPU, all threads, from the "
            "loop's start to the end, per frame; the machine's load changes it far less than it changes FPS):", "",
            "| configuration | e2e FPS | model-only FPS | latency p50 ms | CPU ms/frame |", "|---|---:|---:|---:|---:|"]
    for m in modes:
        rs = [r for r in rows if r["mode"] == m]
        mean = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        out.append(f"| {m} | {mean('e2e_fps'):.1f} | {mean('model_fps'):.1f} | {mean('latency_p50'):.1f} | "
                   f"{mean('cpu_ms_per_frame'):.1f} |")
    cost = picture_cost()
    out += ["", f"One live picture (overlay drawn on the web thread, scaled to 960 px wide, JPEG q80) of a 1280x720 "
            f"frame costs {cost:.1f} ms of CPU (median of 30, this machine); at the page's ~4 pictures per second "
            f"that is about {0.4 * cost:.1f}% of one core, spent only while someone watches."]
    with tempfile.TemporaryDirectory() as tmp:
        refresh = refresh_cost(Path(tmp))
    out += ["", f"One page refresh of a run with 600 frames (the snapshot and both charts drawn from it) costs "
            f"{refresh:.0f} ms of CPU (median of 5, this machine); the server does it at most once per "
            f"{REFRESH_S} s however many watch (ds2a/web/page.py REFRESH_S), so about {refresh / REFRESH_S / 10:.1f}% of "
            "one core while someone watches a running inspection."]
    with open(args.out, "a") as fh:  # one section per viewer kind; the reading at the top is written by hand
        fh.write("\n" + "\n".join(out) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
