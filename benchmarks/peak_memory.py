"""Peak memory and wall time of a command and all its child processes (Linux /proc sampling).

    python benchmarks/peak_memory.py --label "export r18 512" -- ds2a export r18.pt --out r18.onnx

`/usr/bin/time -v` reports the largest single process only; `ds2a calibrate` runs ModelOpt in a
worker process next to its parent, so here the resident memory of the whole process tree is
summed every `--interval` seconds and the peak of that sum is reported (plus the largest single
process). Optionally appends one markdown table row to `--append`.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List


def _children(pid: int) -> List[int]:
    out: List[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss(root: int) -> Dict[int, int]:
    """pid -> RSS in kB for `root` and every descendant."""
    todo, seen = [root], {}
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen[pid] = _rss_kb(pid)
        todo += _children(pid)
    return seen


def measure(cmd: List[str], interval: float = 0.1, kill_above_gb: float = 0.0) -> Dict[str, float]:
    """Run `cmd`, sampling its tree; with kill_above_gb, the tree is stopped (SIGKILL) past that sum."""
    import signal

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak_sum = peak_one = 0
    killed = False
    while proc.poll() is None:
        rss = tree_rss(proc.pid)
        peak_sum = max(peak_sum, sum(rss.values()))
        peak_one = max(peak_one, max(rss.values(), default=0))
        if kill_above_gb and peak_sum > kill_above_gb * 2**20 and not killed:
            killed = True
            for pid in sorted(rss, reverse=True):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(interval)
    return {"rc": "killed above %.0f GB" % kill_above_gb if killed else proc.returncode,
            "wall_s": time.perf_counter() - t0, "peak_tree_gb": peak_sum / 2**20, "peak_process_gb": peak_one / 2**20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="")
    ap.add_argument("--interval", type=float, default=0.1)
    ap.add_argument("--append", help="markdown file to append a table row to")
    ap.add_argument("--kill-above", type=float, default=0.0, help="stop the command past this many GB (0: never)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("give the command after --")
    load0 = open("/proc/loadavg").read().split()[0]
    r = measure(cmd, args.interval, args.kill_above)
    load1 = open("/proc/loadavg").read().split()[0]
    line = (f"| {args.label} | {r['peak_tree_gb']:.2f} | {r['peak_process_gb']:.2f} | {r['wall_s']:.0f} | "
            f"{load0} / {load1} | {r['rc']} | `{shlex.join(cmd)}` |")
    print(line, file=sys.stderr)
    if args.append:
        with open(args.append, "a") as fh:
            fh.write(line + "\n")
    return int(r["rc"] != 0)  # "killed ..." is non-zero too


if __name__ == "__main__":
    raise SystemExit(main())
