"""`--part-id barcode` (ds2a/sources/barcode.py): the code on the part names it in the records; a code that
cannot be read gives an unread id and the part is still judged; a code that disagrees with the trigger's
id raises an alarm; bad flags are one-line errors."""
from __future__ import annotations

import io
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
import pytest

pytest.importorskip("zxingcpp")

from ds2a.errors import UserError  # noqa: E402
from ds2a.inspect import InspectOptions, inspect  # noqa: E402
from ds2a.sources.barcode import BarcodeSource, CodeReader, check_part_id_option, code_image, parse_barcode_roi, parse_formats, zxing  # noqa: E402
from ds2a.sources.base import Frame, Source  # noqa: E402
from ds2a.sources.demo import DemoSource  # noqa: E402
from ds2a.sources.trigger import Trigger, TriggeredFrame  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"


def part_image(code: Optional[str], fmt: str = "qr", blur: int = 0, cover: bool = False) -> np.ndarray:
    """A grey 256x256 part with its code label at the top left (blurred or covered on request)."""
    image = np.full((256, 256, 3), 150, np.uint8)
    if code is not None:
        label = code_image(code, fmt, 96)
        h, w = label.shape
        image[10:10 + h, 10:10 + w] = label[..., None]
        if blur:
            image[:128, :128] = cv2.GaussianBlur(image[:128, :128], (0, 0), blur)
        if cover:
            image[10 + h // 4:10 + 3 * h // 4, 10:10 + w] = 40  # a smear across the middle of the code
    return image


class ListSource(Source):
    """Frames from a list (no part ids of its own unless given): a camera in front of the line."""

    def __init__(self, frames: List[Frame], gives_parts: bool = False) -> None:
        super().__init__("list://")
        self.frames, self.gives_parts = list(frames), gives_parts

    def read(self) -> Optional[Frame]:
        return self.frames.pop(0) if self.frames else None


def frame(image: np.ndarray, index: int, **kw) -> Frame:
    return Frame(image=image, index=index, t_wall=time.time(), t_perf=time.perf_counter(), **kw)


@pytest.mark.parametrize("fmt", ["qr", "datamatrix"])
def test_a_printed_code_reads_back_and_only_in_the_formats_asked_for(fmt):
    image = part_image("P-00042", fmt)[:128, :128]  # the label's corner: zxing-cpp 2.2 finds a Data Matrix only
    assert CodeReader([fmt]).read(image) == ("P-00042", "")  # when it is a large part of the window searched
    other = "datamatrix" if fmt == "qr" else "qr"
    text, why = CodeReader([other]).read(image)
    assert text is None and why == "no readable code"


def test_blurred_covered_or_missing_codes_are_unread_with_the_reason():
    reader = CodeReader()
    for image in (part_image("P-1", blur=6), part_image("P-1", cover=True), part_image(None)):
        assert reader.read(image) == (None, "no readable code")
    two = part_image("P-1")
    other = code_image("P-2", "qr", 96)
    two[140:140 + other.shape[0], 140:140 + other.shape[1]] = other[..., None]
    text, why = reader.read(two)
    assert text is None and why.startswith("2 different codes")


def test_codes_on_demo_cells_become_the_part_ids_and_the_truth_still_applies():
    plain = [f.part_id for f in DemoSource.from_uri("demo://?frames=40&width=480&height=270&speed=40")]
    wrapped = BarcodeSource(DemoSource.from_uri("demo://?frames=40&width=480&height=270&speed=40&codes=1"))
    read = [f.part_id for f in wrapped]
    assert read == plain and sum(p is not None for p in read) > 10  # gaps stay gaps: no part in view
    parts = sorted({p for p in plain if p})
    assert wrapped.counts == {"parts": len(parts), "read": len(parts), "unread": 0, "disagree": 0}
    assert wrapped.gives_truth and wrapped.truth(parts[0]) is not None


def test_the_id_comes_from_the_code_not_from_the_wrapped_source_and_is_kept_for_the_whole_part():
    images = [part_image("LOT7-0001"), part_image("LOT7-0001", blur=6), part_image("LOT7-0002", cover=True)]
    inner = ListSource([frame(images[0], 0, part_id="box-a"), frame(images[1], 1, part_id="box-a"),
                        frame(images[2], 2, part_id="box-b")], gives_parts=True)
    src = BarcodeSource(inner)
    assert [f.part_id for f in src] == ["LOT7-0001", "LOT7-0001", "unread-2"]  # one read per part the source names
    assert src.counts == {"parts": 2, "read": 1, "unread": 1, "disagree": 0}
    assert any("part code unread at frame 2 (box-b): no readable code" in e for e in src.stats.events)


def test_a_camera_without_part_ids_reads_every_frame_and_the_roi_limits_the_search():
    image = part_image("P-9")
    src = BarcodeSource(ListSource([frame(image, 0), frame(image, 1)]), roi=(0, 0, 256, 256))
    assert [f.part_id for f in src] == ["P-9", "P-9"]
    src = BarcodeSource(ListSource([frame(image, 5)]), roi=(128, 128, 128, 128))  # the code is not in there
    assert [f.part_id for f in src] == ["unread-5"]


def test_a_code_met_again_on_a_later_part_is_recorded_apart_and_a_camera_keeps_one_id_while_it_sees_it():
    a, b = part_image("P-1"), part_image("P-2")
    named = ListSource([frame(a, 0, part_id="n0"), frame(b, 1, part_id="n1"), frame(a, 2, part_id="n2"),
                        frame(a, 3, part_id="n3")], gives_parts=True)
    assert [f.part_id for f in BarcodeSource(named)] == ["P-1", "P-2", "P-1#2", "P-1#3"]
    camera = BarcodeSource(ListSource([frame(a, 0), frame(a, 1), frame(part_image(None), 2), frame(a, 3),
                                       frame(b, 4)]))
    assert [f.part_id for f in camera] == ["P-1", "P-1", "unread-2", "P-1#2", "P-2"]
    assert camera.summary()["parts"] == 4 and camera.summary()["reads"] == 5


def triggered(image: np.ndarray, index: int, sent: str, record_id: str) -> TriggeredFrame:
    now = time.perf_counter()
    trigger = Trigger(index + 1, sent, time.time(), now, now + 1.0)
    return TriggeredFrame(image=image, index=index, t_wall=time.time(), t_perf=now, part_id=record_id,
                          trigger=trigger)


def test_a_code_that_disagrees_with_the_trigger_raises_an_alarm_on_the_log_the_json_and_the_notes(caplog):
    inner = ListSource([triggered(part_image("S-100"), 0, "S-100", "S-100"),
                        triggered(part_image("S-100"), 1, "S-100", "S-100#2"),
                        triggered(part_image("S-999"), 2, "S-101", "S-101")], gives_parts=True)
    out, notes = io.StringIO(), []
    records = type("R", (), {"extra": {}})()
    src = BarcodeSource(inner, jsonl=out, records=records, notes=notes)
    with caplog.at_level(logging.WARNING, logger="ds2a.sources.barcode"):
        ids = [f.part_id for f in src]
    assert ids == ["S-100", "S-100#2", "S-999"]  # agreeing: the trigger's record id (a retry keeps its #2)
    alarms = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ALARM")]
    assert len(alarms) == 1 and "'S-101'" in alarms[0] and "'S-999'" in alarms[0]
    assert out.getvalue() == ""  # written on the output thread, not the capture thread
    src.publish(object(), [])
    event = json.loads(out.getvalue())
    assert (event["type"], event["kind"], event["trigger_part_id"], event["code"], event["trigger_seq"]) == \
        ("alarm", "part_id", "S-101", "S-999", 3)
    assert len(notes) == 1 and "PART ID ALARM" in notes[0]
    src.publish(None, [])
    assert records.extra["barcode"]["disagree"] == 1 and records.extra["barcode"]["read"] == 3


def test_inspect_records_the_codes_as_part_ids_and_judges_unread_parts(tmp_path):
    folder = tmp_path / "parts"
    folder.mkdir()
    for name, image in (("a.png", part_image("P-0001")), ("b.png", part_image("P-0002", blur=6)),
                        ("c.png", part_image("P-0003", cover=True)), ("d.png", part_image("P-0004", "datamatrix"))):
        cv2.imwrite(str(folder / name), image)
    db, out = tmp_path / "r.sqlite", io.StringIO()
    summary = inspect(InspectOptions(model=str(DEMO_MODEL), source=str(folder), headless=True, db=str(db), jsonl=True,
                                     part_id="barcode", barcode_roi=(0, 0, 128, 128),  # the label's corner
                                     backend_options={"intra_op_threads": 1}, drift="off"),
                      out=out, table=io.StringIO())
    assert [p.part_id for p in summary.parts] == ["P-0001", "unread-1", "unread-2", "P-0004"]
    assert all(p.verdict in ("PASS", "FAIL") for p in summary.parts)  # unread parts are still judged
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(x["part_id"], x["verdict"]) for x in lines if x["type"] == "part"] == \
        [(p.part_id, p.verdict) for p in summary.parts]
    con = sqlite3.connect(str(db))
    try:
        rows = con.execute("SELECT part_id, verdict FROM verdicts ORDER BY id").fetchall()
        stats = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    finally:
        con.close()
    assert rows == [(p.part_id, p.verdict) for p in summary.parts]
    assert stats["barcode"]["unread"] == 2 and stats["barcode"]["read"] == 2 and stats["barcode"]["roi"] == [0, 0, 128, 128]


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "0,0,4,100", "-1,0,50,50", ""])
def test_bad_barcode_roi_values_are_refused(text):
    with pytest.raises(UserError, match="--barcode-roi .*give X,Y,W,H"):
        parse_barcode_roi(text)


