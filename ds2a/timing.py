"""Latency statistics as trtexec reports them, shared by the inspection loop and the benchmarks."""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, List

import numpy as np


def summarize(samples_ms: Iterable[float]) -> Dict[str, float]:
    """min/mean/median/p90/p95/p99/max/std of a list of milliseconds (empty -> count 0)."""
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        return {"count": 0}
    q = np.percentile(a, [50, 90, 95, 99])
    return {
        "count": int(a.size),
        "min": float(a.min()),
        "mean": float(a.mean()),
        "median": float(q[0]),
        "p90": float(q[1]),
        "p95": float(q[2]),
        "p99": float(q[3]),
        "max": float(a.max()),
        "std": float(a.std()),
    }


class Stopwatch:
    """Per-stage wall-clock samples in milliseconds: `with sw.stage("infer"): ...`."""

    def __init__(self) -> None:
        self.samples: Dict[str, List[float]] = defaultdict(list)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.samples[name].append((time.perf_counter() - t0) * 1e3)

    def add(self, name: str, ms: float) -> None:
        self.samples[name].append(ms)

    def summary(self) -> Dict[str, Dict[str, float]]:
        return {k: summarize(v) for k, v in self.samples.items()}

    def table(self, stages: Iterable[str] = ()) -> str:
        """A fixed-width table: stage, count, min, median, p90, p99, max (ms)."""
        names = list(stages) or list(self.samples)
        rows = [f"{'stage':<12}{'count':>7}{'min':>9}{'median':>9}{'p90':>9}{'p99':>9}{'max':>9}"]
        for n in names:
            s = summarize(self.samples.get(n, []))
            if not s["count"]:
                continue
            rows.append(
                f"{n:<12}{s['count']:>7}{s['min']:>9.2f}{s['median']:>9.2f}{s['p90']:>9.2f}"
                f"{s['p99']:>9.2f}{s['max']:>9.2f}"
            )
        return "\n".join(rows)
