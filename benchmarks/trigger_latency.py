#!/usr/bin/env python3
"""Latency from a trigger to its published result (`ds2a inspect --trigger`), as the line sees it.

A mosquitto broker and a pymodbus server (the PLC's memory) run on loopback; `ds2a inspect
--trigger` runs as its own process with the demo model on the CPU, 1280x720 demo:// frames and the
whole frame inspected (--roi 0,0,1280,720, so every trigger is judged). The line sends one trigger
at a time, waits for its answer, then pauses 50-150 ms (random, so the camera's frame phase varies):
- MQTT: from publishing PREFIX/trigger to receiving PREFIX/result (both in this process);
- Modbus: from the PLC's trigger coil being written to the station's done coil being written, both
  timed where the PLC's memory receives them (the pymodbus server's trace), with the default
  10 ms poll.
Two cameras: `demo://?fps=30` (live, like a camera: the station waits for the first frame after the
trigger, up to 33 ms) and `demo://` (frames on demand: no camera wait). One more MQTT row sends the
triggers in bursts (`--burst N` back to back): each must still get one answer, in order, judged or
NONE by its deadline. Machine load (`uptime`) is recorded before and after, since the numbers depend on it.

    python benchmarks/trigger_latency.py --triggers 100 --markdown benchmarks/results/trigger.md
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
MODEL = "ds2a/assets/demo/ds2a_tiny_synth.int8.onnx"
sys.path[:] = [str(ROOT)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]
from ds2a.notify.handshake import CAUSES  # noqa: E402

CODES = {code: name for name, code in CAUSES.items()}  # Modbus reason register -> cause


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond, timeout: float, step: float = 0.01) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(step)
    return bool(cond())


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


class Broker:
    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
        if exe is None:
            raise SystemExit("mosquitto not installed (Debian: apt-get install mosquitto)")
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_until(self._up, 10):
            raise SystemExit("mosquitto did not start")

    def _up(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


class Plc:
    """pymodbus's server as the PLC's memory; every write is timed where it arrives."""

    def __init__(self, unit: int = 1) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pymodbus.datastore import ModbusDeviceContext, ModbusSequentialDataBlock, ModbusServerContext
            from pymodbus.server import ModbusTcpServer
        self.port, self.unit = free_port(), unit
        self.events: List[Any] = []
        self.changed = threading.Condition()
        loop = asyncio.new_event_loop()
        box: Dict[str, Any] = {}

        def trace(sending: bool, pdu: Any) -> Any:
            if not sending and "Write" in type(pdu).__name__:
                with self.changed:
                    self.events.append((pdu.address, list(pdu.bits), list(pdu.registers), time.perf_counter()))
                    self.changed.notify_all()
            return pdu

        async def serve() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ctx = ModbusServerContext(devices={unit: ModbusDeviceContext(
                    co=ModbusSequentialDataBlock(1, [False] * 64), hr=ModbusSequentialDataBlock(1, [0] * 64))},
                    single=False)
            box["server"] = ModbusTcpServer(ctx, address=("127.0.0.1", self.port), trace_pdu=trace)
            await box["server"].serve_forever()

        self.loop, self.box = loop, box
        self.thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
        self.thread.start()
        time.sleep(0.5)

    def wait_for(self, match, since: int, timeout: float) -> Optional[Any]:
        """The first write after index `since` that `match`es."""
        end = time.perf_counter() + timeout
        with self.changed:
            while True:
                for ev in self.events[since:]:
                    if match(ev):
                        return ev
                left = end - time.perf_counter()
                if left <= 0:
                    return None
                self.changed.wait(left)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.box["server"].shutdown(), self.loop).result(5)


THREADS: List[str] = []  # --threads N for the station's ONNX Runtime, when given


def start_station(trigger: str, source: str, n: Optional[int], db: Path, timeout_s: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "ds2a", "inspect", "--model", MODEL, "--source", source, "--headless",
           "--roi", "0,0,1280,720", "--db", str(db), "--trigger", trigger,
           "--trigger-timeout", str(timeout_s)] + THREADS + (["--max-frames", str(n)] if n else [])
    return subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def run_mqtt(broker: Broker, source: str, n: int, db: Path, timeout_s: float, burst: int = 1) -> List[Dict[str, Any]]:
    """`n` triggers, `burst` at a time (sent back to back), each group after the last one's answers."""
    import paho.mqtt.client as mqtt

    prefix = f"bench/{int(time.time() * 1000)}"
    got: List[Any] = []
    online = threading.Event()
    arrived = threading.Condition()

    def on_message(_c: Any, _u: Any, m: Any) -> None:
        t = time.perf_counter()
        if m.topic.endswith("/status") and json.loads(m.payload).get("state") == "online":
            online.set()
        elif m.topic.endswith("/result"):
            with arrived:
                got.append((t, json.loads(m.payload)))
                arrived.notify_all()

    line = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-line-{prefix}")
    line.on_message = on_message
    line.on_connect = lambda c, *a: c.subscribe(f"{prefix}/#", qos=1)
    line.connect("127.0.0.1", broker.port)
    line.loop_start()
    # in bursts some triggers are answered NONE and never inspected: the run is ended by SIGTERM instead
    station = start_station(f"mqtt://127.0.0.1:{broker.port}/{prefix}", source, n if burst == 1 else None, db,
                            timeout_s)
    rows: List[Dict[str, Any]] = []
    sent: List[float] = []
    try:
        if not online.wait(120):
            raise SystemExit(f"the station did not come online: {station.stderr.read() if station.poll() else ''}")
        while len(sent) < n:
            time.sleep(random.uniform(0.05, 0.15) if burst == 1 else 1.5)
            for _ in range(min(burst, n - len(sent))):
                sent.append(time.perf_counter())
                line.publish(f"{prefix}/trigger", json.dumps({"part_id": f"B{len(sent) - 1:05d}"}), qos=1)
            with arrived:
                if not arrived.wait_for(lambda: len(got) >= len(sent), timeout_s + 10):
                    raise SystemExit(f"no result for trigger {len(got) + 1}")
        for t0, (t1, msg) in zip(sent, got):
            rows.append({"ms": (t1 - t0) * 1e3, "verdict": msg["verdict"], "station_ms": msg["latency_ms"],
                         "part_id": msg["part_id"], "seq": msg["seq"], "cause": msg["cause"]})
        if burst == 1:
            station.wait(60)
        else:
            station.terminate()  # SIGTERM: a clean stop, the records closed
            station.wait(60)
    finally:
        if station.poll() is None:
            station.terminate()
            station.wait(30)
        line.disconnect()
        line.loop_stop()
    return rows


