"""PASS/FAIL rules: limits per defect class, judged per frame or per part.

A rules file is YAML (see deploy/rules.example.yaml). It is checked completely at start,
so a typo stops the run before the line starts instead of passing bad parts silently.
A part fails when any of its frames fails; its reasons are the union of those frames'.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ..errors import UserError
from .quantify import Defect, quantify

LIMIT_KEYS = ("max_count", "max_total_area_px", "max_total_area_mm2", "max_area_px", "max_area_mm2")
CLASS_KEYS = LIMIT_KEYS + ("min_confidence", "min_area_px")
TOP_KEYS = ("version", "level", "part", "min_area_px", "mm_per_pixel", "classes")
PART_MODES = ("auto", "source", "frames")
DEFAULT_MIN_AREA_PX = 64.0


@dataclass
class ClassRule:
    """Limits for one class; None means no limit."""

    max_count: Optional[int] = None
    max_total_area_px: Optional[float] = None
    max_total_area_mm2: Optional[float] = None
    max_area_px: Optional[float] = None
    max_area_mm2: Optional[float] = None
    min_confidence: float = 0.0  # weaker regions are not counted
    min_area_px: Optional[float] = None  # overrides the file-wide minimum for this class


@dataclass
class Rules:
    classes: Dict[str, ClassRule] = field(default_factory=dict)
    level: str = "part"  # "frame" or "part"
    part_by: str = "auto"  # "source" part ids / trigger, "frames" (N consecutive), auto = source if it has ids
    part_frames: int = 1
    min_area_px: float = DEFAULT_MIN_AREA_PX
    mm_per_pixel: Optional[float] = None
    origin: str = "built-in default"

    @property
    def needs_confidence(self) -> bool:
        return any(r.min_confidence > 0 for r in self.classes.values())

    def min_area_for(self, name: str) -> float:
        rule = self.classes.get(name)
        return self.min_area_px if rule is None or rule.min_area_px is None else rule.min_area_px

    def to_dict(self) -> Dict[str, Any]:
        classes = {k: {a: b for a, b in asdict(v).items() if b is not None and not (a == "min_confidence" and b == 0)}
                   for k, v in self.classes.items()}
        d: Dict[str, Any] = {"version": 1, "level": self.level,
                             "part": {"by": self.part_by, "frames": self.part_frames},
                             "min_area_px": self.min_area_px, "classes": classes}
        if self.mm_per_pixel:
            d["mm_per_pixel"] = self.mm_per_pixel
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None).rstrip()


def default_rules(classes: Sequence[str]) -> Rules:
    """Any defect region of at least DEFAULT_MIN_AREA_PX pixels fails; parts from the source when it has them."""
    return Rules(classes={str(c): ClassRule(max_count=0) for c in classes[1:]})


def _number(value: Any, where: str, path: str, integer: bool = False) -> float:
    """A finite number >= 0: NaN or infinity would turn a limit (or the noise floor) off silently."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a whole number >= 0" if integer else "a finite number >= 0"
        hint = "; omit the key for no limit" if value is None else ""
        raise UserError(f"rules file {path}: {where} is {value!r}, it must be {kind}{hint}")
    return int(value) if integer else float(value)


def check_scale(mm_per_pixel: Any, where: str = "--mm-per-pixel") -> float:
    """The image scale must be finite and positive: NaN compares false and would disable every mm2 limit."""
    ok = isinstance(mm_per_pixel, (int, float)) and not isinstance(mm_per_pixel, bool)
    if not ok or not math.isfinite(mm_per_pixel) or mm_per_pixel <= 0:
        raise UserError(f"{where} {mm_per_pixel}: give the finite, positive size of one pixel in mm (e.g. 0.05)")
    return float(mm_per_pixel)


def _show(key: Any) -> str:
    """A key as typed, on one line (repr when it holds control characters)."""
    text = str(key)
    return text if text.isprintable() else repr(text)


def _reject_unknown(mapping: Dict[Any, Any], valid: Sequence[str], where: str, path: str) -> None:
    """A misspelt key would silently disable a limit: refuse it and list the valid ones."""
    unknown = set(mapping) - set(valid)
    if unknown:
        raise UserError(f"rules file {path}: {where}unknown key(s) {', '.join(sorted(map(_show, unknown)))}; "
                        f"valid keys: {', '.join(valid)}")


