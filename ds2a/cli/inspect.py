"""`ds2a inspect`: camera (or video, or demo://) -> model -> PASS/FAIL per part, records, annotated output.

examples:
  ds2a inspect --model ds2a/assets/demo/ds2a_tiny_synth.int8.onnx --source "demo://?frames=300" --headless \\
      --output runs/demo/inspect.mp4 --db runs/demo/inspect.sqlite --save-fail runs/demo/fail
  ds2a inspect --model model.engine --source csi://0 --rules rules.yaml --mm-per-pixel 0.05 \\
      --db /var/lib/ds2a/inspect.sqlite --save-fail /var/lib/ds2a/fail --headless
  ds2a inspect --model model.onnx --source rtsp://10.0.0.7/stream --output display://0 --jsonl
"""
from __future__ import annotations

import argparse
import os

from ..inspect.drift import DEFAULT_MODE as DRIFT_DEFAULT
from ..inspect.drift import MODES as DRIFT_MODES
from ..inspect.overlay import MODES
from ..inspect.run import InspectOptions, inspect, parse_roi
from ..inspect.signals import exit_code
from ..runtime import backend_for
from ..runtime.options import add_backend_arguments, options_from_args
from ..sources.barcode import parse_barcode_roi
from ..web.station import StationOptions


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    p.epilog = "\n".join((__doc__ or "").split("\n")[2:])
    p.add_argument("--model", help="model file: .onnx (ONNX Runtime), .engine (TensorRT), .pt; or a served model: "
                   "triton://HOST:8001/NAME (gRPC), triton+http://HOST:8000/NAME (`ds2a serve`); required unless "
                   "--recipes")
    p.add_argument("--recipes", metavar="DIR", help="one recipe file per product (model, rules, roi, mm_per_pixel, "
                   "part ids; docs/RECIPES.md) instead of --model/--rules; the line, OPC UA or the page change the "
                   "recipe between parts")
    p.add_argument("--recipe", metavar="NAME", help="with --recipes: the recipe to start with (a file name without "
                   ".yaml; required unless the folder holds one)")
    p.add_argument("--source", default="demo://", help="csi://0, v4l2:///dev/video0, 0, rtsp://..., http://... "
                   "(MJPEG), file://clip.mp4, a path/folder/glob, or demo:// (default) / demo://?frames=300&fps=30")
    p.add_argument("--output", action="append", default=[], metavar="URI",
                   help="annotated output, repeatable: FILE.mp4|.avi|.mkv, a folder (JPEG frames), display://0")
    p.add_argument("--headless", action="store_true", help="no display window (servers, systemd)")
    p.add_argument("--db", help="SQLite file for the records (runs, frames, defects, verdicts, timings)")
    p.add_argument("--rules", help="rules YAML (see deploy/rules.example.yaml); default: any defect region fails")
    p.add_argument("--mm-per-pixel", type=float, help="image scale, for areas in mm^2 (overrides the rules file)")
    p.add_argument("--max-frames", type=int, help="stop after this many inspected frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--save-fail", metavar="DIR", help="save every FAIL frame, annotated and raw (JPEG q95)")
    p.add_argument("--keep-raw", default="fail", metavar="fail|all|sample:N",
                   help="which frames --save-fail keeps, raw, annotated and class-map mask: fail (default: failing "
                   "frames), all, or sample:N (failing frames and every frame of one part in N); disk cost per "
                   "policy in benchmarks/results/evidence.md, `ds2a evidence` shows what was kept")
    p.add_argument("--jsonl", action="store_true", help="one JSON line per frame and per part on stdout "
                   "(messages and the summary go to stderr)")
    p.add_argument("--roi", metavar="X,Y,W,H", help="inspect only this window of the frame, in pixels "
                   "(default: the part box from sources that know it, such as demo://, else the whole frame)")
    p.add_argument("--mode", choices=MODES, default="overlay", help="drawing: overlay (default), mask, side")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1 (default 0.5)")
    add_backend_arguments(p, device_help="ONNX Runtime device: cpu (default), cuda, tensorrt, auto",
                          threads_help="ONNX Runtime intra-op threads (default: one per core; 1 can be faster "
                          "on a busy CPU)")  # --backend, --device, --threads (ds2a/runtime/options.py)
    p.add_argument("--fps", type=float, help="frame rate written into output videos (default: the source's, else 30)")
    p.add_argument("--web", metavar="HOST:PORT", help="serve the operator's page with a live view while inspecting, "
                   "e.g. 127.0.0.1:8080 (the records part needs --db)")
    p.add_argument("--web-token", default=os.environ.get("DS2A_WEB_TOKEN"), metavar="TOKEN",
                   help="required for --web beyond 127.0.0.1; viewers open /?token=TOKEN once (default: $DS2A_WEB_TOKEN)")
    p.add_argument("--web-insecure", action="store_true", help="--web beyond 127.0.0.1 without a token (closed networks)")
    p.add_argument("--web-users", metavar="FILE", help="users file (as --opcua-users): viewers of --web sign in at "
                   "/login; operator acknowledges alarms and marks verdicts doubtful, engineer also switches recipes "
                   "and overrides verdicts, each action audited (docs/OPCUA.md)")
    p.add_argument("--notify", action="append", default=[], metavar="URL",
                   help="send part verdicts to the line, repeatable: mqtt://BROKER:1883/line1/station3 (JSON, QoS 1) "
                   "or modbus://PLC:502?unit=1&coil=12 (pulse per FAIL; register=N counts FAILs)")
    p.add_argument("--trigger", metavar="URL", help="inspect one frame per trigger from the line and answer each one: "
                   "mqtt://BROKER:1883/PREFIX (PREFIX/trigger in, PREFIX/result out) or modbus://PLC:502?unit=1 "
                   "(trigger coil, serial, busy/done, result registers; map in deploy/README.md)")
    p.add_argument("--trigger-timeout", type=float, default=1.0, metavar="S",
                   help="seconds from a trigger to its answer; a part not judged by then is answered NONE (default 1)")
    p.add_argument("--part-id", choices=("source", "barcode"), default="source",
                   help="where part ids come from: source (default: the source's or the trigger's) or barcode (a QR or "
                   "Data Matrix code on the part, read with zxing-cpp: pip install 'ds2a-edge[barcode]'); an unread "
                   "code gives the id unread-<frame>, a code that disagrees with --trigger's id raises an alarm")
    p.add_argument("--barcode-roi", metavar="X,Y,W,H", help="with --part-id barcode: search the code in this window "
                   "(frame pixels; default: the part box, stretched up and down by half its height, else the whole frame)")
    p.add_argument("--barcode-formats", default="qr,datamatrix", metavar="qr,datamatrix",
                   help="with --part-id barcode: the codes accepted as part ids (default both)")
    p.add_argument("--opcua", metavar="URL", help="serve state, part results and counters over OPC UA, e.g. "
                   "opc.tcp://127.0.0.1:4840 (anonymous on loopback only; node set in docs/OPCUA.md)")
    p.add_argument("--opcua-users", metavar="FILE", help="users file (NAME:ROLE:HASH lines, `python -m "
                   "ds2a.notify.users NAME ROLE`): required for --opcua beyond 127.0.0.1")


    p.add_argument("--drift", choices=DRIFT_MODES, default=DRIFT_DEFAULT,
                   help="watch the picture against the model's reference statistics (docs/DRIFT.md): stop (default: "
                   "parts judged while drifted are NONE until the picture is back or acknowledged), warn (alarm "
                   "only), off")
    p.add_argument("--drift-ack", metavar="FILE", help="touching this file acknowledges a drift alarm (as does "
                   "`kill -USR1 PID`); parts are judged again until the picture is back")
    p.add_argument("--shadow", metavar="MODEL", help="a candidate model (.onnx, .pt, .engine) judges the same parts "
                   "with the same rules on its own low-priority thread; its verdicts are recorded beside the live "
                   "ones (needs --db), never published, sampled when it cannot keep up: `ds2a report DB --shadow`, "
                   "docs/SHADOW.md")


