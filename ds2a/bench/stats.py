"""trtexec's statistics for one timed run: latency percentiles (ds2a.timing) plus throughput."""
from __future__ import annotations

from typing import Dict, Sequence

from ..timing import summarize

STAT_KEYS = ("min", "mean", "median", "p90", "p95", "p99", "max", "std")


def latency_stats(samples_ms: Sequence[float], batch: int = 1, wall_s: float = 0.0) -> Dict[str, float]:
    """Latency summary of the timed iterations plus throughput.

    Throughput is measured as trtexec does, over the wall-clock span of the timed phase
    (so loop overhead counts): `throughput_qps` = inferences/s, `throughput_fps` = frames/s
    (= qps x batch). Without a wall time it falls back to the sum of latencies.
    """
    stats: Dict[str, float] = dict(summarize(samples_ms))
    n = stats.get("count", 0)
    span = wall_s if wall_s > 0 else sum(samples_ms) / 1e3
    qps = n / span if n and span > 0 else 0.0
    stats["wall_s"] = float(span)
    stats["throughput_qps"] = float(qps)
    stats["throughput_fps"] = float(qps * batch)
    return stats
