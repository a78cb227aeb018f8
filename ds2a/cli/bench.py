"""`ds2a bench`: trtexec-style latency (and optional mIoU) of one or more models, with CI gates.

Exit status: 0 = measured and every gate met, 1 = a gate (--min-miou / --max-latency-ms)
missed, 2 = bad input (printed without a traceback by the CLI). The work is `ds2a.bench.bench`
(ds2a/bench/runner.py); this module maps the flags onto `BenchOptions`, prints and writes.
"""
from __future__ import annotations

import argparse
import logging
import shlex
import sys

from ..bench.report import summary_lines, write_all
from ..bench.runner import GATE_STATS, BenchOptions, bench
from ..cli.types import finite_float, int_range
from ..meta import parse_size
from ..outputs import check_outputs
from ..runtime.options import add_backend_arguments

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
    add_backend_arguments(parser, cuda_graph=True, size=True, zero_threads_is_all=True,
                          backend_help="tensorrt | onnxruntime | pytorch (default: from the file suffix)",
                          device_help="onnxruntime: cpu (default) | cuda | tensorrt | auto; pytorch: auto | cpu | cuda",
                          threads_help="CPU threads for ONNX Runtime / PyTorch (0 = all)")
    parser.add_argument("--batch", type=int_range(1, 4096), default=1, help="frames per inference (default 1)")
    parser.add_argument("--warmup-s", type=finite_float(0, 3600), default=1.0, help="warm-up seconds, not timed (default 1)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--iterations", type=int_range(1), help="timed inferences (exactly this many)")
    group.add_argument("--duration", type=finite_float(0, 86400, lo_open=True), help="timed seconds (default 3, at least 10 inferences)")
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


def options(args: argparse.Namespace) -> BenchOptions:
    """The flags as library options."""
    return BenchOptions(
        backend=args.backend, device=args.device, threads=args.threads, cuda_graph=args.cuda_graph,
        size=parse_size(args.size) if args.size else None, batch=args.batch, warmup_s=args.warmup_s,
        iterations=args.iterations, duration=args.duration, data=args.data, split=args.split, limit=args.limit,
        min_miou=args.min_miou, max_latency_ms=args.max_latency_ms, gate_stat=args.gate_stat,
        source=args.source, max_frames=args.max_frames)


def messages_to_stderr(args: argparse.Namespace) -> bool:
    """Progress on stderr; stdout carries the summary."""
    return True


def run(args: argparse.Namespace) -> int:
    opts = options(args)
    opts.check()
    check_outputs([("--json", args.json), ("--markdown", args.markdown), ("--plot", args.plot)],
                  [("--model", m) for m in args.model] + [("--data", args.data)])
    if args.quiet:  # main() puts the level back
        logging.getLogger("ds2a").setLevel(logging.WARNING)
    result = bench(args.model, opts, echo=print)
    report = result.report(command_line(args))
    if not result.end_to_end:
        for w in report["machine"]["warnings"]:
            print(f"warning: {w}", file=sys.stderr)
        print("\n".join(summary_lines(result.rows)))
    write_all(report, args.json, args.markdown, args.plot)
    for msg in result.failed:
        print(f"GATE FAILED: {msg}", file=sys.stderr)
    return 1 if result.failed else 0


# flags in the order of the command line the reports have always shown
_ORDER = ("backend", "device", "batch", "size", "warmup_s", "iterations", "duration", "cuda_graph", "threads")


def command_line(args: argparse.Namespace) -> str:
    """The exact command that reproduces this run, rebuilt from the parsed options."""
    parts = ["ds2a", "bench"]
    for m in args.model:
        parts += ["--model", m]
    for key, value in sorted(vars(args).items(), key=lambda kv: _ORDER.index(kv[0]) if kv[0] in _ORDER else len(_ORDER)):
        if key in ("model", "quiet", "zero_threads_is_all") or value in (None, False) \
                or (key == "threads" and not value):
            continue
        flag = "--" + key.replace("_", "-")
        defaults = {"batch": 1, "warmup_s": 1.0, "split": "test", "gate_stat": "median", "max_frames": 300}
        if defaults.get(key, object()) == value:
            continue
        parts += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)
