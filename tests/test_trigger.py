"""Trigger and result handshake (`ds2a inspect --trigger`): each trigger gets exactly one answer, in order,
within the deadline, naming the triggered part; NONE with the reason when the part cannot be judged.
Against a real mosquitto broker and a pymodbus server acting as the PLC (skipped with the reason
where either is missing), through `ds2a.inspect` with a known-answer ONNX model."""
from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import cv2
import numpy as np
import pytest
import test_notify
from test_notify import Subscriber, _can_connect, free_port, wait_until

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.inspect import run as run_module
from ds2a.inspect.run import InspectOptions, inspect
from ds2a.notify.handshake import CAUSES, TriggerLedger, parse_payload
from ds2a.notify.urls import parse_trigger_url
from ds2a.runtime import ModelUnavailable
from ds2a.sources import Source

SLACK_S = 0.3  # how late a thread may wake on a shared, overloaded CI machine; exact timing: benchmarks/trigger_latency.py


@pytest.fixture
def broker(tmp_path):
    """A mosquitto on a free loopback port (tests/test_notify.py starts it; skipped where it is missing)."""
    yield from test_notify.broker.__wrapped__(tmp_path)


# --- payloads and URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize("payload,want", [
    (b"A123", ("A123", None)), (b"  cell 7 \n", ("cell 7", None)), (b'{"part_id": "A1", "recipe": "r2"}', ("A1", "r2")),
    (b'{"part_id": 17}', ("17", None)), (b'"B7"', ("B7", None)), (b"12345", ("12345", None)),
    (b"1.50", ("1.50", None))])
def test_plain_text_and_json_payloads(payload, want):
    assert parse_payload(payload) == want


@pytest.mark.parametrize("payload,msg", [
    (b"{}", "needs part_id"), (b'{"part_id": true}', "needs part_id"), (b'{"part_id": "x", "recipe": 3}', "recipe"),
    (b"", "1..128 printable"), (b"  ", "1..128 printable"), (b"\xff\xfe", "not UTF-8"), (b"a" * 129, "1..128"),
    (b'{"part_id": "a\\nb"}', "printable")])
def test_bad_payloads_are_named(payload, msg):
    with pytest.raises(ValueError, match=msg):
        parse_payload(payload)


def test_register_map_defaults_and_each_parameter_moves_one_address():
    t = parse_trigger_url("modbus://127.0.0.1:5020")
    assert (t.port, t.unit, t.serial_words, t.poll_ms) == (5020, 1, 2, 10)
    assert t.coils == {"trigger": 0, "busy": 1, "done": 2}
    assert t.registers == {"serial": 0, "result": 10, "reason": 11, "seq": 12, "echo": 13, "recipe": 4}
    t = parse_trigger_url("modbus://127.0.0.1?unit=4&trigger=100&busy=101&done=105&serial=200&serial_words=4"
                          "&result=300&reason=301&seq=302&echo=303&poll_ms=5&recipe=310")
    assert t.coils == {"trigger": 100, "busy": 101, "done": 105} and t.unit == 4 and t.poll_ms == 5
    assert t.registers == {"serial": 200, "result": 300, "reason": 301, "seq": 302, "echo": 303, "recipe": 310}
    # the recipe register (read only with --recipes) overlaps only when given, or when --recipes reads it
    assert parse_trigger_url("modbus://127.0.0.1?serial=3").registers["serial"] == 3
    with pytest.raises(UserError, match="registers serial and recipe overlap at 4"):
        parse_trigger_url("modbus://127.0.0.1?serial=3&recipe=4")
    t = parse_trigger_url("mqtt://u:p%40w@127.0.0.1:1884/line1/st3")
    assert (t.prefix, t.username, t.password, t.client_id) == ("line1/st3", "u", "p@w", "ds2a-trigger-line1-st3")
    assert "p@w" not in t.label and "p@w" not in repr(t)


@pytest.mark.parametrize("url,msg", [
    ("http://plc/x", "unknown scheme 'http'"), ("mqtt:///x", "no host"), ("mqtt://127.0.0.1:1883", "topic prefix"),
    ("mqtt://127.0.0.1/a/+", "wildcards"), ("mqtt://127.0.0.1/a?frames=1", "unknown option 'frames'"),
    ("modbus://127.0.0.1:0", "port"), ("modbus://127.0.0.1:70000", "port"), ("modbus://127.0.0.1/x", "no path"),
    ("modbus://127.0.0.1?coil=3", "unknown option 'coil'"), ("modbus://127.0.0.1?unit=300", "unit=300"),
    ("modbus://127.0.0.1?busy=0", "coils trigger and busy are both 0"),
    ("modbus://127.0.0.1?serial=11", "overlap at 11"), ("modbus://127.0.0.1?echo=65535", "runs past"),
    ("modbus://127.0.0.1?serial_words=3", "serial_words=3"), ("modbus://127.0.0.1?poll_ms=0", "poll_ms=0"),
    ("mqtt://no-such-host.invalid/x", "cannot resolve")])
