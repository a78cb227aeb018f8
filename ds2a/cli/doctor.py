"""`ds2a doctor`: the first command on a Jetson or GPU box: what runs here, and what to fix.

Exit status (scripts branch on it; `--json` prints the same facts as one object):
  0  TensorRT, a CUDA layer and a GPU are usable (and --model, if given, loads here)
  1  no usable GPU or TensorRT: a CPU-only machine; .onnx models still run on ONNX Runtime
  2  usage error (e.g. --model does not exist)
  3  --model will not load here; the report gives the command that fixes it
  4  --smoke: a hardware check failed (skipped checks do not count)
  5  --source: the camera check found a problem (no frames, corrupt frames, reconnects, a low rate)
"""
from __future__ import annotations

import argparse
import json
import logging

from ..doctor.report import MODEL_WONT_LOAD, NO_GPU, OK, SMOKE_FAILED, USAGE, add_smoke, collect, render

__all__ = ["MODEL_WONT_LOAD", "NO_GPU", "OK", "SMOKE_FAILED", "USAGE", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (__doc__.split("\n\n", 1)[1] + "\nexamples:\n  ds2a doctor\n  ds2a doctor --model model.engine\n"
                     "  ds2a doctor --json > doctor.json\n  ds2a doctor --smoke            # hardware checks (GPU)\n"
                     "  ds2a doctor --source 'csi://0?width=1920&height=1080&fps=30'   # camera check only")
    parser.add_argument("--model", metavar="FILE", help=".engine or .onnx: will it load here, and if not, the command "
                        "that builds the right engine")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--smoke", action="store_true", help="also run the hardware checks (TensorRT + GPU, a few "
                        "minutes); each check that cannot run here is skipped with its reason")
    parser.add_argument("--source", metavar="URI", help="camera check instead of the report: grab frames from URI "
                        "(as `ds2a inspect --source` takes it) and report size, measured rate, corrupt frames and "
                        "reconnects (ds2a/doctor/camera.py)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long --source grabs frames (default 5)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device that --model is checked on and --smoke "
                        "runs on (default 0)")


def messages_to_stderr(args: argparse.Namespace) -> bool:
    """The --smoke progress on stderr; stdout carries the report."""
    return True


def run(args: argparse.Namespace) -> int:
    if getattr(args, "source", None):
        from ..doctor.camera import check_source, render_check
        from ..errors import UserError

        if args.model or args.smoke:
            raise UserError("--source is a camera check of its own: run `ds2a doctor --model/--smoke` separately")
        if not 0 < args.seconds <= 3600:
            raise UserError(f"--seconds {args.seconds:g}: give a duration from 0 to 3600 seconds")
        check = check_source(args.source, args.seconds)
        print(json.dumps(check, indent=2, sort_keys=True) if args.json else render_check(check))
        return 0 if check["ok"] else 5
    report = collect(args.model, device=args.device)
    if args.smoke:
        if args.json:  # the report is the only output; main() puts the level back
            logging.getLogger("ds2a").setLevel(logging.WARNING)
        add_smoke(report, device=args.device)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(render(report))
    return int(report["exit_code"])
