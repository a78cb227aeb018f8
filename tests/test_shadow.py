"""A shadow model on the live line (`ds2a inspect --shadow MODEL`, ds2a/inspect/shadow.py, docs/SHADOW.md):
its verdicts are recorded beside the live ones and never published, a slow candidate is sampled (its parts
recorded as such) without ever making the output thread wait, and `ds2a report --shadow` lists where the
two models disagree."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, List, Tuple

import cv2
import numpy as np
import pytest
from fakes.onnx_models import threshold_onnx, tiny_onnx
from fakes.segmenter import ThresholdSegmenter
from test_selftest import edit_weights, with_golden

import ds2a.inspect.run as run_module
from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.inspect.loop import Result
from ds2a.inspect.parts import PartVerdict
from ds2a.inspect.publish import Publisher
from ds2a.inspect.rules import default_rules
from ds2a.inspect.run import InspectOptions, inspect
from ds2a.inspect.shadow import SAMPLED_CUT, SAMPLED_QUEUE, ShadowStage
from ds2a.records.check import check_database
from ds2a.records.database import Records, connect
from ds2a.sources import Frame

CLASSES = ["background", "damage", "smudge", "dust"]
GREYS = {"a_bright.png": 200, "b_mid.png": 80, "c_dark.png": 20, "d_bright.png": 220, "e_mid.png": 90}


def clean(db: Path) -> None:
    """`ds2a report DB --check`: the invariants hold with a shadow beside the live verdicts."""
    con = connect(str(db), create=False, readonly=True)
    try:
        runs, violations = check_database(con)
    finally:
        con.close()
    assert runs >= 1 and not violations, violations


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """One part per photo, each one grey level: a threshold model at 60 passes the mid greys, one at 100 fails them."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, grey in GREYS.items():
        cv2.imwrite(str(folder / name), np.full((48, 64, 3), grey, np.uint8))
    return folder


class Spy:
    """Stands for every publishing observer (--notify, the trigger line, OPC UA, the live page)."""

    def __init__(self) -> None:
        self.seen: List[Tuple[Any, List[Any]]] = []

    def publish(self, res: Any, closed: List[Any]) -> None:
        self.seen.append((res, list(closed)))


def spy_on_publisher(monkeypatch: pytest.MonkeyPatch) -> List[Spy]:
    spies: List[Spy] = []

    class Spied(Publisher):
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            spies.append(Spy())
            self.observers.append(spies[-1])
            spies[-1].publisher = self  # type: ignore[attr-defined]

    monkeypatch.setattr(run_module, "Publisher", Spied)
    return spies


def _rows(db: Path, sql: str) -> List[Any]:
    con = sqlite3.connect(str(db))
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_shadow_verdicts_are_recorded_beside_the_live_ones_and_never_published(photos, tmp_path, monkeypatch, capsys):
    live, candidate = threshold_onnx(tmp_path / "live.onnx", threshold=60), threshold_onnx(tmp_path / "cand.onnx",
                                                                                          threshold=100)
    spies = spy_on_publisher(monkeypatch)
    db = tmp_path / "r.sqlite"
    inspect(InspectOptions(model=str(live), source=str(photos), headless=True, db=str(db), jsonl=True,
                           shadow=str(candidate)))
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    live_rows = dict(_rows(db, "SELECT part_id, verdict FROM verdicts"))
    assert live_rows == {"a_bright.png": "PASS", "b_mid.png": "PASS", "c_dark.png": "FAIL", "d_bright.png": "PASS",
                         "e_mid.png": "PASS"}
    shadow = {p: (j, v, lv) for p, j, v, lv in _rows(db, "SELECT part_id, judged, verdict, live_verdict FROM shadow")}
    assert shadow == {"a_bright.png": (1, "PASS", "PASS"), "b_mid.png": (1, "FAIL", "PASS"),
                      "c_dark.png": (1, "FAIL", "FAIL"), "d_bright.png": (1, "PASS", "PASS"),
                      "e_mid.png": (1, "FAIL", "PASS")}
    # never published: every observer and the JSON lines got the live verdicts only, once each
    told = {pv.part_id: pv.verdict for _, closed in spies[0].seen for pv in closed}
    assert told == live_rows and sum(len(c) for _, c in spies[0].seen) == len(live_rows)
    assert all(type(pv) is PartVerdict for _, closed in spies[0].seen for pv in closed)
    assert {x["part_id"]: x["verdict"] for x in lines if x["type"] == "part"} == live_rows
    assert {x["type"] for x in lines} <= {"frame", "part", "alarm"}
    assert isinstance(spies[0].publisher.observers[-1], ShadowStage)  # told last: every live observer first
    stats = json.loads(_rows(db, "SELECT stats FROM runs")[0][0])["shadow"]
    assert stats["offered"] == stats["judged"] == 5 and stats["model"] == str(candidate)
    assert len(stats["model_sha256"]) == 64 and stats["selftest"]["status"] in ("absent", "passed")
    clean(db)