def test_bad_trigger_urls_are_refused_with_the_reason(url, msg):
    with pytest.raises(UserError, match=msg) as err:
        parse_trigger_url(url)
    assert "\n" not in str(err.value) and str(err.value).startswith("--trigger ")


@pytest.mark.parametrize("extra,msg", [
    (["--trigger", "mqtt://127.0.0.1"], "topic prefix"), (["--trigger", "tcp://plc:502"], "unknown scheme"),
    (["--trigger", "modbus://127.0.0.1", "--trigger-timeout", "0"], "--trigger-timeout 0"),
    (["--trigger", "modbus://127.0.0.1", "--trigger-timeout", "nan"], "--trigger-timeout nan")])
def test_a_bad_trigger_is_one_line_before_the_model_opens(tmp_path, capsys, extra, msg):
    rc = main(["inspect", "--model", str(tmp_path / "never-opened.onnx"), "--headless", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "never-opened" not in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1


# --- the ledger: exactly one answer each, in order, in time -----------------------------------------


class Collect:
    def __init__(self) -> None:
        self.got: List[Any] = []

    def __call__(self, answer: Any) -> None:
        self.got.append(answer)


def test_the_next_trigger_is_taken_only_once_the_one_in_work_is_answered():
    ledger = TriggerLedger(5.0, Collect())
    stop = threading.Event()
    first, second = ledger.add("p1"), ledger.add("p2")
    assert ledger.take(stop) is first
    got: List[Any] = []
    taker = threading.Thread(target=lambda: got.append(ledger.take(stop, first)), daemon=True)
    taker.start()
    time.sleep(0.3)
    assert got == []  # p1 is still in work
    ledger.answer(first, "PASS", [])
    taker.join(2)
    assert got == [second]
    ledger.close()


def test_answers_leave_in_trigger_order_and_exactly_once():
    out = Collect()
    ledger = TriggerLedger(5.0, out)
    stop = threading.Event()
    ts = [ledger.add(f"p{i}") for i in range(4)]
    taken = [ledger.take(stop) for _ in range(4)]
    assert [t.seq for t in taken] == [1, 2, 3, 4] and [t.part_id for t in taken] == ["p0", "p1", "p2", "p3"]
    for t in taken:
        t.state = "inspecting"
    bad = ledger.add(None, bad="the trigger payload is not UTF-8 text")  # answered at once, sent in its turn
    assert bad.answered and out.got == []  # waits for triggers 1-4
    assert ledger.answer(ts[0], "PASS", []) and [a.trigger.seq for a in out.got] == [1]
    assert ledger.answer(ts[1], "FAIL", ["damage"]) and [a.trigger.seq for a in out.got] == [1, 2]
    assert ledger.answer(ts[3], "PASS", [])  # 3 was in the loop and never came back: its frame was lost
    assert [(a.trigger.seq, a.verdict, a.cause) for a in out.got] == [
        (1, "PASS", ""), (2, "FAIL", ""), (3, "NONE", "lost"), (4, "PASS", ""), (5, "NONE", "bad_trigger")]
    assert not ledger.answer(ts[2], "PASS", [])  # a late verdict is counted, never sent twice
    assert out.got[4].t_perf >= out.got[3].t_perf  # the bad trigger's latency counts until it could leave
    ledger.close()
    assert len(out.got) == 5 and ledger.counts["late_verdicts"] == 1 and bad.answered
    assert ledger.stats()["none_causes"] == {"lost": 1, "bad_trigger": 1}


def test_the_deadline_answers_none_before_it_passes_with_what_was_awaited():
    out = Collect()
    ledger = TriggerLedger(0.3, out)
    stop = threading.Event()
    a, b = ledger.add("waits-for-camera"), ledger.add("never-taken")
    ledger.take(stop).state = "camera"
    assert wait_until(lambda: len(out.got) == 2, 3)
    assert [(x.trigger.part_id, x.verdict, x.cause) for x in out.got] == [
        ("waits-for-camera", "NONE", "stalled"), ("never-taken", "NONE", "busy")]
    assert "camera stalled" in out.got[0].reasons[0] and "before the station could take it" in out.got[1].reasons[0]
    assert all(x.trigger.give_up_at == pytest.approx(x.trigger.t_perf + 0.3 - 0.03) for x in out.got)  # 30 ms early
    assert all(0.27 <= x.latency_ms / 1e3 < 0.3 + SLACK_S for x in out.got)  # not before; late only by scheduling
    stop.set()
    assert ledger.take(stop) is None
    ledger.close()
    assert not ledger.answer(a, "PASS", []) and out.got[0].trigger is a and out.got[1].trigger is b


def test_the_end_of_a_run_answers_every_open_trigger():
    out = Collect()
    ledger = TriggerLedger(60.0, out)
    for i in range(3):
        ledger.add(f"p{i}")
    ledger.close()
    assert [(x.trigger.seq, x.verdict, x.cause) for x in out.got] == [(1, "NONE", "stopped"), (2, "NONE", "stopped"),
                                                                      (3, "NONE", "stopped")]
    late = ledger.add("after-the-end")
    assert late.answered and out.got[-1].cause == "stopped"


# --- the station: a known-answer model, frames from a folder, a camera or a stalled camera ---------


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from fakes.onnx_models import threshold_onnx

    return threshold_onnx(tmp_path_factory.mktemp("m") / "thr.onnx")


def bright(dark: bool) -> np.ndarray:
    """A 64x48 frame: all bright (the threshold model PASSes it) or with a dark half (FAIL)."""
    img = np.full((48, 64, 3), 200, np.uint8)
    if dark:
        img[:, :32] = 10
    return img


def folder(path: Path, pattern: List[bool]) -> Path:
    path.mkdir()
    for i, dark in enumerate(pattern):
        cv2.imwrite(str(path / f"img{i:03d}.png"), bright(dark))
    return path


class Camera(Source):
    """A live camera at `fps` that stops delivering after `stall_after` frames (a cable pulled)."""

    live = True

    def __init__(self, fps: float = 50.0, stall_after: Optional[int] = None) -> None:
        super().__init__("test-camera://0")
        self.fps, self.stall_after, self.n = fps, stall_after, 0

    def read(self):
        if self.stall_after is not None and self.n >= self.stall_after:
            self._stop.wait()  # blocked like a camera that sends nothing, until the run stops
            return None
        time.sleep(1.0 / self.fps)
        self.n += 1
        return None if self._stop.is_set() else self._frame(bright(False), self.n - 1)


class Station:
    """`inspect()` on a thread, as `ds2a inspect --trigger` runs it."""

    def __init__(self, options: InspectOptions) -> None:
        self.options, self.summary, self.error = options, None, None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.summary = inspect(self.options, out=open("/dev/null", "w"))
        except BaseException as exc:  # noqa: BLE001 - checked by the test
            self.error = exc

    def join(self, timeout: float = 30.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the station did not stop"
        if self.error is not None:
            raise self.error
        return self.summary


class Line:
    """The MQTT side of the line: sends triggers, collects results."""

    def __init__(self, port: int, prefix: str) -> None:
        self.prefix, self.sub = prefix, Subscriber(port, f"{prefix}/#")
        self.sent: Dict[str, float] = {}

    def online(self, timeout: float = 20.0) -> bool:
        return wait_until(lambda: any(json.loads(m.payload).get("state") == "online"
                                      for m in self.sub.on(f"{self.prefix}/status")), timeout)

    def trigger(self, payload: str) -> None:
        self.sub.client.publish(f"{self.prefix}/trigger", payload, qos=1).wait_for_publish(5)

    def results(self) -> List[Dict[str, Any]]:
        return [json.loads(m.payload) for m in self.sub.on(f"{self.prefix}/result")]


def records(db: Path) -> Dict[str, Any]:
    """What the run recorded, after `ds2a report DB --check` found it keeps every invariant."""
    from ds2a.records.check import check_database, format_check
    from ds2a.records.database import connect

    con = connect(str(db), create=False, readonly=True)
    runs, violations = check_database(con)
    con.close()
    assert not violations, format_check(str(db), runs, violations)
    con = sqlite3.connect(str(db))
    frames = [tuple(r) for r in con.execute("SELECT part_id, verdict FROM frames ORDER BY id")]
    parts = [tuple(r) for r in con.execute("SELECT part_id, verdict FROM verdicts ORDER BY id")]
    stats = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    con.close()
    return {"frames": frames, "parts": parts, "stats": stats}


def test_mqtt_handshake_one_result_per_trigger_named_by_the_trigger(broker, model, tmp_path):
    pattern = [False, True, False, True, False, False]
    db = tmp_path / "i.sqlite"
    line = Line(broker, "line1/st3")
    st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", pattern)), headless=True,
                                db=str(db), max_frames=len(pattern), trigger=f"mqtt://127.0.0.1:{broker}/line1/st3",
                                trigger_timeout=5.0))
    assert line.online()
    payloads = ["A100", '{"part_id": "A101"}', '{"part_id": 102, "recipe": "r1"}', '"A103"', "A104", " A105 "]
    for p in payloads:
        line.trigger(p)
    assert wait_until(lambda: len(line.results()) == 6, 20)
    summary = st.join()
    res = line.results()
    line.sub.close()
    ids = ["A100", "A101", "102", "A103", "A104", "A105"]
    want = ["FAIL" if dark else "PASS" for dark in pattern]
    assert [r["part_id"] for r in res] == ids and [r["verdict"] for r in res] == want
    assert [r["seq"] for r in res] == [1, 2, 3, 4, 5, 6] and [r["recipe_asked"] for r in res] == [None, None, "r1", None, None, None]
    assert all(r["recipe"] is None for r in res)  # judged with no recipe (none exist yet), whatever was asked
    assert res[1]["reasons"] and not res[0]["reasons"] and all(r["cause"] is None for r in res)
    assert all(0 < r["latency_ms"] < 5000 for r in res) and res[0]["run"] == summary.run_id
    rec = records(db)
    assert rec["frames"] == list(zip(ids, want)) and rec["parts"] == list(zip(ids, want))  # the triggered ids
    assert rec["stats"]["trigger"]["triggers"] == 6 and rec["stats"]["trigger"]["sent"] == 6
    assert rec["stats"]["trigger"]["PASS"] == 4 and rec["stats"]["trigger"]["FAIL"] == 2


def test_a_burst_gets_one_result_each_in_order(broker, model, tmp_path):
    n = 40
    line = Line(broker, "burst")
    st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", [i % 5 == 0 for i in range(n)])),
                                headless=True, max_frames=n, trigger=f"mqtt://127.0.0.1:{broker}/burst",
                                trigger_timeout=20.0))
    assert line.online()
    for i in range(n):  # as fast as the broker takes them: far faster than the station judges
        line.sub.client.publish("burst/trigger", f"P{i:03d}", qos=1)
    assert wait_until(lambda: len(line.results()) == n, 60)
    st.join()
    time.sleep(0.3)  # nothing more may come
    res = line.results()
    line.sub.close()
    assert len(res) == n and [r["seq"] for r in res] == list(range(1, n + 1))
    assert [r["part_id"] for r in res] == [f"P{i:03d}" for i in range(n)]
    assert [r["verdict"] for r in res] == ["FAIL" if i % 5 == 0 else "PASS" for i in range(n)]


