"""One inspection, from Python or `ds2a inspect`: source -> model -> PASS/FAIL per part, records, outputs.

The order is the order of the checks an operator needs: everything that can be refused without
the model is refused before it opens (options, output paths, --web/--notify, the rules file),
the model is asked for confidence only when the rules use it, and every resource opened after
that is registered once on an ExitStack, so a failure at any step closes exactly what was opened.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import sys
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from ..notify.opcua_server import check_opcua_option, identity
from ..options_check import check_fields
from ..records.database import Records
from ..records.evidence import run_facts
from ..sources import Source, open_source
from ..sources.barcode import BarcodeSource, check_part_id_option
from ..web.station import Station, StationOptions
from ..web.station import station as open_station
from .drift import DEFAULT_MODE as DRIFT_DEFAULT
from .drift import MODES as DRIFT_MODES
from .drift import open_drift
from .jsonl_out import JsonlOut
from .loop import InspectionLoop, Region, clip_roi
from .overlay import MODES, Renderer
from .parts import PartTracker
from .publish import Publisher, parse_keep_raw
from .recipes import Active, PartBoundary, Recipe, RecipeBook
from .rules import Rules, analyser, bind_rules, check_region, check_scale, read_rules
from .shadow import open_shadow
from .signals import StopSignals
from .sinks import Sink, check_run_outputs, open_sink
from .summary import InspectionSummary, summary_text
from .triggered import TriggerParts, check_trigger_option, open_trigger_line

logger = logging.getLogger(__name__)


@dataclass
class InspectOptions:
    """Everything one inspection needs; the fields are `ds2a inspect`'s flags (see ds2a/cli/inspect.py)."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    model: str  # .onnx, .engine, .pt, or triton://HOST:8001/NAME ("" with `recipes`: each recipe names its model)
    source: str = "demo://"  # csi://0, v4l2:///dev/video0, rtsp://..., a file, folder or glob, demo://
    outputs: List[str] = field(default_factory=list)  # FILE.mp4|.avi|.mkv, a folder (JPEG frames), display://0
    headless: bool = False  # False: a display window too, when one can be opened
    db: Optional[str] = None  # SQLite records
    rules: Optional[str] = None  # rules YAML; None: any defect region fails
    mm_per_pixel: Optional[float] = None  # image scale (overrides the rules file's)
    max_frames: Optional[int] = None
    duration: Optional[float] = None  # seconds
    save_fail: Optional[str] = None  # folder for every FAIL frame, annotated and raw
    keep_raw: str = "fail"  # which frames save_fail keeps (raw, annotated, class-map mask): fail, all, sample:N
    jsonl: bool = False  # one JSON line per frame and per part (messages then go to stderr)
    roi: Optional[Region] = None  # x, y, w, h in frame pixels; None: the source's part box, else the whole frame
    mode: str = "overlay"  # overlay, mask, side
    alpha: float = 0.5
    backend: Optional[str] = None  # None: from the model's suffix
    backend_options: Dict[str, Any] = field(default_factory=dict)  # the backend's keywords (ds2a/runtime/options.py)
    fps: Optional[float] = None  # frame rate of output videos; None: the source's, else 30
    station: StationOptions = field(default_factory=StationOptions)  # live page and line notifiers
    trigger: Optional[str] = None  # mqtt://BROKER/PREFIX or modbus://PLC?unit=1: one part per trigger, one answer
    trigger_timeout: float = 1.0  # seconds from a trigger to its answer (NONE when it cannot be judged in time)
    opcua: Optional[str] = None  # opc.tcp://HOST:PORT: serve state, results and counters over OPC UA (docs/OPCUA.md)
    opcua_users: Optional[str] = None  # users file (names, roles, password hashes); required beyond loopback
    drift: str = DRIFT_DEFAULT  # stop (drifted parts NONE), warn (alarm only), off: the drift watch (docs/DRIFT.md)
    drift_ack: Optional[str] = None  # a file an engineer touches to acknowledge a drift alarm (SIGUSR1 does too)
    part_id: str = "source"  # source (ids from the source or the trigger), barcode (a QR/Data Matrix code on the part)
    barcode_roi: Optional[Region] = None  # x, y, w, h where the code is searched; None: the part box, else the frame
    barcode_formats: str = "qr,datamatrix"  # codes accepted as part ids (ds2a/sources/barcode.py)
    shadow: Optional[str] = None  # a candidate model judged beside the live one, recorded, never published (docs/SHADOW.md)
    recipes: Optional[str] = None  # folder of recipe files, one per product (docs/RECIPES.md); replaces model, rules, ...
    recipe: Optional[str] = None  # the recipe to start with (required unless the folder holds one)


