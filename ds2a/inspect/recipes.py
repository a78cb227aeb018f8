"""Recipes (`ds2a inspect --recipes DIR`): one YAML file per product, changed between parts, atomically.

A recipe names what judges a product: its model, its rules (a file beside the recipe, or inline), the
inspection window, the image scale and how parts are named (docs/RECIPES.md). Every file of the folder
is checked at start; the recipe in force is opened by `inspect()` (ds2a/inspect/run.py). A changeover
(asked by the trigger's payload or register, OPC UA `SelectRecipe` or the page) never touches the
inspection thread until the next recipe is ready: its model is opened, self-tested on its golden frames
(ds2a/runtime/selftest.py) and warmed up on the book's own thread; the inspection loop
(ds2a/inspect/loop.py) swaps it in only where no part is open (`PartBoundary`), and the part tracker
(ds2a/inspect/parts.py) stamps each part with the one recipe all its frames were judged by. A candidate
that fails to open or to self-test is refused with an alarm and the recipe in force stays.
Torch-free.
"""
from __future__ import annotations

import bisect
import collections
import hashlib
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from ..errors import UserError
from ..meta import file_sha256_or_empty
from .rules import Rules, _parse, _show, analyser, check_can_fail, check_scale, read_rules, read_yaml

logger = logging.getLogger(__name__)

KEYS = ("model", "rules", "roi", "mm_per_pixel", "part_id", "barcode_roi", "barcode_formats")
SUFFIXES = (".yaml", ".yml")
KEEP_PREPARED = 2  # candidates kept open beside the recipe in force (each costs one model's memory)
LINE_ROLE = "line"  # the role of a request from the trigger line (MQTT payload, Modbus register)
Region = Tuple[int, int, int, int]


@dataclass
class Recipe:
    """One checked recipe file; `sha256` covers the recipe, its rules file and its model file."""

    name: str
    path: str
    model: str
    rules: Rules  # checked as far as it can be without the model (bind_rules finishes it)
    rules_file: Optional[str] = None  # None: the rules are inline
    roi: Optional[Region] = None
    mm_per_pixel: Optional[float] = None
    part_id: str = "source"
    barcode_roi: Optional[Region] = None
    barcode_formats: str = "qr,datamatrix"
    files: Dict[str, str] = field(default_factory=dict)  # recipe, rules, model -> sha256

    @property
    def sha256(self) -> str:
        """sha256 of the lines `recipe <sha>`, `rules <sha>`, `model <sha>` (docs/RECIPES.md)."""
        text = "".join(f"{k} {self.files.get(k, '')}\n" for k in ("recipe", "rules", "model"))
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    def part_settings(self) -> Tuple[str, Optional[Region], str]:
        return self.part_id, self.barcode_roi, self.barcode_formats