def _no_classes(path: str, classes: Sequence[str]) -> UserError:
    return UserError(f"rules file {path}: 'classes' must map at least one defect class to its limits, "
                     f"for example `classes: {{{classes[-1] if len(classes) > 1 else 'damage'}: "
                     "{max_count: 0}}`; a rules file without a limit would pass every part")


def _not_a_class(path: str, name: Any, valid: Sequence[str]) -> UserError:
    return UserError(f"rules file {path}: class '{_show(name)}' is not a defect class of this model; "
                     f"valid: {', '.join(valid)}")


def _parse(data: Any, path: str, mm_per_pixel: Optional[float], classes: Optional[Sequence[str]]) -> Rules:
    """Validate a loaded YAML document; with `classes` None the class names (and whether there are
    any) are left to bind_rules, which needs the model."""
    if data is None:
        raise UserError(f"rules file {path} is empty; a rules file must state at least one limit, "
                        "for example `classes: {damage: {max_count: 0}}` (see deploy/rules.example.yaml)")
    if not isinstance(data, dict):
        raise UserError(f"rules file {path}: the top level must be a mapping with keys {', '.join(TOP_KEYS)}")
    _reject_unknown(data, TOP_KEYS, "", path)
    if data.get("version", 1) != 1:
        raise UserError(f"rules file {path}: version {data['version']!r} is not supported; use version: 1")
    rules = Rules(origin=path)
    rules.level = str(data.get("level", "part"))
    if rules.level not in ("frame", "part"):
        raise UserError(f"rules file {path}: level '{_show(rules.level)}' is not valid; use 'frame' or 'part'")
    part = data.get("part", {}) or {}
    if not isinstance(part, dict) or set(part) - {"by", "frames"}:
        raise UserError(f"rules file {path}: 'part' must be a mapping with 'by' ({'|'.join(PART_MODES)}) "
                        "and 'frames' (N consecutive frames per part)")
    rules.part_by = str(part.get("by", "auto"))
    if rules.part_by not in PART_MODES:
        raise UserError(f"rules file {path}: part.by '{_show(rules.part_by)}' is not valid; "
                        f"use one of {', '.join(PART_MODES)}")
    rules.part_frames = _number(part.get("frames", 1), "part.frames", path, integer=True)  # type: ignore[assignment]
    if rules.part_frames < 1:
        raise UserError(f"rules file {path}: part.frames must be at least 1")
    rules.min_area_px = _number(data.get("min_area_px", DEFAULT_MIN_AREA_PX), "min_area_px", path)
    if data.get("mm_per_pixel") is not None:
        rules.mm_per_pixel = _number(data["mm_per_pixel"], "mm_per_pixel", path) or None
    if mm_per_pixel is not None:
        rules.mm_per_pixel = check_scale(mm_per_pixel)
    cls_data = data.get("classes")
    if not isinstance(cls_data, dict) or not cls_data:
        if classes is None:
            return rules  # no class limits: bind_rules refuses it, naming one of the model's classes
        raise _no_classes(path, classes)
    valid = None if classes is None else [str(c) for c in classes[1:]]
    for name, limits in cls_data.items():
        if valid is not None and str(name) not in valid:
            raise _not_a_class(path, name, valid)
        if not isinstance(limits, dict):
            raise UserError(f"rules file {path}: classes.{_show(name)} must be a mapping such as {{max_count: 0}}")
        _reject_unknown(limits, CLASS_KEYS, f"classes.{_show(name)} has ", path)
        rule = ClassRule()
        for key, value in limits.items():
            val = _number(value, f"classes.{name}.{key}", path, integer=(key == "max_count"))
            if key == "min_confidence" and val > 1:
                raise UserError(f"rules file {path}: classes.{name}.min_confidence must be between 0 and 1")
            if key.endswith("_mm2") and not rules.mm_per_pixel:
                raise UserError(f"rules file {path}: classes.{name}.{key} needs the image scale; add "
                                "mm_per_pixel to the rules file or pass --mm-per-pixel")
            setattr(rule, key, val)
        if not set(limits) & set(LIMIT_KEYS):
            raise UserError(f"rules file {path}: classes.{name} states no limit; give at least one of "
                            f"{', '.join(LIMIT_KEYS)} (for example max_count: 0), or remove the class")
        rules.classes[str(name)] = rule
    return rules


def parse_rules(data: Any, classes: Sequence[str], path: str = "<rules>",
                mm_per_pixel: Optional[float] = None) -> Rules:
    """Validate a loaded YAML document against the model's classes; UserError names the fix."""
    return _parse(data, path, mm_per_pixel, classes)