def parse_roi(text: str) -> Region:
    """'X,Y,W,H' in pixels (the --roi flag)."""
    try:
        roi = tuple(int(v) for v in text.split(","))
    except ValueError:
        roi = ()
    if len(roi) != 4 or min(roi) < 0 or roi[2] < 2 or roi[3] < 2:
        raise UserError(f"--roi {text}: give X,Y,W,H in pixels, for example --roi 320,180,640,360")
    return roi  # type: ignore[return-value]


def check_options(options: InspectOptions) -> None:
    """The options that can be refused before anything is opened."""
    if options.max_frames is not None and options.max_frames < 1:
        raise UserError(f"--max-frames {options.max_frames}: give a positive number of frames")
    for flag, value in (("--duration", options.duration), ("--fps", options.fps)):  # NaN/inf would never end
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UserError(f"{flag} {value}: give a finite, positive number")
    if options.mm_per_pixel is not None:
        check_scale(options.mm_per_pixel)
    if not 0.0 <= options.alpha <= 1.0:
        raise UserError(f"--alpha {options.alpha}: give a value between 0 and 1")
    if options.drift not in DRIFT_MODES:
        raise UserError(f"--drift {options.drift}: choose one of {', '.join(DRIFT_MODES)}")
    if parse_keep_raw(options.keep_raw)[0] != "fail" and not options.save_fail:  # fail, all or sample:N
        raise UserError(f"--keep-raw {options.keep_raw} needs --save-fail DIR, the folder the kept frames go to")
    if options.mode not in MODES:
        raise UserError(f"mode '{options.mode}' is not a drawing mode; use one of {', '.join(MODES)}")
    if options.roi is not None:
        parse_roi(",".join(str(v) for v in options.roi))


