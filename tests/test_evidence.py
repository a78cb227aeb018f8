"""`ds2a evidence` and `ds2a inspect --keep-raw`: folders an auditor opens without ds2a, refused bad calls."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.inspect.publish import parse_keep_raw
from ds2a.inspect.run import InspectOptions, inspect
from ds2a.records.evidence import MASK_OUTSIDE, Evidence, parse_time, verify

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"
SOURCE = "demo://?frames={n}&width=320&height=180&speed=24"


RULES = "version: 1\nclasses:\n  damage: {max_count: 0}\n  smudge: {max_count: 0}\n  dust: {max_count: 0}\n"


def _run(tmp: Path, keep: str, frames: int) -> tuple:
    db, fail, rules = tmp / "inspect.sqlite", tmp / "kept", tmp / "line3.yaml"
    rules.write_text(RULES)
    options = InspectOptions(model=str(DEMO_MODEL), source=SOURCE.format(n=frames), headless=True, db=str(db),
                             rules=str(rules), save_fail=str(fail), keep_raw=keep, drift="off",
                             backend_options={"intra_op_threads": 1})
    summary = inspect(options, out=open(os.devnull, "w"))
    return db, fail, summary


@pytest.fixture(scope="module")
def run_all(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("all"), "all", 40)


def _evidence(capsys, *args) -> tuple:
    code = main(["evidence", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _part(summary, verdict):
    return next(p for p in summary.parts if p.verdict == verdict)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.scripts = [], 0

    def handle_starttag(self, tag, attrs):
        self.scripts += tag == "script"
        self.links += [v for k, v in attrs if k in ("href", "src")]


def _folder(out: str) -> Path:
    return Path(out.split(": ", 1)[1].split(" + ")[0].strip())


@pytest.mark.parametrize("verdict", ["FAIL", "PASS"])
def test_evidence_of_a_part_holds_its_pictures_and_facts_and_verifies(run_all, tmp_path, capsys, verdict):
    db, _, summary = run_all
    part = _part(summary, verdict)
    code, out, err = _evidence(capsys, db, "--part", part.part_id, "--out", tmp_path / "ev", "--zip")
    assert code == 0, err
    folder = _folder(out)
    facts = json.loads((folder / "evidence.json").read_text())
    assert facts["part"]["verdict"] == verdict and facts["part"]["reasons"] == part.reasons
    assert len(facts["frames"]) == part.n_frames
    assert facts["selftest"]["status"] == "passed" and facts["keep_raw"] == "all"
    assert facts["model"]["model_sha256"] == hashlib.sha256(DEMO_MODEL.read_bytes()).hexdigest()
    assert facts["ds2a_version_of_run"] and facts["operator_actions"] == "none recorded"
    assert facts["recipe"]["sha256"] == hashlib.sha256(RULES.encode()).hexdigest() and facts["recipe"]["copy_matches"]
    assert (folder / "recipe" / "line3.yaml").read_text() == RULES and (folder / "recipe" / "effective_rules.json").is_file()
    for f in facts["frames"]:  # --keep-raw all: every inspected frame has all three pictures
        for kind in ("annotated", "raw", "mask"):
            assert (folder / f["files"][kind]).is_file(), (kind, f["files"])
        mask = cv2.imread(str(folder / f["files"]["mask"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (180, 320) and set(np.unique(mask)) <= {0, 1, 2, 3, MASK_OUTSIDE}
    if verdict == "FAIL":  # the class the deciding reason names is in a failing frame's mask and its defects
        cls = part.reasons[0].split(":")[0]
        classes = facts["run"]["classes"]
        bad = [f for f in facts["frames"] if f["verdict"] == "FAIL"]
        assert any(d["class_name"] == cls and d["area_px"] > 0 for f in bad for d in f["defects"])
        assert any((cv2.imread(str(folder / f["files"]["mask"]), cv2.IMREAD_UNCHANGED) == classes.index(cls)).any()
                   for f in bad)
        assert facts["decided_by"]["rules_of_the_classes_named"] == {cls: {"max_count": 0}}
        assert cls in (folder / "defects.csv").read_text()
    assert verify(str(folder)) == []
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]
    for line in (folder / "SHA256SUMS").read_text().splitlines():  # what `sha256sum -c` checks
        digest, name = line.split("  ", 1)
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    page = _Links()
    page.feed((folder / "index.html").read_text())
    assert page.scripts == 0 and page.links
    for link in page.links:
        assert "://" not in link and (folder / link).is_file(), link
    assert {"evidence.json", "manifest.json", "SHA256SUMS"} <= set(page.links)
    assert Path(str(folder) + ".zip").is_file()


def test_a_changed_file_fails_the_manifest(run_all, tmp_path, capsys):
    db, _, summary = run_all
    code, out, _ = _evidence(capsys, db, "--part", _part(summary, "FAIL").part_id, "--out", tmp_path)
    folder = _folder(out)
    csv_file = folder / "defects.csv"
    csv_file.write_text(csv_file.read_text().replace("FAIL", "PASS"))
    assert verify(str(folder)) == ["defects.csv: sha256 differs from the manifest"]
    assert _evidence(capsys, "--verify", folder)[0] == 1


def test_a_second_call_makes_a_new_folder_and_leaves_the_first(run_all, tmp_path, capsys):
    db, _, summary = run_all
    pid = _part(summary, "PASS").part_id
    first = _folder(_evidence(capsys, db, "--part", pid, "--out", tmp_path)[1])
    before = (first / "manifest.json").read_bytes()
    second = _folder(_evidence(capsys, db, "--part", pid, "--out", tmp_path)[1])
    assert second != first and second.name == first.name + "-2"
    assert (first / "manifest.json").read_bytes() == before and verify(str(first)) == []


def test_a_time_range_gives_one_folder_per_part(run_all, tmp_path, capsys):
    db, _, summary = run_all
    parts = summary.parts
    code, out, err = _evidence(capsys, db, "--from", parts[0].t_end, "--to", parts[-1].t_end, "--out", tmp_path)
    assert code == 0, err
    assert len(out.splitlines()) == len(parts) == len([p for p in tmp_path.iterdir() if p.is_dir()])


@pytest.mark.parametrize("case", ["unknown part", "not ds2a's", "not sqlite", "out is the db", "out is evidence",
                                  "bad time"])
def test_bad_calls_are_one_line_errors(run_all, tmp_path, capsys, case):
    db, _, summary = run_all
    pid = summary.parts[0].part_id
    args = [db, "--part", pid, "--out", tmp_path / "ev"]
    if case == "unknown part":
        args[2] = "no-such-part"
    elif case == "not ds2a's":
        other = tmp_path / "other.sqlite"
        con = sqlite3.connect(other)
        con.execute("CREATE TABLE things (a)")
        con.commit()
        con.close()
        args[0] = other
    elif case == "not sqlite":
        args[0] = tmp_path / "notes.txt"
        args[0].write_text("hello " * 40)
    elif case == "out is the db":
        args[-1] = db
    elif case == "out is evidence":
        args[-1] = _folder(_evidence(capsys, *args)[1])
    else:
        args = [db, "--from", "yesterday", "--out", tmp_path / "ev"]
    before = Path(db).read_bytes() if case == "out is the db" else None
    code, out, err = _evidence(capsys, *args)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    expected = {"unknown part": "not in the records", "not ds2a's": "not a ds2a inspection database",
                "not sqlite": "is not a SQLite file", "out is the db": "is the database",
                "out is evidence": "is an evidence folder", "bad time": "--from yesterday"}[case]
    assert expected in err
    if before is not None:
        assert Path(db).read_bytes() == before


def test_sampled_policy_keeps_one_part_in_n_and_says_why_the_others_have_no_pictures(tmp_path, capsys):
    db, kept, summary = _run(tmp_path, "sample:2", 24)
    passed = [p for p in summary.parts if p.verdict == "PASS"]
    assert passed, [p.verdict for p in summary.parts]
    ev = Evidence(str(db))
    try:
        for p in summary.parts:
            (row,) = ev.parts(p.part_id)
            frames = ev.facts(row)["frames"]
            index = [q.part_id for q in summary.parts].index(p.part_id)
            has = [bool(f["raw_path"]) for f in frames if f["verdict"] != "NONE"]
            if index % 2 == 0:  # parts 0, 2, ...: every judged frame kept
                assert all(has)
            else:  # the others keep only failing frames
                assert has == [f["verdict"] == "FAIL" for f in frames if f["verdict"] != "NONE"]
    finally:
        ev.close()
    pid = next(p.part_id for i, p in enumerate(summary.parts) if i % 2 == 1 and p.verdict == "PASS")
    folder = _folder(_evidence(capsys, db, "--part", pid, "--out", tmp_path / "ev")[1])
    facts = json.loads((folder / "evidence.json").read_text())
    assert not (folder / "frames").exists()
    for f in facts["frames"]:
        assert "--keep-raw policy 'sample:2'" in f["files"]["raw_missing"]
    assert "keeps no picture of this PASS frame" in (folder / "index.html").read_text()
    assert verify(str(folder)) == []


def test_keep_raw_values_are_checked():
    assert parse_keep_raw("fail") == ("fail", 1) and parse_keep_raw("sample:100") == ("sample", 100)
    for bad in ("some", "sample:0", "sample:x", "sample"):
        with pytest.raises(UserError, match="--keep-raw"):
            parse_keep_raw(bad)
    with pytest.raises(UserError, match="needs --save-fail"):
        inspect(InspectOptions(model=str(DEMO_MODEL), keep_raw="all", headless=True))


def test_times_parse_as_iso_or_epoch():
    assert parse_time("1796623420.5", "--from") == 1796623420.5
    assert parse_time("2026-12-07T06:00:00Z", "--from") == parse_time("2026-12-07T06:00:00+00:00", "--from")


def test_the_operator_page_links_each_failed_part_to_its_evidence(run_all, tmp_path):
    pytest.importorskip("aiohttp")
    import re
    import urllib.request
    import zipfile

    from ds2a.web.server import BackgroundServer, Site, make_app

    db = run_all[0]
    server = BackgroundServer(make_app(Site(str(db))), "127.0.0.1", 0)
    port = server.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=20) as resp:
            links = re.findall(r"href='(evidence/\d+\.zip)'", resp.read().decode())
        assert links
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{links[0]}", timeout=60) as resp:
            body, kind = resp.read(), resp.headers["Content-Type"]
    finally:
        server.stop()
    assert kind == "application/zip"
    (tmp_path / "e.zip").write_bytes(body)
    with zipfile.ZipFile(tmp_path / "e.zip") as z:
        z.extractall(tmp_path / "x")
    (folder,) = (tmp_path / "x").iterdir()
    assert verify(str(folder)) == [] and json.loads((folder / "evidence.json").read_text())["part"]["verdict"] == "FAIL"


def test_a_run_without_recorded_facts_and_a_picture_gone_are_said_so(run_all, tmp_path, capsys):
    db = tmp_path / "old.sqlite"
    src = sqlite3.connect(run_all[0])
    src.backup(dst := sqlite3.connect(db))
    src.close()
    stats = json.loads(dst.execute("SELECT stats FROM runs").fetchone()[0])
    stats.pop("evidence"), stats.pop("selftest")  # as a run recorded before these were kept
    dst.execute("UPDATE runs SET stats=?", (json.dumps(stats),))
    pid = _part(run_all[2], "FAIL").part_id
    dst.execute("UPDATE frames SET raw_path=? WHERE part_id=?", (str(tmp_path / "moved_raw.jpg"), pid))
    dst.commit()
    dst.close()
    folder = _folder(_evidence(capsys, db, "--part", pid, "--out", tmp_path / "ev")[1])
    facts = json.loads((folder / "evidence.json").read_text())
    assert facts["ds2a_version_of_run"].startswith("not recorded") and facts["selftest"].startswith("not recorded")
    assert facts["recipe"]["file_copy"].startswith("not recorded") and facts["model"]["model_sha256"] is None
    for f in facts["frames"]:
        assert "the file is gone" in f["files"]["raw_missing"] and f["files"]["annotated"]
    assert verify(str(folder)) == []


def test_the_run_facts_are_in_the_records_from_the_start(tmp_path):
    from ds2a.records.database import Records

    rec = Records(str(tmp_path / "r.sqlite"))
    rec.extra["evidence"] = {"model_sha256": "ab" * 32}
    rec.start_run("m", "onnxruntime", "demo://", ["background", "damage"], {}, None)
    stats = json.loads(sqlite3.connect(tmp_path / "r.sqlite").execute("SELECT stats FROM runs").fetchone()[0])
    rec.close()
    assert stats["evidence"] == {"model_sha256": "ab" * 32}  # a killed run still shows what judged its parts


def test_the_evidence_page_opens_in_chromium_with_every_picture(run_all, tmp_path, capsys):
    from headless_chromium import chromium

    db, _, summary = run_all
    part = _part(summary, "FAIL")
    folder = _folder(_evidence(capsys, db, "--part", part.part_id, "--out", tmp_path)[1])
    browser = chromium()
    driver = next(browser)
    try:
        driver.get((folder / "index.html").as_uri())
        assert part.part_id in driver.title
        sizes = driver.execute_script("return Array.from(document.images).map(i => [i.complete, i.naturalWidth])")
    finally:
        browser.close()  # quits the browser
    assert len(sizes) == 3 * part.n_frames and all(done and width > 0 for done, width in sizes), sizes
