"""Time a Segmenter the way trtexec does: warm up for a time, then N iterations or a duration.

Each sample is host latency: frames in host memory -> class maps back in host memory.
Backends that measure stages themselves (TensorRT: H2D, GPU compute, D2H, enqueue) expose
them in `Segmenter.last_timings`; those are collected per iteration too.
"""
from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..errors import UserError
from ..runtime.base import Segmenter
from .stats import latency_stats

DEFAULT_DURATION_S = 3.0
MIN_ITERATIONS = 10


@dataclass
class Measurement:
    """Raw samples and summaries of one timed run."""

    samples_ms: List[float]
    batch: int
    wall_s: float
    warmup_iterations: int
    warmup_s: float
    stages_ms: Dict[str, List[float]] = field(default_factory=dict)

    @property
    def latency(self) -> Dict[str, float]:
        """min/mean/median/p90/p95/p99/max/std (ms) and throughput of the timed iterations."""
        return latency_stats(self.samples_ms, self.batch, self.wall_s)

    def stages(self) -> Dict[str, Dict[str, float]]:
        """Per-stage summaries (e.g. TensorRT h2d_ms / compute_ms / d2h_ms / enqueue_ms)."""
        return {k: latency_stats(v, self.batch) for k, v in self.stages_ms.items()}

    def to_dict(self) -> Dict[str, Any]:
        return {"batch": self.batch, "latency_ms": self.latency, "stages_ms": self.stages(),
                "warmup": {"iterations": self.warmup_iterations, "seconds": self.warmup_s},
                "samples_ms": [round(s, 4) for s in self.samples_ms]}


def bench_frames(model: Segmenter, batch: int, seed: int = 0) -> np.ndarray:
    """Random uint8 frames at the model size (latency of these models does not depend on content)."""
    h, w = model.input_size
    return np.random.default_rng(seed).integers(0, 256, (batch, h, w, 3), dtype=np.uint8)


def measure(model: Segmenter, batch: int = 1, warmup_s: float = 0.5, iterations: Optional[int] = None,
            duration_s: Optional[float] = None, frames: Optional[np.ndarray] = None,
            clock: Callable[[], float] = time.perf_counter, min_iterations: int = MIN_ITERATIONS) -> Measurement:
    """Warm up for `warmup_s` (not counted), then time `iterations` calls, or calls for `duration_s`
    (at least `min_iterations`; default DEFAULT_DURATION_S). `clock` is injectable for tests."""
    if iterations is not None and iterations < 1:
        raise UserError(f"--iterations must be at least 1, got {iterations}")
    if duration_s is not None and duration_s <= 0:
        raise UserError(f"--duration must be positive seconds, got {duration_s}")
    if batch < 1:
        raise UserError(f"--batch must be at least 1, got {batch}")
    fixed = model.batch_size
    if fixed is not None and batch != fixed:
        raise UserError(f"this model was built for batch {fixed}; run with --batch {fixed} "
                        "or export/build it with the batch you want")
    if frames is None:
        frames = bench_frames(model, batch)
    run = (lambda: model.infer(frames[0])) if batch == 1 else (lambda: model.infer_batch(frames))

    warm_n, t0 = 0, clock()
    while clock() - t0 < warmup_s:
        run()
        warm_n += 1
    warm_s = clock() - t0

    target_s = None if iterations is not None else (duration_s or DEFAULT_DURATION_S)
    samples: List[float] = []
    stages: Dict[str, List[float]] = defaultdict(list)
    start = clock()
    while True:
        a = clock()
        run()
        b = clock()
        samples.append((b - a) * 1e3)
        for name, ms in (getattr(model, "last_timings", None) or {}).items():
            stages[name].append(float(ms))
        if iterations is not None:
            if len(samples) >= iterations:
                break
        elif b - start >= target_s and len(samples) >= min_iterations:
            break
    wall = clock() - start
    return Measurement(samples, batch, wall, warm_n, warm_s, dict(stages))