def inspect(options: InspectOptions, *, out: Optional[IO[str]] = None,
            table: Optional[IO[str]] = None) -> InspectionSummary:
    """Run one inspection to its end (source ended, max_frames, duration, SIGINT/SIGTERM, q in a window).

    `out` takes the JSON lines (default stdout); `table` the summary table (default: stderr with
    `jsonl`, else `out`); what is set up and what happens goes to the "ds2a.inspect" loggers.
    UserError for anything the user can fix, and when nothing was inspected (after the summary
    is printed and the run recorded as `empty`).
    """
    out = sys.stdout if out is None else out
    table = table if table is not None else sys.stderr if options.jsonl else out
    options, book, first = _with_recipe(options)  # --recipes: the first recipe's model, rules, window, ...
    check_options(options)
    check_run_outputs(options.outputs, options.db, [("--model", options.model), ("--shadow", options.shadow), ("--rules", options.rules),
                                                    ("--source", options.source), ("--recipes", options.recipes)])
    station = open_station(options.station, options.db)  # --web/--notify checked before the model opens
    trigger = check_trigger_option(options)  # --trigger too (ds2a/notify/handshake.py)
    opcua = check_opcua_option(options)  # and --opcua: URL, users file, free port (ds2a/notify/opcua_server.py)
    part_codes = check_part_id_option(options)  # --part-id barcode: formats, ROI, zxing-cpp installed
    # checked as far as it can be without the model (a recipe's rules were, when the folder was read)
    draft = first.rules if first is not None else read_rules(options.rules, options.mm_per_pixel)
    with contextlib.ExitStack() as stack:
        signals = StopSignals()
        stack.callback(signals.restore)  # closed last: a signal during the clean-up waits for the records
        if book is not None:
            stack.callback(book.close)  # the book's thread and every model it opened
            if station is not None:
                station.recipes = book  # the page's recipe selector (ds2a/web/station.py)
        # logits (when the model has them) also feed the drift watch's confidence statistic
        model = _open_model(options, confidence=(draft is not None and draft.needs_confidence) or options.drift != "off")
        stack.callback(model.close)
        classes = list(model.meta.classes)
        rules = bind_rules(draft, classes, options.mm_per_pixel)
        source = open_source(options.source)
        line = stack.enter_context(contextlib.closing(open_trigger_line(trigger, options))) if trigger else None
        source = line.source(source) if line else source  # one frame per trigger, named by the line
        codes = BarcodeSource(source, *part_codes) if part_codes else None  # ids read from the part's code
        source = codes or source
        until_running = stack.enter_context(contextlib.ExitStack())  # the capture thread closes it once running
        until_running.callback(source.close)
        sinks = _open_sinks(options, options.fps or source.fps or 30.0, stack)
        records = stack.enter_context(contextlib.closing(Records(options.db))) if options.db else None
        jsonl = JsonlOut(out) if options.jsonl else None
        if line is not None and book is not None:
            line.use_recipes(book)  # a trigger may name the recipe of its part (payload or register)
        tracker = (TriggerParts(rules, book) if line else
                   PartTracker(rules, source.gives_parts, options.source, recipes=book))
        publisher = Publisher(_renderer(options, classes, model), sinks, tracker, records, options.save_fail, jsonl,
                              keep_raw=options.keep_raw)
        truth = None
        if getattr(source, "gives_truth", False):  # demo://: escapes and overkill against its own labels
            from .truth import TruthTally

            truth = TruthTally(rules, classes, source.truth, records)
            publisher.observers.append(truth)
        if line is not None:
            publisher.observers.append(line)  # answers each trigger after its part is recorded
        if codes is not None:  # its alarms (JSON line, notes) and counts (run stats) are written on the output side
            codes.jsonl, codes.records = jsonl, records
            publisher.observers.append(codes)
        if station is not None:
            stack.callback(station.close)
            station.start(publisher, lambda: _renderer(options, classes, model), records)
        if opcua is not None:
            stack.push(opcua)  # stopped with the run; an exception that ends it becomes the station's alarm
            opcua.recipes = book  # RecipeList, ActiveRecipe and SelectRecipe from the book
            opcua.start(publisher, records, options, model, rules)
        _log_setup(options, model, classes, source, sinks, rules, tracker)
        drift = open_drift(options.drift, model, publisher, jsonl, records, options.drift_ack,
                           _station_alarm(opcua, station))  # None: off, said why
        if drift is not None:
            publisher.observers.append(drift)  # its summary goes into the run's stats at the end
            stack.callback(drift.install_ack_signal())
        open_shadow(options, rules, classes, records, publisher, stack)  # --shadow, the last observer (inspect/shadow.py)
        signals.install()  # before warm-up, kept until the records are flushed
        _warm_up(model, rules, options.model)
        if book is not None and first is not None:
            wrap = drift.wrap if drift is not None else (lambda m: m)
            book.start(Active(first, wrap(model), model, rules),
                       lambda r: _open_recipe(options, r, classes, source, line is not None, wrap), records)
            if opcua is not None:
                book.listeners.append(opcua.recipe_changed)
                book.alarms.append(opcua.raise_alarm)
        loop = InspectionLoop(source, drift.wrap(model) if drift else model, analyser(rules, classes),
                              drift or publisher, max_frames=options.max_frames, roi=options.roi,
                              min_region_px=_smallest_area(rules), recipes=book,
                              boundary=PartBoundary(line is not None, source.gives_parts))
        if book is not None:
            book.notes = loop.notes  # refusals go into the summary and the run's notes
        if drift is not None:
            drift.notes = loop.notes  # alarms go into the summary and the run's notes
        if codes is not None:
            codes.notes = loop.notes
        publisher.on_stop = loop.stop
        signals.attach(loop)
        run_id = None
        if records is not None:  # what `ds2a evidence` shows an auditor (ds2a/records/evidence.py), from the start
            facts = identity(options, model, rules)
            if book is not None:  # the recipe, as the recipe book names and hashes it
                facts.update(recipe=book.current()["name"], recipe_sha256=book.current()["sha256"])
            records.extra["evidence"] = run_facts(options, facts)
            records.extra["palette"] = [list(c) for c in model.meta.palette]  # the page's colours (ds2a/web/data.py)
            run_id = records.start_run(options.model, model.backend, options.source, classes, rules.to_dict(),
                                       rules.mm_per_pixel)
            # the model's self-test at open (ds2a/runtime/selftest.py) goes into the run's stats
            records.extra["selftest"] = model.selftest.to_dict() if model.selftest else {"status": "not run"}
            if getattr(model, "build_gate", None):  # an engine's accuracy gate at build (ds2a/engine/verify.py)
                records.extra["build_gate"] = model.build_gate
            logger.info(f"run     {run_id} in {options.db}")
        if line is not None:
            line.start(records)  # listens only now: no trigger waits for the warm-up
        until_running.pop_all()  # handed over to the capture thread
        try:
            loop.run(duration=options.duration)
        except BaseException:
            _end_run(loop, publisher, station, records, jsonl, signals, failed=True)
            raise
        status = _end_run(loop, publisher, station, records, jsonl, signals, failed=False)
        stats = loop.stats
        for event in stats.events:
            logger.info(f"event   {event}")
        truth_numbers = truth.summary() if truth is not None else None
        text = summary_text(stats, publisher, classes, truth_numbers)
        try:
            print(text, file=table)
        except (OSError, ValueError):  # the terminal is gone (SIGHUP): the records are already flushed
            pass
        if status == "empty":
            raise UserError(f"nothing was inspected: {options.source} gave {stats.captured} frame(s), "
                            f"{stats.corrupt} unreadable or corrupt, {stats.no_part} without a part in view "
                            f"(stopped because {stats.stop_reason or 'source ended'}); check --source")
        return InspectionSummary(status, run_id, stats, list(publisher.parts), publisher.frames_failed,
                                 truth_numbers, text)