def test_a_burst_beyond_the_deadline_is_answered_none_never_silence(broker, model, tmp_path, monkeypatch):
    """A slow model (0.15 s per part) and a 0.5 s deadline: the first parts are judged, the rest are
    answered NONE in time; every trigger still gets exactly one answer, in order."""
    n = 12
    slow = SlowModel(0.15)
    monkeypatch.setattr(run_module, "_open_model", slow.open)
    line = Line(broker, "slow")
    st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", [False] * (n + 1))),
                                headless=True, duration=2.5, trigger=f"mqtt://127.0.0.1:{broker}/slow", trigger_timeout=0.5))
    assert line.online()
    for i in range(n):
        line.sub.client.publish("slow/trigger", f"S{i}", qos=1)
    assert wait_until(lambda: len(line.results()) == n, 10)
    res = line.results()
    assert [r["seq"] for r in res] == list(range(1, n + 1)) and [r["part_id"] for r in res] == [f"S{i}" for i in range(n)]
    judged = [r for r in res if r["verdict"] != "NONE"]
    late = [r for r in res if r["verdict"] == "NONE"]
    assert 1 <= len(judged) < n and len(late) >= 3
    assert all(r["latency_ms"] < 500 + SLACK_S * 1e3 for r in res)
    assert all(r["verdict"] == "PASS" for r in judged) and {r["cause"] for r in late} <= {"busy", "deadline"}
    assert "busy" in {r["cause"] for r in late}
    time.sleep(0.5)  # an inference in flight when the last answer went out ends
    before = slow.calls
    line.trigger("next")  # the model is free at once: no frame of an answered trigger queues up before this part
    assert wait_until(lambda: len(line.results()) == n + 1, 5)
    nxt = line.results()[-1]
    assert (nxt["seq"], nxt["part_id"]) == (n + 1, "next"), nxt
    assert wait_until(lambda: slow.calls > before, 5)
    time.sleep(0.5)  # a backlog of the burst's frames (about 0.2 s each) would show here
    assert slow.calls == before + 1  # only this part's frame was inferred
    # judged; on a machine too loaded for one 0.15 s inference within the 0.5 s deadline, answered late
    assert nxt["verdict"] == "PASS" or (nxt["verdict"] == "NONE" and nxt["cause"] == "deadline"), nxt
    st.join()
    line.sub.close()