def _region(value: Any, key: str, path: str) -> Optional[Region]:
    """X,Y,W,H in frame pixels, as a list or as 'X,Y,W,H' text."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else value
    roi: Tuple[int, ...] = ()
    if isinstance(items, (list, tuple)) and all(isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool))
                                                for v in items):
        try:
            roi = tuple(int(v) for v in items)
        except ValueError:
            roi = ()
    if len(roi) != 4 or min(roi) < 0 or roi[2] < 2 or roi[3] < 2:
        raise UserError(f"recipe file {path}: {key} {_show(value)} is not a window; give [X, Y, W, H] in frame "
                        f"pixels, e.g. {key}: [320, 180, 640, 360]")
    return roi  # type: ignore[return-value]


def read_recipe(path: str) -> Recipe:
    """One recipe file checked without its model: keys, model and rules files, rules, window, scale, part ids."""
    name = os.path.splitext(os.path.basename(path))[0]
    data = read_yaml(path, "recipe file", "docs/RECIPES.md", "; fix it or move it out of the recipes folder")
    if not isinstance(data, dict):
        raise UserError(f"recipe file {path}: the top level must be a mapping with keys {', '.join(KEYS)} "
                        "(model and rules required; docs/RECIPES.md)")
    unknown = sorted(map(_show, set(data) - set(KEYS)))
    if unknown:
        raise UserError(f"recipe file {path}: unknown key(s) {', '.join(unknown[:5])}; valid keys: {', '.join(KEYS)}")
    base = os.path.dirname(os.path.abspath(path))
    model = data.get("model")
    if not isinstance(model, str) or not model.strip():
        raise UserError(f"recipe file {path}: 'model' is missing; give the model file, relative to the recipe's "
                        "folder, e.g. model: cell.int8.onnx")
    served = "://" in model
    model_path = model if served or os.path.isabs(model) else os.path.join(base, model)
    if not served and not os.path.isfile(model_path):
        raise UserError(f"recipe file {path}: model file {model} does not exist (looked for {model_path}); give a "
                        "path relative to the recipe's folder")
    mm = data.get("mm_per_pixel")
    if mm is not None:
        check_scale(mm, f"recipe file {path}: mm_per_pixel")
    rules_value, rules_file = data.get("rules"), None
    if rules_value is None:
        raise UserError(f"recipe file {path}: 'rules' is missing; give a rules file relative to the recipe (rules: "
                        "cell.rules.yaml) or the limits inline (rules: {classes: {damage: {max_count: 0}}}); a recipe "
                        "without limits would pass every part")
    if isinstance(rules_value, str):
        rules_file = rules_value if os.path.isabs(rules_value) else os.path.join(base, rules_value)
        if not os.path.isfile(rules_file):
            raise UserError(f"recipe file {path}: rules file {rules_value} does not exist (looked for {rules_file}); "
                            "give a path relative to the recipe's folder")
        rules = read_rules(rules_file, mm)
    elif isinstance(rules_value, dict):
        rules = _parse(rules_value, f"{path} (rules:)", mm, None)
    else:
        raise UserError(f"recipe file {path}: 'rules' must be a rules file name or a mapping of limits, "
                        "e.g. rules: {classes: {damage: {max_count: 0}}}")
    if not rules.classes:
        raise UserError(f"recipe file {path}: its rules ({rules.origin}) state no limit, so it could never FAIL a "
                        "part; give at least one class limit, e.g. classes: {damage: {max_count: 0}}")
    roi = _region(data.get("roi"), "roi", path)
    if roi is not None:  # the window must be one in which the rules can fail a part
        check_can_fail(rules, roi[2], roi[3], f"recipe file {path}: roi {','.join(map(str, roi))}")
    recipe = Recipe(name, path, model_path, rules, rules_file, roi, None if mm is None else float(mm),
                    str(data.get("part_id", "source")), _region(data.get("barcode_roi"), "barcode_roi", path),
                    str(data.get("barcode_formats", "qr,datamatrix")))
    from ..sources.barcode import check_part_id_option

    try:
        check_part_id_option(SimpleNamespace(part_id=recipe.part_id, barcode_roi=recipe.barcode_roi,
                                             barcode_formats=recipe.barcode_formats))
    except UserError as exc:
        raise UserError(f"recipe file {path}: {exc}") from None
    recipe.files = {"recipe": file_sha256_or_empty(path), "rules": file_sha256_or_empty(rules_file),
                    "model": "" if served else file_sha256_or_empty(model_path)}
    return recipe


def recipe_files(folder: str) -> List[str]:
    """The recipe files of a folder, sorted by name (the order the Modbus recipe number counts in)."""
    if not os.path.isdir(folder):
        raise UserError(f"--recipes {folder} is not a folder; give the folder that holds one YAML file per product")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(SUFFIXES) and os.path.isfile(os.path.join(folder, f)))
    if not files:
        raise UserError(f"--recipes {folder} holds no recipe (*.yaml); add one file per product (docs/RECIPES.md)")
    return files


@dataclass
class Active:
    """A recipe ready to judge: its model open, self-tested and warm, its rules bound to the model's classes."""

    recipe: Recipe
    model: Any  # what the loop calls (the drift watch's wrapper where there is one)
    raw_model: Any  # what is closed when the recipe leaves
    rules: Rules
    generation: int = 0
    open_ms: float = 0.0  # open + self-test + warm-up
    facts: Dict[str, str] = field(default_factory=dict)  # model, model/engine sha256, backend (OPC UA's identity)

    def __post_init__(self) -> None:
        self.analyse = analyser(self.rules, list(self.raw_model.meta.classes))
        # the smallest defect area any rule counts: a region smaller than this can never fail a part
        self.min_region_px = min([self.rules.min_area_px] + [self.rules.min_area_for(n) for n in self.rules.classes])

    @property
    def name(self) -> str:
        return self.recipe.name

    @property
    def sha256(self) -> str:
        return self.recipe.sha256

    @property
    def roi(self) -> Optional[Region]:
        return self.recipe.roi