def _with_recipe(options: InspectOptions) -> Tuple[InspectOptions, Optional[RecipeBook], Optional[Recipe]]:
    """With --recipes: every recipe file checked, and the options the first recipe states (model, rules file,
    window, scale, part ids); the flags a recipe states are refused beside --recipes."""
    if not options.recipes:
        if options.recipe:
            raise UserError(f"--recipe {options.recipe} needs --recipes DIR, the folder of recipe files")
        if not options.model:
            raise UserError("give --model MODEL, or --recipes DIR with one recipe file per product (docs/RECIPES.md)")
        return options, None, None
    stated = [flag for flag, value in (("--model", options.model), ("--rules", options.rules), ("--roi", options.roi),
                                       ("--mm-per-pixel", options.mm_per_pixel), ("--barcode-roi", options.barcode_roi),
                                       ("--part-id", options.part_id != "source"),
                                       ("--barcode-formats", options.barcode_formats != "qr,datamatrix")) if value]
    if stated:
        raise UserError(f"{', '.join(stated)} with --recipes {options.recipes}: each recipe file states these; "
                        "remove the flag(s) or put the value into the recipe files (docs/RECIPES.md)")
    book = RecipeBook(options.recipes)
    first = book.first(options.recipe)
    return dataclasses.replace(options, model=first.model, rules=first.rules_file, roi=first.roi,
                               mm_per_pixel=first.mm_per_pixel, part_id=first.part_id, barcode_roi=first.barcode_roi,
                               barcode_formats=first.barcode_formats, recipe=first.name), book, first


def _open_recipe(options: InspectOptions, recipe: Recipe, classes: List[str], source: Source, triggered: bool,
                 wrap: Any) -> Active:
    """A changeover's candidate, on the recipe book's thread: the model opened and self-tested (open_model runs its
    golden frames), bound to the run's classes, its window and rules checked as at start, warmed up."""
    settings = (options.part_id, options.barcode_roi, options.barcode_formats)
    if recipe.part_settings() != settings:
        raise UserError(f"its part ids ({recipe.part_id}, barcode_roi {recipe.barcode_roi}, {recipe.barcode_formats}) "
                        f"differ from the run's ({settings[0]}, barcode_roi {settings[1]}, {settings[2]}); start a "
                        f"run with --recipe {recipe.name} to change how parts are named")
    opened = dataclasses.replace(options, model=recipe.model, rules=recipe.rules_file, roi=recipe.roi,
                                 mm_per_pixel=recipe.mm_per_pixel, recipes=None, recipe=None)
    model = _open_model(opened, confidence=recipe.rules.needs_confidence or options.drift != "off")
    try:
        if list(model.meta.classes) != list(classes):
            raise UserError(f"its model {recipe.model} has classes {', '.join(model.meta.classes)}, this run "
                            f"{', '.join(classes)}; recipes of one run share the class list (start a new run)")
        rules = bind_rules(recipe.rules, classes, recipe.mm_per_pixel)
        if not triggered:
            PartTracker(rules, source.gives_parts, options.source)  # a part grouping this source can serve
        if recipe.roi and source.frame_hw:
            clip_roi(recipe.roi, source.frame_hw)
        check_region(rules, recipe.roi, source.frame_hw, options.source)
        _warm_up(model, rules, recipe.model)
        facts = identity(opened, model, rules)  # hashed here, on the book's thread, for OPC UA's results
    except BaseException:
        model.close()
        raise
    return Active(recipe, wrap(model), model, rules, facts=facts)


def _station_alarm(opcua: Any, station: Optional[Station]) -> Optional[Callable[[str], None]]:
    """Raise an alarm on every interface the station has (OPC UA, the page), or None without any: a drift
    seen on one is seen on all, each acknowledged where it is shown."""
    targets = [t for t in (getattr(opcua, "raise_alarm", None),
                           getattr(getattr(station, "live", None), "raise_alarm", None)) if t is not None]
    if not targets:
        return None

    def raise_alarm(text: str) -> None:
        for target in targets:
            target(text)

    return raise_alarm


