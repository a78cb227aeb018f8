"""The bench stage as library calls: time (and score) models, or run them end to end, with CI gates.

`bench(models, BenchOptions(...))` returns a `BenchResult` (report rows and the gates missed);
`make_report` / `write_all` (ds2a/bench/report.py) turn it into JSON, markdown and a plot.
`ds2a bench` (ds2a/cli/bench.py) maps its flags onto `BenchOptions`, prints and writes.
Torch-free and Python 3.8 (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import logging
import math
import os
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import UserError
from ..meta import guess_precision
from ..options_check import check_fields
from .latency import MIN_ITERATIONS, measure
from .report import add_speedups, make_report
from .stats import latency_stats

GATE_STATS = ("median", "mean", "p90", "p95", "p99", "max")
E2E_TITLE = "ds2a bench (end to end)"
E2E_NOTE = ("end-to-end mode: latency = capture to output of each frame through the "
            "inspection loop; throughput = frames output per second (end-to-end FPS)")

Log = Callable[..., None]
logger = logging.getLogger(__name__)


def _silent(*args: Any, **kwargs: Any) -> None:
    pass


@dataclass
class BenchOptions:
    """How to time and gate models (the flags of `ds2a bench` map 1:1)."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    backend: Optional[str] = None  # None: from each model's suffix
    device: Optional[str] = None  # the backend's device (ds2a/runtime/options.py)
    threads: int = 0  # CPU threads for ONNX Runtime / PyTorch (0 = the backend's default: all cores)
    cuda_graph: bool = False  # TensorRT: replay a captured CUDA graph
    size: Optional[Tuple[int, int]] = None  # PyTorch only: run the checkpoint at (H, W)
    batch: int = 1
    warmup_s: float = 1.0
    iterations: Optional[int] = None  # exactly this many timed inferences ...
    duration: Optional[float] = None  # ... or timed seconds (default 3)
    min_iterations: int = MIN_ITERATIONS  # at least this many in duration mode
    data: Optional[str] = None  # labelled dataset: also compute mIoU
    split: str = "test"
    limit: Optional[int] = None  # score only the first N images
    min_miou: Optional[float] = None  # gate: mIoU (0-1) at least this
    max_latency_ms: Optional[float] = None  # gate: latency (gate_stat) at most this
    gate_stat: str = "median"
    source: Optional[str] = None  # end-to-end mode: run the inspection loop on this source URI
    max_frames: int = 300  # end-to-end mode: frames to process

    def check(self) -> None:
        """Refuse combinations that cannot be measured (before any output is written)."""
        if self.source and (self.data or self.min_miou is not None):
            raise UserError("--data / --min-miou score a model on a labelled split, which end-to-end mode (--source) "
                            "does not do; run the accuracy gate without --source")
        if self.min_miou is not None and not self.data:
            raise UserError("--min-miou needs --data DIR (a labelled split to score the model on)")
        if self.gate_stat not in GATE_STATS:
            raise UserError(f"gate statistic '{self.gate_stat}' is not one of {', '.join(GATE_STATS)}")

    def model_options(self, backend: str, model: str) -> Dict[str, Any]:
        """device / threads / cuda_graph / size -> the constructor keywords of `backend`; the flags it
        lacks are refused by the one table in ds2a/runtime/options.py."""
        from ..runtime.options import options_from_args

        flags = types.SimpleNamespace(device=self.device, threads=self.threads, cuda_graph=self.cuda_graph,
                                      size="x".join(map(str, self.size)) if self.size else None,
                                      zero_threads_is_all=True)
        return options_from_args(flags, backend, model)


@dataclass
class BenchResult:
    """The report rows (one per model) and a message for every gate missed (empty: all met)."""

    rows: List[Dict[str, Any]]
    failed: List[str] = field(default_factory=list)
    end_to_end: bool = False

    def report(self, command: str) -> Dict[str, Any]:
        """The report dict for `write_all` (machine info, command, title and notes of the mode)."""
        if self.end_to_end:
            return make_report(self.rows, command=command, title=E2E_TITLE, notes=[E2E_NOTE])
        return make_report(self.rows, command=command)


def bench(models: Sequence[str], options: Optional[BenchOptions] = None, echo: Log = _silent) -> BenchResult:
    """Time (and with `options.data` score) every model, or with `options.source` run each through
    the inspection loop; then check the gates. Progress goes to the "ds2a.bench" logger, the
    end-to-end results to `echo` (`ds2a bench` prints them)."""
    opts = options or BenchOptions()
    opts.check()
    if opts.source:
        rows = [end_to_end_row(path, opts, echo) for path in models]
        return BenchResult(rows, check_gates(rows, opts), end_to_end=True)
    rows = [bench_model(path, opts) for path in models]
    add_speedups(rows)
    return BenchResult(rows, check_gates(rows, opts))