class PartBoundary:
    """Where the part tracker (ds2a/inspect/parts.py) has no part open: the only frames before which a recipe
    may change. Fed every Result in the loop's order, as the tracker is."""

    def __init__(self, triggered: bool, gives_parts: bool) -> None:
        self.triggered, self.gives_parts = triggered, gives_parts
        self.reset()

    def reset(self) -> None:
        self._count = 0  # in-view frames since the recipe came in force (parts by N frames)
        self._open: Optional[str] = None  # the open part's id (parts by the source's ids)

    def _by(self, rules: Rules) -> str:
        if self.triggered or rules.level == "frame":
            return "frame"
        return rules.part_by if rules.part_by != "auto" else "source" if self.gives_parts else "frames"

    def free(self, rules: Rules, in_view: bool, part_id: Optional[str]) -> bool:
        """True when this frame (as the current recipe sees it) starts a new part or is no part's."""
        by = self._by(rules)
        if by == "frames":
            return self._count % rules.part_frames == 0
        if by == "source":
            return self._open is None or not in_view or part_id != self._open
        return True

    def after(self, rules: Rules, in_view: bool, part_id: Optional[str]) -> None:
        by = self._by(rules)
        if by == "frames" and in_view:
            self._count += 1
        elif by == "source":
            self._open = part_id if in_view else None