def options_from(args: argparse.Namespace) -> InspectOptions:
    """The flags as InspectOptions (the checks are the library's: ds2a/inspect/run.py)."""
    backend = backend_for(args.model or _first_model(args), args.backend)
    return InspectOptions(
        model=args.model or "", recipes=args.recipes, recipe=args.recipe,
        source=args.source, outputs=list(args.output), headless=args.headless, db=args.db,
        rules=args.rules, mm_per_pixel=args.mm_per_pixel, max_frames=args.max_frames, duration=args.duration,
        save_fail=args.save_fail, keep_raw=args.keep_raw, jsonl=args.jsonl, roi=None if args.roi is None else parse_roi(args.roi),
        mode=args.mode, alpha=args.alpha, backend=args.backend,
        backend_options=options_from_args(args, backend, args.model or _first_model(args)), fps=args.fps,
        station=StationOptions(web=args.web, web_token=args.web_token, web_insecure=args.web_insecure, web_users=args.web_users,
                               notify=list(args.notify)),
        trigger=args.trigger, trigger_timeout=args.trigger_timeout, opcua=args.opcua, opcua_users=args.opcua_users,
        drift=args.drift, drift_ack=args.drift_ack, shadow=args.shadow, part_id=args.part_id, barcode_formats=args.barcode_formats,
        barcode_roi=None if args.barcode_roi is None else parse_barcode_roi(args.barcode_roi))


def _first_model(args: argparse.Namespace) -> str:
    """The model the backend flags are checked against: --recipes' first recipe's (all recipes share them)."""
    if not args.recipes:
        from ..errors import UserError

        raise UserError("give --model MODEL, or --recipes DIR with one recipe file per product (docs/RECIPES.md)")
    from ..inspect.recipes import RecipeBook

    book = RecipeBook(args.recipes)
    return book.first(args.recipe).model


def messages_to_stderr(args: argparse.Namespace) -> bool:
    """With --jsonl stdout carries only the JSON lines."""
    return bool(args.jsonl)


def run(args: argparse.Namespace) -> int:
    """0 for a run that ended by itself; 130/143/129 when SIGINT/SIGTERM/SIGHUP stopped it (records flushed)."""
    return exit_code(inspect(options_from(args)).stats.stop_reason)
