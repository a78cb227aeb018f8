"""PASS/FAIL rules: validation at start, per-class limits, frame and part verdicts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from ds2a.errors import UserError
from ds2a.inspect import rules as rules_module
from ds2a.inspect.parts import PartTracker
from ds2a.inspect.quantify import Defect
from ds2a.inspect.rules import analyser, default_rules, judge, load_rules, parse_rules

CLASSES = ("background", "damage", "smudge", "dust")
EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "rules.example.yaml"
LIMIT = {"classes": {"damage": {"max_count": 0}}}


def d(name: str, area: float, conf=None, mm2=None) -> Defect:
    return Defect(CLASSES.index(name), name, area, mm2, (0, 0, 1, 1), (0.0, 0.0), conf)


def test_example_rules_file_loads():
    rules = load_rules(str(EXAMPLE), CLASSES)
    assert rules.level == "part" and rules.mm_per_pixel == 0.05
    assert rules.classes["damage"].max_count == 0
    assert rules.classes["dust"].min_area_px == 16


def test_default_rules_fail_any_defect_above_min_area():
    rules = default_rules(CLASSES)
    assert judge(rules, [])[0]
    assert judge(rules, [d("dust", 10)])[0]  # below the 64 px default: noise
    ok, reasons = judge(rules, [d("dust", 100)])
    assert not ok and reasons == ["dust: 1 region(s) > max_count 0"]


def test_each_limit_gives_its_reason():
    rules = parse_rules({"mm_per_pixel": 0.1, "min_area_px": 0, "classes": {
        "smudge": {"max_count": 1, "max_total_area_px": 150, "max_area_px": 90},
        "dust": {"max_area_mm2": 0.5, "max_total_area_mm2": 0.8}}}, CLASSES)
    ok, reasons = judge(rules, [d("smudge", 80), d("smudge", 95), d("dust", 60, mm2=0.6), d("dust", 30, mm2=0.3)])
    assert not ok
    assert reasons == [
        "smudge: 2 region(s) > max_count 1",
        "smudge: total area 175 px > max_total_area_px 150",
        "smudge: largest region 95 px > max_area_px 90",
        "dust: total area 0.9 mm2 > max_total_area_mm2 0.8",
        "dust: largest region 0.6 mm2 > max_area_mm2 0.5",
    ]
    assert judge(rules, [d("smudge", 80), d("dust", 40, mm2=0.4)]) == (True, [])


def test_min_confidence_and_per_class_min_area_drop_weak_regions():
    rules = parse_rules({"min_area_px": 50, "classes": {
        "damage": {"max_count": 0, "min_confidence": 0.7}, "dust": {"max_count": 0, "min_area_px": 5}}}, CLASSES)
    assert judge(rules, [d("damage", 100, conf=0.5), d("dust", 20)])[1] == ["dust: 1 region(s) > max_count 0"]
    assert not judge(rules, [d("damage", 100, conf=0.9)])[0]
    assert rules.needs_confidence


@pytest.mark.parametrize("doc, words", [
    ([1, 2], "top level must be a mapping"),
    ({"clases": {}}, "unknown key(s) clases"),
    ({"version": 2}, "version 2"),
    ({"level": "lot"}, "level 'lot'"),
    ({"part": {"by": "camera"}}, "part.by 'camera'"),
    ({"part": {"frames": 0}}, "at least 1"),
    ({"part": {"every": 3}}, "'part' must be a mapping"),
    ({"classes": {"scratch": {"max_count": 0}}}, "class 'scratch' is not a defect class"),
    ({"classes": {"background": {"max_count": 0}}}, "class 'background' is not a defect class"),
    ({"classes": {"dust": {"max_cnt": 1}}}, "unknown key(s) max_cnt"),
    ({"classes": {"dust": {"max_count": -1}}}, "classes.dust.max_count is -1"),
    ({"classes": {"dust": {"max_count": 1.5}}}, "whole number"),
    ({"classes": {"dust": {"max_area_px": "big"}}}, "'big'"),
    ({"classes": {"dust": {"min_confidence": 3}}}, "between 0 and 1"),
    ({"classes": {"dust": {"max_area_mm2": 1}}}, "needs the image scale"),
    ({"classes": {"dust": 5}}, "must be a mapping"),
    ({"min_area_px": -3}, "min_area_px is -3"),
    # a file that states no limit would pass every part
    ({}, "at least one defect class"),
    ({"classes": {}}, "at least one defect class"),
    ({"classes": None}, "at least one defect class"),
    ({"level": "frame", "min_area_px": 10}, "at least one defect class"),
    ({"classes": {"dust": None}}, "classes.dust must be a mapping"),
    ({"classes": {"dust": {}}}, "classes.dust states no limit"),
    ({"classes": {"dust": {"min_confidence": 0.5, "min_area_px": 3}}}, "classes.dust states no limit"),
    ({"classes": {"dust": {"max_count": None}}}, "omit the key for no limit"),
    ({"classes": {"dust": {"max_count": 0}, "smudge": {"max_area_px": None}}}, "max_area_px is None"),
    # NaN / infinity would switch a limit or the noise floor off
    ({"min_area_px": float("inf"), **LIMIT}, "min_area_px is inf"),
    ({"classes": {"dust": {"max_area_px": float("nan")}}}, "finite number"),
    ({"mm_per_pixel": float("nan"), **LIMIT}, "mm_per_pixel is nan"),
])
def test_invalid_rules_are_clear_errors_naming_the_file(tmp_path, doc, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError) as exc:
        load_rules(str(path), CLASSES)
    assert str(path) in str(exc.value) and words in str(exc.value)


def test_mm2_rule_accepts_scale_from_the_command_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("classes: {dust: {max_area_mm2: 1}}\n")
    assert load_rules(str(path), CLASSES, mm_per_pixel=0.2).mm_per_pixel == 0.2


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "~\n"])
def test_an_empty_or_comment_only_rules_file_is_refused(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="empty; a rules file must state at least one limit"):
        load_rules(str(path), CLASSES)


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), 0.0, -0.1])
def test_a_scale_that_is_not_finite_and_positive_is_refused(tmp_path, scale):
    path = tmp_path / "r.yaml"
    path.write_text("classes: {dust: {max_area_mm2: 1}}\n")
    for rules_path in (str(path), None):
        with pytest.raises(UserError, match="--mm-per-pixel .*finite, positive"):
            load_rules(rules_path, CLASSES, mm_per_pixel=scale)


def test_unreadable_rules_paths_are_one_line_errors(tmp_path, monkeypatch):
    folder = tmp_path / "rules.d"
    folder.mkdir()
    with pytest.raises(UserError, match="is a folder"):
        load_rules(str(folder), CLASSES)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes("classes: {damage: {max_count: 0}}  # Größe\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_rules(str(latin), CLASSES)
    locked = tmp_path / "locked.yaml"
    locked.write_text("classes: {damage: {max_count: 0}}\n")

    def no_permission(path, *a, **k):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(rules_module, "open", no_permission, raising=False)  # root reads anything
    with pytest.raises(UserError, match="cannot read rules file .*locked.yaml: Permission denied"):
        load_rules(str(locked), CLASSES)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_rules(str(tmp_path / "none.yaml"), CLASSES)
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: {dust: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_rules(str(bad), CLASSES)


def test_parts_from_source_ids_fail_when_any_frame_fails():
    tracker = PartTracker(default_rules(CLASSES), source_gives_parts=True)
    seq = [("a", True, []), ("a", False, ["x"]), ("a", True, []), (None, True, []), ("b", True, []),
           ("b", True, []), ("c", False, ["y"])]
    closed = []
    for i, (pid, ok, reasons) in enumerate(seq):
        closed += tracker.feed(i, pid, ok, reasons, float(i))
    closed += tracker.flush()
    assert [(p.part_id, p.verdict, p.n_frames, p.first_seq, p.last_seq, p.reasons) for p in closed] == [
        ("a", "FAIL", 3, 0, 2, ["x"]), ("b", "PASS", 2, 4, 5, []), ("c", "FAIL", 1, 6, 6, ["y"])]


def test_parts_of_n_frames_when_the_source_has_no_ids():
    rules = parse_rules({"part": {"frames": 3}, **LIMIT}, CLASSES)
    tracker = PartTracker(rules, source_gives_parts=False)
    closed = []
    for i in range(7):
        closed += tracker.feed(i, None, i != 4, ["r"] if i == 4 else [], float(i))
    closed += tracker.flush()
    assert [(p.part_id, p.verdict, p.n_frames) for p in closed] == [
        ("part-000000", "PASS", 3), ("part-000001", "FAIL", 3), ("part-000002", "PASS", 1)]


def test_a_frame_with_no_part_in_view_closes_the_open_part():
    tracker = PartTracker(default_rules(CLASSES), source_gives_parts=True)
    assert tracker.feed(0, "a", True, [], 0.0) == []
    assert [p.part_id for p in tracker.feed_gap()] == ["a"]
    assert tracker.feed_gap() == []
    frames = PartTracker(parse_rules({"part": {"frames": 2}, **LIMIT}, CLASSES), source_gives_parts=False)
    frames.feed(0, None, True, [], 0.0)
    assert frames.feed_gap() == []  # counting frames: a gap does not cut a part short


def test_frame_level_gives_one_verdict_per_frame():
    tracker = PartTracker(parse_rules({"level": "frame", **LIMIT}, CLASSES), source_gives_parts=True)
    out = tracker.feed(5, "a", False, ["r"], 1.0)
    assert [(p.part_id, p.level, p.verdict) for p in out] == [("a", "frame", "FAIL")]
    assert tracker.flush() == []


def test_analyser_scales_areas_before_judging():
    rules = parse_rules({"min_area_px": 0, "classes": {"damage": {"max_area_px": 100}}}, CLASSES)
    cm = np.zeros((16, 16), np.uint8)
    cm[0:4, 0:4] = 1  # 16 px at model size
    analyse = analyser(rules, CLASSES)
    assert analyse(cm, None, (0, 0, 16, 16))[1] is True
    defects, ok, reasons = analyse(cm, None, (10, 20, 64, 64))  # a 64x64 region at (10, 20): 256 frame px
    assert not ok and defects[0].area_px == 256 and "max_area_px 100" in reasons[0]
    assert defects[0].bbox == (10, 20, 16, 16)


def test_parts_by_source_on_a_source_without_part_ids_is_refused_with_the_fix():
    rules = parse_rules({"part": {"by": "source"}, **LIMIT}, CLASSES, "r.yaml")
    with pytest.raises(UserError, match="part.by is 'source' but clip.mp4 gives no part ids.*by: frames"):
        PartTracker(rules, source_gives_parts=False, source="clip.mp4")
    assert PartTracker(rules, source_gives_parts=True).by == "source"
    frame_level = parse_rules({"level": "frame", "part": {"by": "source"}, **LIMIT}, CLASSES)
    assert PartTracker(frame_level, source_gives_parts=False).feed(0, None, False, ["r"], 0.0)[0].verdict == "FAIL"


# --- rules that could never fail a part are refused -----------------------------------------------
@pytest.mark.parametrize("text, words", [
    ("classes:\n  damage: {max_count: 0}\n  damage:\n    max_count: 100\n",
     "line 3: key 'damage' is given twice (first on line 2)"),
    ("classes:\n  damage:\n    max_count: 0\n    max_count: 100\n", "line 4: key 'max_count' is given twice"),
    ("min_area_px: 16\nmin_area_px: 4000\nclasses: {damage: {max_count: 0}}\n", "key 'min_area_px' is given twice"),
    ("classes: {damage: {max_count: 0, max_count: 9}}\n", "line 1: key 'max_count' is given twice"),
])
def test_a_key_given_twice_is_refused_with_its_line(tmp_path, text, words):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        load_rules(str(path), CLASSES)
    assert str(path) in str(exc.value) and words in str(exc.value)


@pytest.mark.parametrize("text", [
    "limit: &z 0\nclasses: {damage: {max_count: *z}}\n",
    "classes: {damage: &l {max_count: 0}, dust: *l}\n",
    "classes:\n  damage: {max_count: 0}\n  <<: {dust: {max_count: 0}}\n",  # merge key: needs no anchor, is a key
])
def test_anchors_aliases_and_merge_keys_are_refused(tmp_path, text):
    path = tmp_path / "alias.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="(anchors and aliases|merge keys).* not allowed in a rules file"):
        load_rules(str(path), CLASSES)


def test_a_yaml_alias_bomb_ends_in_one_short_line(tmp_path):
    lines = ["a0: &a0 [x,x,x,x,x,x,x,x,x]"] + [
        f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    text = "\n".join(lines) + "\nclasses: {damage: {max_count: *a9}}\n"
    assert 400 < len(text) < 600  # a few hundred bytes expanding to 9**10 entries
    path = tmp_path / "bomb.yaml"
    path.write_text(text)
    with pytest.raises(UserError) as exc:
        load_rules(str(path), CLASSES)
    message = str(exc.value)
    assert "anchors and aliases" in message and "line 1" in message and len(message) < 250 and "\n" not in message


@pytest.mark.parametrize("doc", [
    {"classes": {"damage": {"max_count": "x" * 100_000}}},
    {"classes": {"damage": {"max_count": 0}, "d" * 100_000: {"max_count": 0}}},
    {"classes": {"damage": {"max_count": 0, **{f"k{i}": 1 for i in range(5000)}}}},
    {"version": ["v"] * 100_000, **LIMIT},
])
def test_error_text_is_bounded_whatever_the_file_holds(tmp_path, doc):
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(UserError) as exc:
        load_rules(str(path), CLASSES)
    assert str(path) in str(exc.value) and len(str(exc.value)) < 400


@pytest.mark.parametrize("text", ["x: [" + "a," * 50_000 + "\n", "a: b: c" + "d" * 100_000 + "\n"])
def test_invalid_yaml_is_one_bounded_line(tmp_path, text):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match="not valid YAML") as exc:
        load_rules(str(path), CLASSES)
    assert len(str(exc.value)) < 300 and "\n" not in str(exc.value)


@pytest.mark.parametrize("value", [10 ** 400, -(10 ** 400)])
def test_numbers_beyond_float_range_are_refused_not_overflowed(tmp_path, value):
    path = tmp_path / "huge.yaml"
    path.write_text(f"classes: {{damage: {{max_count: {value}}}}}\n")
    with pytest.raises(UserError, match="must be a whole number"):
        load_rules(str(path), CLASSES)
    with pytest.raises(UserError, match="finite, positive"):
        load_rules(None, CLASSES, mm_per_pixel=value)


def test_a_zero_scale_in_the_rules_file_is_refused_like_the_flag(tmp_path):
    path = tmp_path / "scale.yaml"
    path.write_text("mm_per_pixel: 0\nclasses: {damage: {max_count: 0}}\n")
    with pytest.raises(UserError, match="mm_per_pixel is 0; give the finite, positive size"):
        load_rules(str(path), CLASSES)
    with pytest.raises(UserError, match="finite, positive"):
        load_rules(None, CLASSES, mm_per_pixel=0)


def test_the_smallest_failing_area_follows_every_limit():
    assert rules_module.smallest_failing_area(default_rules(CLASSES)) == 64  # any region of 64 px fails
    counted = parse_rules({"min_area_px": 10, "classes": {"damage": {"max_count": 2}}}, CLASSES)
    assert rules_module.smallest_failing_area(counted) == 30  # three regions of 10 px
    sized = parse_rules({"min_area_px": 10, "classes": {"damage": {"max_area_px": 100}}}, CLASSES)
    assert rules_module.can_fail(sized, 100.01) and not rules_module.can_fail(sized, 100)  # more than the limit
    mm = parse_rules({"mm_per_pixel": 0.1, "min_area_px": 0, "classes": {"dust": {"max_total_area_mm2": 2}}},
                     CLASSES)
    assert rules_module.can_fail(mm, 201) and not rules_module.can_fail(mm, 199)  # 2 mm2 = 200 px
    own = parse_rules({"min_area_px": 500, "classes": {"dust": {"max_count": 0, "min_area_px": 4}}}, CLASSES)
    assert rules_module.smallest_failing_area(own) == 4  # the class's own minimum counts
    assert not rules_module.can_fail(own, 0)


@pytest.mark.parametrize("hw", [(1, 1), (2, 2), (7, 9)])
def test_tiny_frames_cannot_be_judged_by_the_default_rules(hw):
    rules = default_rules(CLASSES)
    with pytest.raises(UserError, match=f"the frame of x.png is {hw[1]}x{hw[0]} .*could never FAIL"):
        rules_module.check_region(rules, None, hw, "x.png")
    rules_module.check_region(rules, None, (8, 8), "x.png")  # 64 px: a defect of 64 px fails


def test_min_area_larger_than_the_frame_or_roi_is_refused():
    rules = parse_rules({"min_area_px": 1_000_000, **LIMIT}, CLASSES, "big.yaml")
    with pytest.raises(UserError, match=r"720x480 = 345600 px: the rules \(big.yaml\) ignore regions under 1e\+06 px"):
        rules_module.check_region(rules, None, (480, 720), "cam")
    small = parse_rules({"min_area_px": 400, **LIMIT}, CLASSES)
    rules_module.check_region(small, None, (480, 720), "cam")
    with pytest.raises(UserError, match="--roi 0,0,10,10 is 10x10 = 100 px"):
        rules_module.check_region(small, (0, 0, 10, 10), None, "cam")
    with pytest.raises(UserError, match="--roi 700,0,100,10 is 20x10"):  # clipped by the 720 px wide frame
        rules_module.check_region(small, (700, 0, 100, 10), (480, 720), "cam")
    rules_module.check_region(small, (0, 0, 20, 20), (480, 720), "cam")
    unreachable = parse_rules({"min_area_px": 100, "classes": {"damage": {"max_count": 9}}}, CLASSES)
    with pytest.raises(UserError, match="no limit of the rules .* can be exceeded"):
        rules_module.check_region(unreachable, None, (30, 30), "cam")  # 900 px: ten 100 px regions need 1000


# --- boundaries and the frame analyser --------------------------------------------------------------
def test_a_region_of_exactly_the_minimum_area_counts():
    rules = parse_rules({"min_area_px": 50, **LIMIT}, CLASSES)
    assert judge(rules, [d("damage", 49.9)]) == (True, [])
    assert judge(rules, [d("damage", 50)]) == (False, ["damage: 1 region(s) > max_count 0"])
    own = parse_rules({"min_area_px": 50, "classes": {"dust": {"max_count": 0, "min_area_px": 8}}}, CLASSES)
    assert not judge(own, [d("dust", 8)])[0] and judge(own, [d("dust", 7.9)])[0]


def test_a_region_of_exactly_min_confidence_counts():
    rules = parse_rules({"min_area_px": 0, "classes": {"damage": {"max_count": 0, "min_confidence": 0.6}}}, CLASSES)
    assert not judge(rules, [d("damage", 10, conf=0.6)])[0]
    assert judge(rules, [d("damage", 10, conf=0.59)])[0]


def test_exact_limits_pass_and_one_more_fails():
    rules = parse_rules({"min_area_px": 0, "classes": {"damage": {"max_count": 2, "max_area_px": 40,
                                                                   "max_total_area_px": 70}}}, CLASSES)
    assert judge(rules, [d("damage", 40), d("damage", 30)]) == (True, [])
    assert not judge(rules, [d("damage", 40.1)])[0]
    assert not judge(rules, [d("damage", 40), d("damage", 30.1)])[0]
    assert not judge(rules, [d("damage", 1)] * 3)[0]


def test_the_analyser_applies_a_class_minimum_below_the_file_wide_one():
    rules = parse_rules({"min_area_px": 50, "classes": {"damage": {"max_count": 0},
                                                        "dust": {"max_count": 0, "min_area_px": 5}}}, CLASSES)
    cm = np.zeros((32, 32), np.uint8)
    cm[4:8, 4:9] = 3  # dust, 20 px: under the file-wide 50, over dust's own 5
    cm[20:24, 20:25] = 1  # damage, 20 px: under the file-wide 50 that damage uses
    defects, passed, reasons = analyser(rules, CLASSES)(cm, None, (0, 0, 32, 32))
    assert not passed and reasons == ["dust: 1 region(s) > max_count 0"]


def test_a_thin_diagonal_crack_is_one_region_and_fails():
    rules = parse_rules({"min_area_px": 20, **LIMIT}, CLASSES)
    cm = np.zeros((32, 32), np.uint8)
    idx = np.arange(2, 30)
    cm[idx, idx] = 1  # 28 px touching only at corners
    defects, passed, reasons = analyser(rules, CLASSES)(cm, None, (0, 0, 32, 32))
    assert [dd.area_px for dd in defects] == [28] and not passed
