"""The eval stage as library calls: score a model, or a folder of png class maps, on a dataset split.

`evaluate(model, data, EvalOptions(...))` and `evaluate_folder(pred_dir, data, ...)` return an
`EvalResult`: the metrics, and with rules the part verdicts (escapes / overkill) and a sweep over
one rule field. They print nothing and write no file; `ds2a eval` (ds2a/cli/eval.py) maps its
flags onto `EvalOptions` and prints and writes the result. Torch-free.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import UserError
from ..options_check import check_fields
from .evaluate import evaluate_predictions, evaluate_segmenter


@dataclass
class EvalOptions:
    """What to score and how (the flags of `ds2a eval` map 1:1)."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    split: str = "test"
    backend: Optional[str] = None  # None: from the model's suffix
    backend_options: Dict[str, Any] = field(default_factory=dict)  # constructor options of the backend
    batch_size: Optional[int] = None  # None: the model's own batch
    limit: Optional[int] = None  # score only the first N images
    rules: Optional[str] = None  # rules YAML, or "default"; None: no part verdicts
    mm_per_pixel: Optional[float] = None  # scale for mm2 limits in the rules
    sweep: Optional[str] = None  # "FIELD=V1,V2,...": re-judge the predictions per value (needs rules)
    progress: bool = False  # log "eval i/n" per batch while scoring


@dataclass
class EvalResult:
    """Metrics (ConfusionMatrix.metrics + num_images, source, backend, data, split), parts and sweep."""

    metrics: Dict[str, Any]
    parts: Optional[Dict[str, Any]] = None  # PartCollector.verdicts(), with rules
    sweep: Optional[List[Dict[str, Any]]] = None  # one row per value, with a sweep
    sweep_field: Optional[str] = None
    rules_origin: Optional[str] = None  # where the ground truth's rules came from

    def to_dict(self) -> Dict[str, Any]:
        """The JSON document of `ds2a eval --json` (NaN -> None, so the JSON is standard)."""
        out = dict(self.metrics)
        if self.parts is not None:
            out["parts"] = self.parts
        if self.sweep is not None:
            out["sweep"] = self.sweep
        return _clean(out)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def evaluate(model: Any, data: Any, options: Optional[EvalOptions] = None) -> EvalResult:
    """Score `model` (a model path or triton:// URI, or an open Segmenter) on split `options.split`
    of `data` (a dataset folder, or an opened dataset)."""
    opts = options or EvalOptions()
    if opts.limit is not None and opts.limit < 1:
        raise UserError("--limit must be at least 1")
    dataset = _dataset(data, opts.split)
    collector, spec = _parts_setup(opts, list(dataset.classes))
    is_path = isinstance(model, (str, os.PathLike))
    with contextlib.ExitStack() as stack:  # a model opened here is closed here; a caller's stays open
        seg = model
        if is_path:
            from ..runtime import open_model

            seg = stack.enter_context(open_model(str(model), backend=opts.backend, **opts.backend_options))
        metrics = evaluate_segmenter(seg, dataset, batch_size=opts.batch_size, limit=opts.limit,
                                     progress=opts.progress, on_prediction=None if collector is None else collector.add)
        metrics["backend"] = seg.backend
    metrics["source"] = str(model) if is_path else str(getattr(model, "path", None) or type(model).__name__)
    return _finish(metrics, data, opts, collector, spec)


def evaluate_folder(pred_dir: str, data: Any, options: Optional[EvalOptions] = None) -> EvalResult:
    """Score the png class maps `<image name>.png` in `pred_dir` (the model options are not used)."""
    opts = options or EvalOptions()
    dataset = _dataset(data, opts.split)
    collector, spec = _parts_setup(opts, list(dataset.classes))
    metrics = evaluate_predictions(str(pred_dir), dataset,
                                   on_prediction=collector.add if collector is not None else None)
    metrics["source"] = str(pred_dir)
    return _finish(metrics, data, opts, collector, spec)


def _dataset(data: Any, split: str) -> Any:
    if isinstance(data, (str, os.PathLike)):
        from ..data import open_dataset

        return open_dataset(data, split=split)
    return data


def _parts_setup(opts: EvalOptions, classes: List[str]) -> Tuple[Any, Optional[Tuple[str, List[float]]]]:
    """The part collector (None without rules) and the parsed sweep (None without one)."""
    if not opts.rules:
        if opts.sweep:
            raise UserError("a sweep re-judges part verdicts and needs rules (a rules YAML, or 'default')")
        return None, None
    from ..inspect.rules import load_rules
    from ..inspect.truth import min_floor
    from .parts import PartCollector, parse_sweep

    rules = load_rules(None if opts.rules == "default" else opts.rules, classes, opts.mm_per_pixel)
    spec = parse_sweep(opts.sweep, classes) if opts.sweep else None
    extra = spec[1] if spec and spec[0].split(".")[-1] == "min_area_px" else ()
    return PartCollector(rules, classes, floor=min_floor(rules, extra)), spec


def _finish(metrics: Dict[str, Any], data: Any, opts: EvalOptions, collector: Any,
            spec: Optional[Tuple[str, List[float]]]) -> EvalResult:
    metrics["data"] = str(data) if isinstance(data, (str, os.PathLike)) else str(getattr(data, "root", data))
    metrics["split"] = opts.split
    result = EvalResult(metrics)
    if collector is not None:
        result.parts = collector.verdicts()
        result.rules_origin = collector.rules.origin
        if spec is not None:
            from .parts import sweep

            result.sweep_field = spec[0]
            result.sweep = sweep(collector, spec[0], spec[1])
    return result
