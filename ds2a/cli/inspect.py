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
import math
import os
import signal
import sys
import threading
from typing import Any, Dict, List, Optional

import numpy as np

from ..errors import UserError
from ..web.station import add_arguments as add_station_arguments
from ..web.station import station as open_station
from ..inspect.jsonl_out import JsonlOut
from ..inspect.loop import STAGES, InspectionLoop, LoopStats, clip_roi
from ..inspect.overlay import MODES, Renderer
from ..inspect.publish import Publisher
from ..inspect.records import Records
from ..inspect.rules import PartTracker, Rules, analyser, check_scale, load_rules
from ..inspect.sinks import Sink, check_run_outputs, open_sink
from ..inspect.sources import open_source


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    p.epilog = "\n".join((__doc__ or "").split("\n")[2:])
    p.add_argument("--model", required=True, help="model file: .onnx (ONNX Runtime), .engine (TensorRT), .pt; or a served model: "
                   "triton://HOST:8001/NAME (gRPC), triton+http://HOST:8000/NAME (`ds2a serve`)")
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
    add_station_arguments(p)  # --web, --web-token, --web-insecure, --notify (ds2a/web/station.py)


def _check_args(args: argparse.Namespace) -> None:
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames {args.max_frames}: give a positive number of frames")
    for flag, value in (("--duration", args.duration), ("--fps", args.fps)):  # NaN/inf would never end
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{flag} {value}: give a finite, positive number")
    if args.mm_per_pixel is not None:
        check_scale(args.mm_per_pixel)
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
        with open(path, "rb") as fh:  # bytes: a file that is not UTF-8 is refused later, with its reason
            return b"min_confidence" in fh.read()
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
    if _rules_want_confidence(args.rules):  # every backend can fetch logits when the model has them
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
    """SIGINT/SIGTERM handling from before warm-up until the records are flushed.

    Before the loop exists the first signal is remembered (the loop stops as soon as it is
    made) and a second aborts start-up, when nothing is recorded yet. While the loop runs the
    first finishes cleanly and a second drops the queued frames. While the records are being
    flushed every signal waits for the flush, so no run is left `running` and no verdict lost.
    """

    def __init__(self, log: Any) -> None:
        self.log, self.count, self.previous = log, 0, {}  # type: Any, int, Dict[int, Any]
        self.loop: Optional[InspectionLoop] = None
        self.pending: Optional[str] = None
        self.first = ""  # the run stopped because of the first signal, even when a second one aborts
        self.flushing = False

    def install(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def attach(self, loop: InspectionLoop) -> None:
        self.loop = loop
        if self.pending:
            loop.stop(self.pending)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        self.first = self.first or name  # set before anything else: a second signal may interrupt this handler
        if self.flushing:
            print(f"\n{name}: writing the records; exiting as soon as they are flushed", file=self.log)
        elif self.loop is None:
            if self.count > 1:
                raise KeyboardInterrupt
            self.pending = name
            print(f"\n{name}: stopping as soon as start-up is done (again to abort start-up)", file=self.log)
        elif self.count == 1:
            print(f"\n{name}: finishing the frames in flight and flushing records (again to abort)", file=self.log)
            self.loop.stop(f"{name}")
        else:
            print(f"\n{name}: dropping queued frames; what was recorded stays recorded", file=self.log)
            self.loop.abort(self.first)

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}


def summary_text(stats: LoopStats, publisher: Publisher, classes: List[str],
                 truth: Optional[Dict[str, Any]] = None) -> str:
    """The end-of-run table: per-stage ms, FPS (labelled), drops, parts and defects; escapes and
    overkill when the source knows its parts' ground truth (`truth`, from `TruthTally.summary`)."""
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
        *([f"model unavailable     {stats.model_away} frames (dropped, recorded as NONE, not inspected)"]
          if stats.model_away else []),
        f"end-to-end FPS        {stats.e2e_fps:.1f}   (frames out / wall time, capture to output)",
        f"model-only FPS        {stats.model_fps:.1f}   (1000 / mean infer ms inside the loop)",
        f"verdicts ({parts[0].level if parts else 'part'})      {len(parts)}: {len(parts) - failed} PASS, "
        f"{failed} FAIL" + (f"  (pass rate {100.0 * (len(parts) - failed) / len(parts):.1f}%)" if parts else ""),
        f"frames FAIL           {publisher.frames_failed}",
        *([f"ground truth          {_truth_line(truth)}"] if truth else []),
        *([f"failure images lost   {publisher.images_failed} (not written: {publisher.image_error})"]
          if publisher.images_failed else []),
        *([f"database outages      {db.outages}, longest {db.max_delay_s:.1f} s, at most {db.max_backlog} rows "
           "waited in memory (none lost)"] if (db := publisher.records) is not None and db.outages else []),
        f"stopped because       {stats.stop_reason or 'source ended'}",
    ]
    return "\n".join(lines)