def run_modbus(plc: Plc, source: str, n: int, db: Path, timeout_s: float) -> List[Dict[str, Any]]:
    from pymodbus.client import ModbusTcpClient

    since = len(plc.events)
    station = start_station(f"modbus://127.0.0.1:{plc.port}?unit={plc.unit}", source, n, db, timeout_s)
    prog = ModbusTcpClient("127.0.0.1", port=plc.port)
    prog.connect()
    unit = {"device_id": plc.unit}
    rows: List[Dict[str, Any]] = []
    try:  # the station clears busy and done when it starts listening
        if plc.wait_for(lambda e: e[0] == 2 and e[1][:1] == [False], since, 120) is None:
            raise SystemExit(f"the station did not start: {station.stderr.read() if station.poll() else ''}")
        for i in range(n):
            time.sleep(random.uniform(0.05, 0.15))
            prog.write_registers(0, [0, 1000 + i], **unit)
            mark = len(plc.events)
            prog.write_coil(0, True, **unit)
            trig = plc.wait_for(lambda e: e[0] == 0 and e[1][:1] == [True], mark, 5)
            done = plc.wait_for(lambda e: (e[0] == 1 and e[1][:2] == [False, True]), mark, timeout_s + 5)
            if trig is None or done is None:
                raise SystemExit(f"no done for trigger {i + 1}")
            regs = prog.read_holding_registers(10, count=5, **unit).registers
            mark = len(plc.events)
            prog.write_coil(0, False, **unit)
            if plc.wait_for(lambda e: e[0] == 2 and e[1][:1] == [False], mark, 5) is None:
                raise SystemExit(f"done not reset after trigger {i + 1}")
            rows.append({"ms": (done[3] - trig[3]) * 1e3, "verdict": {1: "PASS", 2: "FAIL", 3: "NONE"}[regs[0]],
                         "seq": regs[2], "part_id": str(regs[4]), "cause": regs[1]})
        station.wait(60)
    finally:
        if station.poll() is None:
            station.terminate()
            station.wait(30)
        prog.close()
    return rows


