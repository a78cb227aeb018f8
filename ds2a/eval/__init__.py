"""Scoring segmentation models on a labelled split (torch-free).

`evaluate(model, data, EvalOptions(...))` is the eval stage (ds2a/eval/runner.py);
`evaluate_segmenter(segmenter, dataset)` scores an open model (ds2a/eval/evaluate.py).
"""
from .evaluate import evaluate_predictions, evaluate_segmenter
from .runner import EvalOptions, EvalResult, evaluate, evaluate_folder

__all__ = ["EvalOptions", "EvalResult", "evaluate", "evaluate_folder", "evaluate_predictions",
           "evaluate_segmenter"]
