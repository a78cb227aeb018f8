"""`ds2a doctor --source URI`: grab frames for a few seconds and say what the camera really gives.

Before a station inspects anything: the frame size, the measured frame rate (against the rate the source
claims), corrupt frames and reconnects, and how long the first frame took. The source is opened exactly as
`ds2a inspect --source` opens it (ds2a/sources/factory.py), so a URI that passes here works there.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any, Dict, List, Optional

from ..sources import open_source

STUCK_S = 3.0  # after the check's time, how long a read that does not return may block before it is reported


def check_source(uri: str, seconds: float = 5.0) -> Dict[str, Any]:
    """Read frames from `uri` for `seconds` (or until a file source ends); a dict of what came, with
    `problems` (sentences) and `ok`. A URI that cannot be opened raises UserError (from open_source)."""
    t_open = time.monotonic()
    source = open_source(uri)
    opened_s = time.monotonic() - t_open
    times: List[float] = []
    sizes: "collections.Counter[str]" = collections.Counter()
    unreadable = [0]
    ended = threading.Event()

    def reader() -> None:  # the reading thread also closes the device (Source.close's contract)
        try:
            while True:
                frame = source.read()
                if frame is None:
                    break
                times.append(time.monotonic())
                image = frame.image
                if image is None or not getattr(image, "size", 0):
                    unreadable[0] += 1
                else:
                    sizes[f"{image.shape[1]}x{image.shape[0]}"] += 1
        finally:
            ended.set()
            source.close()

    t0 = time.monotonic()
    thread = threading.Thread(target=reader, name="camera-check", daemon=True)
    thread.start()
    source_ended = ended.wait(seconds)
    source.stop()
    stuck = not ended.wait(STUCK_S)
    wall = (min(times[-1], t0 + seconds) if source_ended and times else time.monotonic()) - t0
    return _report(uri, source, seconds, opened_s, t0, wall, times, sizes, unreadable[0],
                   source_ended and not stuck, stuck)


def _report(uri: str, source: Any, seconds: float, opened_s: float, t0: float, wall: float, times: List[float],
            sizes: "collections.Counter[str]", unreadable: int, source_ended: bool, stuck: bool) -> Dict[str, Any]:
    n = len(times)
    rate: Optional[float] = (n - 1) / (times[-1] - times[0]) if n > 1 and times[-1] > times[0] else None
    corrupt = unreadable + int(source.stats.corrupt)
    reconnects = int(source.stats.reconnects)
    problems: List[str] = []
    if n == 0:
        problems.append(f"no frame in {seconds:g} s: check the cable/stream, that no other program holds the "
                        "camera (`sudo systemctl stop ds2a-inspect`), and for csi:// that nvargus-daemon runs")
    if corrupt and source.live:
        problems.append(f"{corrupt} corrupt frame(s): a loose cable, a starved USB bus or a lossy network stream")
    elif corrupt:
        problems.append(f"{corrupt} unreadable file(s) (named in the events above)")
    if reconnects:
        problems.append(f"the source was lost and reopened {reconnects} time(s)")
    if len(sizes) > 1:
        problems.append(f"the frame size changed during the check ({', '.join(sorted(sizes))})")
    claimed = float(source.fps) if getattr(source, "fps", None) else None
    if source.live and claimed and rate is not None and rate < 0.8 * claimed:
        problems.append(f"{rate:.1f} FPS measured but the source claims {claimed:g}: exposure too long for the "
                        "rate, a slow link, or a mode the camera does not have (for csi:// pick width, height and "
                        "fps from the sensor's modes)")
    if stuck:
        problems.append(f"a read was still blocked {STUCK_S:g} s after the check: the source stopped answering")
    return {
        "source": uri, "live": bool(source.live), "seconds": round(wall, 2), "open_s": round(opened_s, 3),
        "frames": n, "fps_measured": None if rate is None else round(rate, 2), "fps_claimed": claimed,
        "sizes": dict(sizes), "corrupt": corrupt, "reconnects": reconnects,
        "first_frame_s": round(times[0] - t0, 3) if times else None, "source_ended": source_ended,
        "events": list(source.stats.events)[-10:], "problems": problems, "ok": not problems,
    }


def render_check(r: Dict[str, Any]) -> str:
    """The check as the operator reads it."""
    rate = "-" if r["fps_measured"] is None else f"{r['fps_measured']:.1f} FPS measured"
    if r["fps_claimed"]:
        rate += f" (the source claims {r['fps_claimed']:g})"
    if not r["live"]:
        rate += "; files are read as fast as they decode, not at a camera's rate"
    sizes = ", ".join(f"{s} ({n} frames)" for s, n in r["sizes"].items()) if len(r["sizes"]) > 1 else \
        next(iter(r["sizes"]), "-")
    lines = [f"camera check  {r['source']}  ({'live' if r['live'] else 'files'}, {r['seconds']:g} s"
             f"{', the source ended' if r['source_ended'] else ''})",
             f"  opened in     {r['open_s']:.2f} s; first frame after "
             f"{'-' if r['first_frame_s'] is None else format(r['first_frame_s'], '.2f') + ' s'}",
             f"  frames        {r['frames']}", f"  rate          {rate}", f"  size          {sizes}",
             f"  corrupt       {r['corrupt']}", f"  reconnects    {r['reconnects']}"]
    lines += [f"  event         {ev}" for ev in r["events"]]
    lines += [f"  PROBLEM       {p}" for p in r["problems"]] or ["  result        OK"]
    return "\n".join(lines)