def test_bad_barcode_roi_is_a_one_line_error_from_the_cli(capsys):
    from ds2a.cli import main

    code = main(["inspect", "--model", str(DEMO_MODEL), "--part-id", "barcode", "--barcode-roi", "10,20,30"])
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "ds2a inspect: error: --barcode-roi 10,20,30: give X,Y,W,H in frame pixels, W and H at least 8, for "
        "example --barcode-roi 0,0,200,200"]


def test_option_checks_before_the_model_opens():
    opts = InspectOptions(model="m.onnx", part_id="barcode", barcode_formats="qr")
    assert check_part_id_option(opts) == (["qr"], None)
    assert check_part_id_option(InspectOptions(model="m.onnx")) is None
    with pytest.raises(UserError, match="--barcode-roi needs --part-id barcode"):
        check_part_id_option(InspectOptions(model="m.onnx", barcode_roi=(0, 0, 50, 50)))
    with pytest.raises(UserError, match="--part-id ean"):
        check_part_id_option(InspectOptions(model="m.onnx", part_id="ean"))
    with pytest.raises(UserError, match="--barcode-formats qr,ean13: give one or more of qr, datamatrix"):
        parse_formats("qr,ean13")
    with pytest.raises(UserError, match="starts outside the 480x270 frame"):
        BarcodeSource(DemoSource.from_uri("demo://?width=480&height=270&speed=40"), roi=(500, 0, 50, 50))
    with pytest.raises(UserError, match="codes=3"):
        DemoSource.from_uri("demo://?codes=3")