def _truth_line(truth: Dict[str, Any]) -> str:
    from ..eval.parts import truth_line

    return truth_line(truth)


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    check_run_outputs(args.output, args.db, [("--model", args.model), ("--rules", args.rules),
                                             ("--source", args.source)])
    log = sys.stderr if args.jsonl else sys.stdout
    station = open_station(args)  # --web/--notify checked before the model opens
    model = _open_model(args)
    classes = list(model.meta.classes)
    rules: Rules = load_rules(args.rules, classes, args.mm_per_pixel)
    source = open_source(args.source)
    records = None
    sinks: List[Sink] = []
    loop = None
    signals = _Signals(log)
    jsonl = JsonlOut(sys.stdout, lambda text: print(text, file=log)) if args.jsonl else None
    try:
        sinks = _open_sinks(args, args.fps or source.fps or 30.0, log)
        records = Records(args.db) if args.db else None
        tracker = PartTracker(rules, source.gives_parts, args.source)
        renderer = Renderer(classes, model.meta.palette, args.mode, args.alpha)
        publisher = Publisher(renderer, sinks, tracker, records, args.save_fail, jsonl)
        truth = None
        if getattr(source, "gives_truth", False):  # demo://: escapes and overkill against its own labels
            from ..eval.parts import TruthTally

            truth = TruthTally(rules, classes, source.truth, records, log)
            publisher.observers.append(truth)
        if station is not None:
            station.start(publisher, lambda: Renderer(classes, model.meta.palette, args.mode, args.alpha), records, log)
        h, w = model.input_size
        print(f"model   {args.model} ({model.backend}, {h}x{w}, classes {', '.join(classes)})", file=log)
        region = (f"window {','.join(map(str, args.roi))}" if args.roi else
                  "the part box from the source" if getattr(source, "gives_roi", False) else "whole frame")
        print(f"source  {args.source} ({'live: newest frame only' if source.live else 'every frame'}; "
              f"model sees {region})", file=log)
        if args.roi and source.frame_hw:
            clip_roi(args.roi, source.frame_hw)  # a window outside the frame is refused before the run
        print(f"outputs {', '.join(s.uri for s in sinks) or 'none'}; db {args.db or 'none'}; "
              f"failures {args.save_fail or 'not saved'}", file=log)
        print(f"rules   ({rules.origin}; parts: "
              f"{'from the source' if tracker.by == 'source' else f'{rules.part_frames} frame(s)'})", file=log)
        print("  " + rules.to_yaml().replace("\n", "\n  "), file=log)
        signals.install()  # before warm-up, kept until the records are flushed
        model.warmup(2)  # also checks the model's outputs against its metadata
        if rules.needs_confidence and model.infer(np.zeros((h, w, 3), np.uint8)).confidence is None:
            raise UserError(f"rules {rules.origin} use min_confidence but {args.model} gives no confidence (it "
                            "has no 'logits' output): export it with `ds2a export ... --outputs both` (and build "
                            "the engine from that ONNX), or remove min_confidence from the rules")
        loop = InspectionLoop(source, model, analyser(rules, classes), publisher, max_frames=args.max_frames,
                              roi=args.roi)
        publisher.on_stop = loop.stop
        signals.attach(loop)
        if records is not None:
            run_id = records.start_run(args.model, model.backend, args.source, classes, rules.to_dict(),
                                       rules.mm_per_pixel)
            print(f"run     {run_id} in {args.db}", file=log)
        status = "finished"
        try:
            stats = loop.run(duration=args.duration)
        except BaseException:
            status = "error"
            raise
        finally:
            signals.flushing = True  # a signal now waits for the records
            publisher.finish()
            if station is not None:
                station.finish()  # notifier counts go into the run's stats
            st = loop.stats
            if status != "error" and st.stop_reason in ("SIGINT", "SIGTERM", "aborted"):
                status = "interrupted"
            elif status == "finished" and st.frames - st.no_part - st.model_away == 0:
                status = "empty"  # nothing judged: never reported as a good run
            if jsonl is not None and jsonl.stopped:
                st.events.append(jsonl.stopped)
            if records is not None:
                records.finish_run(status, {**st.to_dict(), "parts": len(publisher.parts),
                                            "parts_failed": sum(1 for p in publisher.parts if not p.passed),
                                            "notes": loop.notes + ([jsonl.stopped] if jsonl and jsonl.stopped else [])})
        for event in stats.events:
            print(f"event   {event}", file=log)
        print(summary_text(stats, publisher, classes, truth.summary() if truth is not None else None), file=log)
        if status == "empty":
            raise UserError(f"nothing was inspected: {args.source} gave {stats.captured} frame(s), "
                            f"{stats.corrupt} unreadable or corrupt, {stats.no_part} without a part in view "
                            f"(stopped because {stats.stop_reason or 'source ended'}); check --source")
        return 0
    finally:
        if loop is None:  # failed before the capture thread took the source over
            source.close()
        if station is not None:
            station.close()
        if records is not None:
            records.close()
        for s in sinks:
            s.close()
        model.close()
        signals.restore()