def station_stats(db: Path) -> Dict[str, Any]:
    con = sqlite3.connect(str(db))
    row = con.execute("SELECT stats FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    con.close()
    stats = json.loads(row[0]) if row and row[0] else {}
    return {"trigger": stats.get("trigger", {}), "infer_ms": stats.get("timings", {}).get("infer", {})}


def pct(values: List[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q, method="inverted_cdf"))  # nearest rank, as the station's


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--triggers", type=int, default=100, help="triggers per configuration (default 100)")
    ap.add_argument("--timeout", type=float, default=1.0, help="--trigger-timeout of the station (default 1)")
    ap.add_argument("--burst", type=int, default=10, help="and an MQTT row with triggers sent N at a time "
                    "(default 10; 1: no such row)")
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads of the station (default: its own)")
    ap.add_argument("--markdown", help="write the results to this file")
    args = ap.parse_args()
    if args.threads:
        THREADS[:] = ["--threads", str(args.threads)]
    random.seed(0)
    before = uptime()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, plc = Broker(work), Plc()
        try:
            configs = [(t, cam, src, 1) for t in ("mqtt", "modbus")
                       for cam, src in (("camera 30 fps", "demo://?fps=30"), ("frames on demand", "demo://"))]
            if args.burst > 1:  # Modbus serves one part at a time by its handshake: bursts are MQTT's
                configs.append(("mqtt", f"frames on demand, bursts of {args.burst}", "demo://", args.burst))
            for transport, camera, source, burst in configs:
                db = work / f"{transport}-{len(results)}.sqlite"
                t0 = time.time()
                rows = (run_mqtt(broker, source, args.triggers, db, args.timeout, burst) if transport == "mqtt"
                        else run_modbus(plc, source, args.triggers, db, args.timeout))
                ms = [r["ms"] for r in rows]
                ok = [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
                verdicts = {v: sum(1 for r in rows if r["verdict"] == v) for v in ("PASS", "FAIL", "NONE")}
                causes: Dict[str, int] = {}
                for r in rows:
                    if r["verdict"] == "NONE":
                        name = CODES.get(r["cause"], str(r["cause"])) if transport == "modbus" else r["cause"]
                        causes[name] = causes.get(name, 0) + 1
                st = station_stats(db)
                res = {"transport": transport, "camera": camera, "source": source, "n": len(rows), "in_order": ok,
                       "verdicts": verdicts, "none_causes": causes, "p50": pct(ms, 50), "p90": pct(ms, 90),
                       "p99": pct(ms, 99), "max": max(ms),
                       "station_p50": st["trigger"].get("latency_ms", {}).get("p50"),
                       "station_p99": st["trigger"].get("latency_ms", {}).get("p99"),
                       "infer_p50": st["infer_ms"].get("median") or st["infer_ms"].get("p50"),
                       "wall_s": round(time.time() - t0, 1)}
                results.append(res)
                print(json.dumps(res), flush=True)
        finally:
            broker.close()
            plc.close()
    after = uptime()
    text = report(results, before, after, args)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    return 0


def report(results: List[Dict[str, Any]], before: str, after: str, args: argparse.Namespace) -> str:
    import onnxruntime

    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.1f}"

    lines = ["# Trigger to result latency (`ds2a inspect --trigger`)", "",
             f"- model: `{MODEL}` (256x256, ONNX Runtime {onnxruntime.__version__} on the CPU, "
             f"{f'{args.threads} intra-op thread(s)' if args.threads else 'its default threads'}); frames 1280x720 "
             "from demo://, the whole frame inspected (`--roi 0,0,1280,720`)",
             f"- {args.triggers} triggers per row, one at a time, 50-150 ms apart (the bursts row: {args.burst} sent "
             "back to back, the next group 1.5 s after the last answer); "
             f"`--trigger-timeout {args.timeout:g}`",
             f"- machine: {platform.machine()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}",
             f"- `uptime` before: `{before}`", f"- `uptime` after: `{after}`",
             f"- command: `python benchmarks/trigger_latency.py --triggers {args.triggers}"
             f"{'' if args.timeout == 1.0 else f' --timeout {args.timeout:g}'}"
             f"{f' --threads {args.threads}' if args.threads else ''}"
             f"{f' --burst {args.burst}' if args.burst != 10 else ''} --markdown benchmarks/results/trigger.md`",
             "", "Latency as the line sees it, ms (MQTT: trigger published -> result received; Modbus: trigger coil "
             "written -> done coil written, timed at the PLC's memory). `station` is the station's own "
             "measurement, trigger seen -> answer handed to the transport (`runs.stats.trigger`).", "",
             "| transport | camera | n | in order | PASS / FAIL / NONE (why) | p50 | p90 | p99 | max | station p50 | "
             "station p99 | model p50 |", "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        v = r["verdicts"]
        why = f" ({', '.join(f'{k} {n}' for k, n in sorted(r['none_causes'].items()))})" if r["none_causes"] else ""
        lines.append(f"| {r['transport']} | {r['camera']} | {r['n']} | {'yes' if r['in_order'] else 'NO'} | "
                     f"{v['PASS']} / {v['FAIL']} / {v['NONE']}{why} | {f(r['p50'])} | {f(r['p90'])} | {f(r['p99'])} | "
                     f"{f(r['max'])} | {f(r['station_p50'])} | {f(r['station_p99'])} | {f(r['infer_p50'])} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
