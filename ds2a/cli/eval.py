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

from ..cli.types import int_range
from ..errors import UserError
from ..metrics import format_table
from ..outputs import atomic_write, check_outputs
from ..runtime.options import add_backend_arguments, options_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="checkpoint .pt, ONNX .onnx, TensorRT .engine or triton://HOST:8001/NAME")
    src.add_argument("--pred-dir", help="folder of <image name>.png class maps to score instead of a model")
    parser.add_argument("--data", required=True, help="dataset folder (M-BSD layout, Crack-500 or images/+masks/)")
    parser.add_argument("--split", default="test", help="split to score (default test)")
    add_backend_arguments(parser, backend_help="force a backend: pytorch, onnxruntime, tensorrt")
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


def run(args: argparse.Namespace) -> int:
    from ..eval import EvalOptions, evaluate, evaluate_folder

    if (args.sweep or args.sweep_out) and not args.rules:
        raise UserError("--sweep and --sweep-out need --rules (a rules YAML, or 'default')")
    if args.sweep_out and not args.sweep:
        raise UserError("--sweep-out needs --sweep FIELD=V1,V2,... (example: --sweep min_area_px=16,32,64,128)")
    sweep_files = [f"{args.sweep_out}.{ext}" for ext in ("md", "csv", "png")] if args.sweep_out else []
    check_outputs([("--json", args.json_out)] + [("--sweep-out", f) for f in sweep_files],
                  [("--model", args.model), ("--data", args.data), ("--rules", args.rules),
                   ("--pred-dir", args.pred_dir)])  # folders: every file in them is an input
    opts = EvalOptions(split=args.split, backend=args.backend, batch_size=args.batch_size, limit=args.limit,
                       rules=args.rules, mm_per_pixel=args.mm_per_pixel, sweep=args.sweep)
    if args.pred_dir and (args.device or args.threads is not None):
        raise UserError("--device / --threads choose how a --model runs; drop them with --pred-dir")
    if args.model:
        from ..runtime import backend_for

        opts.backend_options = options_from_args(args, backend_for(args.model, args.backend), args.model)
    result = evaluate_folder(args.pred_dir, args.data, opts) if args.pred_dir else evaluate(args.model, args.data, opts)
    print(f"{result.metrics['num_images']} images of {args.data} ({args.split}), {result.metrics['source']}")
    print(format_table(result.metrics))
    if result.parts is not None:
        from ..eval.parts import format_parts

        print(format_parts(result.parts))
    if result.sweep is not None:
        from ..eval.parts import format_sweep, write_sweep

        print(f"\nsweep of {result.sweep_field} for the predictions (ground truth judged with "
              f"{result.rules_origin}):\n{format_sweep(result.sweep, result.sweep_field)}")
        if args.sweep_out:
            write_sweep(result.sweep, result.sweep_field, args.sweep_out)
            print(f"wrote {args.sweep_out}.md, {args.sweep_out}.csv, {args.sweep_out}.png")
    if args.json_out:
        with atomic_write(args.json_out, label="--json") as fh:
            fh.write(result.to_json())
    return 0
