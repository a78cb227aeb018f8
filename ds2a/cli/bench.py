"""`ds2a bench`: trtexec-style latency (and optional mIoU) of one or more models, with CI gates.

Exit status: 0 = measured and every gate met, 1 = a gate (--min-miou / --max-latency-ms)
missed, 2 = bad input (printed without a traceback by the CLI).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import shlex
import sys
from typing import Any, Callable, Dict, List, Optional

from ..cli.types import finite_float, int_range
from ..errors import UserError
from ..meta import guess_precision, parse_size
from ..outputs import check_outputs
from ..bench.latency import measure
from ..bench.machine import machine_info
from ..bench.report import add_speedups, write_all
from ..bench.stats import latency_stats

GATE_STATS = ("median", "mean", "p90", "p95", "p99", "max")
EXAMPLES = """examples:
  ds2a bench --model ds2a/assets/demo/ds2a_tiny_synth.int8.onnx --duration 10 --markdown bench.md
  ds2a bench --model m.pt --model m.onnx --model m.int8.onnx --threads 2 --json bench.json --plot bench.png
  ds2a bench --model m.onnx --data data/synth --min-miou 0.70 --max-latency-ms 50   # CI gate
  ds2a bench --model m.engine --cuda-graph --iterations 2000 --warmup-s 2
  ds2a bench --model m.onnx --source demo://?frames=300                               # end to end
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("--model", action="append", required=True, metavar="M",
                        help="model file (.pt, .onnx, .engine) or triton://HOST:8001/NAME; repeat to compare several")
    parser.add_argument("--backend", help="tensorrt | onnxruntime | pytorch (default: from the file suffix)")
    parser.add_argument("--device", default=None,
                        help="onnxruntime: cpu (default) | cuda | tensorrt | auto; pytorch: auto | cpu | cuda")
    parser.add_argument("--batch", type=int_range(1, 4096), default=1, help="frames per inference (default 1)")
    parser.add_argument("--size", metavar="HxW", help="pytorch only: run the checkpoint at this size "
                        "(ONNX files and engines have their size built in)")
    parser.add_argument("--warmup-s", type=finite_float(0, 3600), default=1.0, help="warm-up seconds, not timed (default 1)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--iterations", type=int_range(1), help="timed inferences (exactly this many)")
    group.add_argument("--duration", type=finite_float(0, 86400, lo_open=True), help="timed seconds (default 3, at least 10 inferences)")
    parser.add_argument("--cuda-graph", action="store_true", help="TensorRT: replay a captured CUDA graph")
    parser.add_argument("--threads", type=int_range(0, 4096), default=0, help="CPU threads for ONNX Runtime / PyTorch (0 = all)")
    parser.add_argument("--json", metavar="F", help="write the full result (raw samples included) as JSON")
    parser.add_argument("--markdown", metavar="F", help="write the result table as markdown")
    parser.add_argument("--plot", metavar="F.png", help="write latency distribution / accuracy plot")
    parser.add_argument("--data", metavar="DIR", help="labelled dataset: also compute mIoU (ds2a eval)")
    parser.add_argument("--split", default="test", help="dataset split for --data (default test)")
    parser.add_argument("--limit", type=int_range(1), help="score only the first N images of the split")
    parser.add_argument("--min-miou", type=finite_float(0, 1), metavar="X", help="exit 1 when a model's mIoU (0-1) is below X")
    parser.add_argument("--max-latency-ms", type=finite_float(0, lo_open=True), metavar="Y",
                        help="exit 1 when a model's latency (--gate-stat, default median) is above Y ms")
    parser.add_argument("--gate-stat", choices=GATE_STATS, default="median", help="statistic --max-latency-ms checks")
    parser.add_argument("--source", metavar="URI", help="end-to-end mode: run the inspection loop on this source")
    parser.add_argument("--max-frames", type=int_range(1), default=300,
                        help="end-to-end mode: frames to process (default 300; --duration stops earlier)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")


def backend_options(backend: str, args: argparse.Namespace) -> Dict[str, Any]:
    """CLI flags -> constructor options of the chosen backend (refusing flags it does not have)."""
    opts: Dict[str, Any] = {}
    if args.cuda_graph and backend != "tensorrt":
        raise UserError(f"--cuda-graph only applies to TensorRT engines, not {backend}; drop it or bench a .engine")
    if backend == "tensorrt":
        if args.cuda_graph:
            opts["cuda_graph"] = True
        if args.threads:
            raise UserError("--threads only applies to onnxruntime / pytorch; TensorRT runs on the GPU")
    elif backend == "onnxruntime":
        opts["intra_op_threads"] = args.threads
        if args.device:
            opts["device"] = args.device
    elif backend == "pytorch":
        opts["threads"] = args.threads
        if args.device:
            opts["device"] = args.device if args.device == "auto" else _torch_device(args.device)
    if getattr(args, "size", None):
        if backend != "pytorch":
            raise UserError(f"--size only applies to PyTorch checkpoints; a {backend} model has its size built in "
                            "(export it again with `ds2a export CKPT --size HxW`)")
        opts["input_size"] = parse_size(args.size)
    return opts


