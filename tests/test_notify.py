"""The reject signal: URLs checked at start, a bounded outbox that never blocks the loop, MQTT against a
real mosquitto broker (QoS 1 JSON per part, retained status, last will) and Modbus TCP against
pymodbus's own server (a coil pulse or a FAIL counter per FAIL); a line that is down is counted
in the run's records, never waited for."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import pytest

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.inspect.parts import PartVerdict
from ds2a.notify import Notifier, parse_notify_url
from ds2a.notify.outbox import NotDelivered, Outbox

ROOT = Path(__file__).resolve().parents[1]
MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if os.path.exists(p)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout: float = 10.0, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def part(i: int, passed: bool) -> PartVerdict:
    return PartVerdict(f"cell-{i:04d}", "part", passed, [] if passed else ["damage: count 1 > max_count 0"],
                       2 * i, 2 * i + 1, 2, 100.0 + i, 100.5 + i)


# --- URLs -------------------------------------------------------------------------------------------

def test_good_urls_parse():
    t = parse_notify_url("mqtt://user:p%40ss@127.0.0.1:1884/line1/station3?frames=1")
    assert (t.host, t.port, t.topic, t.username, t.password, t.frames) == ("127.0.0.1", 1884, "line1/station3",
                                                                          "user", "p@ss", True)
    assert "p@ss" not in t.label and "p@ss" not in repr(t) and t.max_age_s == 60
    t = parse_notify_url("modbus://127.0.0.1?unit=3&coil=12&pulse_ms=50")
    assert (t.port, t.unit, t.coil, t.register, t.pulse_ms, t.max_age_s) == (502, 3, 12, None, 50, 2.0)
    assert parse_notify_url("modbus://127.0.0.1:5020?register=40&max_age=5").register == 40


@pytest.mark.parametrize("url,msg", [
    ("http://broker/x", "unknown scheme"), ("mqtt:///line1", "no host"), ("mqtt://127.0.0.1:1883", "topic"),
    ("mqtt://127.0.0.1/line/#", "wildcards"), ("mqtt://127.0.0.1:99999/x", "port"), ("mqtt://127.0.0.1:0/x", "port"),
    ("mqtt://127.0.0.1/x?qos=0", "unknown option 'qos'"), ("mqtt://127.0.0.1/x?frames=maybe", "0 or 1"),
    ("modbus://127.0.0.1", "exactly one of coil"), ("modbus://127.0.0.1?coil=1&register=2", "exactly one of coil"),
    ("modbus://127.0.0.1?coil=-1", "coil=-1"), ("modbus://127.0.0.1?unit=300&coil=1", "unit=300"),
    ("modbus://127.0.0.1/x?coil=1", "no path"), ("modbus://127.0.0.1?coil=1&max_age=0", "max_age"),
    ("mqtt://no-such-host.invalid/x", "cannot resolve")])
def test_bad_urls_are_refused_with_the_reason(url, msg):
    with pytest.raises(UserError, match=msg):
        parse_notify_url(url)


# --- the outbox -------------------------------------------------------------------------------------

def test_outbox_retries_in_order_until_delivered():
    got: List[int] = []
    fails = {"left": 3}

    def send(msg: Dict[str, Any]) -> None:
        if fails["left"]:
            fails["left"] -= 1
            raise NotDelivered("broker away")
        got.append(msg["id"])

    box = Outbox(send, "test")
    for i in range(5):
        box.put({"id": i})
    assert wait_until(lambda: len(got) == 5, 10)
    stats = box.close(1.0)
    assert got == [0, 1, 2, 3, 4] and stats["sent"] == 5 and stats["undelivered"] == 0 and stats["outages"] == 1


def test_outbox_never_blocks_and_counts_what_it_gives_up():
    release = threading.Event()

    def send(msg: Dict[str, Any]) -> None:
        release.wait(5)
        raise NotDelivered("no PLC")

    box = Outbox(send, "test", capacity=10)
    t0 = time.perf_counter()
    for i in range(200):
        box.put({"id": f"m{i}"})
    assert time.perf_counter() - t0 < 0.1  # the loop's side: no waiting on the network
    assert box.pending == 10
    assert box.undelivered == 190 and box.reasons == {"full": 190} and box.undelivered_ids[:2] == ["m0", "m1"]
    release.set()
    t0 = time.perf_counter()
    stats = box.close(0.3)
    assert time.perf_counter() - t0 < 3.0
    assert stats["sent"] == 0 and stats["undelivered"] == 200 and len(stats["undelivered_ids"]) == Outbox.KEEP_IDS


def test_outbox_drops_verdicts_too_old_to_act_on():
    box = Outbox(lambda m: (_ for _ in ()).throw(NotDelivered("down")), "test", max_age_s=0.2)
    box.put({"id": "late"})
    assert wait_until(lambda: box.undelivered == 1, 5)
    assert list(box.reasons) == ["older than 0.2 s"] and box.close(0.1)["undelivered_ids"] == ["late"]


# --- MQTT with a real broker ------------------------------------------------------------------------

@pytest.fixture
def broker(tmp_path):
    if MOSQUITTO is None:
        pytest.skip("mosquitto not installed (Debian: apt-get install mosquitto; `make test` installs it as root)")
    pytest.importorskip("paho.mqtt", reason="paho-mqtt missing: pip install -e '.[notify]'")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_until(lambda: _can_connect(port), 10), "mosquitto did not start"
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


def _can_connect(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
        return True
    except OSError:
        return False


class Subscriber:
    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: List[Any] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{port}-{time.time()}")
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        ready = threading.Event()
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_connect = lambda c, *a: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(10)

    def on(self, topic: str) -> List[Any]:
        return [m for m in self.messages if m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_mqtt_one_json_message_per_part_qos1_retained_status(broker):
    from ds2a.notify import open_notifier

    records = SimpleNamespace(run_id=7, extra={})
    sub = Subscriber(broker, "line1/station3/#")
    n = open_notifier(f"mqtt://127.0.0.1:{broker}/line1/station3", records)
    try:
        assert wait_until(lambda: any(json.loads(m.payload)["state"] == "online"
                                      for m in sub.on("line1/station3/status")), 10)
        for i in range(6):
            n.publish(None, [part(i, passed=i % 3 != 0)])
        assert wait_until(lambda: len(sub.on("line1/station3/part")) == 6, 10)
    finally:
        stats = n.close()
    msgs = [json.loads(m.payload) for m in sub.on("line1/station3/part")]
    assert [m["part_id"] for m in msgs] == [f"cell-{i:04d}" for i in range(6)]
    assert [m["verdict"] for m in msgs] == ["FAIL", "PASS", "PASS", "FAIL", "PASS", "PASS"]
    assert msgs[0]["reasons"] == ["damage: count 1 > max_count 0"] and msgs[0]["run"] == 7
    assert len({m["id"] for m in msgs}) == 6 and all(m.qos == 1 for m in sub.on("line1/station3/part"))
    assert stats["sent"] == 6 and stats["undelivered"] == 0 and records.extra["notify"] == [stats]
    assert wait_until(lambda: json.loads(sub.on("line1/station3/status")[-1].payload)["state"] == "offline", 5)
    sub.close()
    late = Subscriber(broker, "line1/station3/status")  # retained: a new subscriber learns the state at once
    assert wait_until(lambda: late.messages, 5) and late.messages[-1].retain
    assert json.loads(late.messages[-1].payload)["reason"] == "stopped"
    late.close()


def test_mqtt_last_will_says_offline_when_the_station_dies(broker, tmp_path):
    sub = Subscriber(broker, "line9/st/status")
    script = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
              "from ds2a.notify import open_notifier\n"
              f"n = open_notifier('mqtt://127.0.0.1:{broker}/line9/st')\n"
              "print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert wait_until(lambda: sub.messages and json.loads(sub.messages[-1].payload)["state"] == "online", 10)
        os.kill(proc.pid, signal.SIGKILL)  # no goodbye: the broker publishes the will
        assert wait_until(lambda: json.loads(sub.messages[-1].payload)["state"] == "offline", 10)
        assert json.loads(sub.messages[-1].payload)["reason"] == "connection lost"
    finally:
        proc.kill()
        proc.wait()
        sub.close()


def test_mqtt_broker_down_never_stalls_and_is_counted(tmp_path):
    pytest.importorskip("paho.mqtt", reason="paho-mqtt missing: pip install -e '.[notify]'")
    from ds2a.notify import open_notifier

    records = SimpleNamespace(run_id=1, extra={})
    n = open_notifier(f"mqtt://127.0.0.1:{free_port()}/line1/down", records)
    t0 = time.perf_counter()
    for i in range(50):
        n.publish(None, [part(i, passed=False)])
    assert time.perf_counter() - t0 < 0.05
    stats = n.close(patience_s=0.3)
    assert stats["sent"] == 0 and stats["undelivered"] == 50 and "not connected" in stats["last_error"]
    assert records.extra["notify"][0]["undelivered_ids"][0].endswith("-1")


# --- Modbus with pymodbus's own server --------------------------------------------------------------

@pytest.fixture
def plc():
    pytest.importorskip("pymodbus", reason="pymodbus missing: pip install -e '.[notify]'")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
        from pymodbus.server import ModbusTcpServer

    port, writes, loop = free_port(), [], asyncio.new_event_loop()
    box: Dict[str, Any] = {}

    def trace(sending: bool, pdu: Any) -> Any:
        if not sending:
            writes.append((type(pdu).__name__, pdu.dev_id, pdu.address, list(pdu.bits), list(pdu.registers),
                           time.monotonic()))
        return pdu

    async def serve() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ctx = ModbusServerContext(devices={3: ModbusDeviceContext(co=ModbusSequentialDataBlock(1, [False] * 100),
                                                                      hr=ModbusSequentialDataBlock(1, [0] * 100))},
                                      single=False)
        box["server"] = ModbusTcpServer(ctx, address=("127.0.0.1", port), trace_pdu=trace)
        await box["server"].serve_forever()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert wait_until(lambda: _can_connect(port), 10)
    yield port, writes
    asyncio.run_coroutine_threadsafe(box["server"].shutdown(), loop).result(5)
    thread.join(5)


def test_modbus_pulses_the_coil_once_per_fail(plc):
    from ds2a.notify import open_notifier

    port, writes = plc
    records = SimpleNamespace(run_id=1, extra={})
    n = open_notifier(f"modbus://127.0.0.1:{port}?unit=3&coil=12&pulse_ms=50", records)
    for i in range(5):
        n.publish(None, [part(i, passed=i not in (1, 3))])  # parts 1 and 3 FAIL
    assert wait_until(lambda: len(writes) >= 4, 10)
    stats = n.close()
    coil = [(w[1], w[2], w[3]) for w in writes if w[0] == "WriteSingleCoilRequest"]
    assert coil == [(3, 12, [True]), (3, 12, [False])] * 2
    on_off = [w[5] for w in writes]
    assert 0.04 <= on_off[1] - on_off[0] < 1.0  # held about pulse_ms
    assert stats["sent"] == 2 and stats["undelivered"] == 0


def test_modbus_register_counts_fails(plc):
    from ds2a.notify import open_notifier

    port, writes = plc
    n = open_notifier(f"modbus://127.0.0.1:{port}?unit=3&register=40", None)
    for i in range(4):
        n.publish(None, [part(i, passed=False)])
    assert wait_until(lambda: len(writes) >= 4, 10)
    n.close()
    assert [(w[2], w[4]) for w in writes] == [(40, [1]), (40, [2]), (40, [3]), (40, [4])]


def test_modbus_plc_down_is_counted_not_waited_for():
    pytest.importorskip("pymodbus", reason="pymodbus missing: pip install -e '.[notify]'")
    from ds2a.notify import open_notifier

    records = SimpleNamespace(run_id=1, extra={})
    n = open_notifier(f"modbus://127.0.0.1:{free_port()}?coil=1&max_age=0.3", records)
    t0 = time.perf_counter()
    for i in range(10):
        n.publish(None, [part(i, passed=False), part(100 + i, passed=True)])
    assert time.perf_counter() - t0 < 0.05
    assert wait_until(lambda: n.outbox.undelivered == 10, 10)  # too late to reject: given up, counted
    stats = n.close(0.2)
    assert stats["undelivered"] == 10 and stats["sent"] == 0 and "cannot connect" in stats["last_error"]


# --- through `ds2a inspect` -------------------------------------------------------------------------

def test_inspect_with_a_dead_broker_finishes_and_keeps_the_count(tmp_path, capsys):
    pytest.importorskip("paho.mqtt", reason="paho-mqtt missing: pip install -e '.[notify]'")
    from fakes.onnx_models import threshold_onnx

    model = threshold_onnx(tmp_path / "thr.onnx")
    db = tmp_path / "i.sqlite"
    t0 = time.perf_counter()
    rc = main(["inspect", "--model", str(model), "--source", "demo://?frames=40&width=320&height=180&speed=24",
               "--headless", "--db", str(db), "--notify", f"mqtt://127.0.0.1:{free_port()}/line1/dead"])
    wall = time.perf_counter() - t0
    out = capsys.readouterr().out
    assert rc == 0 and wall < 25
    con = sqlite3.connect(str(db))
    parts = con.execute("SELECT COUNT(*) FROM verdicts").fetchone()[0]
    stats = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    con.close()
    assert parts > 0 and stats["notify"][0]["undelivered"] == parts and stats["notify"][0]["sent"] == 0
    assert f"{parts} undelivered" in out
    pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")
    from test_web import Served

    with Served(db) as s:  # the operator sees it too
        html = s.get("")[1].decode()
    assert f"<b>{parts}</b> undelivered" in html and "not connected" in html


def test_inspect_sends_every_part_to_a_live_broker(broker, tmp_path, capsys):
    from fakes.onnx_models import threshold_onnx

    sub = Subscriber(broker, "l/s/part")
    model = threshold_onnx(tmp_path / "thr.onnx")
    db = tmp_path / "i.sqlite"
    rc = main(["inspect", "--model", str(model), "--source", "demo://?frames=40&width=320&height=180&speed=24",
               "--headless", "--db", str(db), "--notify", f"mqtt://127.0.0.1:{broker}/l/s"])
    assert rc == 0
    con = sqlite3.connect(str(db))
    want = [tuple(r) for r in con.execute("SELECT part_id, verdict FROM verdicts ORDER BY id")]
    stats = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    con.close()
    assert wait_until(lambda: len(sub.messages) == len(want), 10)
    got = [(json.loads(m.payload)["part_id"], json.loads(m.payload)["verdict"]) for m in sub.messages]
    sub.close()
    assert got == want and len(want) > 0 and stats["notify"][0]["sent"] == len(want)


def test_a_missing_client_library_is_named_before_the_model_opens(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pymodbus" else real(name, *a))
    rc = main(["inspect", "--model", str(tmp_path / "never-opened.onnx"), "--headless",
               "--notify", "modbus://127.0.0.1?coil=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "pymodbus" in err and "ds2a-edge[notify]" in err and "never-opened" not in err


@pytest.mark.parametrize("url,want", [
    ("mqtt://127.0.0.1/l/s", ["part:cell-0000:FAIL", "part:cell-0001:PASS"]),
    ("mqtt://127.0.0.1/l/s?frames=1", ["frame:cell-0000:FAIL", "part:cell-0000:FAIL", "part:cell-0001:PASS"]),
    ("modbus://127.0.0.1?coil=1", ["part:cell-0000:FAIL"]),
    ("modbus://127.0.0.1?coil=1&frames=1", ["frame:cell-0000:FAIL"])])
def test_what_each_target_is_sent(url, want):
    sent: List[str] = []
    transport = SimpleNamespace(send=lambda m: sent.append(f"{m['type']}:{m['part_id']}:{m['verdict']}"),
                                close=lambda: None)
    n = Notifier(parse_notify_url(url), transport)
    fail_frame = SimpleNamespace(inspected=True, passed=False, seq=3, verdict="FAIL", reasons=["damage"], defects=[],
                                 frame=SimpleNamespace(part_id="cell-0000", t_wall=1.0))
    n.publish(fail_frame, [])
    n.publish(SimpleNamespace(inspected=True, passed=True, seq=4, verdict="PASS", reasons=[], defects=[],
                              frame=SimpleNamespace(part_id="cell-0001", t_wall=2.0)), [part(0, passed=False)])
    n.publish(None, [part(1, passed=True)])
    assert n.close()["sent"] == len(want) and sent == want
