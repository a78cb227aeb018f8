"""`ds2a eval`: score a model (.pt/.onnx/.engine) or a folder of png class maps on a dataset split.

examples:
  ds2a eval --model ds2a/assets/demo/ds2a_tiny_synth.pt --data data/synth --json metrics.json
  ds2a eval --model model.int8.onnx --data data/synth --split test
  ds2a eval --pred-dir preds/ --data data/synth
  ds2a eval --model model.int8.onnx --data data/synth --rules default
  ds2a eval --model model.int8.onnx --data data/synth --rules deploy/rules.example.yaml \
      --sweep min_area_px=16,32,64,128 --sweep-out runs/sweep

With --rules, the inspection rules judge every image's prediction and its ground truth (one image
= one part) and the report adds part counts: escapes (defective parts that passed) and overkill
(good parts that failed); --sweep re-judges the predictions over the values of one rule field
(the ground truth keeps the rules as given), for choosing a threshold from data.
"""
from __future__ import annotations

import argparse
import json
import math
from typing import Any, Dict

from ..cli.types import int_range
from ..errors import UserError
from ..metrics import format_table
from ..outputs import atomic_write, check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint .pt, ONNX .onnx, TensorRT .engine or triton://HOST:8001/NAME")
    src.add_argument("--pred-dir", help="folder of <image name>.png class maps to score instead of a model")
    parser.add_argument("--data", required=True, help="dataset folder (M-BSD layout, Crack-500 or images/+masks/)")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    parser.add_argument("--backend", help="force a backend: pytorch, onnxruntime, tensorrt")
    parser.add_argument("--batch-size", type=int_range(1, 4096), help="frames per inference call (default: the model's)")
    parser.add_argument("--limit", type=int_range(1), help="score only the first N images")
    parser.add_argument("--json", dest="json_out", help="also write the metrics here as JSON")
    parser.add_argument("--rules", help="rules YAML (or 'default': any defect region >= 64 px fails) to turn "
                        "predictions and ground truth into part verdicts: escapes and overkill")
    parser.add_argument("--mm-per-pixel", type=float, help="scale for mm2 limits in --rules")
    parser.add_argument("--sweep", help="FIELD=V1,V2,... : escape/overkill for each value of one numeric rule "
                        "field (min_area_px, max_count, max_area_px, CLASS.FIELD, ...); needs --rules")
    parser.add_argument("--sweep-out", help="write the sweep as PREFIX.md (table), PREFIX.csv and PREFIX.png "
                        "(plot; needs matplotlib); default: print the table only")


def _clean(obj: Any) -> Any:
    """NaN -> None so the JSON is standard."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def run(args: argparse.Namespace) -> int:
    from ..data import open_dataset
    from ..eval.evaluate import evaluate, evaluate_predictions

    if (args.sweep or args.sweep_out) and not args.rules:
        raise UserError("--sweep and --sweep-out need --rules (a rules YAML, or 'default')")
    if args.sweep_out and not args.sweep:
        raise UserError("--sweep-out needs --sweep FIELD=V1,V2,... (example: --sweep min_area_px=16,32,64,128)")
    sweep_files = [f"{args.sweep_out}.{ext}" for ext in ("md", "csv", "png")] if args.sweep_out else []
    check_outputs([("--json", args.json_out)] + [("--sweep-out", f) for f in sweep_files],
                  [("--model", args.model), ("--data", args.data), ("--rules", args.rules)])
    dataset = open_dataset(args.data, split=args.split)
    collector, sweep_spec = _parts_setup(args, list(dataset.classes))
    hook = collector.add if collector is not None else None
    if args.pred_dir:
        result: Dict[str, Any] = evaluate_predictions(args.pred_dir, dataset, on_prediction=hook)
        result["source"] = str(args.pred_dir)
    else:
        from ..runtime import open_model

        if args.limit is not None and args.limit < 1:
            raise UserError("--limit must be at least 1")
        with open_model(args.model, backend=args.backend) as seg:
            result = evaluate(seg, dataset, batch_size=args.batch_size, limit=args.limit, on_prediction=hook)
            result["source"] = str(args.model)
            result["backend"] = seg.backend
    result["data"], result["split"] = str(args.data), args.split
    print(f"{result['num_images']} images of {args.data} ({args.split}), {result['source']}")
    print(format_table(result))
    if collector is not None:
        from ..eval.parts import format_parts

        result["parts"] = collector.verdicts()
        print(format_parts(result["parts"]))
        if sweep_spec is not None:
            result["sweep"] = _run_sweep(collector, sweep_spec, args.sweep_out)
    if args.json_out:
        with atomic_write(args.json_out, label="--json") as fh:
            fh.write(json.dumps(_clean(result), indent=2))
    return 0


def _parts_setup(args: argparse.Namespace, classes: list) -> tuple:
    """The part collector (None without --rules) and the parsed --sweep."""
    if not args.rules:
        return None, None
    from ..inspect.rules import load_rules
    from ..eval.parts import PartCollector, min_floor, parse_sweep

    rules = load_rules(None if args.rules == "default" else args.rules, classes, args.mm_per_pixel)
    spec = parse_sweep(args.sweep, classes) if args.sweep else None
    extra = spec[1] if spec and spec[0].split(".")[-1] == "min_area_px" else ()
    return PartCollector(rules, classes, floor=min_floor(rules, extra)), spec


def _run_sweep(collector: Any, spec: tuple, prefix: str) -> list:
    import csv
    import io

    from ..outputs import atomic_path
    from ..eval.parts import format_sweep, plot_sweep, sweep

    name, values = spec
    rows = sweep(collector, name, values)
    table = format_sweep(rows, name)
    print(f"\nsweep of {name} for the predictions (ground truth judged with {collector.rules.origin}):\n{table}")
    if prefix:
        with atomic_write(f"{prefix}.md", label="--sweep-out") as fh:
            fh.write(table + "\n")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        with atomic_write(f"{prefix}.csv", label="--sweep-out") as fh:
            fh.write(buf.getvalue())
        with atomic_path(f"{prefix}.png", label="--sweep-out") as tmp:
            plot_sweep(rows, name, tmp)
        print(f"wrote {prefix}.md, {prefix}.csv, {prefix}.png")
    return rows