def test_without_zxing_cpp_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "zxingcpp", None)  # import zxingcpp now raises ImportError
    with pytest.raises(UserError, match=r"pip install 'ds2a-edge\[barcode\]'"):
        zxing()
    with pytest.raises(UserError, match="zxing-cpp"):
        DemoSource.from_uri("demo://?codes=1")


@pytest.fixture
def broker(tmp_path):
    """A mosquitto on a free loopback port (tests/test_notify.py starts it; skipped where it is missing)."""
    import test_notify

    yield from test_notify.broker.__wrapped__(tmp_path)


def test_with_a_trigger_line_a_disagreeing_code_is_an_alarm_answered_none_and_every_trigger_is_answered(broker, tmp_path):
    """Through `ds2a.inspect` against a real mosquitto (tests/test_trigger.py's line and known-answer model)."""
    pytest.importorskip("onnxruntime")
    from fakes.onnx_models import threshold_onnx
    from test_trigger import Line, Station, records, wait_until

    model = threshold_onnx(tmp_path / "thr.onnx")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate((part_image("A1"), part_image("B2"), part_image("C3", blur=6))):
        cv2.imwrite(str(folder / f"img{i}.png"), image)
    db = tmp_path / "i.sqlite"
    line = Line(broker, "codes")
    st = Station(InspectOptions(model=str(model), source=str(folder), headless=True, db=str(db), max_frames=3,
                                trigger=f"mqtt://127.0.0.1:{broker}/codes", trigger_timeout=5.0, part_id="barcode",
                                drift="off"))
    assert line.online()
    for pid in ("A1", "X9", "C3"):  # the second part carries B2, not the X9 the line names
        line.trigger(pid)
    assert wait_until(lambda: len(line.results()) == 3, 20)
    st.join()
    res = line.results()
    line.sub.close()
    assert [r["part_id"] for r in res] == ["A1", "X9", "C3"]  # the line's ids, echoed as sent
    # the unread part is judged; the line never hears PASS or FAIL for a part the station is not sure is X9
    assert res[0]["verdict"] in ("PASS", "FAIL") and res[2]["verdict"] in ("PASS", "FAIL")
    assert (res[1]["verdict"], res[1]["cause"]) == ("NONE", "id_mismatch") and "'B2'" in res[1]["reasons"][0]
    rec = records(db)
    assert [p for p, _ in rec["parts"]] == ["A1", "B2", "unread-2"]  # the records keep what was judged, under its code
    assert [v for _, v in rec["parts"]][0::2] == [res[0]["verdict"], res[2]["verdict"]]
    assert rec["parts"][1][1] in ("PASS", "FAIL")
    assert (rec["stats"]["barcode"]["disagree"], rec["stats"]["barcode"]["unread"]) == (1, 1)
    alarms = [n for n in rec["stats"]["notes"] if "PART ID ALARM" in n]
    assert len(alarms) == 1 and "'X9'" in alarms[0] and "'B2'" in alarms[0]
