"""Every part that reaches the station gets exactly one verdict, published once, when the part is complete,
and PASS only when every one of its frames was judged (ds2a/inspect/parts.py, docs/ARCHITECTURE.md).

These tests check WHEN a verdict is published (on which frame), not only what it is: a reject signal
one frame late misses the ejector."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, List, Optional, Tuple

import cv2
import numpy as np
import pytest
from fakes.onnx_models import threshold_onnx

from ds2a.cli import main
from ds2a.inspect.loop import Result
from ds2a.inspect.overlay import Renderer
from ds2a.inspect.parts import PartTracker, PartVerdict
from ds2a.inspect.publish import Publisher
from ds2a.inspect.rules import default_rules, parse_rules
from ds2a.sources import Frame

CLASSES = ["background", "damage", "smudge", "dust"]
AWAY = "not inspected: the model server triton://h/ds2a is unreachable"


class Log:
    """An observer of the Publisher: which parts were closed on which frame (None: at the end)."""

    def __init__(self) -> None:
        self.events: List[Tuple[Optional[int], List[Tuple[str, str, int, int]]]] = []

    def publish(self, res: Any, closed: List[PartVerdict]) -> None:
        self.events.append((None if res is None else res.seq,
                            [(p.part_id, p.verdict, p.first_seq, p.last_seq) for p in closed]))

    def closed_on(self) -> List[Tuple[Optional[int], str, str]]:
        return [(seq, pid, verdict) for seq, parts in self.events for pid, verdict, _, _ in parts]


def _publisher(rules=None, gives_parts: bool = True) -> Tuple[Publisher, Log]:
    pub = Publisher(Renderer(CLASSES, [(0, 0, 0)] * 4), [], PartTracker(rules or default_rules(CLASSES), gives_parts))
    log = Log()
    pub.observers.append(log)
    return pub, log


def _res(seq: int, part: Optional[str], state: str = "pass") -> Result:
    """state: pass, fail, away (model unavailable), unreadable, gap (no part in view)."""
    frame = Frame(np.full((24, 32, 3), 200, np.uint8), seq, float(seq), 0.0, part_id=part)
    if state == "gap":
        return Result(seq, frame, None, [], True, [], inspected=False, in_view=False)
    if state in ("away", "unreadable"):
        why = AWAY if state == "away" else "not inspected: unreadable or corrupt image"
        return Result(seq, frame, None, [], False, [why], inspected=False)
    passed = state == "pass"
    return Result(seq, frame, np.zeros((4, 4), np.uint8), [], passed, [] if passed else ["damage: 1 > max_count 0"])


def _run(pub: Publisher, frames: List[Tuple[Optional[str], str]]) -> None:
    for seq, (part, state) in enumerate(frames):
        pub(_res(seq, part, state))
    pub.finish()


def test_a_part_interrupted_by_the_model_going_away_gets_one_verdict_after_it_is_complete():
    """Model away for two frames in the middle of part a (a Triton restart): one verdict for a, NONE, published
    on the first frame of b, not a PASS for its first frame followed by a second verdict."""
    pub, log = _publisher()
    _run(pub, [("a", "pass"), ("a", "away"), ("a", "away"), ("a", "pass"), ("b", "pass"), ("b", "pass")])
    assert log.closed_on() == [(4, "a", "NONE"), (None, "b", "PASS")]
    a = pub.parts[0]
    assert (a.first_seq, a.last_seq, a.n_frames, a.uninspected, a.passed) == (0, 3, 4, 2, False)
    assert AWAY in a.reasons


def test_parts_that_pass_the_station_during_an_outage_get_a_none_verdict_each():
    pub, log = _publisher()
    _run(pub, [("a", "pass"), ("b", "away"), ("b", "away"), ("c", "away"), ("d", "pass")])
    assert log.closed_on() == [(1, "a", "PASS"), (3, "b", "NONE"), (4, "c", "NONE"), (None, "d", "PASS")]


def test_a_failing_frame_makes_a_part_fail_even_when_another_frame_was_not_inspected():
    pub, _ = _publisher()
    _run(pub, [("a", "away"), ("a", "fail"), ("b", "unreadable")])
    assert [(p.part_id, p.verdict) for p in pub.parts] == [("a", "FAIL"), ("b", "NONE")]


def test_a_part_of_n_frames_closes_exactly_on_its_last_frame():
    rules = parse_rules({"part": {"by": "frames", "frames": 3}, "classes": {"damage": {"max_count": 0}}}, CLASSES)
    pub, log = _publisher(rules, gives_parts=False)
    _run(pub, [(None, "pass")] * 3 + [(None, "pass"), (None, "away"), (None, "pass")] + [(None, "pass")])
    assert log.closed_on() == [(2, "part-000000", "PASS"), (5, "part-000001", "NONE"), (None, "part-000002", "PASS")]


def test_a_frame_with_no_part_in_view_closes_the_open_part_on_that_frame():
    pub, log = _publisher()
    _run(pub, [("a", "pass"), ("a", "pass"), (None, "gap"), (None, "gap"), ("b", "fail")])
    assert log.closed_on() == [(2, "a", "PASS"), (None, "b", "FAIL")]


def test_frame_level_rules_give_a_frame_that_was_not_inspected_its_own_none_verdict():
    rules = parse_rules({"level": "frame", "classes": {"damage": {"max_count": 0}}}, CLASSES)
    pub, log = _publisher(rules)
    _run(pub, [("a", "pass"), ("a", "away"), (None, "gap"), ("b", "fail")])
    assert log.closed_on() == [(0, "a", "PASS"), (1, "a", "NONE"), (3, "b", "FAIL")]


def test_a_pass_verdict_for_a_part_with_frames_not_inspected_cannot_be_made():
    with pytest.raises(ValueError, match="PASS with 1 frame"):
        PartVerdict("a", "part", True, [], 0, 1, 2, 0.0, 1.0, uninspected=1)
    assert PartVerdict("a", "part", False, [], 0, 1, 2, 0.0, 1.0, none=True, uninspected=1).verdict == "NONE"


# --- an image folder: every file is a part, readable or not --------------------------------------------------
def _jpeg_with_defect_at_the_bottom(path: Path) -> bytes:
    rng = np.random.default_rng(0)  # texture: a file large enough for libjpeg to decode it in pieces
    image = np.clip(rng.normal(220, 10, (480, 640, 3)), 0, 255).astype(np.uint8)
    image[400:460, 100:300] = 10  # dark: damage for the threshold model, in the lower part of the image
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = buf.tobytes()
    path.write_bytes(data)
    return data


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "a_good.png"), np.full((64, 64, 3), 220, np.uint8))
    (photos / "b_empty.png").write_bytes(b"")
    (photos / "c_random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    data = _jpeg_with_defect_at_the_bottom(photos / "d_whole.jpg")
    (photos / "e_truncated.jpg").write_bytes(data[: len(data) // 2])  # the lost half holds the defect
    (photos / "f_broken.mp4").write_bytes(b"not a video" * 10)
    return photos


def test_the_truncated_jpeg_would_decode_as_a_clean_image_without_the_check(folder):
    """The premise: cv2.imread decodes the truncated file (libjpeg warns on stderr only), the defect gone."""
    image = cv2.imread(str(folder / "e_truncated.jpg"))
    assert image is not None and image.shape == (480, 640, 3) and image[400:460, 100:300].mean() > 60


def test_unreadable_and_truncated_images_get_a_none_verdict_in_the_records(folder, tmp_path, capsys):
    model = threshold_onnx(tmp_path / "thr.onnx")
    db = tmp_path / "r.sqlite"
    rc = main(["inspect", "--model", str(model), "--headless", "--source", str(folder), "--db", str(db), "--jsonl"])
    out = capsys.readouterr().out
    assert rc == 0
    con = sqlite3.connect(str(db))
    verdicts = dict(con.execute("SELECT part_id, verdict FROM verdicts").fetchall())
    run = con.execute("SELECT corrupt, stats FROM runs").fetchone()
    widths = dict(con.execute("SELECT part_id, width FROM frames").fetchall())
    con.close()
    assert verdicts == {"a_good.png": "PASS", "b_empty.png": "NONE", "c_random.jpg": "NONE",
                        "d_whole.jpg": "FAIL", "e_truncated.jpg": "NONE", "f_broken.mp4": "NONE"}
    assert run[0] == 4 and json.loads(run[1])["parts_none"] == 4
    assert widths["b_empty.png"] is None and widths["a_good.png"] == 64  # no made-up size for a missing picture
    parts = {p["part_id"]: p for p in map(json.loads, out.splitlines()) if p["type"] == "part"}
    assert parts["e_truncated.jpg"]["verdict"] == "NONE"
    assert any("unreadable or corrupt" in r for r in parts["b_empty.png"]["reasons"])


def test_unreadable_images_are_sent_to_the_line_like_every_part(folder, tmp_path, capsys):
    """--notify gets one message per part, the unreadable and truncated photos included (as NONE)."""
    from test_notify import MOSQUITTO, Subscriber, free_port, wait_until

    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (Debian: apt-get install mosquitto)")
    pytest.importorskip("paho.mqtt", reason="paho-mqtt missing: pip install -e '.[notify]'")
    import subprocess

    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    broker = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import socket

        assert wait_until(lambda: _can_connect(socket, port), 10), "mosquitto did not start"
        sub = Subscriber(port, "l/s/part")
        model = threshold_onnx(tmp_path / "thr.onnx")
        assert main(["inspect", "--model", str(model), "--headless", "--source", str(folder),
                     "--db", str(tmp_path / "r.sqlite"), "--notify", f"mqtt://127.0.0.1:{port}/l/s"]) == 0
        assert wait_until(lambda: len(sub.messages) == 6, 10), [m.payload for m in sub.messages]
        got = {json.loads(m.payload)["part_id"]: json.loads(m.payload)["verdict"] for m in sub.messages}
        sub.close()
    finally:
        broker.terminate()
        broker.wait(5)
    assert got == {"a_good.png": "PASS", "b_empty.png": "NONE", "c_random.jpg": "NONE", "d_whole.jpg": "FAIL",
                   "e_truncated.jpg": "NONE", "f_broken.mp4": "NONE"}


def _can_connect(socket, port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


def test_images_too_small_for_any_defect_to_count_are_none_not_pass(tmp_path, capsys):
    """A 1x1 or 2x2 black photo is all 'damage' for the threshold model, but no region can reach the
    64 px minimum area, so the rules can never fail it: it used to PASS."""
    photos = tmp_path / "tiny"
    photos.mkdir()
    for n in (1, 2, 8):
        cv2.imwrite(str(photos / f"black_{n}x{n}.png"), np.zeros((n, n, 3), np.uint8))
    model = threshold_onnx(tmp_path / "thr.onnx")
    db = tmp_path / "r.sqlite"
    assert main(["inspect", "--model", str(model), "--headless", "--source", str(photos), "--db", str(db)]) == 0
    con = sqlite3.connect(str(db))
    verdicts = dict(con.execute("SELECT part_id, verdict FROM verdicts").fetchall())
    reasons = dict(con.execute("SELECT part_id, reasons FROM frames").fetchall())
    con.close()
    assert verdicts == {"black_1x1.png": "NONE", "black_2x2.png": "NONE", "black_8x8.png": "FAIL"}
    assert "smaller than the rules' minimum defect area 64 px" in reasons["black_2x2.png"]
    assert "region too small      2 frames" in capsys.readouterr().out


def test_parts_not_inspected_are_neither_escapes_nor_overkill_against_the_ground_truth():
    """demo:// knows its parts' truth: a NONE part (model away) was not judged, so it is no overkill."""
    from ds2a.inspect.truth import TruthTally

    good_mask = (np.zeros((32, 32), np.uint8), (32, 32))
    tally = TruthTally(default_rules(CLASSES), CLASSES, lambda part_id: good_mask)
    tally.publish(None, [PartVerdict("a", "part", False, [AWAY], 0, 1, 2, 0.0, 1.0, none=True, uninspected=2),
                         PartVerdict("b", "part", True, [], 2, 2, 1, 0.0, 1.0)])
    s = tally.summary()
    assert (s["total"], s["overkill"], s["not_judged"]) == (1, 0, 1)