def _smallest_area(rules: Rules) -> float:
    """The smallest defect area any rule counts: a region smaller than this can never fail a part."""
    return min([rules.min_area_px] + [rules.min_area_for(name) for name in rules.classes])


def _open_model(options: InspectOptions, confidence: bool) -> Any:
    from ..runtime import open_model

    backend_options = dict(options.backend_options)
    if confidence:  # every backend can fetch logits when the model has them
        backend_options["return_logits"] = True
    return open_model(options.model, backend=options.backend, **backend_options)


def _renderer(options: InspectOptions, classes: Sequence[str], model: Any) -> Renderer:
    return Renderer(list(classes), model.meta.palette, options.mode, options.alpha)


def _open_sinks(options: InspectOptions, fps: float, stack: contextlib.ExitStack) -> List[Sink]:
    """The outputs asked for, plus a display window unless headless (a note when there is none)."""
    sinks = [stack.enter_context(contextlib.closing(open_sink(uri, fps))) for uri in options.outputs]
    if not options.headless and not any(uri.startswith("display") for uri in options.outputs):
        try:
            sinks.append(stack.enter_context(contextlib.closing(open_sink("display://0", fps))))
        except UserError:
            logger.info("note: no display available, running headless (pass --headless to silence this)")
    return sinks


def _log_setup(options: InspectOptions, model: Any, classes: List[str], source: Source, sinks: List[Sink],
               rules: Rules, tracker: PartTracker) -> None:
    """What is about to run, as the operator checks it; an ROI outside the frame is refused here."""
    h, w = model.input_size
    if options.recipes:
        logger.info(f"recipe  {options.recipe} of {options.recipes} (changeovers between parts: docs/RECIPES.md)")
    logger.info(f"model   {options.model} ({model.backend}, {h}x{w}, classes {', '.join(classes)})")
    roi = options.roi
    region = (f"window {','.join(map(str, roi))}" if roi else
              "the part box from the source" if getattr(source, "gives_roi", False) else "whole frame")
    logger.info(f"source  {options.source} ({'live: newest frame only' if source.live else 'every frame'}; "
                f"model sees {region})")
    if roi and source.frame_hw:
        clip_roi(roi, source.frame_hw)  # a window outside the frame is refused before the run
    check_region(rules, roi, source.frame_hw, options.source)  # a region where no defect could FAIL a part
    logger.info(f"outputs {', '.join(s.uri for s in sinks) or 'none'}; db {options.db or 'none'}; "
                f"failures {options.save_fail or 'not saved'}")
    logger.info(f"rules   ({rules.origin}; parts: "
                f"{'from the source' if tracker.by == 'source' else f'{rules.part_frames} frame(s)'})")
    logger.info("  " + rules.to_yaml().replace("\n", "\n  "))


def _warm_up(model: Any, rules: Rules, name: str) -> None:
    """Warm-up also checks the model's outputs against its metadata; min_confidence needs logits."""
    model.warmup(2)
    h, w = model.input_size
    if rules.needs_confidence and model.infer(np.zeros((h, w, 3), np.uint8)).confidence is None:
        raise UserError(f"rules {rules.origin} use min_confidence but {name} gives no confidence (it "
                        "has no 'logits' output): export it with `ds2a export ... --outputs both` (and build "
                        "the engine from that ONNX), or remove min_confidence from the rules")


def _end_run(loop: InspectionLoop, publisher: Publisher, station: Optional[Station], records: Optional[Records],
             jsonl: Optional[JsonlOut], signals: StopSignals, failed: bool) -> str:
    """Close the open part, stop the notifiers and mark the run in the database; returns its status:
    error, interrupted, empty (nothing judged: never reported as a good run) or finished."""
    signals.flushing = True  # a signal now waits for the records
    publisher.finish(close_sinks=False)  # the sinks are closed once, by the ExitStack
    if station is not None:
        station.finish()  # notifier counts go into the run's stats
    st = loop.stats
    if failed:
        status = "error"
    elif st.stop_reason in ("SIGINT", "SIGTERM", "SIGHUP", "aborted"):
        status = "interrupted"
    elif st.inspected == 0:
        status = "empty"
    else:
        status = "finished"
    if jsonl is not None and jsonl.stopped:
        st.events.append(jsonl.stopped)
    if records is not None:
        records.finish_run(status, {**st.to_dict(), "parts": len(publisher.parts),
                                    "parts_failed": sum(1 for p in publisher.parts if p.verdict == "FAIL"),
                                    "parts_none": sum(1 for p in publisher.parts if p.verdict == "NONE"),
                                    "notes": loop.notes + ([jsonl.stopped] if jsonl and jsonl.stopped else [])})
    return status