def test_a_disagreeing_candidate_shows_in_report_shadow_json_with_the_right_part_lists(photos, tmp_path, capsys):
    strict, lenient = threshold_onnx(tmp_path / "strict.onnx", threshold=100), threshold_onnx(tmp_path / "len.onnx")
    db = tmp_path / "r.sqlite"
    for live, cand in ((strict, lenient), (lenient, strict)):  # run 1: the candidate lets through; run 2: rejects
        assert main(["inspect", "--model", str(live), "--shadow", str(cand), "--source", str(photos), "--headless",
                     "--db", str(db)]) == 0
    capsys.readouterr()
    got = {}
    for run in (1, 2):
        assert main(["report", str(db), "--run", str(run), "--shadow", "--json"]) == 0
        got[run] = json.loads(capsys.readouterr().out)["shadow"]
    assert got[1]["let_through"] == ["b_mid.png", "e_mid.png"] and got[1]["rejected"] == []
    assert got[2]["rejected"] == ["b_mid.png", "e_mid.png"] and got[2]["let_through"] == []
    for s in got.values():
        assert (s["offered"], s["judged"], s["sampled_out"], s["agree"]) == (5, 5, 0, 3)
        assert s["agreement"] == pytest.approx(0.6) and s["other"] == [] and s["truth"] is None
    assert main(["report", str(db), "--run", "1", "--shadow"]) == 0
    text = capsys.readouterr().out
    assert "5 offered, 5 judged, 0 sampled out; agreement 60.0%" in text
    assert "would have let through (live FAIL, shadow PASS): b_mid.png, e_mid.png" in text
    assert main(["report", str(db), "--check"]) == 0
    clean(db)


