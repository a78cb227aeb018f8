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
import signal
import sys
import threading
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import UserError
from .loop import STAGES, InspectionLoop, LoopStats
from .overlay import MODES, Renderer
from .publish import Publisher
from .records import Records
from .rules import PartTracker, Rules, analyser, load_rules
from .sinks import Sink, open_sink
from .sources import open_source


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    p.epilog = "\n".join((__doc__ or "").split("\n")[2:])
    p.add_argument("--model", required=True, help="model file: .onnx (ONNX Runtime), .engine (TensorRT), .pt")
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
    p.add_argument("--jsonl", action="store_true", help="one JSON line per frame and per part on stdout "
                   "(messages and the summary go to stderr)")
    p.add_argument("--roi", metavar="X,Y,W,H", help="inspect only this window of the frame, in pixels "
                   "(default: the part box from sources that know it, such as demo://, else the whole frame)")
    p.add_argument("--mode", choices=MODES, default="overlay", help="drawing: overlay (default), mask, side")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity 0..1 (default 0.5)")
    p.add_argument("--backend", help="force a backend: onnxruntime, tensorrt, pytorch (default: from the suffix)")
    p.add_argument("--device", help="ONNX Runtime device: cpu (default), cuda, tensorrt, auto")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: one per core; 1 can be "
                   "faster on a busy CPU)")
    p.add_argument("--fps", type=float, help="frame rate written into output videos (default: the source's, else 30)")


def _check_args(args: argparse.Namespace) -> None:
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames {args.max_frames}: give a positive number of frames")
    if args.duration is not None and args.duration <= 0:
        raise UserError(f"--duration {args.duration}: give a positive number of seconds")
    if args.mm_per_pixel is not None and args.mm_per_pixel <= 0:
        raise UserError(f"--mm-per-pixel {args.mm_per_pixel}: give the positive size of one pixel in mm")
    if not 0.0 <= args.alpha <= 1.0:
        raise UserError(f"--alpha {args.alpha}: give a value between 0 and 1")
    if args.roi is not None:
        try:
            roi = tuple(int(v) for v in args.roi.split(","))
        except ValueError:
            roi = ()
        if len(roi) != 4 or min(roi) < 0 or roi[2] < 2 or roi[3] < 2:
            raise UserError(f"--roi {args.roi}: give X,Y,W,H in pixels, for example --roi 320,180,640,360")
        args.roi = roi


def _rules_want_confidence(path: Optional[str]) -> bool:
    if not path or not os.path.isfile(path):
        return False
    try:
        with open(path, encoding="utf-8") as fh:
            return "min_confidence" in fh.read()
    except OSError:
        return False


def _open_model(args: argparse.Namespace) -> Any:
    from ..runtime import backend_for, open_model

    options: Dict[str, Any] = {}
    name = backend_for(args.model, args.backend)
    if args.device:
        options["device"] = args.device
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads {args.threads}: give at least 1")
        if name != "onnxruntime":
            raise UserError(f"--threads applies to ONNX Runtime models; {args.model} runs on {name}")
        options["intra_op_threads"] = args.threads
    if name == "onnxruntime" and _rules_want_confidence(args.rules):
        options["return_logits"] = True
    return open_model(args.model, backend=args.backend, **options)


def _open_sinks(args: argparse.Namespace, fps: float, log: Any) -> List[Sink]:
    sinks = [open_sink(uri, fps) for uri in args.output]
    if not args.headless and not any(uri.startswith("display") for uri in args.output):
        try:
            sinks.append(open_sink("display://0", fps))
        except UserError:
            print("note: no display available, running headless (pass --headless to silence this)", file=log)
    return sinks


