"""`ds2a eval`: score a model (.pt/.onnx/.engine) or a folder of png class maps on a dataset split.

examples:
  ds2a eval --model ds2a/assets/demo/ds2a_tiny_synth.pt --data data/synth --json metrics.json
  ds2a eval --model model.int8.onnx --data data/synth --split test
  ds2a eval --pred-dir preds/ --data data/synth
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any, Dict

from ..cli_types import int_range
from ..errors import UserError
from ..metrics import format_table
from ..outputs import atomic_write, check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint .pt, ONNX .onnx or TensorRT .engine")
    src.add_argument("--pred-dir", help="folder of <image name>.png class maps to score instead of a model")
    parser.add_argument("--data", required=True, help="dataset folder (M-BSD layout, Crack-500 or images/+masks/)")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    parser.add_argument("--backend", help="force a backend: pytorch, onnxruntime, tensorrt")
    parser.add_argument("--batch-size", type=int_range(1, 4096), help="frames per inference call (default: the model's)")
    parser.add_argument("--limit", type=int_range(1), help="score only the first N images")
    parser.add_argument("--json", dest="json_out", help="also write the metrics here as JSON")


def _clean(obj: Any) -> Any:
    """NaN -> None so the JSON is standard."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    return obj


def run(args: argparse.Namespace) -> int:
    from ..data import open_dataset
    from .evaluate import evaluate, evaluate_predictions

    check_outputs([("--json", args.json_out)], [("--model", args.model), ("--data", args.data)])
    dataset = open_dataset(args.data, split=args.split)
    if args.pred_dir:
        result: Dict[str, Any] = evaluate_predictions(args.pred_dir, dataset)
        result["source"] = str(args.pred_dir)
    else:
        from ..runtime import open_model

        if args.limit is not None and args.limit < 1:
            raise UserError("--limit must be at least 1")
        with open_model(args.model, backend=args.backend) as seg:
            result = evaluate(seg, dataset, batch_size=args.batch_size, limit=args.limit)
            result["source"] = str(args.model)
            result["backend"] = seg.backend
    result["data"], result["split"] = str(args.data), args.split
    print(f"{result['num_images']} images of {args.data} ({args.split}), {result['source']}")
    print(format_table(result))
    if args.json_out:
        with atomic_write(args.json_out, label="--json") as fh:
            fh.write(json.dumps(_clean(result), indent=2))
    return 0