def test_report_shadow_says_none_for_a_run_without_one(photos, tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    assert main(["inspect", "--model", str(threshold_onnx(tmp_path / "m.onnx")), "--source", str(photos),
                 "--headless", "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["report", str(db), "--shadow", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shadow"] is None
    assert main(["report", str(db), "--shadow"]) == 0
    assert "shadow        none" in capsys.readouterr().out


def _result(seq: int, part: str) -> Result:
    image = np.full((48, 64, 3), 200, np.uint8)
    return Result(seq, Frame(image, seq, time.time(), time.perf_counter(), part_id=part), np.zeros((8, 8), np.uint8),
                  [], True, [], roi=None)


def _pv(part: str, first: int, last: int) -> PartVerdict:
    return PartVerdict(part, "part", True, [], first, last, last - first + 1, 0.0, 0.0)


def test_a_slow_candidate_never_makes_the_output_thread_wait_and_its_parts_are_sampled_not_lost(tmp_path):
    """The queue bound, not timing luck: publish() only hands over (the candidate sleeps 0.3 s a frame), at most
    `queue_frames` frames wait, and every part offered ends as a row: judged, or sampled out with the reason."""
    db = tmp_path / "r.sqlite"
    records = Records(str(db))
    records.start_run("live.onnx", "fake", "test://", CLASSES, default_rules(CLASSES).to_dict(), None)
    slow = ThresholdSegmenter((16, 16), delay_s=0.3)
    stage = ShadowStage(slow, "slow_candidate.onnx", "", default_rules(CLASSES), CLASSES, records, queue_frames=4,
                        end_patience_s=30.0)
    worker_ids = []
    orig = slow.infer_batch

    def infer_batch(frames: Any) -> Any:
        worker_ids.append(threading.get_ident())
        return orig(frames)

    slow.infer_batch = infer_batch  # type: ignore[method-assign]
    waits, seq, parts = [], 0, []
    for p in range(12):  # 12 parts of 3 frames, offered as fast as a line would
        part = f"p{p:02d}"
        for k in range(3):
            res = _result(seq, part)
            closed = [_pv(part, seq - 2, seq)] if k == 2 else []
            t0 = time.perf_counter()
            stage.publish(res, closed)
            waits.append(time.perf_counter() - t0)
            seq += 1
        parts.append(part)
    assert stage.max_queued <= 4  # bounded: never more frames waiting than the queue holds
    assert max(waits) < 0.25, max(waits)  # one candidate frame takes 0.3 s: no publish() waited for one
    stage.publish(None, [])
    assert worker_ids and set(worker_ids) == {stage._thread.ident}  # the candidate ran on the shadow's thread only
    rows = {p: (j, json.loads(r or "[]")) for p, j, r in _rows(db, "SELECT part_id, judged, reasons FROM shadow")}
    assert sorted(rows) == parts  # every part offered has exactly one row
    sampled = [p for p, (j, _) in rows.items() if not j]
    assert sampled and len(sampled) < len(parts)  # it judged what it could and sampled the rest
    assert all(rows[p][1][0] in (SAMPLED_QUEUE, SAMPLED_CUT) for p in sampled)
    assert stage.stats()["offered"] == 12 and stage.stats()["judged"] + stage.stats()["sampled_out"] == 12
    assert stage.stats()["nice"].startswith(("nice +", "not lowered"))
    records.finish_run("finished", {"frames": 0, "inspected": 36})
    stage.close()
    records.close()


def test_a_slow_candidate_in_a_run_leaves_every_live_verdict_and_records_its_sample(photos, tmp_path, monkeypatch):
    import ds2a.runtime as runtime

    opened = runtime.open_model

    def open_model(path: str, backend: Any = None, **options: Any) -> Any:
        if path.endswith("slow_candidate.onnx"):
            return ThresholdSegmenter((16, 16), threshold=100, delay_s=0.5)
        return opened(path, backend, **options)

    monkeypatch.setattr(runtime, "open_model", open_model)
    monkeypatch.setattr("ds2a.inspect.shadow.QUEUE_FRAMES", 1)
    monkeypatch.setattr("ds2a.inspect.shadow.END_PATIENCE_S", 0.2)
    many = tmp_path / "many"
    many.mkdir()
    for i in range(30):
        cv2.imwrite(str(many / f"p{i:02d}.png"), np.full((48, 64, 3), 200 if i % 2 else 80, np.uint8))
    db = tmp_path / "r.sqlite"
    summary = inspect(InspectOptions(model=str(threshold_onnx(tmp_path / "m.onnx")), source=str(many),
                                     headless=True, db=str(db), shadow=str(tmp_path / "slow_candidate.onnx")))
    assert len(summary.parts) == 30
    assert len(_rows(db, "SELECT * FROM verdicts")) == 30
    judged = dict(_rows(db, "SELECT judged, COUNT(*) FROM shadow GROUP BY judged"))
    assert sum(judged.values()) == 30 and judged.get(0, 0) > 0  # all recorded, some sampled out
    clean(db)


def test_a_candidate_that_fails_its_self_test_is_refused_at_start(tmp_path):
    live = with_golden(tiny_onnx(tmp_path / "live.onnx"))
    bad = edit_weights(with_golden(tiny_onnx(tmp_path / "cand.onnx")), tmp_path / "edited.onnx")
    db = tmp_path / "r.sqlite"
    with pytest.raises(UserError, match=r"--shadow .*edited.onnx: the candidate model is refused: .*failed its "
                                        r"self-test"):
        inspect(InspectOptions(model=str(live), source="demo://?frames=5", headless=True, db=str(db),
                               shadow=str(bad)))
    assert _rows(db, "SELECT COUNT(*) FROM runs") == [(0,)]  # refused before the run started


def test_a_shadow_needs_db_and_the_live_models_classes(tmp_path):
    live = threshold_onnx(tmp_path / "live.onnx")
    with pytest.raises(UserError, match="--shadow .* needs --db FILE"):
        inspect(InspectOptions(model=str(live), source="demo://?frames=3", headless=True,
                               shadow=str(threshold_onnx(tmp_path / "c.onnx"))))
    other = tiny_onnx(tmp_path / "other.onnx", size=(32, 32))  # classes background, damage, smudge
    with pytest.raises(UserError, match="has classes background, damage, smudge but the live model"):
        inspect(InspectOptions(model=str(live), source="demo://?frames=3", headless=True,
                               db=str(tmp_path / "r.sqlite"), shadow=str(other)))


def test_the_page_shows_the_shadow_panel_with_the_disagreeing_parts_side_by_side(photos, tmp_path):
    from ds2a.web import data, page

    strict, lenient = threshold_onnx(tmp_path / "strict.onnx", threshold=100), threshold_onnx(tmp_path / "len.onnx")
    db = tmp_path / "r.sqlite"
    assert main(["inspect", "--model", str(strict), "--shadow", str(lenient), "--source", str(photos), "--headless",
                 "--db", str(db), "--save-fail", str(tmp_path / "fail")]) == 0
    con = data.open_readonly(str(db))
    try:
        snap = data.snapshot(con, 1)
    finally:
        con.close()
    sh = snap["summary"]["shadow"]
    assert [(p["part_id"], p["live"], p["shadow"]) for p in sh["pairs"]] == [("e_mid.png", "FAIL", "PASS"),
                                                                            ("b_mid.png", "FAIL", "PASS")]
    assert all(len(p["frames"]) == 1 for p in sh["pairs"])  # the live FAIL frame kept its picture: linked
    html = page.overview(str(db), [], 1, snap["summary"], snap["failed_parts"], False, version=snap["version"])
    panel = html[html.index("<section id=shadow>"):]
    assert "agreement <b id=shadow-agreement>60.0%</b>" in panel and "never the station's verdict" in panel
    row = panel[panel.index("<tr data-part='b_mid.png'>"):]
    assert row.startswith("<tr data-part='b_mid.png'><td>b_mid.png</td><td class=v>FAIL</td><td class=v>PASS</td>")
    assert f"href='failure/{sh['pairs'][1]['frames'][0]['id']}'" in row.split("</tr>")[0]
    clean(db)
    none_db = tmp_path / "plain.sqlite"
    assert main(["inspect", "--model", str(strict), "--source", str(photos), "--headless", "--db", str(none_db)]) == 0
    con = data.open_readonly(str(none_db))
    try:
        plain = data.snapshot(con, 1)
    finally:
        con.close()
    assert "shadow" not in plain["summary"]  # exactly the report's numbers
    assert "id=shadow" not in page.overview(str(none_db), [], 1, plain["summary"], [], False)


def test_a_frame_the_live_station_could_not_judge_is_not_judged_by_the_candidate_either(photos, tmp_path):
    (photos / "f_empty.png").write_bytes(b"")  # unreadable: live NONE
    db = tmp_path / "r.sqlite"
    assert main(["inspect", "--model", str(threshold_onnx(tmp_path / "a.onnx")), "--shadow",
                 str(threshold_onnx(tmp_path / "b.onnx")), "--source", str(photos), "--headless", "--db", str(db)]) == 0
    row = _rows(db, "SELECT judged, verdict, live_verdict, reasons FROM shadow WHERE part_id='f_empty.png'")[0]
    assert row[:3] == (1, "NONE", "NONE") and "not inspected by the live station" in row[3]
    clean(db)
