"""Soak test of the inspection station's records (not run in CI; writes benchmarks/results/soak.md).

Runs `ds2a inspect` on `demo://?fps=30` for --minutes while this script, as a second
process, (1) holds an exclusive lock on the records database for --lock-s seconds every
minute and (2) once fills the disk the database lives on for --full-s seconds. The database
sits on a small tmpfs mounted for the run; where mounting is impossible (not root, no
CAP_SYS_ADMIN) the full disk is simulated by lowering the inspect process's RLIMIT_FSIZE with
prlimit (every file write it makes then fails with EFBIG), and the report says so.

Pass criteria: the run exits 0, every inspected frame is in the database (frames recorded ==
frames inspected, nothing left unwritten), every outage was noticed and reported, and the
process's memory is flat (RSS growth from the first to the last quarter under --max-rss-growth-mb).

    python benchmarks/soak.py                       # 10 minutes, the committed result
    python benchmarks/soak.py --minutes 1 --out runs/soak.md
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_MODEL = os.path.join(ROOT, "ds2a", "assets", "demo", "ds2a_tiny_synth.int8.onnx")


def rss_mb(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def try_tmpfs(folder: str, size_mb: int) -> bool:
    """Mount a tmpfs of size_mb on folder; False when this machine does not allow it."""
    if shutil.which("mount") is None:
        return False
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", folder],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return r.returncode == 0


class DiskFull:
    """Start/stop a full disk: a filler file on the tmpfs, or RLIMIT_FSIZE of the inspect process."""

    def __init__(self, folder: str, tmpfs: bool, pid: int) -> None:
        self.folder, self.tmpfs, self.pid = folder, tmpfs, pid
        self.filler = os.path.join(folder, "filler.bin")
        self.active = False

    @property
    def how(self) -> str:
        return ("a tmpfs filled to the last byte by a filler file" if self.tmpfs else
                "simulated: tmpfs mounting was not possible, so the inspect process's RLIMIT_FSIZE was "
                "lowered to 1 byte with prlimit (its file writes fail with EFBIG)")

    def start(self) -> None:
        if self.tmpfs:
            self.active = True
            fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                for size in (1 << 20, 4096, 1):  # megabytes, then the last pages, then the last bytes
                    try:
                        while os.write(fd, b"\0" * size) > 0:
                            pass
                    except OSError:
                        pass
            finally:
                os.close(fd)
        else:
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (1, resource.RLIM_INFINITY))
        self.active = True

    def stop(self) -> None:
        if not self.active:
            return
        if self.tmpfs:
            if os.path.exists(self.filler):
                os.unlink(self.filler)
        else:
            resource.prlimit(self.pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        self.active = False


def wait_for_run(db: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    t_end = time.time() + timeout
    while time.time() < t_end:
        if proc.poll() is not None:
            raise SystemExit(f"ds2a inspect ended before the run started (exit {proc.returncode})")
        if os.path.exists(db):
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
                n = con.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
                con.close()
                if n > 0:
                    return
            except sqlite3.Error:
                pass
        time.sleep(0.5)
    raise SystemExit("the inspection run did not start writing frames within 2 minutes")


def run_soak(args: argparse.Namespace) -> Dict[str, Any]:
    work = tempfile.mkdtemp(prefix="ds2a-soak-")
    dbdir = os.path.join(work, "db")
    os.makedirs(dbdir)
    tmpfs = not args.no_tmpfs and try_tmpfs(dbdir, args.tmpfs_mb)
    db = os.path.join(dbdir, "soak.sqlite")
    duration = args.minutes * 60.0
    cmd = [sys.executable, "-m", "ds2a", "inspect", "--model", args.model, "--source",
           f"demo://?fps={args.fps:g}&width={args.width}&height={args.height}", "--headless", "--db", db,
           "--duration", f"{duration:g}"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.save_fail:
        cmd += ["--save-fail", os.path.join(dbdir, "fail")]
    try:
        return _soak(args, work, dbdir, db, tmpfs, cmd, duration)
    finally:
        if tmpfs:
            subprocess.run(["umount", dbdir], check=False)
        shutil.rmtree(work, ignore_errors=True)


def _soak(args: argparse.Namespace, work: str, dbdir: str, db: str, tmpfs: bool, cmd: List[str],
          duration: float) -> Dict[str, Any]:
    out_path, err_path = os.path.join(work, "stdout.txt"), os.path.join(work, "stderr.txt")
    events: List[Tuple[float, str]] = []
    samples: List[Tuple[float, float]] = []
    # pipes, not files: with the RLIMIT_FSIZE fallback a file would be refused to the child as well
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        pumps = [threading.Thread(target=shutil.copyfileobj, args=(src, dst), daemon=True)
                 for src, dst in ((proc.stdout, out), (proc.stderr, err))]
        for t in pumps:
            t.start()
        full = DiskFull(dbdir, tmpfs, proc.pid)
        lock: Optional[sqlite3.Connection] = None
        try:
            wait_for_run(db, proc)
            t0 = time.time()
            full_minute = min(args.full_at_minute if args.full_at_minute is not None else int(args.minutes) // 2,
                              max(int(args.minutes) - 1, 0))
            lock_until = full_until = 0.0
            locked_minutes, full_done = set(), False
            while proc.poll() is None:
                t = time.time() - t0
                minute, sec = int(t // 60), t % 60
                if lock is None and minute not in locked_minutes and sec >= args.lock_at and \
                        t + args.lock_s < duration - 5:
                    lock = sqlite3.connect(db, timeout=5, isolation_level=None)
                    lock.execute("BEGIN EXCLUSIVE")
                    locked_minutes.add(minute)
                    lock_until = time.time() + args.lock_s
                    events.append((t, f"database locked by a second process for {args.lock_s:g} s"))
                if lock is not None and time.time() >= lock_until:
                    lock.execute("ROLLBACK")
                    lock.close()
                    lock = None
                    events.append((time.time() - t0, "lock released"))
                if not full_done and not full.active and minute == full_minute and sec >= args.full_at and \
                        t + args.full_s < duration - 5:
                    full.start()
                    full_until = time.time() + args.full_s
                    events.append((t, f"disk full for {args.full_s:g} s ({'tmpfs' if tmpfs else 'RLIMIT_FSIZE'})"))
                if full.active and time.time() >= full_until:
                    full.stop()
                    full_done = True
                    events.append((time.time() - t0, "disk space back"))
                rss = rss_mb(proc.pid)
                if rss is not None:
                    samples.append((t, rss))
                time.sleep(args.sample_s)
        finally:
            if lock is not None:
                lock.close()
            full.stop()
            try:
                proc.wait(timeout=duration + 120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for t in pumps:
                t.join(timeout=10)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    run = con.execute("SELECT status, frames, dropped, stats FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    recorded = con.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
    parts = con.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    con.close()
    stderr_text = open(err_path).read()
    stdout_text = open(out_path).read()
    stats = json.loads(run[3] or "{}")
    # the invariants on the whole database, as an operator checks it (ds2a/records/check.py)
    check = subprocess.run([sys.executable, "-m", "ds2a", "report", db, "--check"], capture_output=True, text=True,
                           cwd=ROOT, timeout=600)
    return {"cmd": cmd, "work": work, "rc": proc.returncode, "status": run[0], "inspected": run[1], "dropped": run[2],
            "recorded": recorded, "parts": parts, "stats": stats, "events": events, "rss": samples,
            "disk_full_how": full.how, "stderr": stderr_text, "stdout": stdout_text,
            "check_rc": check.returncode, "check": (check.stdout + check.stderr).strip(),
            "locks": sum(1 for _, e in events if e.startswith("database locked")),
            "fulls": sum(1 for _, e in events if e.startswith("disk full"))}


def judge(r: Dict[str, Any], max_growth_mb: float) -> Tuple[bool, List[str], Dict[str, float]]:
    rss = [v for _, v in r["rss"]]
    q = max(len(rss) // 4, 1)
    mem = {"first_quarter_mb": statistics.median(rss[:q]) if rss else 0.0,
           "last_quarter_mb": statistics.median(rss[-q:]) if rss else 0.0,
           "max_mb": max(rss) if rss else 0.0}
    mem["growth_mb"] = mem["last_quarter_mb"] - mem["first_quarter_mb"]
    s = r["stats"]
    checks = [
        (r["rc"] == 0 and r["status"] == "finished", f"run exit {r['rc']}, status {r['status']}"),
        (r["inspected"] == r["recorded"] and r["recorded"] > 0,
         f"frames inspected {r['inspected']} = frames recorded {r['recorded']}"),
        (s.get("db_unwritten", -1) == 0, f"rows left unwritten at the end: {s.get('db_unwritten')}"),
        (r["check_rc"] == 0, f"`ds2a report DB --check` exit {r['check_rc']}: "
                             f"{portable(r['check'], r['work']).splitlines()[0] if r['check'] else 'no output'}"),
        (s.get("db_outages", 0) >= r["locks"] + r["fulls"] > 0,
         f"outages noticed {s.get('db_outages')} (locks {r['locks']}, full-disk phases {r['fulls']}), longest "
         f"{s.get('db_max_delay_s')} s, largest backlog {s.get('db_max_backlog')} rows"),
        (r["stderr"].count("writable again") >= s.get("db_outages", 0) > 0,
         f"recoveries reported on stderr: {r['stderr'].count('writable again')}"),
        (abs(mem["growth_mb"]) < max_growth_mb,
         f"RSS {mem['first_quarter_mb']:.1f} MB (first quarter) -> {mem['last_quarter_mb']:.1f} MB (last quarter), "
         f"max {mem['max_mb']:.1f} MB; limit +/-{max_growth_mb:g} MB"),
    ]
    return all(ok for ok, _ in checks), [("PASS  " if ok else "FAIL  ") + text for ok, text in checks], mem


def portable(text: str, work: str) -> str:
    """The report without this machine's paths: the scratch folder as $WORK, the checkout as relative paths."""
    return text.replace(work, "$WORK").replace(ROOT + os.sep, "")


