"""PASS/FAIL rules: limits per defect class, judged per frame or per part.

A rules file is YAML (see deploy/rules.example.yaml). It is checked completely at start,
so a typo stops the run before the line starts instead of passing bad parts silently.
A part fails when any of its frames fails; its reasons are the union of those frames'.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from ..errors import UserError
from .quantify import Defect, quantify

LIMIT_KEYS = ("max_count", "max_total_area_px", "max_total_area_mm2", "max_area_px", "max_area_mm2")
CLASS_KEYS = LIMIT_KEYS + ("min_confidence", "min_area_px")
TOP_KEYS = ("version", "level", "part", "min_area_px", "mm_per_pixel", "classes")
PART_MODES = ("auto", "source", "frames")
DEFAULT_MIN_AREA_PX = 64.0
SHOW_MAX = 60  # characters of a key or value quoted in a message: an error stays one short line


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


def _finite(value: Any) -> bool:
    """A number (not a bool) that a float holds exactly enough to compare: not NaN, infinite or > 1e308."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond float range (99...9 with 400 digits)
        return False


def _number(value: Any, where: str, path: str, integer: bool = False) -> float:
    """A finite number >= 0: NaN or infinity would turn a limit (or the noise floor) off silently."""
    ok = _finite(value) and value >= 0
    if integer:
        ok = ok and float(value).is_integer()
    if not ok:
        kind = "a whole number >= 0" if integer else "a finite number >= 0"
        hint = "; omit the key for no limit" if value is None else ""
        raise UserError(f"rules file {path}: {where} is {_show(repr(value))}, it must be {kind}{hint}")
    return int(value) if integer else float(value)


def check_scale(mm_per_pixel: Any, where: str = "--mm-per-pixel") -> float:
    """The image scale must be finite and positive: NaN compares false and would disable every mm2 limit."""
    if not _finite(mm_per_pixel) or mm_per_pixel <= 0:
        raise UserError(f"{where} {_show(mm_per_pixel)}: give the finite, positive size of one pixel in mm "
                        "(e.g. 0.05)")
    return float(mm_per_pixel)


def _show(key: Any) -> str:
    """A key or value as typed, on one short line (repr when it holds control characters, cut at SHOW_MAX)."""
    text = str(key)
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= SHOW_MAX else text[:SHOW_MAX - 3] + "..."


def _reject_unknown(mapping: Dict[Any, Any], valid: Sequence[str], where: str, path: str) -> None:
    """A misspelt key would silently disable a limit: refuse it and list the valid ones."""
    unknown = sorted(map(_show, set(mapping) - set(valid)))
    if unknown:
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise UserError(f"rules file {path}: {where}unknown key(s) {', '.join(unknown[:5])}{more}; "
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
        raise UserError(f"rules file {path}: version {_show(repr(data['version']))} is not supported; use version: 1")
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
        rules.mm_per_pixel = _number(data["mm_per_pixel"], "mm_per_pixel", path)
        if rules.mm_per_pixel == 0:  # as --mm-per-pixel 0: a zero scale is a typo, not "no scale"
            raise UserError(f"rules file {path}: mm_per_pixel is 0; give the finite, positive size of one pixel "
                            "in mm (e.g. 0.05), or omit the key when the scale is unknown")
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
            val = _number(value, f"classes.{_show(name)}.{key}", path, integer=(key == "max_count"))
            if key == "min_confidence" and val > 1:
                raise UserError(f"rules file {path}: classes.{_show(name)}.min_confidence must be between 0 and 1")
            if key.endswith("_mm2") and not rules.mm_per_pixel:
                raise UserError(f"rules file {path}: classes.{_show(name)}.{key} needs the image scale; add "
                                "mm_per_pixel to the rules file or pass --mm-per-pixel")
            setattr(rule, key, val)
        if not set(limits) & set(LIMIT_KEYS):
            raise UserError(f"rules file {path}: classes.{_show(name)} states no limit; give at least one of "
                            f"{', '.join(LIMIT_KEYS)} (for example max_count: 0), or remove the class")
        rules.classes[str(name)] = rule
    return rules


def parse_rules(data: Any, classes: Sequence[str], path: str = "<rules>",
                mm_per_pixel: Optional[float] = None) -> Rules:
    """Validate a loaded YAML document against the model's classes; UserError names the fix."""
    return _parse(data, path, mm_per_pixel, classes)


class _RulesYamlError(yaml.YAMLError):
    """A rules-specific refusal raised while the document is composed (before anything is built)."""


class _RulesLoader(yaml.SafeLoader):
    """safe_load that refuses what rules never need and what would let a file pass parts silently.

    Anchors and aliases are refused before they are expanded: a few hundred bytes of nested aliases
    ("billion laughs") would otherwise take minutes and gigabytes. A key given twice is refused:
    YAML keeps the last one, so `max_count: 0` followed by `max_count: 100` would loosen a limit
    without a word.
    """

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            line = event.start_mark.line + 1
            raise _RulesYamlError(f"line {line}: YAML anchors and aliases (&name, *name) are not allowed in a "
                                  "rules file; write each limit out")
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: Dict[Any, int] = {}
        for key_node, _ in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise _RulesYamlError(f"line {line}: YAML merge keys (<<) are not allowed in a rules file; "
                                      "write each limit out")
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeConstructor refuses it with its own message
                continue
            if first is not None:
                raise _RulesYamlError(f"line {line}: key '{_show(key)}' is given twice (first on line {first}); "
                                      "YAML would keep only the last value")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's problem and line, on one line of bounded length (its message can quote the whole input)."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    text = str(problem) if problem else (str(exc).splitlines() or [type(exc).__name__])[0]
    where = f" (line {mark.line + 1})" if mark is not None else ""
    return (text if len(text) <= 120 else text[:117] + "...") + where


def read_yaml(path: str, what: str = "rules file", example: str = "deploy/rules.example.yaml",
              invalid_fix: str = "") -> Any:
    """The YAML document in `path` (a rules file, or `what` else: a recipe), read with the rules' strict
    loader (no duplicate keys, anchors or merge keys); every way of failing to read it is a one-line UserError."""
    try:
        with open(path, encoding="utf-8") as fh:
            return yaml.load(fh, Loader=_RulesLoader)  # noqa: S506 - a SafeLoader subclass
    except _RulesYamlError as exc:
        raise UserError(f"{what} {path}: {exc}") from None
    except FileNotFoundError:
        raise UserError(f"{what} {path} does not exist; start from {example}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a folder; give the path of a YAML file such as {example}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{what} {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 YAML") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}; check its permissions") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{what} {path} is not valid YAML: {_yaml_problem(exc)}{invalid_fix}") from None
    except RecursionError:
        raise UserError(f"{what} {path} is nested too deeply to be a {what}") from None