def _read_yaml(path: str) -> Any:
    """The YAML document in `path`; every way of failing to read it is a one-line UserError."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except FileNotFoundError:
        raise UserError(f"rules file {path} does not exist; start from deploy/rules.example.yaml") from None
    except IsADirectoryError:
        raise UserError(f"rules file {path} is a folder; give the path of a YAML file such as "
                        "deploy/rules.example.yaml") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"rules file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
    except OSError as exc:
        raise UserError(f"cannot read rules file {path}: {exc.strerror or exc}; check its permissions") from None
    except yaml.YAMLError as exc:
        raise UserError(f"rules file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    except RecursionError:
        raise UserError(f"rules file {path} is nested too deeply to be a rules file") from None


def read_rules(path: Optional[str], mm_per_pixel: Optional[float] = None) -> Optional[Rules]:
    """A rules file checked as far as it can be before the model is open (so that the model can be
    asked for confidence when the rules use min_confidence); None without a file (the default rules).
    bind_rules finishes the check against the model's classes."""
    if path is None:
        if mm_per_pixel is not None:
            check_scale(mm_per_pixel)
        return None
    return _parse(_read_yaml(path), path, mm_per_pixel, None)


def bind_rules(rules: Optional[Rules], classes: Sequence[str], mm_per_pixel: Optional[float] = None) -> Rules:
    """`rules` (from read_rules) checked against the model's classes; None gives the default rules
    (with `mm_per_pixel`, which a rules file already carries)."""
    if rules is None:
        rules = default_rules(classes)
        rules.mm_per_pixel = None if mm_per_pixel is None else check_scale(mm_per_pixel)
        return rules
    if not rules.classes:
        raise _no_classes(rules.origin, classes)
    valid = [str(c) for c in classes[1:]]
    for name in rules.classes:
        if name not in valid:
            raise _not_a_class(rules.origin, name, valid)
    return rules


def load_rules(path: Optional[str], classes: Sequence[str], mm_per_pixel: Optional[float] = None) -> Rules:
    """Read and validate a rules file, or the default rules when path is None."""
    if path is None:
        return bind_rules(None, classes, mm_per_pixel)
    return parse_rules(_read_yaml(path), classes, path, mm_per_pixel)


def judge(rules: Rules, defects: Sequence[Defect]) -> Tuple[bool, List[str]]:
    """(passed, reasons) for one frame's defects; only regions that clear min area/confidence count."""
    reasons: List[str] = []
    by_class: Dict[str, List[Defect]] = {}
    for d in defects:
        rule = rules.classes.get(d.class_name)
        if d.area_px < rules.min_area_for(d.class_name):
            continue
        if rule and rule.min_confidence and d.confidence is not None and d.confidence < rule.min_confidence:
            continue
        by_class.setdefault(d.class_name, []).append(d)
    for name, found in by_class.items():
        rule = rules.classes.get(name)
        if rule is None:
            continue
        if rule.max_count is not None and len(found) > rule.max_count:
            reasons.append(f"{name}: {len(found)} region(s) > max_count {rule.max_count}")
        checks = [("max_total_area_px", sum(d.area_px for d in found), "total area", "px"),
                  ("max_area_px", max(d.area_px for d in found), "largest region", "px")]
        if rules.mm_per_pixel:
            checks += [("max_total_area_mm2", sum(d.area_mm2 or 0.0 for d in found), "total area", "mm2"),
                       ("max_area_mm2", max(d.area_mm2 or 0.0 for d in found), "largest region", "mm2")]
        for key, value, what, unit in checks:
            limit = getattr(rule, key)
            if limit is not None and value > limit:
                reasons.append(f"{name}: {what} {value:.4g} {unit} > {key} {limit:g}")
    return not reasons, reasons


def analyser(rules: Rules, classes: Sequence[str]):
    """(class map, confidence, region x,y,w,h) -> (defects, passed, reasons): quantify at model size,
    scale to the inspected region of the frame, judge."""
    floor = min([rules.min_area_px] + [r.min_area_px for r in rules.classes.values() if r.min_area_px is not None])

    def analyse(class_map, confidence, region):
        x, y, w, h = region
        defects = quantify(class_map, classes, (h, w), rules.mm_per_pixel, floor, confidence, (x, y))
        passed, reasons = judge(rules, defects)
        return defects, passed, reasons

    return analyse


from .parts import PartTracker, PartVerdict  # noqa: E402,F401 - part verdicts live in parts.py