def to_markdown(r: Dict[str, Any], args: argparse.Namespace, ok: bool, lines: List[str],
                mem: Dict[str, float]) -> str:
    md = [f"# Records soak: {args.minutes:g} min of demo://?fps={args.fps:g} ({'PASS' if ok else 'FAIL'})", "",
          f"Made by `python benchmarks/soak.py --minutes {args.minutes:g}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}.", "",
          f"- command: `python {' '.join(r['cmd'][1:])}` (`$WORK`: the run's scratch folder, removed afterwards)",
          f"- database locked by a second process for {args.lock_s:g} s every minute (at second {args.lock_at:g})",
          f"- full disk once for {args.full_s:g} s: {r['disk_full_how']}", "", "## Checks", ""]
    md += [f"- {line}" for line in lines]
    md += ["", "## Numbers", "", "| | |", "|---|---|",
           f"| frames inspected / recorded | {r['inspected']} / {r['recorded']} |",
           f"| frames dropped (live source, newest frame only) | {r['dropped']} |",
           f"| part verdicts | {r['parts']} |",
           f"| database outages / longest / largest backlog | {r['stats'].get('db_outages')} / "
           f"{r['stats'].get('db_max_delay_s')} s / {r['stats'].get('db_max_backlog')} rows |",
           f"| end-to-end FPS | {r['stats'].get('e2e_fps')} |",
           f"| RSS first quarter / last quarter / max | {mem['first_quarter_mb']:.1f} / "
           f"{mem['last_quarter_mb']:.1f} / {mem['max_mb']:.1f} MB |", "", "## Timeline", ""]
    md += [f"- {t:7.1f} s  {e}" for t, e in r["events"]]
    md += ["", "## RSS samples (MB)", "", " ".join(f"{v:.0f}" for _, v in r["rss"][:: max(len(r["rss"]) // 60, 1)])]
    md += ["", "## What the station said (stderr, warnings)", "", "```"]
    md += [ln for ln in r["stderr"].splitlines() if "records" in ln or "warning" in ln or "error" in ln][:40]
    md += ["```", ""]
    return portable("\n".join(md), r["work"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the run (default 10)")
    ap.add_argument("--model", default=DEMO_MODEL)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads of the inspect process")
    ap.add_argument("--fps", type=float, default=30.0)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--lock-s", type=float, default=15.0, help="seconds the database is locked each minute")
    ap.add_argument("--lock-at", type=float, default=10.0, help="second of each minute the lock starts")
    ap.add_argument("--full-s", type=float, default=15.0, help="seconds of the full-disk phase")
    ap.add_argument("--full-at", type=float, default=35.0, help="second of its minute the full disk starts")
    ap.add_argument("--full-at-minute", type=int, help="minute of the full-disk phase (default: the middle one)")
    ap.add_argument("--tmpfs-mb", type=int, default=128)
    ap.add_argument("--no-tmpfs", action="store_true", help="simulate the full disk with RLIMIT_FSIZE")
    ap.add_argument("--save-fail", action="store_true", help="also save failure images (on the same disk)")
    ap.add_argument("--sample-s", type=float, default=1.0, help="RSS sampling period")
    ap.add_argument("--max-rss-growth-mb", type=float, default=25.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "soak.md"))
    args = ap.parse_args()
    r = run_soak(args)
    ok, lines, mem = judge(r, args.max_rss_growth_mb)
    text = to_markdown(r, args, ok, lines, mem)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        fh.write(text)
    print("\n".join(lines))
    print(f"{'PASS' if ok else 'FAIL'}; wrote {args.out}")
    if not ok:
        print(r["stderr"][-3000:], file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
