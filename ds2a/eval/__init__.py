"""Scoring segmentation models on a labelled split (torch-free): `evaluate(segmenter, dataset)`."""
from .evaluate import evaluate, evaluate_predictions

__all__ = ["evaluate", "evaluate_predictions"]