class SlowModel:
    """The real model, slowed down (or away, like a served model whose server went down)."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s, self.away = delay_s, threading.Event()
        self.calls = 0  # inferences asked for (warm-up included)

    def open(self, options: InspectOptions, confidence: bool) -> Any:
        from ds2a.runtime import open_model

        real = open_model(options.model)
        outer = self

        class Wrapped:
            def __getattr__(self, name):
                return getattr(real, name)

            def infer(self, image):
                outer.calls += 1
                if outer.away.is_set():
                    raise ModelUnavailable("triton://127.0.0.1:8001/m is not answering")
                time.sleep(outer.delay_s)
                return real.infer(image)

        return Wrapped()


def test_a_stalled_camera_is_answered_none_within_the_deadline(broker, model, tmp_path, monkeypatch):
    cam = Camera(fps=50, stall_after=10)
    monkeypatch.setattr(run_module, "open_source", lambda uri: cam)
    db = tmp_path / "i.sqlite"
    line = Line(broker, "stall")
    st = Station(InspectOptions(model=str(model), source="test-camera://0", headless=True, db=str(db), duration=30,
                                trigger=f"mqtt://127.0.0.1:{broker}/stall", trigger_timeout=0.6))
    assert line.online()
    line.trigger("before-stall")
    assert wait_until(lambda: len(line.results()) == 1, 5)
    assert wait_until(lambda: cam.n >= 10, 5)
    t0 = time.perf_counter()
    line.trigger("after-stall")
    assert wait_until(lambda: len(line.results()) == 2, 5)
    waited = time.perf_counter() - t0
    res = line.results()
    assert res[0]["part_id"] == "before-stall" and res[0]["verdict"] == "PASS"
    assert res[1]["part_id"] == "after-stall" and res[1]["verdict"] == "NONE" and res[1]["cause"] == "stalled"
    assert "no camera frame within 0.6 s" in res[1]["reasons"][0] and 0.5 <= waited < 0.6 + SLACK_S + 0.5
    assert 540 <= res[1]["latency_ms"] < 600 + SLACK_S * 1e3
    cam.stop()  # the camera thread gives up; the run ends with the source
    st.join()
    line.sub.close()
    stats = records(db)["stats"]["trigger"]
    assert stats["NONE"] == 1 and stats["none_causes"] == {"stalled": 1}
    assert stats["none_parts"][0]["part_id"] == "after-stall"


def test_the_model_away_is_answered_none_with_the_reason(broker, model, tmp_path, monkeypatch):
    slow = SlowModel()
    monkeypatch.setattr(run_module, "_open_model", slow.open)
    db = tmp_path / "i.sqlite"
    line = Line(broker, "away")
    st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", [False, False, True])),
                                headless=True, db=str(db), max_frames=3, trigger=f"mqtt://127.0.0.1:{broker}/away",
                                trigger_timeout=5))
    assert line.online()
    line.trigger("M1")
    assert wait_until(lambda: len(line.results()) == 1, 10)
    slow.away.set()
    line.trigger("M2")
    assert wait_until(lambda: len(line.results()) == 2, 10)
    slow.away.clear()
    line.trigger("M3")
    assert wait_until(lambda: len(line.results()) == 3, 10)
    st.join()
    res = line.results()
    line.sub.close()
    assert [(r["part_id"], r["verdict"], r["cause"]) for r in res] == [("M1", "PASS", None), ("M2", "NONE", "model"),
                                                                      ("M3", "FAIL", None)]
    assert "not answering" in res[1]["reasons"][0]
    rec = records(db)
    assert rec["parts"] == [("M1", "PASS"), ("M2", "NONE"), ("M3", "FAIL")]  # the records say NONE too, never PASS


def test_a_bad_payload_gets_a_none_answer_and_the_run_goes_on(broker, model, tmp_path):
    line = Line(broker, "bad")
    st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", [True])), headless=True,
                                max_frames=1, trigger=f"mqtt://127.0.0.1:{broker}/bad", trigger_timeout=5))
    assert line.online()
    line.trigger('{"serial": 5}')
    line.trigger("B2")
    assert wait_until(lambda: len(line.results()) == 2, 10)
    st.join()
    res = line.results()
    line.sub.close()
    assert (res[0]["seq"], res[0]["part_id"], res[0]["verdict"], res[0]["cause"]) == (1, None, "NONE", "bad_trigger")
    assert "needs part_id" in res[0]["reasons"][0]
    assert (res[1]["seq"], res[1]["part_id"], res[1]["verdict"]) == (2, "B2", "FAIL")


def test_triggers_left_at_the_end_of_the_run_are_answered(broker, model, tmp_path):
    line = Line(broker, "end")
    st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", [False])), headless=True,
                                trigger=f"mqtt://127.0.0.1:{broker}/end", trigger_timeout=30))
    assert line.online()
    line.trigger("E1")
    line.trigger("E2")  # the folder has one image: the source ends before E2 has a frame
    assert wait_until(lambda: len(line.results()) == 2, 10)
    st.join()
    res = line.results()
    line.sub.close()
    assert [(r["part_id"], r["verdict"]) for r in res] == [("E1", "PASS"), ("E2", "NONE")]
    assert res[1]["cause"] == "stopped"


# --- Modbus: pymodbus's server is the PLC's memory, a second client is the PLC's program -------------


def serve_plc(port: int, writes: List[Any]) -> Any:
    """pymodbus's server on `port` (unit 2, 400 coils and holding registers); returns its stop function."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
        from pymodbus.server import ModbusTcpServer

    loop = asyncio.new_event_loop()
    box: Dict[str, Any] = {}

    def trace(sending: bool, pdu: Any) -> Any:
        if not sending and "Write" in type(pdu).__name__:
            writes.append((pdu.address, list(pdu.bits), list(pdu.registers), time.perf_counter()))
        return pdu

    async def serve() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctx = ModbusServerContext(devices={2: ModbusDeviceContext(co=ModbusSequentialDataBlock(1, [False] * 400),
                                                                      hr=ModbusSequentialDataBlock(1, [0] * 400))},
                                      single=False)
        box["server"] = ModbusTcpServer(ctx, address=("127.0.0.1", port), trace_pdu=trace)
        await box["server"].serve_forever()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert wait_until(lambda: _can_connect(port), 10)

    def stop() -> None:
        asyncio.run_coroutine_threadsafe(box["server"].shutdown(), loop).result(5)
        thread.join(5)

    return stop


