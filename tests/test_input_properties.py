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
from ds2a.inspect.rules import CLASS_KEYS, LIMIT_KEYS, PART_MODES, TOP_KEYS, judge, load_rules, parse_rules
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
        area = rules.min_area_for(name) + 1e9
        mm2 = area * rules.mm_per_pixel ** 2 if rules.mm_per_pixel else None
        n = (rule.max_count or 0) + 1
        found = [Defect(CLASSES.index(name), name, area, mm2, (0, 0, 1, 1), (0.0, 0.0), 1.0)] * n
        assert not judge(rules, found)[0]


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
