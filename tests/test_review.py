"""`ds2a review`: marks, confirmations, the training-set export and the fine-tune loop on the demo conveyor.

One small station database (two runs of 40 frames of a 320x180 demo:// conveyor, the first keeping every
frame's raw picture, the second only failing frames) is made once per module; each test works on its own
copy, so marks never leak between tests. The end-to-end test (marked slow, bounded: a few training
iterations at 64x64) fine-tunes the demo checkpoint on the corrected export.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sqlite3
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from ds2a.cli import main
from ds2a.inspect.run import InspectOptions, inspect
from ds2a.records import audit, review
from ds2a.records.check import check_database
from ds2a.records.database import connect
from ds2a.records.review_export import export, voc_colours

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "ds2a" / "assets" / "demo"
SOURCE = "demo://?frames=40&width=320&height=180&speed=24"
RULES = "version: 1\nclasses:\n  damage: {max_count: 0}\n  smudge: {max_count: 0}\n  dust: {max_count: 0}\n"
ORIGIN = "test"


def _inspect(tmp: Path, db: Path, keep: str, kept: str) -> object:
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    options = InspectOptions(model=str(DEMO / "ds2a_tiny_synth.int8.onnx"), source=SOURCE, headless=True,
                             db=str(db), rules=str(rules), save_fail=str(tmp / kept), keep_raw=keep, drift="off",
                             backend_options={"intra_op_threads": 1})
    with open(os.devnull, "w") as devnull:
        return inspect(options, out=devnull)


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    """(folder, db, parts of run 1 by verdict): run 1 keeps every raw frame, run 2 only failing ones."""
    tmp = tmp_path_factory.mktemp("station")
    db = tmp / "inspect.sqlite"
    first = _inspect(tmp, db, "all", "kept_all")
    _inspect(tmp, db, "fail", "kept_fail")
    by = {}
    for p in first.parts:
        by.setdefault(p.verdict, []).append(p.part_id)
    assert by.get("FAIL") and by.get("PASS"), by  # the demo seed gives both
    return tmp, db, by


@pytest.fixture
def db(station, tmp_path):
    """A private copy of the station database (the kept pictures stay where the run recorded them)."""
    path = tmp_path / "inspect.sqlite"
    shutil.copy(station[1], path)
    return path


def _verdict_id(con, part, run=1):
    return con.execute("SELECT id FROM verdicts WHERE part_id=? AND run_id=?", (part, run)).fetchone()[0]


def _cli(capsys, *args, code=0):
    got = main(["review", *map(str, args)])
    out, err = capsys.readouterr()
    assert got == code, (out, err)
    return out, err


def _marked(db, station, capsys=None):
    """A FAIL part marked false reject by the library, a PASS part missed defect by the CLI, both confirmed."""
    _, _, by = station
    con = connect(str(db), create=False)
    try:
        first = review.mark(con, _verdict_id(con, by["FAIL"][0]), "false_reject", "a shadow, not smudge", "anna",
                            "operator", ORIGIN)
    finally:
        con.close()
    assert main(["review", "mark", str(db), "--part", by["PASS"][0], "--run", "1", "--kind", "missed_defect",
                 "--note", "dust at the edge", "--user", "anna"]) == 0
    con = connect(str(db), create=False, readonly=True)
    try:
        second = review.marks(con)[-1]["id"]
    finally:
        con.close()
    assert second != first
    return first, second


def test_marks_are_appended_confirmed_by_an_engineer_and_never_change_a_verdict(db, station, capsys):
    first, second = _marked(db, station, capsys)
    con = connect(str(db), create=False)
    try:
        verdicts = con.execute("SELECT * FROM verdicts ORDER BY id").fetchall()
        with pytest.raises(review.ReviewError, match="needs engineer or admin") as refused:
            review.confirm(con, first, True, "", "olga", "operator", ORIGIN)
        assert refused.value.status == 403
        review.confirm(con, first, True, "agreed", "ben", "engineer", ORIGIN)
        listed = {m["id"]: m for m in review.marks(con)}
        assert listed[first]["status"] == "confirmed" and listed[first]["answered_by"] == "ben"
        assert listed[first]["verdict"] == "FAIL" and listed[second]["verdict"] == "PASS"
        assert listed[second]["status"] == "open" and listed[second]["kind"] == "missed_defect"
        assert con.execute("SELECT * FROM verdicts ORDER BY id").fetchall() == verdicts  # no verdict rewritten
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            con.execute("UPDATE marks SET note='x' WHERE id=?", (first,))
        con.rollback()
    finally:
        con.close()
    _cli(capsys, "confirm", db, "--mark", second, "--user", "olga", "--role", "operator", code=2)
    _cli(capsys, "confirm", db, "--mark", second, "--user", "ben", "--role", "engineer", "--note", "yes")
    out, _ = _cli(capsys, "list", db, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in rows] == ["confirmed", "confirmed"]
    con = connect(str(db), create=False, readonly=True)
    try:
        n, problems = audit.verify(con)
        actions = [r[5] for r in audit.rows(con)]
        assert not problems and not review.verify(con)
        assert actions.count("review_mark") == 2 and actions.count("review_confirm") == 2
        assert not check_database(con)[1]
    finally:
        con.close()


@pytest.mark.records_check_skip("the test edits a mark on purpose")
def test_a_mark_edited_behind_the_station_is_reported_by_report_check(db, station, capsys):
    """Someone with SQLite in hand drops the append-only trigger and turns a missed defect into a false reject."""
    _, second = _marked(db, station, capsys)
    assert main(["report", str(db), "--check"]) == 0
    capsys.readouterr()
    con = sqlite3.connect(db)
    con.execute("DROP TRIGGER marks_no_update")
    con.execute("UPDATE marks SET part_id = 'cell-999999', run_id = 2 WHERE id = ?", (second,))
    con.commit()
    con.close()
    assert main(["report", str(db), "--check"]) != 0
    out = capsys.readouterr().out
    assert f"marks row {second} (part cell-999999) does not match its audit row (edited)" in out
    assert "append-only trigger(s) marks_no_update removed" in out


def test_an_engineer_may_reject_a_mark_and_a_mark_is_answered_once(db, station, capsys):
    first, _ = _marked(db, station, capsys)
    _cli(capsys, "confirm", db, "--mark", first, "--reject", "--note", "it is smudge", "--user", "ben",
         "--role", "engineer")
    _, err = _cli(capsys, "confirm", db, "--mark", first, "--user", "ben", "--role", "engineer", code=2)
    assert "already rejected by ben" in err
    out, _ = _cli(capsys, "list", db)
    assert "[rejected by ben: it is smudge]" in out


@pytest.mark.parametrize("case", ["unknown part", "other run", "several runs", "kind does not fit", "empty note",
                                  "unknown mark", "operator confirms", "users file wrong password"])
def test_bad_calls_are_one_line_errors_and_record_nothing(db, station, capsys, tmp_path, monkeypatch, case):
    _, _, by = station
    fail = by["FAIL"][0]
    mark = ["mark", db, "--kind", "false_reject", "--note", "n", "--user", "anna"]
    con = connect(str(db), create=False, readonly=True)
    n_other = con.execute("SELECT COUNT(*) FROM verdicts WHERE run_id=2").fetchone()[0]
    con.close()
    args, words = {
        "unknown part": (mark + ["--part", "cell-999999", "--run", "1"], "has no verdict in run 1"),
        "other run": (mark + ["--part", fail, "--run", "7"], "judged in run(s) 1, 2"),
        "several runs": (mark + ["--part", fail], "say which with --run N"),
        "kind does not fit": (["mark", db, "--part", by["PASS"][0], "--run", "1", "--kind", "false_reject", "--note",
                               "n", "--user", "anna"], "a false reject marks a FAIL"),
        "empty note": (["mark", db, "--part", fail, "--run", "1", "--kind", "false_reject", "--note", " ",
                        "--user", "anna"], "the note is empty"),
        "unknown mark": (["confirm", db, "--mark", "41", "--user", "ben", "--role", "engineer"], "mark 41 is not"),
        "operator confirms": (["confirm", db, "--mark", "1", "--user", "olga", "--role", "operator"],
                              "needs engineer or admin"),
        "users file wrong password": (mark + ["--part", fail, "--run", "1", "--users", tmp_path / "users.txt"],
                                      "wrong password"),
    }[case]
    if case == "users file wrong password":
        from ds2a.notify.users import hash_password

        (tmp_path / "users.txt").write_text(f"anna:operator:{hash_password('right-one', 'pbkdf2_sha256')}\n")
        monkeypatch.setenv("DS2A_PASSWORD", "wrong-one")
    _, err = _cli(capsys, *args, code=2)
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert n_other  # the second run judged the same part ids: a part id alone is ambiguous
    con = connect(str(db), create=False, readonly=True)
    try:
        assert not review.marks(con) and not [r for r in audit.rows(con) if r[5].startswith("review_")]
    finally:
        con.close()


def test_a_signed_in_engineer_confirms_and_the_role_comes_from_the_users_file(db, station, capsys, tmp_path,
                                                                              monkeypatch):
    from ds2a.notify.users import hash_password

    first, _ = _marked(db, station, capsys)
    users = tmp_path / "users.txt"
    users.write_text(f"ben:engineer:{hash_password('pw-ben-123', 'pbkdf2_sha256')}\n"
                     f"olga:operator:{hash_password('pw-olga-12', 'pbkdf2_sha256')}\n")
    monkeypatch.setenv("DS2A_PASSWORD", "pw-olga-12")
    _cli(capsys, "confirm", db, "--mark", first, "--user", "olga", "--users", users, code=2)
    monkeypatch.setenv("DS2A_PASSWORD", "pw-ben-123")
    out, _ = _cli(capsys, "confirm", db, "--mark", first, "--user", "ben", "--users", users)
    assert "ben (engineer)" in out and "unverified" not in out
    con = connect(str(db), create=False, readonly=True)
    try:
        row = [r for r in audit.rows(con) if r[5] == "review_confirm"][0]
        assert row[2] == "ben" and row[3] == "engineer" and json.loads(row[8])["authenticated"] is True
    finally:
        con.close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_writes_the_training_layout_cvat_file_and_a_manifest_that_names_what_is_missing(db, station, capsys,
                                                                                             tmp_path):
    from ds2a.data import open_dataset

    _, _, by = station
    first, second = _marked(db, station, capsys)
    con = connect(str(db), create=False)
    try:  # a third mark, of run 2 (only failing frames kept): its PASS part has no picture to export
        third = review.mark(con, _verdict_id(con, by["PASS"][0], run=2), "missed_defect", "dust", "anna", None, ORIGIN)
        fourth = review.mark(con, _verdict_id(con, by["FAIL"][-1]), "false_reject", "glare", "anna", None, ORIGIN)
        for m in (first, third):
            review.confirm(con, m, True, "", "ben", "engineer", ORIGIN)
        review.confirm(con, fourth, False, "real damage", "ben", "admin", ORIGIN)
    finally:
        con.close()
    out = tmp_path / "export"
    result = export(str(db), str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    frames = manifest["frames"]
    assert result.frames == len(frames) > 0 and {f["part_id"] for f in frames} == {by["FAIL"][0]}
    assert all(f["marks"][0]["confirmed_by"] == "ben" and f["marks"][0]["kind"] == "false_reject" for f in frames)
    for f in frames:  # every file's sha256, and the crop's size, as written
        image, mask = out / f["image"], out / f["mask"]
        assert _sha(image) == f["image_sha256"] == manifest["files"][f["image"]]["sha256"]
        assert _sha(mask) == f["mask_sha256"]
        assert cv2.imread(str(image)).shape[:2] == cv2.imread(str(mask), cv2.IMREAD_UNCHANGED).shape
        assert list(cv2.imread(str(image)).shape[1::-1]) == f["crop_xywh"][2:]
    missing = manifest["missing"]
    assert missing and {m["part_id"] for m in missing} == {by["PASS"][0]} and {m["run_id"] for m in missing} == {2}
    assert all("--keep-raw all" in m["fix"] and "keep-raw policy 'fail'" in m["reason"] for m in missing)
    left = {m["mark_id"]: m["reason"] for m in manifest["left_out"]}
    assert left[second].startswith("not confirmed") and left[fourth] == "rejected by ben"
    dataset = open_dataset(out, split="all")
    assert dataset.classes == manifest["classes"] == ["background", "damage", "smudge", "dust"]
    assert len(dataset) == len(frames) and all(s.mask.max() < 4 for s in dataset)
    with zipfile.ZipFile(out / "cvat" / "annotations.zip") as z:
        names = z.read("ImageSets/Segmentation/default.txt").decode().split()
        labelmap = [line.split(":") for line in z.read("labelmap.txt").decode().splitlines() if "#" not in line]
        assert names == [f["name"] for f in frames]
        assert [(c, tuple(map(int, rgb.split(",")))) for c, rgb, _, _ in labelmap] == \
            list(zip(dataset.classes, voc_colours(4)))
        rgb = cv2.imdecode(np.frombuffer(z.read(f"SegmentationClass/{names[0]}.png"), np.uint8), cv2.IMREAD_COLOR)
    ids = cv2.imread(str(out / frames[0]["mask"]), cv2.IMREAD_UNCHANGED)
    assert (rgb[..., ::-1][ids == 1] == voc_colours(4)[1]).all() and (rgb[ids == 0] == 0).all()
    everything = export(str(db), str(tmp_path / "all"), confirmed_only=False)  # --all-marks: the open mark too
    assert everything.parts == 3 and everything.frames > result.frames
    con = connect(str(db), create=False, readonly=True)
    try:
        assert [r[5] for r in audit.rows(con)].count("review_export") == 2
    finally:
        con.close()


@pytest.mark.parametrize("case", ["folder holding the database", "folder with files", "a file", "no confirmed marks"])
def test_export_refusals(db, station, capsys, tmp_path, case):
    first, _ = _marked(db, station, capsys)
    if case != "no confirmed marks":
        con = connect(str(db), create=False)
        review.confirm(con, first, True, "", "ben", "engineer", ORIGIN)
        con.close()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    (tmp_path / "file.txt").write_text("mine")
    out, words = {"folder holding the database": (tmp_path, "holds DB"),
                  "folder with files": (tmp_path / "full", "already holds files"),
                  "a file": (tmp_path / "file.txt", "is a file"),
                  "no confirmed marks": (tmp_path / "new", "no confirmed marks")}[case]
    _, err = _cli(capsys, "export", db, "--out", out, code=2)
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and (tmp_path / "file.txt").read_text() == "mine"
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".*partial*"))


# --- the loop: marks -> export -> corrected labels -> fine-tune -> eval before/after -> shadow ------------------

def _labelled_in_cvat(manifest: dict, zip_path: Path, classes=None) -> dict:
    """What a person does in CVAT, done with the demo's ground truth: every pre-label replaced by the generator's
    own mask of the part, scaled to the crop (the part's box on the conveyor), exported from the task as
    "Segmentation mask 1.1" (CVAT adds its own background line). The true label of each frame by name."""
    from ds2a.records.review_export import _cvat_zip
    from ds2a.sources.demo import DemoSource

    source = DemoSource(SOURCE, frames=40, width=320, height=180, speed=24)
    truth = {}
    for f in manifest["frames"]:
        mask, (ch, cw) = source.truth(f["part_id"])
        assert f["crop_xywh"][2:] == [cw, ch]  # the crop is exactly the region the model judged
        truth[f["name"]] = cv2.resize(mask, (cw, ch), interpolation=cv2.INTER_NEAREST)
    zip_path.write_bytes(_cvat_zip(list(truth), truth, classes or manifest["classes"]))
    return truth


def _eval(model: Path, data: Path, split: str, json_out: Path) -> dict:
    assert main(["eval", "--model", str(model), "--data", str(data), "--split", split, "--json", str(json_out),
                 "--threads", "2"]) == 0
    return json.loads(json_out.read_text())


@pytest.fixture(scope="module")
def finetuned(station, tmp_path_factory):
    """The whole review loop once: marks (library and CLI), confirmations, export, labels corrected from the demo's
    ground truth, a fine-tune of the demo checkpoint mixed with original data, and eval before and after."""
    pytest.importorskip("torch", reason="fine-tuning needs torch (pip install -e '.[train]')")
    tmp = tmp_path_factory.mktemp("loop")
    db = tmp / "inspect.sqlite"
    shutil.copy(station[1], db)
    first, second = _marked(db, station)
    for m in (first, second):
        assert main(["review", "confirm", str(db), "--mark", str(m), "--user", "ben", "--role", "engineer"]) == 0
    out = tmp / "export"
    assert main(["review", "export", str(db), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert {f["verdict"] for f in manifest["frames"]} == {"FAIL", "PASS"} and not manifest["missing"]
    truth = _labelled_in_cvat(manifest, tmp / "cvat_task.zip")
    labelled = tmp / "labelled"
    assert main(["review", "import-cvat", str(out), "--cvat", str(tmp / "cvat_task.zip"), "--out", str(labelled)]) == 0
    fixed = json.loads((labelled / "manifest.json").read_text())
    for f in fixed["frames"]:
        assert (cv2.imread(str(labelled / f["mask"]), cv2.IMREAD_UNCHANGED) == truth[f["name"]]).all()
        assert _sha(labelled / f["image"]) == f["image_sha256"] == _sha(out / f["image"])
    changed = sum(f["labels_changed_px"] for f in fixed["frames"])
    original = tmp / "synth"
    assert main(["synth", str(original), "--train", "8", "--val", "2", "--test", "4", "--size", "64x64"]) == 0
    init = DEMO / "ds2a_tiny_synth.pt"
    before = {n: _eval(init, d, s, tmp / f"before_{n}.json") for n, d, s in
              (("review", labelled, "test"), ("synth", original, "test"))}
    assert main(["train", "--model", "ds2a_tiny", "--data", str(original), "--extra-data", str(labelled),
                 "--extra-repeat", "2", "--init", str(init), "--out", str(tmp / "ft"), "--iters", "3",
                 "--batch-size", "2", "--crop", "64x64", "--input-size", "256x256", "--eval-every", "0", "--workers", "0", "--threads", "2",
                 "--num-points", "512", "--device", "cpu", "--quiet"]) == 0
    tuned = tmp / "ft" / "last.pt"
    after = {n: _eval(tuned, d, s, tmp / f"after_{n}.json") for n, d, s in
             (("review", labelled, "test"), ("synth", original, "test"))}
    return {"tmp": tmp, "db": db, "export": out, "changed": changed, "tuned": tuned, "before": before,
            "after": after, "log": (tmp / "ft" / "train.csv").read_text()}


@pytest.mark.slow
def test_confirmed_marks_fine_tune_the_demo_model_and_both_models_are_scored(finetuned):
    assert finetuned["changed"] > 0  # the demo model's pre-labels differ from the truth somewhere
    for when in ("before", "after"):
        for result in finetuned[when].values():
            assert result["num_images"] > 0 and math.isfinite(result["mIoU"]) and 0 <= result["mIoU"] <= 1
    assert finetuned["after"]["review"]["source"].endswith("last.pt")
    rows = finetuned["log"].strip().splitlines()
    assert len(rows) >= 2 and all(math.isfinite(float(v)) for v in rows[-1].split(",")[1:2])


@pytest.mark.slow
def test_the_fine_tuned_model_runs_as_a_shadow_beside_the_live_one(finetuned):
    import dataclasses

    if "shadow" not in {f.name for f in dataclasses.fields(InspectOptions)}:
        pytest.skip("ds2a inspect --shadow is not in this tree yet")
    from ds2a.records import shadow

    tmp = finetuned["tmp"]
    db = tmp / "shadow.sqlite"
    rules = tmp / "rules.yaml"
    rules.write_text(RULES)
    options = InspectOptions(model=str(DEMO / "ds2a_tiny_synth.int8.onnx"), source=SOURCE, headless=True, db=str(db),
                             rules=str(rules), drift="off", shadow=str(finetuned["tuned"]),
                             backend_options={"intra_op_threads": 1})
    with open(os.devnull, "w") as devnull:
        summary = inspect(options, out=devnull)
    con = connect(str(db), create=False, readonly=True)
    try:
        rows = con.execute("SELECT part_id, live_verdict, judged, verdict FROM shadow").fetchall()
        assert rows and {r[0] for r in rows} <= {p.part_id for p in summary.parts}
        assert {r[1] for r in rows} <= {"PASS", "FAIL", "NONE"} and any(r[2] for r in rows)
        assert shadow.summary(con, 1) is not None
        assert not check_database(con)[1]
    finally:
        con.close()


def _folder_set(root: Path, n: int, classes: list) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"{i:03d}.png"), np.full((32, 32, 3), 10 * i, np.uint8))
        cv2.imwrite(str(root / "masks" / f"{i:03d}.png"), np.full((32, 32), i % len(classes), np.uint8))
    return root


def test_extra_data_is_mixed_into_the_train_split_and_other_classes_are_refused(tmp_path, capsys):
    pytest.importorskip("torch", reason="ds2a.train needs torch")
    from ds2a.data import open_dataset
    from ds2a.train.data import open_train_set

    classes = ["background", "damage", "smudge", "dust"]
    base, extra = _folder_set(tmp_path / "base", 10, classes), _folder_set(tmp_path / "extra", 5, classes)
    n_base, n_extra = len(open_dataset(base, "train")), len(open_dataset(extra, "train"))
    mixed = open_train_set(str(base), [str(extra)], extra_repeat=3)
    assert len(mixed) == n_base + 3 * n_extra and mixed.classes == classes
    names = [mixed[i].name for i in range(len(mixed))]
    assert names[n_base:] == open_dataset(extra, "train").names * 3  # the extra set, three times over
    other = _folder_set(tmp_path / "other", 5, ["background", "crack"])
    assert main(["train", "--model", "ds2a_tiny", "--data", str(base), "--extra-data", str(other), "--out",
                 str(tmp_path / "run"), "--iters", "1", "--crop", "32x32", "--eval-every", "0", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--extra-data" in err and "same classes.txt" in err and not (tmp_path / "run" / "last.pt").exists()


def test_the_page_marks_and_confirms_by_the_signed_in_users_role(db, station, tmp_path):
    pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")
    pytest.importorskip("matplotlib", reason="the web page's charts need matplotlib: pip install -e '.[web]'")
    from test_web_roles import Station_, call, sign_in

    from ds2a.notify.users import hash_password

    _, _, by = station
    users = tmp_path / "users.txt"
    users.write_text(f"anna:operator:{hash_password('anna-op-secret', 'pbkdf2_sha256')}\n"
                     f"ben:engineer:{hash_password('ben-eng-secret', 'pbkdf2_sha256')}\n")
    with Station_(db, users) as s:
        anna, ben = sign_in(s.url, "anna", "anna-op-secret"), sign_in(s.url, "ben", "ben-eng-secret")
        body = {"run": 1, "part_id": by["FAIL"][0], "kind": "false_reject", "note": "a shadow"}
        status, text, _ = call(s.url + "api/mark", "POST", body, anna)
        assert status == 200, text
        mark_id = json.loads(text)["id"]
        status, text, _ = call(s.url + f"api/mark/{mark_id}/confirm", "POST", {"note": "yes"}, anna)
        assert status == 403 and "needs engineer or admin" in json.loads(text)["message"]
        for path, payload, code in (("api/mark", {**body, "run": 2, "part_id": "cell-999999"}, 404),
                                    ("api/mark", {**body, "part_id": by["PASS"][0]}, 409),
                                    ("api/mark/41/confirm", {}, 404)):
            status, text, _ = call(s.url + path, "POST", payload, ben)
            assert status == code and "nothing recorded" in json.loads(text)["message"], (path, text)
        status, text, _ = call(s.url + f"api/mark/{mark_id}/confirm", "POST", {"note": "yes"}, ben)
        assert status == 200, text
        status, text, _ = call(s.url + "api/marks?run=1", headers=anna)
        marks = json.loads(text)["marks"]
    assert [(m["id"], m["status"], m["user"], m["role"], m["answered_by"]) for m in marks] == \
        [(mark_id, "confirmed", "anna", "operator", "ben")]
    con = connect(str(db), create=False, readonly=True)
    try:
        rows = [r for r in audit.rows(con) if r[5].startswith("review_")]
        assert [(r[2], r[3], r[4].startswith("web "), json.loads(r[8])["authenticated"]) for r in rows] == \
            [("anna", "operator", True, True), ("ben", "engineer", True, True)]
    finally:
        con.close()


def test_the_page_buttons_mark_and_confirm_in_a_browser(db, station, tmp_path):
    pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")
    pytest.importorskip("matplotlib", reason="the web page's charts need matplotlib: pip install -e '.[web]'")
    import test_web_roles as roles
    from headless_chromium import chromium, wait_for

    from ds2a.notify.users import hash_password

    session = chromium()  # or a skip saying what is missing
    browser = next(session)
    from selenium.webdriver.common.by import By
    _, _, by = station
    part = by["FAIL"][0]
    users = tmp_path / "users.txt"
    users.write_text(f"anna:operator:{hash_password('anna-op-secret', 'pbkdf2_sha256')}\n"
                     f"ben:engineer:{hash_password('ben-eng-secret', 'pbkdf2_sha256')}\n")
    try:
        with roles.Station_(db, users) as s:
            roles.browser_sign_in(browser, s.url, "anna", "anna-op-secret")
            assert wait_for(lambda: browser.find_elements(By.ID, "review-part"))
            assert not browser.find_elements(By.ID, "review-mark")  # no confirm control for an operator
            browser.find_element(By.ID, "review-part").send_keys(part)
            browser.find_element(By.ID, "review-reason").send_keys("a shadow, not smudge")
            browser.find_element(By.XPATH, "//button[text()='mark false reject']").click()
            msg = browser.find_element(By.ID, "review-msg")
            assert wait_for(lambda: f"part {part} run 2 marked false_reject by anna" in msg.text), msg.text
            roles.browser_sign_in(browser, s.url, "ben", "ben-eng-secret")
            assert wait_for(lambda: browser.find_elements(By.ID, "review-mark"))
            browser.find_element(By.ID, "review-mark").send_keys("1")
            browser.find_element(By.XPATH, "//button[text()='confirm mark']").click()
            msg = browser.find_element(By.ID, "review-msg")
            assert wait_for(lambda: "mark 1 confirmed by ben" in msg.text), msg.text
    finally:
        session.close()  # quits the browser
    con = connect(str(db), create=False, readonly=True)
    try:
        assert [(m["part_id"], m["run_id"], m["user"], m["status"], m["answered_by"]) for m in review.marks(con)] \
            == [(part, 2, "anna", "confirmed", "ben")]  # the page shows the latest run
    finally:
        con.close()


@pytest.mark.parametrize("case", ["a colour not in the labelmap", "a label not a class", "a frame not labelled",
                                  "out inside the export", "not an export"])
def test_import_cvat_refusals(db, station, capsys, tmp_path, case):
    first, _ = _marked(db, station)
    con = connect(str(db), create=False)
    review.confirm(con, first, True, "", "ben", "engineer", ORIGIN)
    con.close()
    out = tmp_path / "export"
    export(str(db), str(out))
    manifest = json.loads((out / "manifest.json").read_text())
    zip_path = tmp_path / "task.zip"
    truth = _labelled_in_cvat(manifest, zip_path,
                              ["background", "damage", "smudge", "rust"] if case == "a label not a class" else None)
    if case in ("a colour not in the labelmap", "a frame not labelled"):
        with zipfile.ZipFile(zip_path) as z:
            items = {n: z.read(n) for n in z.namelist()}
        name = next(iter(truth))
        if case == "a frame not labelled":
            del items[f"SegmentationClass/{name}.png"]
        else:
            rgb = np.full(truth[name].shape + (3,), (7, 7, 7), np.uint8)
            items[f"SegmentationClass/{name}.png"] = cv2.imencode(".png", rgb)[1].tobytes()
        with zipfile.ZipFile(zip_path, "w") as z:
            for n, data in items.items():
                z.writestr(n, data)
    source = tmp_path / "not_export" if case == "not an export" else out
    source.mkdir(exist_ok=True)
    target = out / "labelled" if case == "out inside the export" else tmp_path / "labelled"
    words = {"a colour not in the labelmap": "does not declare (RGB [(7, 7, 7)])",
             "a label not a class": "label 'rust' is not one of the export's classes",
             "a frame not labelled": "has no SegmentationClass/ mask for 1 frame(s)",
             "out inside the export": "is inside the export", "not an export": "is not a `ds2a review export` folder"}[case]
    before = {p: _sha(p) for p in out.rglob("*") if p.is_file()}
    _, err = _cli(capsys, "import-cvat", source, "--cvat", zip_path, "--out", target, code=2)
    assert words in err and len(err.strip().splitlines()) == 1, err
    assert not target.exists() and {p: _sha(p) for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".*partial*"))
