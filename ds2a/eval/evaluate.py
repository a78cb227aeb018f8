"""Scoring: run any open Segmenter (PyTorch, ONNX Runtime, TensorRT) over a dataset split and
compute mmseg-style metrics. Torch-free so calibration and benchmarks can call it anywhere;
`ds2a.eval.runner.evaluate` adds opening the model and part verdicts on top.

Each prediction is made at the model size and mapped back to the mask's size with
`class_map_to_frame` (nearest), so scores are always counted on the original label pixels.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from ..errors import UserError
from ..metrics import ConfusionMatrix
from ..preprocess import class_map_to_frame


def _classes(dataset: Any, num_classes: Optional[int]) -> Sequence[str]:
    classes = list(getattr(dataset, "classes", []) or [])
    if not classes:
        classes = [str(i) for i in range(num_classes or 0)]
    return classes


def _placeholder_names(classes: Sequence[str]) -> bool:
    """True for the names a dataset invents when it has none (background, class_1, class_2, ...)."""
    return all(c == f"class_{i}" for i, c in enumerate(classes) if i > 0)


def _check_model_classes(segmenter: Any, classes: Sequence[str]) -> None:
    """The model's class list must be the dataset's, in the same order (else scores go under swapped names)."""
    meta = getattr(segmenter, "meta", None)
    model_classes = list(getattr(meta, "classes", []) or [])
    if model_classes and len(model_classes) != len(classes):
        raise UserError(
            f"the model predicts {len(model_classes)} classes ({', '.join(model_classes)}) but the dataset "
            f"has {len(classes)} ({', '.join(classes)}); evaluate on a dataset with the model's classes "
            "or train a model for this dataset with `ds2a train`")
    norm = [c.strip().lower() for c in classes]
    model_norm = [c.strip().lower() for c in model_classes]
    if not model_classes or _placeholder_names(norm) or _placeholder_names(model_norm) or model_norm == norm:
        return  # invented names (class_1, ...) carry no order to compare
    how = "in another order" if sorted(norm) == sorted(model_norm) else "with other names"
    raise UserError(
        f"the dataset lists its classes {how} than the model: dataset {', '.join(classes)} vs model "
        f"{', '.join(model_classes)}; scores would be reported under the wrong names. Fix the dataset's "
        "classes.txt (one name per line, in mask-value order) to match the model")


def _check_predicted_ids(class_map: Any, num_classes: int, where: str) -> None:
    """Refuse class ids the class list does not have (they would count as misses under no class)."""
    import numpy as np

    top = int(np.max(class_map)) if getattr(class_map, "size", 0) else 0
    if top >= num_classes:
        bad = sorted(int(v) for v in np.unique(class_map) if v >= num_classes)
        raise UserError(f"{where} holds class ids {bad[:10]} outside 0..{num_classes - 1}; "
                        "predictions must use the dataset's class ids (one png class map per image)")


def _require_labels(result: Dict[str, Any], dataset: Any) -> Dict[str, Any]:
    """Refuse a score with no labelled pixel behind it: all-NaN metrics must never read as a result."""
    if not any(row.get("pixels") for row in result["per_class"].values()):
        raise UserError(f"nothing was scored: every mask pixel of split '{getattr(dataset, 'split', '?')}' of "
                        f"{getattr(dataset, 'root', 'the dataset')} is 255 (ignore), so every metric is undefined; "
                        "check the masks or choose another --split")
    return result


OnPrediction = Callable[[str, Any, Any], None]  # (sample name, class map at label size, label mask)
logger = logging.getLogger(__name__)


def evaluate_segmenter(segmenter: Any, dataset: Any, batch_size: Optional[int] = None,
                       limit: Optional[int] = None, progress: bool = False,
                       on_prediction: Optional[OnPrediction] = None) -> Dict[str, Any]:
    """Predict every sample of `dataset` with `segmenter.infer_batch` and score it.

    Returns the metrics dict of `ConfusionMatrix.metrics` plus "num_images". `on_prediction`
    sees every prediction at the label size (part verdicts use it; one pass over the model).
    """
    if (batch_size is not None and batch_size < 1) or (limit is not None and limit < 1):
        raise UserError(f"batch size {batch_size} / limit {limit}: both must be at least 1 when given")
    classes = _classes(dataset, None)
    _check_model_classes(segmenter, classes)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise UserError(f"nothing to evaluate: the split of {getattr(dataset, 'root', 'the dataset')} is empty; "
                        "check --data and --split")
    conf = ConfusionMatrix(len(classes))
    bs = batch_size or getattr(segmenter, "batch_size", None) or 8
    for start in range(0, n, bs):
        samples = [dataset[i] for i in range(start, min(n, start + bs))]
        results = segmenter.infer_batch([s.image for s in samples])
        for sample, res in zip(samples, results):
            _check_predicted_ids(res.class_map, len(classes), f"the model's class map for '{sample.name}'")
            pred = class_map_to_frame(res.class_map, sample.mask.shape[:2])
            conf.update(pred, sample.mask)
            if on_prediction is not None:
                on_prediction(sample.name, pred, sample.mask)
        if progress:
            logger.info(f"eval {min(n, start + bs)}/{n}")
    out = _require_labels(conf.metrics(classes), dataset)
    out["num_images"] = n
    return out


def evaluate_predictions(pred_dir: str, dataset: Any,
                         on_prediction: Optional[OnPrediction] = None) -> Dict[str, Any]:
    """Score png class maps named like the dataset's samples (`<name>.png`) in `pred_dir`."""
    from ..data.imageio import read_mask

    folder = Path(pred_dir)
    if not folder.is_dir():
        raise UserError(f"prediction folder '{pred_dir}' does not exist; write one png class map per image there")
    names = list(dataset.names)
    if not names:
        raise UserError("nothing to evaluate: the dataset split is empty; check --data and --split")
    paths = [folder / f"{name}.png" for name in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(missing[:10]) + (f", ... ({len(missing)} in all)" if len(missing) > 10 else "")
        raise UserError(f"'{pred_dir}' lacks predictions for {len(missing)} of {len(names)} images: {shown}; "
                        "write one <image name>.png class map per image")
    classes = _classes(dataset, None)
    conf = ConfusionMatrix(len(classes))
    for i, path in enumerate(paths):
        sample = dataset[i]
        pred = read_mask(path)
        if pred.shape[:2] != sample.mask.shape[:2]:
            raise UserError(f"prediction '{path}' is {pred.shape[0]}x{pred.shape[1]} but the mask of "
                            f"'{sample.name}' is {sample.mask.shape[0]}x{sample.mask.shape[1]}; "
                            "write predictions at the label size")
        _check_predicted_ids(pred, len(classes), f"prediction '{path}'")
        conf.update(pred, sample.mask)
        if on_prediction is not None:
            on_prediction(sample.name, pred, sample.mask)
    out = _require_labels(conf.metrics(classes), dataset)
    out["num_images"] = len(paths)
    return out


def iter_rows(result: Dict[str, Any]) -> Iterable[Dict[str, Any]]:
    for name, row in result["per_class"].items():
        yield {"class": name, **row}