def _torch_device(text: str) -> str:
    from ..cli.types import torch_device

    try:
        return torch_device(text)
    except argparse.ArgumentTypeError as exc:
        raise UserError(f"--device {exc} (or auto) for a PyTorch checkpoint") from None


def bench_model(path: str, args: argparse.Namespace, log: Callable[..., None] = print,
                after: Optional[Callable[[Any, Dict[str, Any]], None]] = None) -> Dict[str, Any]:
    """Open, time (and optionally score) one model; returns its report row.

    `after(model, row)` runs before the model is closed (the matrix uses it for parity checks).
    """
    from ..runtime import backend_for, open_model

    backend = backend_for(path, args.backend)
    model = open_model(path, backend=backend, **backend_options(backend, args))
    try:
        meta = model.meta
        row: Dict[str, Any] = {
            "label": meta.arch if meta.arch != "unknown" else os.path.splitext(os.path.basename(path))[0],
            "model": path, "backend": model.backend, "precision": guess_precision(path, meta),
            "input_size": list(model.input_size), "batch": args.batch,
            "size_mb": round(os.path.getsize(path) / 2**20, 2) if os.path.isfile(path) else None, "threads": args.threads or None,
            "device": getattr(model, "providers", None) or str(getattr(model, "device", "") or "") or None,
        }
        row["group"] = f"{row['label']}@{'x'.join(map(str, row['input_size']))}"
        log(f"bench {path} [{model.backend} {row['precision']} {row['input_size'][0]}x{row['input_size'][1]} "
            f"batch {args.batch}]: warm-up {args.warmup_s}s, then "
            + (f"{args.iterations} iterations" if args.iterations else f"{args.duration or 3}s"))
        res = measure(model, batch=args.batch, warmup_s=args.warmup_s, iterations=args.iterations,
                      duration_s=args.duration, min_iterations=getattr(args, "min_iterations", 10))
        row.update(res.to_dict())
        if args.data:
            row["miou"] = score(model, args.data, args.split, args.limit)
        if after is not None:
            after(model, row)
        return row
    finally:
        model.close()


def score(model: Any, data: str, split: str, limit: Optional[int]) -> float:
    """mIoU (0-1) of the model on a labelled split, through ds2a.eval.evaluate."""
    from ..data import open_dataset
    from ..eval import evaluate

    metrics = evaluate(model, open_dataset(data, split=split), limit=limit)
    return float(metrics["mIoU"])


def check_gates(rows: List[Dict[str, Any]], args: argparse.Namespace) -> List[str]:
    """Messages for every missed gate (empty = all met)."""
    failed = []
    for r in rows:
        if r.get("skipped"):
            continue
        name = f"{r['model']} ({r['backend']} {r['precision']})"
        if args.min_miou is not None:
            miou = _number(r.get("miou"))
            if miou is None:  # a gate that cannot be evaluated fails
                failed.append(f"{name}: mIoU could not be measured (no labelled pixels scored); "
                              f"--min-miou {args.min_miou} is not met")
            elif miou < args.min_miou:
                failed.append(f"{name}: mIoU {miou:.4f} < --min-miou {args.min_miou}")
        if args.max_latency_ms is not None:
            lat = r.get("latency_ms") or {}
            value = _number(lat.get(args.gate_stat)) if lat.get("count") else None
            if value is None:
                failed.append(f"{name}: no {args.gate_stat} latency was measured (no frame inferred); "
                              f"--max-latency-ms {args.max_latency_ms} is not met")
            elif value > args.max_latency_ms:
                failed.append(f"{name}: {args.gate_stat} latency {value:.2f} ms > "
                              f"--max-latency-ms {args.max_latency_ms}")
    return failed