@pytest.fixture
def plc():
    pytest.importorskip("pymodbus", reason="pymodbus missing: pip install -e '.[notify]'")
    port, writes = free_port(), []
    stop = serve_plc(port, writes)
    yield port, writes
    stop()


class PlcProgram:
    """What the PLC does for each part: serial, trigger, wait for done, read the result, reset the trigger."""

    def __init__(self, port: int, unit: int = 2, coils=(0, 1, 2), serial=0, words=2, result=10) -> None:
        from pymodbus.client import ModbusTcpClient

        self.c = ModbusTcpClient("127.0.0.1", port=port)
        assert self.c.connect()
        self.unit, self.coils, self.serial, self.words, self.result = unit, coils, serial, words, result

    def bits(self) -> List[bool]:
        lo = min(self.coils)
        got = self.c.read_coils(lo, count=max(self.coils) - lo + 1, device_id=self.unit).bits
        return [got[a - lo] for a in self.coils]  # trigger, busy, done

    def part(self, serial: int, timeout: float = 10.0) -> Dict[str, Any]:
        words = [(serial >> (16 * (self.words - 1 - i))) & 0xFFFF for i in range(self.words)]
        self.c.write_registers(self.serial, words, device_id=self.unit)
        t0 = time.perf_counter()
        self.c.write_coil(self.coils[0], True, device_id=self.unit)
        assert wait_until(lambda: self.bits()[2], timeout, 0.002), "no done from the station"
        t_done = time.perf_counter()
        regs = self.c.read_holding_registers(self.result, count=3 + self.words, device_id=self.unit).registers
        busy = self.bits()[1]
        self.c.write_coil(self.coils[0], False, device_id=self.unit)
        assert wait_until(lambda: not self.bits()[2], timeout, 0.002), "the station did not reset done"
        return {"result": regs[0], "reason": regs[1], "seq": regs[2], "echo": regs[3:], "busy_with_done": busy,
                "ms": (t_done - t0) * 1e3}

    def close(self) -> None:
        self.c.close()


