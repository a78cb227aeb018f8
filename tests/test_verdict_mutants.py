"""Tests that pin what the first mutation run of the verdict code (docs/MUTATION.md) showed unpinned: exact
refusal messages, every limit path of the frame analyser, boundaries of the start-time region check, and the
arithmetic of quantify (rounding, tiny regions, one-region confidence, boxes of scaled-down regions)."""
from __future__ import annotations

import numpy as np
import pytest

from ds2a.errors import UserError
from ds2a.inspect import rules as R
from ds2a.inspect.quantify import Defect, quantify, totals

CLASSES = ("background", "damage", "smudge", "dust")
LIMIT = {"classes": {"damage": {"max_count": 0}}}


def d(name, area, mm2=None, conf=None):
    return Defect(CLASSES.index(name), name, area, mm2, (0, 0, 1, 1), (0.0, 0.0), conf)


# --- exact messages: what the operator reads is part of the behaviour ---------------------------------------
def test_number_messages_are_exact(tmp_path):
    with pytest.raises(UserError) as exc:
        R.parse_rules({"min_area_px": "x", **LIMIT}, CLASSES, "r.yaml")
    assert str(exc.value) == "rules file r.yaml: min_area_px is 'x', it must be a finite number >= 0"
    with pytest.raises(UserError) as exc:
        R.parse_rules({"classes": {"damage": {"max_area_px": None}}}, CLASSES, "r.yaml")
    assert str(exc.value) == ("rules file r.yaml: classes.damage.max_area_px is None, it must be a finite number "
                              ">= 0; omit the key for no limit")
    with pytest.raises(UserError) as exc:
        R.parse_rules({"classes": {"damage": {"max_count": -1}}}, CLASSES, "r.yaml")
    assert str(exc.value) == "rules file r.yaml: classes.damage.max_count is -1, it must be a whole number >= 0"


def test_scale_message_is_exact():
    with pytest.raises(UserError) as exc:
        R.check_scale(-2.0)
    assert str(exc.value) == "--mm-per-pixel -2.0: give the finite, positive size of one pixel in mm (e.g. 0.05)"


@pytest.mark.parametrize("classes, example", [(CLASSES, "dust"), (("background", "scratch"), "scratch"),
                                              (("background",), "damage")])
def test_no_classes_message_names_the_models_last_class(classes, example):
    with pytest.raises(UserError) as exc:
        R.parse_rules({"classes": {}}, classes, "r.yaml")
    assert str(exc.value) == (f"rules file r.yaml: 'classes' must map at least one defect class to its limits, "
                              f"for example `classes: {{{example}: {{max_count: 0}}}}`; a rules file without a "
                              "limit would pass every part")


def test_not_a_class_message_lists_the_valid_ones():
    with pytest.raises(UserError) as exc:
        R.parse_rules({"classes": {"scratch": {"max_count": 0}}}, CLASSES, "r.yaml")
    assert str(exc.value).endswith("class 'scratch' is not a defect class of this model; valid: damage, smudge, dust")


def test_check_can_fail_message_is_exact():
    rules = R.parse_rules({"min_area_px": 100, **LIMIT}, CLASSES, "r.yaml")
    with pytest.raises(UserError) as exc:
        R.check_can_fail(rules, 5, 4, "the frame")
    assert str(exc.value) == ("the frame is 5x4 = 20 px: the rules (r.yaml) ignore regions under 100 px (min_area_px), "
                              "so it could never FAIL and cannot be judged; inspect a larger frame or ROI, or lower "
                              "min_area_px / the limits")


def test_check_can_fail_names_the_smallest_class_minimum():
    rules = R.parse_rules({"min_area_px": 100, "classes": {"damage": {"max_count": 0, "min_area_px": 30}}},
                          CLASSES, "r.yaml")
    with pytest.raises(UserError, match="ignore regions under 30 px"):
        R.check_can_fail(rules, 5, 4, "the frame")


def test_a_region_of_the_minimum_area_that_no_limit_can_fail_says_so():
    rules = R.parse_rules({"min_area_px": 100, "classes": {"damage": {"max_count": 1}}}, CLASSES, "r.yaml")
    with pytest.raises(UserError, match=r"10x10 = 100 px: no limit of the rules \(r.yaml\) can be exceeded"):
        R.check_can_fail(rules, 10, 10, "the frame")  # one 100 px region counts, two are needed