def bench_model(path: str, opts: BenchOptions,
                after: Optional[Callable[[Any, Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Open, time (and optionally score) one model; returns its report row.

    `after(model, row)` runs before the model is closed (the matrix uses it for parity checks).
    """
    from ..runtime import backend_for, open_model

    backend = backend_for(path, opts.backend)
    model = open_model(path, backend=backend, **opts.model_options(backend, path))
    try:
        meta = model.meta
        row: Dict[str, Any] = {
            "label": meta.arch if meta.arch != "unknown" else os.path.splitext(os.path.basename(path))[0],
            "model": path, "backend": model.backend, "precision": guess_precision(path, meta),
            "input_size": list(model.input_size), "batch": opts.batch,
            "size_mb": round(os.path.getsize(path) / 2**20, 2) if os.path.isfile(path) else None,
            "threads": opts.threads or None,
            "device": getattr(model, "providers", None) or str(getattr(model, "device", "") or "") or None,
        }
        row["group"] = f"{row['label']}@{'x'.join(map(str, row['input_size']))}"
        logger.info(f"bench {path} [{model.backend} {row['precision']} {row['input_size'][0]}x{row['input_size'][1]} "
                    f"batch {opts.batch}]: warm-up {opts.warmup_s}s, then "
                    + (f"{opts.iterations} iterations" if opts.iterations else f"{opts.duration or 3}s"))
        res = measure(model, batch=opts.batch, warmup_s=opts.warmup_s, iterations=opts.iterations,
                      duration_s=opts.duration, min_iterations=opts.min_iterations)
        row.update(res.to_dict())
        if opts.data:
            row["miou"] = score(model, opts.data, opts.split, opts.limit)
        if after is not None:
            after(model, row)
        return row
    finally:
        model.close()


def score(model: Any, data: str, split: str, limit: Optional[int]) -> float:
    """mIoU (0-1) of an open model on a labelled split (ds2a/eval/evaluate.py)."""
    from ..data import open_dataset
    from ..eval import evaluate_segmenter

    metrics = evaluate_segmenter(model, open_dataset(data, split=split), limit=limit)
    return float(metrics["mIoU"])


def check_gates(rows: List[Dict[str, Any]], opts: Any) -> List[str]:
    """Messages for every missed gate (empty = all met); `opts` has min_miou, max_latency_ms, gate_stat."""
    failed = []
    for r in rows:
        if r.get("skipped"):
            continue
        name = f"{r['model']} ({r['backend']} {r['precision']})"
        if opts.min_miou is not None:
            miou = _number(r.get("miou"))
            if miou is None:  # a gate that cannot be evaluated fails
                failed.append(f"{name}: mIoU could not be measured (no labelled pixels scored); "
                              f"--min-miou {opts.min_miou} is not met")
            elif miou < opts.min_miou:
                failed.append(f"{name}: mIoU {miou:.4f} < --min-miou {opts.min_miou}")
        if opts.max_latency_ms is not None:
            lat = r.get("latency_ms") or {}
            value = _number(lat.get(opts.gate_stat)) if lat.get("count") else None
            if value is None:
                failed.append(f"{name}: no {opts.gate_stat} latency was measured (no frame inferred); "
                              f"--max-latency-ms {opts.max_latency_ms} is not met")
            elif value > opts.max_latency_ms:
                failed.append(f"{name}: {opts.gate_stat} latency {value:.2f} ms > "
                              f"--max-latency-ms {opts.max_latency_ms}")
    return failed


def _number(value: Any) -> Optional[float]:
    """A finite float, or None for a missing / NaN / infinite measurement."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def end_to_end_row(path: str, opts: BenchOptions, echo: Log = _silent) -> Dict[str, Any]:
    """One model through the inspection loop (capture | infer | output threads, no drawing or records):
    per-stage times, end-to-end vs model-only FPS and dropped frames."""
    try:
        from ..inspect.loop import InspectionLoop
        from ..inspect.rules import analyser, load_rules
        from ..sources import open_source
    except ImportError as exc:
        raise UserError(f"end-to-end mode (--source) needs the inspection loop (ds2a.inspect): {exc}; "
                        "run `ds2a inspect --model M --source URI --headless` instead") from None
    from ..runtime import backend_for, open_model

    backend = backend_for(path, opts.backend)
    model = open_model(path, backend=backend, **opts.model_options(backend, path))
    source = open_source(opts.source)
    try:
        classes = list(model.meta.classes)
        measure(model, warmup_s=opts.warmup_s, iterations=1)  # same warm-up as model-only mode
        inferred: List[bool] = []  # per output frame, in order: did the model run on it?
        loop = InspectionLoop(source, model, analyser(load_rules(None, classes), classes),
                              lambda res: inferred.append(bool(getattr(res, "inspected", True))),
                              max_frames=opts.max_frames)
        stats = loop.run(duration=opts.duration)
    finally:
        source.close()
        model.close()
    # latency counts only frames the model judged (not "no part in view" frames)
    e2e = [v for v, ok in zip(stats.timings.samples.get("latency", []), inferred) if ok]
    if not e2e:
        raise UserError(f"no frame from {opts.source} was inferred by {path} ({stats.frames} output, "
                        f"{stats.corrupt} corrupt, {stats.no_part} without a part); nothing to measure")
    latency = latency_stats(e2e, 1, stats.wall_s)
    latency["throughput_fps"] = stats.e2e_fps  # frames fully output per second of the run
    echo(f"{path}: {stats.frames} frames from {opts.source}, end-to-end {stats.e2e_fps:.1f} FPS, "
         f"model-only {stats.model_fps:.1f} FPS, dropped {stats.dropped}")
    echo(stats.timings.table())
    return {
        "label": model.meta.arch, "model": path, "backend": model.backend,
        "precision": guess_precision(path, model.meta), "input_size": list(model.input_size), "batch": 1,
        "size_mb": round(os.path.getsize(path) / 2**20, 2) if os.path.isfile(path) else None,
        "mode": "end-to-end", "source": opts.source,
        "frames": stats.frames, "inferred": len(e2e), "captured": stats.captured, "dropped": stats.dropped,
        "e2e_fps": round(stats.e2e_fps, 2), "model_fps": round(stats.model_fps, 2),
        "latency_ms": latency, "samples_ms": [round(v, 4) for v in e2e],
        "stages_ms": {k: latency_stats(v) for k, v in stats.timings.samples.items()},
    }