class RecipeBook:
    """The recipes of one folder and, once `start`ed, the one in force and the changeovers.

    Requests come from any thread (`request`: OPC UA, the page; `prepare`: a trigger that names a recipe);
    the book's own thread opens, self-tests and warms up the candidate; the loop's inference thread asks
    `at_boundary` at every part boundary and gets the ready candidate, or nothing.
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.recipes: Dict[str, Recipe] = {}
        for path in recipe_files(folder):
            recipe = read_recipe(path)
            if recipe.name in self.recipes:
                raise UserError(f"--recipes {folder}: {os.path.basename(path)} and "
                                f"{os.path.basename(self.recipes[recipe.name].path)} are both recipe "
                                f"{recipe.name}; keep one")
            self.recipes[recipe.name] = recipe
        self._cond = threading.Condition()
        self.active: Optional[Active] = None
        self.opener: Optional[Callable[[Recipe], Active]] = None
        self.pending: Optional[Dict[str, Any]] = None  # the request waiting for a part boundary
        self._queue: Deque[str] = collections.deque()  # names to prepare
        self._preparing: Optional[str] = None
        self._ready: "collections.OrderedDict[str, Active]" = collections.OrderedDict()
        self._failed: Dict[str, str] = {}
        self._close: List[Any] = []  # models the book's thread closes (left by a changeover)
        self._audit: Deque[Tuple[str, str, Optional[str], Dict[str, Any]]] = collections.deque()
        self._changes: List[Tuple[int, Active]] = []  # (first seq, recipe in force from it)
        self._generation = 0
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self.last: Optional[Dict[str, Any]] = None  # the last changeover (applied or refused)
        self.alarm: Optional[str] = None
        self.changeovers: List[Dict[str, Any]] = []
        self.listeners: List[Callable[[Dict[str, str]], None]] = []  # told the recipe in force after a switch
        self.alarms: List[Callable[[str], None]] = []  # told each refusal (OPC UA's alarm)
        self.records: Any = None
        self.notes: Optional[List[str]] = None
        self._con: Optional[sqlite3.Connection] = None

    # ---- the folder ----------------------------------------------------------------------------------
    def names(self) -> List[str]:
        return sorted(self.recipes)

    def recipe(self, name: str, flag: str = "recipe") -> Recipe:
        if name not in self.recipes:
            raise UserError(f"{flag} {_show(name)} is not a recipe of {self.folder}; choose one of "
                            f"{', '.join(self.names())}")
        return self.recipes[name]

    def first(self, name: Optional[str]) -> Recipe:
        """The recipe a run starts with: `--recipe NAME`, or the only one of the folder."""
        if name is None:
            if len(self.recipes) != 1:
                raise UserError(f"--recipes {self.folder} holds {len(self.recipes)} recipes; choose the one to start "
                                f"with: --recipe NAME ({', '.join(self.names())})")
            return self.recipes[self.names()[0]]
        return self.recipe(name, "--recipe")

    def by_number(self, number: int) -> Optional[str]:
        """The name of recipe `number` (1 = the first of the sorted names); None for 0 (keep the recipe in force)."""
        if number == 0:
            return None
        names = self.names()
        return names[number - 1] if 1 <= number <= len(names) else f"number {number}"

    # ---- the run ----------------------------------------------------------------------------------------
    def start(self, active: Active, opener: Callable[[Recipe], Active], records: Any = None,
              notes: Optional[List[str]] = None) -> None:
        """The recipe in force from the first frame; `opener` makes a candidate ready (on the book's thread)."""
        self.active, self.opener, self.records, self.notes = active, opener, records, notes
        self._changes = [(0, active)]
        if records is not None:
            records.extra["recipes"] = {"folder": self.folder, "names": self.names(), "start": self.current(),
                                        "changeovers": self.changeovers}
        self._thread = threading.Thread(target=self._work, name="ds2a-recipes", daemon=True)
        self._thread.start()

    def current(self) -> Dict[str, str]:
        a = self.active
        return {"name": a.name, "sha256": a.sha256} if a is not None else {"name": "", "sha256": ""}

    def state(self) -> Dict[str, Any]:
        """For the page and OPC UA: the recipe in force, the one waiting for a part boundary, the last changeover."""
        with self._cond:
            return {"names": self.names(), "current": self.current(),
                    "pending": dict(self.pending) if self.pending else None,
                    "preparing": self._preparing, "last": dict(self.last) if self.last else None, "alarm": self.alarm}

    def request(self, name: str, user: str, role: str, origin: str) -> str:
        """Queue a changeover to `name`, applied at the next part boundary once its model is ready;
        UserError for an unknown name or a role that may not select recipes. Returns what will happen."""
        from ..notify.users import may

        self.recipe(name)
        if role != LINE_ROLE and not may(role or "", "select_recipe"):
            self._audit_later("recipe_select", user, role, origin, {"recipe": name, "status": "refused",
                                                                      "reason": "the role may not select recipes"})
            raise UserError(f"{user} ({role or 'no role'}) may not select recipes; an engineer or admin may")
        with self._cond:
            if self.active is not None and name == self.active.name and (self.pending is None or
                                                                          self.pending["name"] == name):
                self.pending = None
                msg = f"{name} is already the recipe in force"
            else:
                self.pending = {"name": name, "user": user, "role": role, "origin": origin, "t": time.time(),
                                "t_perf": time.perf_counter()}
                self._want(name)
                msg = f"{name} queued: applies before the next part, once its model is open and self-tested"
            self._audit_later("recipe_select", user, role, origin, {"recipe": name, "status": "requested",
                                                                      "detail": msg})
            self._cond.notify_all()
        logger.info(f"recipe  {user} ({origin}): {msg}")
        return msg

    def prepare(self, name: Optional[str]) -> None:
        """Start opening `name` (a trigger asked for it): it comes in force when that trigger is served."""
        if name is None or name not in self.recipes:
            return  # an unknown name is answered NONE when its trigger is served
        with self._cond:
            self._want(name)
            self._cond.notify_all()

    def _want(self, name: str) -> None:
        """Under the lock: have `name` prepared unless it is in force, ready or on its way."""
        if self.active is not None and name == self.active.name:
            return
        if name in self._ready or name == self._preparing or name in self._queue:
            return
        self._failed.pop(name, None)  # asked again: try again
        self._queue.append(name)

    def at_boundary(self, wanted: Optional[str] = None, wait_s: float = 0.0) -> Tuple[Optional[Active], str]:
        """On the inference thread, where no part is open: (the recipe to switch to, or None; why a part that
        asked for `wanted` cannot be judged, or ''). Waits up to `wait_s` for `wanted` to be ready."""
        with self._cond:
            if wanted is not None and wanted not in self.recipes:
                return None, (f"recipe {_show(wanted)} is not one of this station's recipes "
                              f"({', '.join(self.names())})")
            target = wanted if wanted is not None else self.pending["name"] if self.pending else None
            if target is None or self.active is None or target == self.active.name:
                if self.pending is not None and wanted is None and self.active is not None \
                        and self.pending["name"] == self.active.name:
                    self.pending = None
                return None, ""
            if target not in self._failed and target not in self._ready and target != self._preparing \
                    and target not in self._queue:
                self._queue.append(target)
                self._cond.notify_all()
            end = time.perf_counter() + max(0.0, wait_s)
            while target not in self._ready and target not in self._failed:
                left = end - time.perf_counter()
                if left <= 0 or self._closed:
                    return None, (f"recipe {target} is still being opened and self-tested" if wanted else "")
                self._cond.wait(min(left, 0.05))
            if target in self._failed:  # refused (the alarm is out): asked again later, it is tried again
                why = self._failed.pop(target)
                if self.pending is not None and self.pending["name"] == target:
                    self.pending = None
                return None, (f"recipe {target} was refused: {why}" if wanted else "")
            return self._switch(target), ""

    def _switch(self, name: str) -> Active:
        """Under the lock: `name` comes in force now."""
        new = self._ready.pop(name)
        old = self.active
        assert old is not None
        self._generation += 1
        new.generation = self._generation
        self.active = new
        req = self.pending if self.pending is not None and self.pending["name"] == name else None
        self.pending = None if req is not None else self.pending
        now = time.perf_counter()
        self.last = {"recipe": name, "from": old.name, "status": "applied", "sha256": new.sha256, "t": time.time(),
                     "open_ms": round(new.open_ms, 1), "alarm": None,
                     "request_to_switch_ms": round((now - req["t_perf"]) * 1e3, 1) if req else None,
                     "by": req["user"] if req else LINE_ROLE, "origin": req["origin"] if req else "trigger"}
        self.changeovers.append(dict(self.last))
        self.alarm = None
        self._close.append(old.raw_model)  # closed on the book's thread, never on the inspection thread
        self._audit_later("recipe_select", self.last["by"], req["role"] if req else LINE_ROLE, self.last["origin"],
                          {"recipe": name, "from": old.name, "status": "applied", "sha256": new.sha256})
        self._cond.notify_all()
        logger.info(f"recipe  {name} in force (was {old.name}; model opened and self-tested in {new.open_ms:.0f} ms)")
        for listener in self.listeners:
            listener(self.current())
        return new

    def mark(self, seq: int, active: Active) -> None:
        """The loop: from frame `seq` on, frames are judged by `active` (before that frame is output)."""
        with self._cond:
            self._changes.append((seq, active))
            del self._changes[:-100]  # frames in flight are never 100 changeovers old

    def recipe_for(self, seq: int) -> Optional[Active]:
        """The recipe frame `seq` was judged by (the part tracker stamps the part with it)."""
        with self._cond:
            i = bisect.bisect_right([s for s, _ in self._changes], seq) - 1
            return self._changes[i][1] if i >= 0 else None

    # ---- the book's thread ---------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._queue and not self._close and not self._audit:
                    self._cond.wait(0.5)
                if self._closed and not self._close and not self._audit:
                    return
                name = self._queue.popleft() if self._queue and not self._closed else None
                self._preparing = name
                leaving, self._close = self._close, []
                audits = list(self._audit)
                self._audit.clear()
            for model in leaving:
                _quiet_close(model)
            for item in audits:
                self._write_audit(*item)
            if name is not None:
                self._prepare(name)

    def _prepare(self, name: str) -> None:
        t0 = time.perf_counter()
        try:
            assert self.opener is not None
            fresh = read_recipe(self.recipes[name].path)  # as it is on disk now: what is hashed is what is opened
            active = self.opener(fresh)
            active.open_ms = (time.perf_counter() - t0) * 1e3
        except Exception as exc:  # noqa: BLE001 - any failure refuses the candidate, never the run
            why = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
            self._refused(name, why)
            return
        with self._cond:
            self._preparing = None
            self._ready[name] = active
            while len(self._ready) > KEEP_PREPARED:  # the oldest unused candidate goes
                _, dropped = self._ready.popitem(last=False)
                self._close.append(dropped.raw_model)
            self._cond.notify_all()
        logger.info(f"recipe  {name} ready ({active.open_ms:.0f} ms to open, self-test and warm up its model)")

    def _refused(self, name: str, why: str) -> None:
        text = f"recipe {name} refused, {self.active.name if self.active else 'the recipe in force'} stays: {why}"
        with self._cond:
            self._preparing = None
            self._failed[name] = why
            req = self.pending if self.pending is not None and self.pending["name"] == name else None
            if req is not None:
                self.pending = None  # refused: nothing waits for a part boundary
            self.last = {"recipe": name, "status": "refused", "alarm": text, "t": time.time(),
                         "by": req["user"] if req else LINE_ROLE, "origin": req["origin"] if req else "trigger"}
            self.changeovers.append(dict(self.last))
            self.alarm = text
            self._audit_later("recipe_select", self.last["by"], req["role"] if req else LINE_ROLE,
                              self.last["origin"], {"recipe": name, "status": "refused", "reason": why})
            self._cond.notify_all()
        logger.error(f"ALARM   {text}")
        if self.notes is not None:
            self.notes.append(f"{time.strftime('%H:%M:%S')} {text}")
        for alarm in self.alarms:
            alarm(text)

    def _audit_later(self, action: str, user: str, role: Optional[str], origin: str, detail: Dict[str, Any]) -> None:
        with self._cond:
            self._audit.append((action, f"{user}|{origin}", role, detail))
            self._cond.notify_all()

    def _write_audit(self, action: str, who: str, role: Optional[str], detail: Dict[str, Any]) -> None:
        """One row of the hash-chained audit trail (ds2a/records/audit.py), on the book's own connection."""
        path = getattr(self.records, "path", None)
        if not path:
            return
        from ..records.audit import append

        user, _, origin = who.partition("|")
        try:
            if self._con is None:
                self._con = sqlite3.connect(path, timeout=5.0, check_same_thread=False)  # closed by close()
            append(self._con, action, user, origin, role=role, run_id=getattr(self.records, "run_id", None),
                   detail=detail)
        except sqlite3.Error as exc:
            logger.error(f"ERROR: recipe changeover by {user} not written to the audit trail of {path}: {exc} "
                         "(kept in the run's stats)")

    def close(self) -> None:
        """Stop the book's thread (after the last audit rows) and close every model it holds."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
        with self._cond:
            models = [a.raw_model for a in self._ready.values()] + self._close
            self._ready.clear()
            self._close = []
            if self.active is not None:
                models.append(self.active.raw_model)
        for model in models:
            _quiet_close(model)
        if self._con is not None:
            self._con.close()
            self._con = None


def _quiet_close(model: Any) -> None:
    try:
        model.close()
    except Exception as exc:  # noqa: BLE001 - closing is best effort
        logger.debug(f"recipe: closing a model: {exc}")