class _Signals:
    """First SIGINT/SIGTERM: finish cleanly (records flushed); second: abort at once."""

    def __init__(self, loop: InspectionLoop, log: Any) -> None:
        self.loop, self.log, self.count, self.previous = loop, log, 0, {}

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            print(f"\n{name}: finishing the frames in flight and flushing records (again to abort)", file=self.log)
            self.loop.stop(f"{name}")
        else:
            self.loop.abort()

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def summary_text(stats: LoopStats, publisher: Publisher, classes: List[str]) -> str:
    """The end-of-run table: per-stage ms, FPS (labelled), drops, parts and defects."""
    head = ("per-stage time (ms; capture includes waiting for a live camera, queue = capture to model, "
            "latency = capture to output done):")
    lines = ["", head, stats.timings.table(STAGES)]
    parts = publisher.parts
    failed = sum(1 for p in parts if not p.passed)
    lines += [
        "",
        (f"frames processed      {stats.frames}   (captured {stats.captured}, dropped {stats.dropped}, "
         f"corrupt/skipped {stats.corrupt}, reconnects {stats.reconnects})"),
        *([f"no part in view       {stats.no_part} frames (shown, recorded as NONE, not inspected)"]
          if stats.no_part else []),
        f"end-to-end FPS        {stats.e2e_fps:.1f}   (frames out / wall time, capture to output)",
        f"model-only FPS        {stats.model_fps:.1f}   (1000 / mean infer ms inside the loop)",
        f"verdicts ({parts[0].level if parts else 'part'})      {len(parts)}: {len(parts) - failed} PASS, "
        f"{failed} FAIL" + (f"  (pass rate {100.0 * (len(parts) - failed) / len(parts):.1f}%)" if parts else ""),
        f"frames FAIL           {publisher.frames_failed}",
        f"stopped because       {stats.stop_reason or 'source ended'}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    log = sys.stderr if args.jsonl else sys.stdout
    model = _open_model(args)
    classes = list(model.meta.classes)
    rules: Rules = load_rules(args.rules, classes, args.mm_per_pixel)
    source = open_source(args.source)
    records = None
    sinks: List[Sink] = []
    loop = None
    try:
        sinks = _open_sinks(args, args.fps or source.fps or 30.0, log)
        records = Records(args.db) if args.db else None
        tracker = PartTracker(rules, source.gives_parts)
        renderer = Renderer(classes, model.meta.palette, args.mode, args.alpha)
        publisher = Publisher(renderer, sinks, tracker, records, args.save_fail,
                              sys.stdout if args.jsonl else None)
        h, w = model.input_size
        print(f"model   {args.model} ({model.backend}, {h}x{w}, classes {', '.join(classes)})", file=log)
        region = (f"window {','.join(map(str, args.roi))}" if args.roi else
                  "the part box from the source" if getattr(source, "gives_roi", False) else "whole frame")
        print(f"source  {args.source} ({'live: newest frame only' if source.live else 'every frame'}; "
              f"model sees {region})", file=log)
        print(f"outputs {', '.join(s.uri for s in sinks) or 'none'}; db {args.db or 'none'}; "
              f"failures {args.save_fail or 'not saved'}", file=log)
        print(f"rules   ({rules.origin}; parts: "
              f"{'from the source' if tracker.by == 'source' else f'{rules.part_frames} frame(s)'})", file=log)
        print("  " + rules.to_yaml().replace("\n", "\n  "), file=log)
        if records is not None:
            run_id = records.start_run(args.model, model.backend, args.source, classes, rules.to_dict(),
                                       rules.mm_per_pixel)
            print(f"run     {run_id} in {args.db}", file=log)
        model.warmup(2)
        if rules.needs_confidence and model.infer(np.zeros((h, w, 3), np.uint8)).confidence is None:
            print("note: the rules use min_confidence but this model gives no confidence (export it with "
                  "`ds2a export ... --outputs both`); min_confidence is ignored", file=log)
        loop = InspectionLoop(source, model, analyser(rules, classes), publisher, max_frames=args.max_frames,
                              roi=args.roi)
        publisher.on_stop = loop.stop
        status = "finished"
        try:
            with _Signals(loop, log):
                stats = loop.run(duration=args.duration)
        except BaseException:
            status = "error"
            raise
        finally:
            publisher.finish()
            if records is not None:
                st = loop.stats
                if status != "error" and st.stop_reason in ("SIGINT", "SIGTERM", "aborted"):
                    status = "interrupted"
                records.finish_run(status, {**st.to_dict(), "parts": len(publisher.parts),
                                            "parts_failed": sum(1 for p in publisher.parts if not p.passed)})
        for event in stats.events:
            print(f"event   {event}", file=log)
        print(summary_text(stats, publisher, classes), file=log)
        return 0
    finally:
        if loop is None:  # failed before the capture thread took the source over
            source.close()
        if records is not None:
            records.close()
        for s in sinks:
            s.close()
        model.close()