def _number(value: Any) -> Optional[float]:
    """A finite float, or None for a missing / NaN / infinite measurement."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def summary_lines(rows: List[Dict[str, Any]]) -> List[str]:
    out = [f"{'model':<28}{'backend':<13}{'prec':<6}{'median':>9}{'p99':>9}{'FPS':>9}{'mIoU':>8}{'speedup':>9}"]
    for r in rows:
        s = r.get("latency_ms") or {}
        miou = f"{100 * r['miou']:.2f}" if r.get("miou") is not None else "-"
        spd = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        out.append(f"{os.path.basename(r['model'])[:27]:<28}{r['backend']:<13}{r['precision']:<6}"
                   f"{s.get('median', 0):>9.2f}{s.get('p99', 0):>9.2f}{s.get('throughput_fps', 0):>9.1f}"
                   f"{miou:>8}{spd:>9}")
    return out


def run(args: argparse.Namespace) -> int:
    if args.source and (args.data or args.min_miou is not None):
        raise UserError("--data / --min-miou score a model on a labelled split, which end-to-end mode (--source) "
                        "does not do; run the accuracy gate without --source")
    if args.min_miou is not None and not args.data:
        raise UserError("--min-miou needs --data DIR (a labelled split to score the model on)")
    check_outputs([("--json", args.json), ("--markdown", args.markdown), ("--plot", args.plot)],
                  [("--model", m) for m in args.model] + [("--data", args.data)])
    if args.source:
        return run_end_to_end(args)
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, file=sys.stderr, **k))
    rows = [bench_model(path, args, log) for path in args.model]
    add_speedups(rows)
    report = make_report(rows, command=command_line(args))
    for w in report["machine"]["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    print("\n".join(summary_lines(rows)))
    write_all(report, args.json, args.markdown, args.plot)
    failed = check_gates(rows, args)
    for msg in failed:
        print(f"GATE FAILED: {msg}", file=sys.stderr)
    return 1 if failed else 0


def command_line(args: argparse.Namespace) -> str:
    """The exact command that reproduces this run, rebuilt from the parsed options."""
    parts = ["ds2a", "bench"]
    for m in args.model:
        parts += ["--model", m]
    for key, value in vars(args).items():
        if key in ("model", "quiet") or value in (None, False) or (key == "threads" and not value):
            continue
        flag = "--" + key.replace("_", "-")
        defaults = {"batch": 1, "warmup_s": 1.0, "split": "test", "gate_stat": "median", "max_frames": 300}
        if defaults.get(key, object()) == value:
            continue
        parts += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def make_report(rows: List[Dict[str, Any]], command: str, title: str = "ds2a bench",
                notes: Optional[List[str]] = None) -> Dict[str, Any]:
    providers = sorted({p for r in rows for p in (r.get("device") or []) if isinstance(r.get("device"), list)})
    return {"title": title, "command": command,
            "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(providers or None), "notes": list(notes or []), "rows": rows}


def run_end_to_end(args: argparse.Namespace) -> int:
    """`--source`: the inspection loop itself (capture | infer | output threads, no drawing or records),
    reporting per-stage times, end-to-end vs model-only FPS and dropped frames."""
    try:
        from ..inspect.loop import InspectionLoop
        from ..inspect.rules import analyser, load_rules
        from ..inspect.sources import open_source
    except ImportError as exc:
        raise UserError(f"end-to-end mode (--source) needs the inspection loop (ds2a.inspect): {exc}; "
                        "run `ds2a inspect --model M --source URI --headless` instead") from None
    from ..runtime import backend_for, open_model

    rows = []
    for path in args.model:
        backend = backend_for(path, args.backend)
        model = open_model(path, backend=backend, **backend_options(backend, args))
        source = open_source(args.source)
        try:
            classes = list(model.meta.classes)
            measure(model, warmup_s=args.warmup_s, iterations=1)  # same warm-up as model-only mode
            inferred: List[bool] = []  # per output frame, in order: did the model run on it?
            loop = InspectionLoop(source, model, analyser(load_rules(None, classes), classes),
                                  lambda res: inferred.append(bool(getattr(res, "inspected", True))),
                                  max_frames=args.max_frames)
            stats = loop.run(duration=args.duration)
        finally:
            source.close()
            model.close()
        # latency counts only frames the model judged (not "no part in view" frames)
        e2e = [v for v, ok in zip(stats.timings.samples.get("latency", []), inferred) if ok]
        if not e2e:
            raise UserError(f"no frame from {args.source} was inferred by {path} ({stats.frames} output, "
                            f"{stats.corrupt} corrupt, {stats.no_part} without a part); nothing to measure")
        latency = latency_stats(e2e, 1, stats.wall_s)
        latency["throughput_fps"] = stats.e2e_fps  # frames fully output per second of the run
        rows.append({
            "label": model.meta.arch, "model": path, "backend": model.backend,
            "precision": guess_precision(path, model.meta), "input_size": list(model.input_size), "batch": 1,
            "size_mb": round(os.path.getsize(path) / 2**20, 2) if os.path.isfile(path) else None,
            "mode": "end-to-end", "source": args.source,
            "frames": stats.frames, "inferred": len(e2e), "captured": stats.captured, "dropped": stats.dropped,
            "e2e_fps": round(stats.e2e_fps, 2), "model_fps": round(stats.model_fps, 2),
            "latency_ms": latency, "samples_ms": [round(v, 4) for v in e2e],
            "stages_ms": {k: latency_stats(v) for k, v in stats.timings.samples.items()},
        })
        print(f"{path}: {stats.frames} frames from {args.source}, end-to-end {stats.e2e_fps:.1f} FPS, "
              f"model-only {stats.model_fps:.1f} FPS, dropped {stats.dropped}")
        print(stats.timings.table())
    report = make_report(rows, command=command_line(args), title="ds2a bench (end to end)",
                         notes=["end-to-end mode: latency = capture to output of each frame through the "
                                "inspection loop; throughput = frames output per second (end-to-end FPS)"])
    write_all(report, args.json, args.markdown, args.plot)
    failed = check_gates(rows, args)
    for msg in failed:
        print(f"GATE FAILED: {msg}", file=sys.stderr)
    return 1 if failed else 0