def test_modbus_handshake_in_the_usual_order(plc, model, tmp_path):
    port, writes = plc
    pattern = [False, True, False]
    db = tmp_path / "i.sqlite"
    st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", pattern)), headless=True,
                                db=str(db), max_frames=3, trigger=f"modbus://127.0.0.1:{port}?unit=2&poll_ms=5",
                                trigger_timeout=5))
    prog = PlcProgram(port)
    serials = [70000, 2, 123456789]
    got = [prog.part(s, timeout=30) for s in serials]
    st.join()
    prog.close()
    assert [g["result"] for g in got] == [1, 2, 1] and [g["reason"] for g in got] == [0, 0, 0]
    assert [g["seq"] for g in got] == [1, 2, 3] and not any(g["busy_with_done"] for g in got)
    assert [g["echo"] for g in got] == [[1, 4464], [0, 2], [1883, 52501]]  # high word first
    rec = records(db)
    assert rec["parts"] == [("70000", "PASS"), ("2", "FAIL"), ("123456789", "PASS")]
    # the station's writes, in order: busy on; result, reason, seq, echo; busy off + done on; ... done off
    kinds = []
    for addr, bits, regs, _t in writes:  # the PLC program writes coil 0 and registers 0-1; the station the rest
        if regs and addr == 10:
            kinds.append("result")
        elif addr == 1 and len(bits) > 1 and bits[:2] == [False, True]:
            kinds.append("busy-off+done-on")
        elif addr == 1 and bits[:1] == [True]:
            kinds.append("busy-on")
        elif addr == 2 and bits[:1] == [False]:
            kinds.append("done-off")
    assert kinds[-12:] == ["busy-on", "result", "busy-off+done-on", "done-off"] * 3


