"""Property tests for the two parsers that stand between an operator's typing and a verdict.

Any rules document or source URI either gives a one-line UserError or a well-formed result:
never another exception, never rules without a limit (which would pass every part), never
source options outside their documented ranges.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ds2a.errors import UserError
from ds2a.inspect.quantify import Defect
from ds2a.inspect.rules import CLASS_KEYS, LIMIT_KEYS, PART_MODES, TOP_KEYS, judge, load_rules, parse_rules, smallest_failing_area
from ds2a.sources.uri import CSI_OPTIONS, DEMO_OPTIONS, STREAM_SCHEMES, parse_source

CLASSES = ("background", "damage", "smudge", "dust")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

numbers = (st.integers(-3, 10**6) | st.floats(allow_nan=True, allow_infinity=True)
           | st.sampled_from([0, 1, 0.5, 2.0, None]))
scalars = numbers | st.none() | st.booleans() | st.text(max_size=6)
keys = st.sampled_from(TOP_KEYS + CLASS_KEYS + CLASSES + ("by", "frames") + PART_MODES) | st.text(max_size=6)
anything = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(keys, c, max_size=4),
                        max_leaves=16)
limits = st.dictionaries(st.sampled_from(CLASS_KEYS) | st.text(max_size=4), numbers | scalars, max_size=4)
near_valid = st.fixed_dictionaries({}, optional={
    "version": st.sampled_from([1, 2, None]), "level": st.sampled_from(["part", "frame", "lot", None]),
    "part": st.fixed_dictionaries({}, optional={"by": st.sampled_from(PART_MODES + ("x",)), "frames": numbers}),
    "min_area_px": numbers, "mm_per_pixel": numbers,
    "classes": st.dictionaries(st.sampled_from(CLASSES) | st.text(max_size=4), limits | scalars, max_size=3),
})
documents = near_valid | anything


def _finite(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0)


def _check_well_formed(rules) -> None:
    assert rules.classes, "rules without a class would pass every part"
    assert rules.level in ("frame", "part") and rules.part_by in PART_MODES
    assert isinstance(rules.part_frames, int) and rules.part_frames >= 1
    assert _finite(rules.min_area_px) and _finite(rules.mm_per_pixel)
    for name, rule in rules.classes.items():
        assert name in CLASSES[1:]
        values = [getattr(rule, k) for k in LIMIT_KEYS]
        assert any(v is not None for v in values), f"class {name} has no limit"
        assert all(_finite(v) for v in values + [rule.min_confidence, rule.min_area_px])
        assert 0 <= rule.min_confidence <= 1
        # never a silent PASS: enough big, confident regions break every stated limit
        scale2 = rules.mm_per_pixel ** 2 if rules.mm_per_pixel else 1.0
        px_limits = [v for v in (rule.max_area_px, rule.max_total_area_px) if v is not None] + [
            v / scale2 for v in (rule.max_area_mm2, rule.max_total_area_mm2) if v is not None]
        area = 2 * max([rules.min_area_for(name)] + px_limits) + 1e9
        mm2 = area * rules.mm_per_pixel ** 2 if rules.mm_per_pixel else None
        n = (rule.max_count or 0) + 1
        if n > 10_000:  # a count no frame reaches (0xfff...): check_region refuses it where the frame is known
            continue
        found = [Defect(CLASSES.index(name), name, area, mm2, (0, 0, 1, 1), (0.0, 0.0), 1.0)] * n
        assert not judge(rules, found)[0]
        assert smallest_failing_area(rules) <= area * n  # and the start-time check agrees it can fail


@SETTINGS
@given(doc=documents, scale=st.none() | numbers)
def test_any_rules_document_is_a_clear_error_or_rules_with_a_limit(doc, scale):
    try:
        rules = parse_rules(doc, CLASSES, "r.yaml", scale)
    except UserError as exc:
        assert "\n" not in str(exc) and ("r.yaml" in str(exc) or "--mm-per-pixel" in str(exc))
        return
    _check_well_formed(rules)


@SETTINGS
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_any_rules_file_bytes_are_a_clear_error_or_rules_with_a_limit(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_bytes(data)
        try:
            rules = load_rules(str(path), CLASSES)
        except UserError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            return
    _check_well_formed(rules)


option_names = st.sampled_from(sorted(set(DEMO_OPTIONS) | set(CSI_OPTIONS))) | st.text(max_size=5)
option_values = (st.integers(-10, 10**5).map(str) | st.floats().map(repr) | st.text(max_size=6)
                 | st.sampled_from(["", "1e3", "0x10", "nan", "inf", "-0", "60000"]))
queries = st.lists(st.tuples(option_names, option_values), max_size=4).map(
    lambda kv: "&".join(f"{k}={v}" for k, v in kv))
schemes = st.sampled_from(("demo", "csi", "v4l2", "gst", "file", "ftp", "C") + STREAM_SCHEMES)
structured = st.builds(lambda s, host, q: f"{s}://{host}" + (f"?{q}" if q else ""),
                       schemes, st.sampled_from(["", "0", "1", "99", "-1", "host", "[::1"]), queries)


@SETTINGS
@given(uri=structured | st.text(max_size=40))
def test_any_source_uri_is_a_clear_error_or_a_checked_spec(uri):
    try:
        spec = parse_source(uri)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    assert spec.kind in ("demo", "csi", "v4l2", "stream", "gst", "path")
    allowed = {"demo": DEMO_OPTIONS, "csi": CSI_OPTIONS}.get(spec.kind, {})
    assert set(spec.options) <= set(allowed)
    for key, value in spec.options.items():
        kind, lo, hi = allowed[key]
        assert isinstance(value, kind) and lo <= value <= hi
    if spec.kind == "demo":
        assert spec.options.get("speed", 1) <= spec.options.get("width", 1280)


# --- YAML text: duplicate keys, anchors and aliases, huge numbers ------------------------------------------
yaml_keys = st.sampled_from(TOP_KEYS + CLASS_KEYS + CLASSES + ("by", "frames"))
huge_numbers = st.sampled_from(["1e400", "-1e400", "9" * 400, "-" + "9" * 400, ".inf", ".nan", "0x" + "f" * 100,
                                "1e308", "0", "64"])


def _yaml_text(pairs, indent: str = "") -> str:
    return "".join(f"{indent}{k}: {v}\n" for k, v in pairs)


@SETTINGS
@given(first=yaml_keys, values=st.lists(huge_numbers | st.integers(0, 10).map(str), min_size=2, max_size=3),
       where=st.sampled_from(["top", "class"]))
def test_a_key_given_twice_anywhere_is_refused_with_its_name(first, values, where):
    pairs = [(first, v) for v in values]
    if where == "top":
        text = _yaml_text(pairs) + "classes: {damage: {max_count: 0}}\n"
    else:
        text = "classes:\n  damage:\n" + _yaml_text(pairs, "    ")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dup.yaml"
        path.write_text(text)
        try:
            load_rules(str(path), CLASSES)
        except UserError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc) and len(str(exc)) < 400
            assert f"key '{first}' is given twice" in str(exc)
            return
    raise AssertionError(f"accepted a key given twice: {text!r}")


@SETTINGS
@given(name=st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True), depth=st.integers(1, 12),
       fan=st.integers(1, 9), use=st.sampled_from(["max_count", "max_area_px", "min_area_px"]))
def test_anchors_and_aliases_are_refused_in_bounded_time(name, depth, fan, use):
    lines = [f"{name}0: &{name}0 [1]"] + [
        f"{name}{i}: &{name}{i} [" + ", ".join([f"*{name}{i - 1}"] * fan) + "]" for i in range(1, depth)]
    text = "\n".join(lines) + f"\nclasses: {{damage: {{{use}: *{name}{depth - 1}}}}}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "alias.yaml"
        path.write_text(text)
        try:
            load_rules(str(path), CLASSES)
        except UserError as exc:
            assert "anchors and aliases" in str(exc) and len(str(exc)) < 300
            return
    raise AssertionError("accepted a rules file with anchors")


@SETTINGS
@given(key=st.sampled_from(("min_area_px", "mm_per_pixel", "part.frames") + tuple(f"classes.damage.{k}" for k in
                                                                                 CLASS_KEYS)),
       value=huge_numbers)
def test_huge_or_special_numbers_are_a_clear_error_or_rules_that_can_fail(key, value):
    doc = "classes:\n  damage:\n    max_count: 0\n"
    if key.startswith("classes.damage."):
        doc = f"classes:\n  damage:\n    max_area_px: 100\n    {key.split('.')[-1]}: {value}\n"
        if key.endswith("max_area_px"):
            doc = f"classes:\n  damage:\n    max_area_px: {value}\n"
    elif key == "part.frames":
        doc += f"part: {{frames: {value}}}\n"
    else:
        doc += f"{key}: {value}\n"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "n.yaml"
        path.write_text(doc)
        try:
            rules = load_rules(str(path), CLASSES)
        except UserError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc) and len(str(exc)) < 400
            return
    _check_well_formed(rules)
    if rules.mm_per_pixel is not None:
        assert rules.mm_per_pixel > 0  # 0 would switch every mm2 limit off


# --- source URIs: options given twice, huge numbers --------------------------------------------------------
@SETTINGS
@given(scheme=st.sampled_from(["demo", "csi"]), key=st.sampled_from(sorted(set(DEMO_OPTIONS) | set(CSI_OPTIONS))),
       values=st.lists(option_values, min_size=2, max_size=3), extra=queries)
def test_an_option_given_twice_is_never_silently_resolved(scheme, key, values, extra):
    query = "&".join(f"{key}={v}" for v in values) + (f"&{extra}" if extra else "")
    uri = f"{scheme}://0?{query}" if scheme == "csi" else f"demo://?{query}"
    try:
        parse_source(uri)
    except UserError as exc:
        assert "\n" not in str(exc)
        return
    raise AssertionError(f"{uri} accepted with {key} given {len(values)} times")


@SETTINGS
@given(key=st.sampled_from(sorted(DEMO_OPTIONS)), digits=st.integers(10, 400), sign=st.sampled_from(["", "-"]))
def test_huge_option_values_are_refused_as_out_of_range(key, digits, sign):
    value = sign + "9" * digits
    try:
        parse_source(f"demo://?{key}={value}")
    except UserError as exc:
        assert "out of range" in str(exc) or "not a" in str(exc)
        return
    raise AssertionError(f"{key}={value} accepted")