def read_rules(path: Optional[str], mm_per_pixel: Optional[float] = None) -> Optional[Rules]:
    """A rules file checked as far as it can be before the model is open (so that the model can be
    asked for confidence when the rules use min_confidence); None without a file (the default rules).
    bind_rules finishes the check against the model's classes."""
    if path is None:
        if mm_per_pixel is not None:
            check_scale(mm_per_pixel)
        return None
    return _parse(read_yaml(path), path, mm_per_pixel, None)


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
    return parse_rules(read_yaml(path), classes, path, mm_per_pixel)


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


def smallest_failing_area(rules: Rules) -> float:
    """The fewest frame pixels in which some defect could fail a part under `rules` (inf: none could).

    A region counts only from its class's minimum area and a limit fails only when exceeded, so in a
    frame (or ROI) smaller than this every part would PASS by construction: it cannot be judged.
    """
    scale2 = rules.mm_per_pixel ** 2 if rules.mm_per_pixel else None
    best = math.inf
    for name, rule in rules.classes.items():
        floor = rules.min_area_for(name)
        if rule.max_count is not None:  # max_count + 1 regions of at least the minimum area
            best = min(best, (rule.max_count + 1) * floor)
        limits = [rule.max_area_px, rule.max_total_area_px]
        if scale2:
            limits += [v / scale2 for v in (rule.max_area_mm2, rule.max_total_area_mm2) if v is not None]
        for limit in limits:
            if limit is not None:  # one counted region larger than the limit
                best = min(best, max(floor, float(np.nextafter(limit, np.inf))))
    return best


def can_fail(rules: Rules, area_px: float) -> bool:
    """Whether some defect inside `area_px` frame pixels could fail a part under `rules`."""
    return area_px > 0 and area_px >= smallest_failing_area(rules)


def check_can_fail(rules: Rules, w: int, h: int, what: str) -> None:
    """UserError when no defect in a `w` x `h` region could fail a part: it cannot be judged."""
    area = float(w) * float(h)
    if can_fail(rules, area):
        return
    floor = min(rules.min_area_for(name) for name in rules.classes) if rules.classes else rules.min_area_px
    why = (f"the rules ({rules.origin}) ignore regions under {floor:g} px (min_area_px)" if area < floor else
           f"no limit of the rules ({rules.origin}) can be exceeded in so few pixels")
    raise UserError(f"{what} is {w}x{h} = {area:g} px: {why}, so it could never FAIL and cannot be judged; "
                    "inspect a larger frame or ROI, or lower min_area_px / the limits")


def check_region(rules: Rules, roi: Optional[Tuple[int, int, int, int]], frame_hw: Optional[Tuple[int, int]],
                 source: str) -> None:
    """Before the run: the region the model will judge (the ROI inside the frame, else the frame), when
    its size is known, must be one in which the rules can fail a part."""
    if roi is not None:
        x, y, w, h = (int(v) for v in roi)
        if frame_hw is not None:
            fh, fw = frame_hw
            w, h = min(fw, x + w) - max(0, x), min(fh, y + h) - max(0, y)
        check_can_fail(rules, max(w, 0), max(h, 0), f"--roi {','.join(map(str, roi))}")
    elif frame_hw is not None:
        check_can_fail(rules, frame_hw[1], frame_hw[0], f"the frame of {source}")


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