def test_modbus_moved_registers_and_a_model_away(plc, model, tmp_path, monkeypatch):
    port, _ = plc
    slow = SlowModel()
    slow.away.set()
    monkeypatch.setattr(run_module, "_open_model", slow.open)
    url = (f"modbus://127.0.0.1:{port}?unit=2&trigger=40&busy=41&done=43&serial=100&serial_words=1"
           "&result=200&reason=201&seq=202&echo=203&poll_ms=5")
    st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", [False, True])), headless=True,
                                max_frames=2, trigger=url, trigger_timeout=5))
    prog = PlcProgram(port, coils=(40, 41, 43), serial=100, words=1, result=200)
    away = prog.part(4242, timeout=30)
    slow.away.clear()
    back = prog.part(4243, timeout=30)
    st.join()
    prog.close()
    assert (away["result"], away["reason"], away["seq"], away["echo"]) == (3, CAUSES["model"], 1, [4242])
    assert (back["result"], back["reason"], back["seq"], back["echo"]) == (2, 0, 2, [4243])


def test_modbus_stalled_camera_answers_none_within_the_deadline(plc, model, tmp_path, monkeypatch):
    cam = Camera(fps=50, stall_after=0)
    monkeypatch.setattr(run_module, "open_source", lambda uri: cam)
    port, writes = plc
    st = Station(InspectOptions(model=str(model), source="test-camera://0", headless=True, duration=20,
                                trigger=f"modbus://127.0.0.1:{port}?unit=2&poll_ms=5", trigger_timeout=0.4))
    prog = PlcProgram(port)
    assert wait_until(lambda: any(w[0] == 2 for w in writes), 30)  # the station has cleared done: it listens
    g = prog.part(99, timeout=30)
    assert (g["result"], g["reason"], g["echo"]) == (3, CAUSES["stalled"], [0, 99])
    assert g["ms"] < 400 + SLACK_S * 1e3  # trigger set -> done seen by the PLC (its timing: the benchmark)
    prog.close()
    cam.stop()
    with pytest.raises(UserError, match="nothing was inspected"):  # a run with a dead camera is not a good run
        st.join()


# --- through `ds2a inspect --trigger`: the records, `ds2a report`, the page and --notify name the triggered part


def test_cli_trigger_records_report_page_and_notify_use_the_triggered_id(broker, model, tmp_path, capsys):
    db, csv_out = tmp_path / "i.sqlite", tmp_path / "parts.csv"
    line = Line(broker, "cli")
    notified = Subscriber(broker, "cli-notify/part")
    argv = ["inspect", "--model", str(model), "--source", str(folder(tmp_path / "imgs", [False, True, False])),
            "--headless", "--db", str(db), "--max-frames", "3", "--trigger", f"mqtt://127.0.0.1:{broker}/cli",
            "--trigger-timeout", "5", "--notify", f"mqtt://127.0.0.1:{broker}/cli-notify"]
    rc: Dict[str, int] = {}
    thread = threading.Thread(target=lambda: rc.update(code=main(argv)), daemon=True)
    thread.start()
    assert line.online()
    for pid in ("SN-1", "SN-2", "SN-3"):
        line.trigger(pid)
        assert wait_until(lambda: len(notified.messages) == len(line.results()), 10)  # the part is sent with its answer
    thread.join(30)
    out = capsys.readouterr().out
    assert rc == {"code": 0} and "trigger mqtt://127.0.0.1" in out
    assert [(r["part_id"], r["verdict"]) for r in line.results()] == [("SN-1", "PASS"), ("SN-2", "FAIL"), ("SN-3", "PASS")]
    notes = [json.loads(m.payload) for m in notified.messages]
    assert [(m["part_id"], m["verdict"]) for m in notes] == [("SN-1", "PASS"), ("SN-2", "FAIL"), ("SN-3", "PASS")]
    line.sub.close()
    notified.close()
    assert records(db)["parts"] == [("SN-1", "PASS"), ("SN-2", "FAIL"), ("SN-3", "PASS")]  # and the invariants hold
    assert main(["report", str(db), "--csv", str(csv_out)]) == 0
    rows = csv_out.read_text().splitlines()[1:]
    assert [r.split(",")[1:4] for r in rows] == [["SN-1", "part", "PASS"], ["SN-2", "part", "FAIL"], ["SN-3", "part", "PASS"]]
    pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")
    from test_web import Served

    with Served(db) as s:
        html = s.get("")[1].decode()
    assert "SN-2" in html  # the failed part, by the id the line gave


