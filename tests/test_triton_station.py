"""`triton://` URLs: parsed, routed to the Triton backend by open_model, refused with the fix when malformed."""
from __future__ import annotations

import pytest

from ds2a.errors import UserError
from ds2a.runtime import backend_for, open_model
from ds2a.runtime.triton_backend import parse_url


@pytest.mark.parametrize("url, expected", [
    ("triton://gpu-server/ds2a", ("grpc", "gpu-server", 8001, "ds2a", {})),
    ("triton+grpc://10.0.0.5:9001/line3?timeout=2.5", ("grpc", "10.0.0.5", 9001, "line3", {"timeout": "2.5"})),
    ("triton+http://gpu-server/ds2a?version=2", ("http", "gpu-server", 8000, "ds2a", {"version": "2"})),
    ("TRITON://[::1]:8001/ds2a", ("grpc", "::1", 8001, "ds2a", {})),
])
def test_urls_parse(url, expected):
    assert parse_url(url) == expected
    assert backend_for(url) == "triton"


@pytest.mark.parametrize("url, message", [
    ("triton://gpu-server", "needs a host and one model name"),
    ("triton://:8001/ds2a", "needs a host and one model name"),
    ("triton://gpu-server/a/b", "needs a host and one model name"),
    ("triton://gpu-server:99999/ds2a", "port is not a number"),
    ("triton://gpu-server/ds2a?timeout=1&batch=4", "unknown option"),
])
def test_bad_urls_are_refused(url, message):
    with pytest.raises(UserError, match=message):
        parse_url(url)


def test_open_model_routes_urls_and_checks_options():
    pytest.importorskip("tritonclient.grpc")
    with pytest.raises(UserError, match="timeout=abc is not a number"):
        open_model("triton://127.0.0.1:1/ds2a?timeout=abc")
    with pytest.raises(UserError, match="more than 0 seconds"):
        open_model("triton://127.0.0.1:1/ds2a?timeout=0")
    with pytest.raises(UserError, match=r"cannot reach the Triton server at triton://127.0.0.1:1/ds2a"):
        open_model("triton://127.0.0.1:1/ds2a?timeout=2")
    with pytest.raises(UserError, match="drop --backend tensorrt"):
        backend_for("triton://h/ds2a", "tensorrt")


def test_the_loop_records_frames_while_the_model_is_away_as_not_inspected():
    """A served model that is away (ModelUnavailable) drops frames as NONE, never PASS, and the run goes on."""
    from fakes.segmenter import ThresholdSegmenter
    from test_inspect_loop import CLASSES, Collect, CounterSource, _loop

    from ds2a.runtime import ModelUnavailable

    class Flaky(ThresholdSegmenter):
        calls = 0

        def infer_batch(self, frames):
            Flaky.calls += 1
            if 3 <= Flaky.calls <= 5:
                raise ModelUnavailable("the model server triton://h/ds2a is unreachable; retrying in 0.5 s")
            return super().infer_batch(frames)

    out = Collect()
    loop = _loop(CounterSource(9, live=False), Flaky((16, 16), classes=CLASSES), out)
    stats = loop.run()
    verdicts = [r.verdict for r in out.results]
    assert verdicts[2:5] == ["NONE"] * 3 and "NONE" not in verdicts[:2] + verdicts[5:]
    assert all(r.class_map is None and "not inspected" in r.reasons[0] for r in out.results[2:5])
    assert stats.frames == 9 and stats.model_away == 3 and stats.dropped == 3
    assert any("model unavailable" in n for n in loop.notes) and any("model back" in n for n in loop.notes)


def test_a_station_with_its_triton_server_killed_mid_run_keeps_every_invariant(tmp_path, capsys):
    """A real `ds2a serve` killed (SIGKILL of tritonserver) under a paced station, then started again on the
    same ports: every part that passed meanwhile has one verdict (NONE: not inspected), no part has two,
    the report counts 'not inspected' frames apart from 'no part in view', and `report --check` passes."""
    import json
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from triton_server import ROOT, ServeProcess, serve_skip_reason

    from ds2a.cli import main

    why = serve_skip_reason()
    if why:
        pytest.skip(why)
    first = ServeProcess(tmp_path / "serve1.log").start()
    db = tmp_path / "station.sqlite"
    station = subprocess.Popen(
        [sys.executable, "-m", "ds2a", "inspect", "--model", first.grpc_url + "?timeout=2", "--jsonl",
         "--source", "demo://?frames=5000&fps=10&width=320&height=180&speed=24", "--headless", "--db", str(db)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    second = None

    def rows(where: str) -> int:
        try:
            con = sqlite3.connect(db, timeout=5)
            try:
                return con.execute(f"SELECT COUNT(*) FROM frames WHERE {where}").fetchone()[0]
            finally:
                con.close()
        except sqlite3.Error:
            return 0

    def wait(where: str, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if station.poll() is not None:
                return False
            if db.exists() and rows(where) >= n:
                return True
            time.sleep(0.3)
        return False

    failed = ""
    try:
        if not wait("verdict IN ('PASS', 'FAIL')", 5, 90):
            failed = "the station never inspected a frame"
        else:
            ports = (first.http, first.grpc, first.metrics)
            os.kill(first.tritonserver_pid(), signal.SIGKILL)
            if not wait("reasons LIKE '%not inspected%'", 25, 60):
                failed = "no outage long enough for parts to pass"
            else:
                first.wait_exit()
                judged = rows("verdict IN ('PASS', 'FAIL')")
                second = ServeProcess(tmp_path / "serve2.log", ports=ports).start()
                # the reconnect itself is test_triton_serving.py's subject: here only that judging resumes
                if not wait("verdict IN ('PASS', 'FAIL')", judged + 3, 240):
                    failed = "no frames inspected after the restart"
    finally:
        station.send_signal(signal.SIGTERM)
        out, err = station.communicate(timeout=60)
        logs = (second.log() if second is not None else "")[-2000:]
        if second is not None:
            second.stop()
        first.stop()
    assert not failed, f"{failed}\n{err[-4000:]}\n--- second server:\n{logs}"
    assert station.returncode == 143, err
    printed = [json.loads(line) for line in out.splitlines()]
    parts = [p for p in printed if p["type"] == "part"]
    ids = [p["part_id"] for p in parts]
    assert len(ids) == len(set(ids)), "a part got two verdicts"
    con = sqlite3.connect(db)
    recorded = con.execute("SELECT part_id, verdict, reasons FROM verdicts ORDER BY id").fetchall()
    con.close()
    assert [(p["part_id"], p["verdict"]) for p in parts] == [(r[0], r[1]) for r in recorded]
    none = [r for r in recorded if r[1] == "NONE"]
    assert none and all("not inspected" in r[2] for r in none), "parts that passed the outage got no NONE verdict"
    assert main(["report", str(db)]) == 0
    report = capsys.readouterr().out
    assert f"{len(none)} NONE (not inspected)" in report and " not inspected), " in report
    assert main(["report", str(db), "--check"]) == 0, capsys.readouterr().out