# --- bind_rules (the path `ds2a inspect` takes: read_rules before the model, bind after) ---------------------
def test_default_rules_keep_the_command_line_scale():
    assert R.load_rules(None, CLASSES, mm_per_pixel=0.2).mm_per_pixel == 0.2
    assert R.bind_rules(None, CLASSES).mm_per_pixel is None


def test_bind_rules_refuses_a_file_without_classes_naming_it(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("min_area_px: 10\n")
    draft = R.read_rules(str(path))
    with pytest.raises(UserError) as exc:
        R.bind_rules(draft, CLASSES)
    assert str(exc.value).startswith(f"rules file {path}: 'classes' must map") and "classes: {dust:" in str(exc.value)
    path.write_text("classes: {dust: {max_count: 0}}\n")
    assert R.bind_rules(R.read_rules(str(path)), CLASSES).classes["dust"].max_count == 0


# --- judge ---------------------------------------------------------------------------------------------------
def test_a_small_region_first_does_not_hide_a_large_one():
    rules = R.parse_rules({"min_area_px": 50, **LIMIT}, CLASSES)
    assert not R.judge(rules, [d("damage", 10), d("damage", 80)])[0]


def test_a_region_whose_mm2_rounds_to_zero_counts_as_zero():
    rules = R.parse_rules({"mm_per_pixel": 0.001, "min_area_px": 0,
                           "classes": {"damage": {"max_area_mm2": 0.5, "max_total_area_mm2": 0.5}}}, CLASSES)
    assert R.judge(rules, [d("damage", 1, mm2=0.0), d("damage", 1, mm2=0.0)]) == (True, [])


# --- smallest_failing_area / can_fail / check_region --------------------------------------------------------
def test_px_limits_count_when_the_rules_also_have_a_scale():
    rules = R.parse_rules({"mm_per_pixel": 0.1, "min_area_px": 0,
                           "classes": {"damage": {"max_area_px": 10, "max_area_mm2": 100}}}, CLASSES)
    assert 10 < R.smallest_failing_area(rules) < 10.001  # 100 mm2 would need 10000 px


def test_can_fail_needs_a_positive_area_and_takes_fractions():
    rules = R.parse_rules({"min_area_px": 0, **LIMIT}, CLASSES)
    assert not R.can_fail(rules, 0) and R.can_fail(rules, 0.5)


def test_check_region_clips_an_roi_at_every_edge():
    rules = R.parse_rules({"min_area_px": 400, **LIMIT}, CLASSES)
    R.check_region(rules, (0, 460, 40, 40), (500, 720), "cam")  # 40x40 inside
    with pytest.raises(UserError, match="is 40x9 = 360 px"):
        R.check_region(rules, (100, 471, 40, 40), (480, 720), "cam")  # only 9 rows inside the 480 px frame
    with pytest.raises(UserError, match="is 0x100 = 0 px"):
        R.check_region(rules, (800, 0, 40, 100), (480, 720), "cam")  # entirely right of the frame
    with pytest.raises(UserError, match="is 100x0 = 0 px"):
        R.check_region(rules, (0, 600, 100, 40), (480, 720), "cam")  # entirely below it


# --- the frame analyser applies every kind of rule ---------------------------------------------------------
def test_the_analyser_measures_mm2_for_mm2_limits():
    rules = R.parse_rules({"mm_per_pixel": 0.5, "min_area_px": 0, "classes": {"damage": {"max_area_mm2": 3}}},
                          CLASSES)
    cm = np.zeros((16, 16), np.uint8)
    cm[0:4, 0:4] = 1  # 16 px = 4 mm2
    defects, passed, reasons = R.analyser(rules, CLASSES)(cm, None, (0, 0, 16, 16))
    assert not passed and defects[0].area_mm2 == 4.0 and "max_area_mm2 3" in reasons[0]


def test_the_analyser_passes_confidence_to_min_confidence():
    rules = R.parse_rules({"min_area_px": 0, "classes": {"damage": {"max_count": 0, "min_confidence": 0.9}}},
                          CLASSES)
    cm = np.zeros((16, 16), np.uint8)
    cm[0:4, 0:4] = 1
    weak = np.full(cm.shape, 0.5, np.float32)
    assert R.analyser(rules, CLASSES)(cm, weak, (0, 0, 16, 16))[1] is True
    assert R.analyser(rules, CLASSES)(cm, np.ones_like(weak), (0, 0, 16, 16))[1] is False


# --- quantify arithmetic ----------------------------------------------------------------------------------
def test_without_a_minimum_a_region_smaller_than_a_frame_pixel_is_kept():
    cm = np.zeros((16, 16), np.uint8)
    cm[3, 3] = 2
    defects = quantify(cm, CLASSES, frame_hw=(4, 4))  # one model pixel is 1/16 frame pixel
    assert [(x.class_id, x.class_name, x.area_px, x.bbox) for x in defects] == [(2, "smudge", 0.1, (0, 0, 1, 1))]


def test_a_one_pixel_region_is_found_and_its_confidence_is_its_own():
    cm = np.zeros((8, 8), np.uint8)
    cm[2, 5] = 3
    conf = np.full(cm.shape, 0.25, np.float32)
    conf[2, 5] = 1.0
    defects = quantify(cm, CLASSES, confidence=conf)
    assert [(x.class_name, x.area_px, x.confidence) for x in defects] == [("dust", 1, 1.0)]


def test_areas_mm2_and_confidence_are_rounded_as_documented():
    cm = np.zeros((9, 9), np.uint8)
    cm[0:2, 0:1] = 1  # 2 px at model size, frame 3x smaller each way: 2/9 = 0.2222 frame px
    conf = np.zeros(cm.shape, np.float32)
    conf[0, 0] = 1.0 / 3.0
    defects = quantify(cm, CLASSES, frame_hw=(3, 3), mm_per_pixel=0.123, confidence=conf)
    (x,) = defects
    assert x.area_px == 0.2 and x.area_mm2 == round(2 / 9 * 0.123 ** 2, 4) == 0.0034
    assert x.confidence == 0.1667


def test_totals_list_every_defect_class_and_tolerate_unknown_names():
    assert set(totals([], CLASSES)) == {"damage", "smudge", "dust"}
    t = totals([Defect(9, "crack", 5.0, None, (0, 0, 1, 1), (0.0, 0.0))], CLASSES)
    assert t["crack"].count == 1 and t["crack"].area_px == 5.0


def test_a_class_id_message_is_exact():
    cm = np.full((2, 2), 5, np.uint8)
    with pytest.raises(UserError) as exc:
        quantify(cm, CLASSES)
    assert str(exc.value) == ("the model gave class id 5 but lists 4 classes (background, damage, smudge, dust); "
                              "the model and its metadata disagree: re-export it with `ds2a export`")


# --- second pass: what the run after the first batch still left ------------------------------------------------
def test_a_class_without_a_rule_does_not_hide_a_later_class_with_one():
    rules = R.parse_rules({"min_area_px": 0, "classes": {"dust": {"max_count": 0}}}, CLASSES)
    assert R.judge(rules, [d("smudge", 100), d("dust", 100)]) == (False, ["dust: 1 region(s) > max_count 0"])


def test_default_rules_cover_every_defect_class():
    assert list(R.default_rules(CLASSES).classes) == ["damage", "smudge", "dust"]


@pytest.mark.parametrize("n, tail", [(5, "a0, a1, a2, a3, a4; "), (6, "a0, a1, a2, a3, a4 and 1 more; "),
                                     (8, "a0, a1, a2, a3, a4 and 3 more; ")])
def test_unknown_keys_are_listed_up_to_five(n, tail):
    with pytest.raises(UserError) as exc:
        R.parse_rules({**LIMIT, **{f"a{i}": 1 for i in range(n)}}, CLASSES, "r.yaml")
    assert str(exc.value) == (f"rules file r.yaml: unknown key(s) {tail}valid keys: version, level, part, "
                              "min_area_px, mm_per_pixel, classes")


def test_empty_file_message_and_default_origin_are_exact():
    with pytest.raises(UserError) as exc:
        R.parse_rules(None, CLASSES)
    assert str(exc.value) == ("rules file <rules> is empty; a rules file must state at least one limit, for example "
                              "`classes: {damage: {max_count: 0}}` (see deploy/rules.example.yaml)")


def test_duplicate_and_merge_key_messages_are_exact(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("classes:\n  damage: {max_count: 0}\n  damage: {max_count: 1}\n")
    with pytest.raises(UserError) as exc:
        R.load_rules(str(path), CLASSES)
    assert str(exc.value) == (f"rules file {path}: line 3: key 'damage' is given twice (first on line 2); YAML would "
                              "keep only the last value")
    path.write_text("classes:\n  <<: {damage: {max_count: 0}}\n")
    with pytest.raises(UserError) as exc:
        R.load_rules(str(path), CLASSES)
    assert str(exc.value) == (f"rules file {path}: line 2: YAML merge keys (<<) are not allowed in a rules file; "
                              "write each limit out")


def test_yaml_problems_are_one_bounded_line():
    import yaml
    from yaml.error import Mark

    mark = Mark("r.yaml", 0, 6, 2, None, None)
    assert R._yaml_problem(yaml.MarkedYAMLError("while parsing", None, "bad thing", mark)) == "bad thing (line 7)"
    long = yaml.MarkedYAMLError(None, None, "x" * 130, mark)
    assert R._yaml_problem(long) == "x" * 117 + "... (line 7)"
    assert R._yaml_problem(yaml.MarkedYAMLError(None, None, "y" * 120, mark)) == "y" * 120 + " (line 7)"
    assert R._yaml_problem(yaml.MarkedYAMLError(None, None, "z" * 121, mark)) == "z" * 117 + "... (line 7)"
    assert R._yaml_problem(yaml.YAMLError("first\nsecond")) == "first"
    assert R._yaml_problem(yaml.YAMLError()) == "YAMLError"


def test_read_rules_checks_the_command_line_scale_with_or_without_a_file(tmp_path):
    assert R.read_rules(None) is None and R.read_rules(None, 0.5) is None
    with pytest.raises(UserError, match="--mm-per-pixel -1"):
        R.read_rules(None, -1.0)
    path = tmp_path / "r.yaml"
    path.write_text("classes: {dust: {max_area_mm2: 1}}\n")
    assert R.read_rules(str(path), 0.2).mm_per_pixel == 0.2


def test_bind_rules_refuses_a_class_the_model_lacks_naming_the_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("classes: {scratch: {max_count: 0}}\n")
    with pytest.raises(UserError) as exc:
        R.bind_rules(R.read_rules(str(path)), CLASSES)
    assert str(exc.value) == (f"rules file {path}: class 'scratch' is not a defect class of this model; valid: "
                              "damage, smudge, dust")
    path.write_text("classes: {damage: {max_count: 0}}\n")
    assert list(R.bind_rules(R.read_rules(str(path)), CLASSES).classes) == ["damage"]


def test_rules_without_classes_can_never_fail_and_say_so():
    with pytest.raises(UserError, match="1x1 = 1 px: the rules .* ignore regions under 64 px"):
        R.check_can_fail(R.Rules(), 1, 1, "x")


def test_rules_print_as_they_were_read():
    rules = R.parse_rules({"mm_per_pixel": 0.05, "min_area_px": 16, "level": "frame",
                           "part": {"by": "frames", "frames": 3},
                           "classes": {"damage": {"max_count": 0, "min_confidence": 0.5},
                                       "dust": {"max_area_px": 40, "min_area_px": 4}}}, CLASSES, "r.yaml")
    assert rules.to_dict() == {"version": 1, "level": "frame", "part": {"by": "frames", "frames": 3},
                               "min_area_px": 16.0, "classes": {"damage": {"max_count": 0, "min_confidence": 0.5},
                                                                "dust": {"max_area_px": 40.0, "min_area_px": 4.0}},
                               "mm_per_pixel": 0.05}
    assert rules.to_yaml() == ("version: 1\nlevel: frame\npart: {by: frames, frames: 3}\nmin_area_px: 16.0\n"
                               "classes:\n  damage: {max_count: 0, min_confidence: 0.5}\n"
                               "  dust: {max_area_px: 40.0, min_area_px: 4.0}\nmm_per_pixel: 0.05")
    assert R.default_rules(CLASSES[:2]).to_dict() == {"version": 1, "level": "part", "part": {"by": "auto", "frames": 1},
                                                      "min_area_px": 64.0, "classes": {"damage": {"max_count": 0}}}
    assert R.parse_rules(R.default_rules(CLASSES).to_dict(), CLASSES).to_dict() == R.default_rules(CLASSES).to_dict()


def test_a_defect_as_a_record():
    assert Defect(1, "damage", 12.0, 0.5, (1, 2, 3, 4), (1.234, 5.678), 0.9).to_dict() == {
        "class_id": 1, "class_name": "damage", "area_px": 12.0, "area_mm2": 0.5, "bbox": [1, 2, 3, 4],
        "centroid": [1.2, 5.7], "confidence": 0.9}


# --- third pass: every refusal of the parser word for word, and its boundaries ----------------------------------
@pytest.mark.parametrize("doc, message", [
    ([1], "the top level must be a mapping with keys version, level, part, min_area_px, mm_per_pixel, classes"),
    ({"part": {"every": 2}, **LIMIT}, "'part' must be a mapping with 'by' (auto|source|frames) and 'frames' "
                                      "(N consecutive frames per part)"),
    ({"part": {"by": "x"}, **LIMIT}, "part.by 'x' is not valid; use one of auto, source, frames"),
    ({"part": {"frames": -2}, **LIMIT}, "part.frames is -2, it must be a whole number >= 0"),
    ({"mm_per_pixel": 0, **LIMIT}, "mm_per_pixel is 0; give the finite, positive size of one pixel in mm (e.g. 0.05), "
                                   "or omit the key when the scale is unknown"),
    ({"classes": {"dust": {"bad": 1}}}, "classes.dust has unknown key(s) bad; valid keys: max_count, "
                                        "max_total_area_px, max_total_area_mm2, max_area_px, max_area_mm2, "
                                        "min_confidence, min_area_px"),
    ({"classes": {"dust": {"max_count": 0, "min_confidence": 1.5}}},
     "classes.dust.min_confidence must be between 0 and 1"),
    ({"classes": {"dust": {"max_area_mm2": 1}}}, "classes.dust.max_area_mm2 needs the image scale; add mm_per_pixel "
                                                 "to the rules file or pass --mm-per-pixel"),
    ({"classes": {"dust": {"min_area_px": 1}}}, "classes.dust states no limit; give at least one of max_count, "
                                                "max_total_area_px, max_total_area_mm2, max_area_px, max_area_mm2 "
                                                "(for example max_count: 0), or remove the class"),
    ({"unknown": 1, **LIMIT}, "unknown key(s) unknown; valid keys:"),
])
def test_every_parser_refusal_is_word_for_word(doc, message):
    with pytest.raises(UserError) as exc:
        R.parse_rules(doc, CLASSES, "r.yaml")
    assert str(exc.value).startswith(f"rules file r.yaml: {message}")


def test_min_confidence_one_is_allowed_and_frames_default_to_one():
    rules = R.parse_rules({"part": {"by": "frames"}, "classes": {"dust": {"max_count": 0, "min_confidence": 1}}},
                          CLASSES)
    assert rules.classes["dust"].min_confidence == 1.0 and rules.part_frames == 1


@pytest.mark.parametrize("key, shown", [("a\tb", "'a\\tb'"), ("k" * 60, "k" * 60), ("k" * 61, "k" * 57 + "..."),
                                        ("é" * 100, "é" * 57 + "...")])
def test_keys_are_shown_on_one_short_line(key, shown):
    assert R._show(key) == shown


def test_file_errors_are_word_for_word(tmp_path):
    with pytest.raises(UserError) as exc:
        R.load_rules(str(tmp_path / "none.yaml"), CLASSES)
    assert str(exc.value) == f"rules file {tmp_path / 'none.yaml'} does not exist; start from deploy/rules.example.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text("classes: {dust: [\n")
    with pytest.raises(UserError) as exc:
        R.load_rules(str(bad), CLASSES)
    assert str(exc.value) == (f"rules file {bad} is not valid YAML: expected the node content, but found "
                              "'<stream end>' (line 2)")
    folder = tmp_path / "rules.d"
    folder.mkdir()
    with pytest.raises(UserError) as exc:
        R.load_rules(str(folder), CLASSES)
    assert str(exc.value) == (f"rules file {folder} is a folder; give the path of a YAML file such as "
                              "deploy/rules.example.yaml")
    deep = tmp_path / "deep.yaml"
    deep.write_text("classes: " + "[" * 3000 + "]" * 3000 + "\n")
    with pytest.raises(UserError) as exc:
        R.load_rules(str(deep), CLASSES)
    assert str(exc.value) == f"rules file {deep} is nested too deeply to be a rules file"