def test_a_plc_that_cannot_be_reached_is_retried_and_counted_never_waited_for(caplog):
    pytest.importorskip("pymodbus", reason="pymodbus missing: pip install -e '.[notify]'")
    from ds2a.notify.handshake_modbus import ModbusTrigger

    endpoint = ModbusTrigger(parse_trigger_url(f"modbus://127.0.0.1:{free_port()}?poll_ms=5"))
    ledger = TriggerLedger(1.0, endpoint.deliver)
    endpoint.start(ledger)
    assert wait_until(lambda: endpoint.outages == 1, 5)
    t0 = time.perf_counter()
    stats = endpoint.close(0.2)
    ledger.close()
    assert time.perf_counter() - t0 < 3.0
    assert stats["outages"] == 1 and "cannot connect to the PLC 127.0.0.1" in stats["last_error"]
    assert stats["sent"] == 0 and stats["undelivered"] == 0  # no trigger could be seen, so none went unanswered
    assert sum("retrying" in r.getMessage() for r in caplog.records) == 1  # once per outage, not per try


def test_the_same_part_triggered_again_is_answered_as_sent_and_recorded_apart(broker, model, tmp_path):
    db = tmp_path / "i.sqlite"
    line = Line(broker, "again")
    st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", [True, False, False])),
                                headless=True, db=str(db), max_frames=3, trigger=f"mqtt://127.0.0.1:{broker}/again",
                                trigger_timeout=5))
    assert line.online()
    for pid in ("R1", "R1", "R2"):  # a retry of R1
        line.trigger(pid)
    assert wait_until(lambda: len(line.results()) == 3, 10)
    st.join()
    res = line.results()
    line.sub.close()
    assert [(r["seq"], r["part_id"], r["verdict"]) for r in res] == [(1, "R1", "FAIL"), (2, "R1", "PASS"), (3, "R2", "PASS")]
    assert records(db)["parts"] == [("R1", "FAIL"), ("R1#2", "PASS"), ("R2", "PASS")]  # one verdict per part


def _mosquitto(port: int, conf: Path) -> Any:
    import subprocess

    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([test_notify.MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    assert wait_until(lambda: _can_connect(port), 10), "mosquitto did not start"
    return proc


def test_after_a_broker_restart_the_station_listens_again(model, tmp_path):
    if test_notify.MOSQUITTO is None:
        pytest.skip("mosquitto not installed (Debian: apt-get install mosquitto; `make test` installs it as root)")
    pytest.importorskip("paho.mqtt", reason="paho-mqtt missing: pip install -e '.[notify]'")
    port = free_port()
    proc = _mosquitto(port, tmp_path / "m.conf")
    try:
        line = Line(port, "restart")
        st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", [False, True])),
                                    headless=True, max_frames=2, trigger=f"mqtt://127.0.0.1:{port}/restart",
                                    trigger_timeout=5))
        assert line.online()
        line.trigger("before")
        assert wait_until(lambda: len(line.results()) == 1, 10)
        line.sub.close()
        proc.terminate()
        proc.wait(5)
        proc = _mosquitto(port, tmp_path / "m.conf")  # the same broker back, nothing retained
        line = Line(port, "restart")
        assert line.online(30)  # the station reconnected, subscribed again and said so
        line.trigger("after")
        assert wait_until(lambda: len(line.results()) == 1, 10)
        st.join()
        res = line.results()
        line.sub.close()
        assert (res[0]["seq"], res[0]["part_id"], res[0]["verdict"]) == (2, "after", "FAIL")
    finally:
        proc.terminate()
        proc.wait(5)


def test_after_the_plc_restarts_the_handshake_goes_on(model, tmp_path):
    pytest.importorskip("pymodbus", reason="pymodbus missing: pip install -e '.[notify]'")
    port, writes = free_port(), []
    stop = serve_plc(port, writes)
    db = tmp_path / "i.sqlite"
    try:
        st = Station(InspectOptions(model=str(model), source=str(folder(tmp_path / "imgs", [False, True])),
                                    headless=True, db=str(db), max_frames=2,
                                    trigger=f"modbus://127.0.0.1:{port}?unit=2&poll_ms=5", trigger_timeout=5))
        prog = PlcProgram(port)
        first = prog.part(11, timeout=30)
        prog.close()
        stop()  # the PLC restarts: connection gone, its memory cleared
        time.sleep(0.5)
        stop = serve_plc(port, writes)
        prog = PlcProgram(port)
        second = prog.part(12, timeout=30)
        prog.close()
        st.join()
    finally:
        stop()
    assert (first["result"], first["seq"], first["echo"]) == (1, 1, [0, 11])
    assert (second["result"], second["seq"], second["echo"]) == (2, 2, [0, 12])  # numbering goes on
    stats = records(db)["stats"]["trigger"]
    assert stats["outages"] == 1 and stats["sent"] == 2 and stats["undelivered"] == 0
