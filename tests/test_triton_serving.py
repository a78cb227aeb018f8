"""A real Triton server (`ds2a serve`, PyTriton) on loopback and `triton://` stations against it.

One server is shared by the session (tests/conftest.py triton_server; starting one takes 5-20 s
here); the crash test starts its own. Stations get exactly the class maps and verdicts of an in-process ONNX Runtime run, the
metadata comes from the server, bad URLs and names are refused, and a station outlives a server
crash: frames while it is away are recorded as not inspected, inspection resumes after.
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from triton_server import DEMO_MODEL, ROOT, ServeProcess, free_ports, serve_skip_reason  # noqa: E402

if serve_skip_reason():
    pytest.skip(serve_skip_reason(), allow_module_level=True)

from ds2a.cli import main  # noqa: E402
from ds2a.errors import UserError  # noqa: E402
from ds2a.meta import file_sha256  # noqa: E402
from ds2a.runtime import ModelUnavailable, open_model  # noqa: E402
from ds2a.runtime.triton_backend import TritonSegmenter  # noqa: E402
from ds2a.sources.demo import DemoSource  # noqa: E402

DEMO = "demo://?frames={n}&width=320&height=180&speed=48"


@pytest.fixture
def server(triton_server):
    """The session's `ds2a serve` of DEMO_MODEL with --max-batch 4 (tests/conftest.py)."""
    return triton_server


@pytest.fixture(scope="module")
def local():
    with open_model(str(DEMO_MODEL), intra_op_threads=1) as m:
        yield m


def demo_frames(n: int) -> List[np.ndarray]:
    src = DemoSource.from_uri(f"demo://?frames={n}&seed=3")
    frames = []
    while True:
        f = src.read()
        if f is None:
            return frames
        frames.append(f.image)


def test_station_reads_the_served_metadata(server, local):
    with open_model(server.grpc_url) as station:
        assert station.backend == "triton"
        assert station.meta.to_dict() == local.meta.to_dict()
        assert station.input_size == (256, 256)
        assert station.server_info["ds2a_source_sha256"] == file_sha256(DEMO_MODEL)
        assert station.server_info["ds2a_precision"] == "int8"


def test_three_stations_at_once_match_in_process(server, local):
    frames = demo_frames(6)
    expected = [local.infer(f).class_map for f in frames]
    got: Dict[int, List[np.ndarray]] = {}
    errors: List[BaseException] = []

    def station(i: int, url: str) -> None:
        try:
            with open_model(url) as m:
                got[i] = [m.infer(f).class_map for f in frames]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    urls = [server.grpc_url, server.grpc_url, server.http_url]
    threads = [threading.Thread(target=station, args=(i, u)) for i, u in enumerate(urls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert any(e.any() for e in expected)  # the frames hold defects: the comparison has teeth
    for i in range(3):
        assert len(got[i]) == len(frames)
        for a, b in zip(got[i], expected):
            np.testing.assert_array_equal(a, b)


def test_a_batch_is_split_to_the_servers_max_batch(server, local):
    frames = np.stack([local.prepare(f) for f in demo_frames(10)])  # more than --max-batch 4
    with open_model(server.grpc_url) as m:
        assert m._max_batch == 4 and m.batch_size is None
        got = m.infer_batch(frames)
    assert len(got) == 10
    for r, f in zip(got, frames):
        np.testing.assert_array_equal(r.class_map, local.infer(f).class_map)


def _verdicts(db: Path):
    con = sqlite3.connect(db)
    try:
        frames = con.execute("SELECT seq, verdict, reasons FROM frames ORDER BY seq").fetchall()
        defects = con.execute("SELECT * FROM defects ORDER BY 1").fetchall()
        return frames, [d[1:] for d in defects]
    finally:
        con.close()


def test_three_inspect_stations_give_the_in_process_verdicts(server, tmp_path):
    n = 10
    runs = {"local": str(DEMO_MODEL), "s1": server.grpc_url, "s2": server.grpc_url, "s3": server.http_url}
    procs = {k: subprocess.Popen([sys.executable, "-m", "ds2a", "inspect", "--model", m, "--source", DEMO.format(n=n),
                                  "--headless", "--db", str(tmp_path / f"{k}.sqlite"),
                                  *(["--threads", "1"] if k == "local" else [])],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for k, m in runs.items()}
    outs = {k: p.communicate(timeout=180)[0] for k, p in procs.items()}
    for k, p in procs.items():
        assert p.returncode == 0, outs[k]
    expected = _verdicts(tmp_path / "local.sqlite")
    assert len(expected[0]) == n and {v for _, v, _ in expected[0]} & {"PASS", "FAIL"}
    for k in ("s1", "s2", "s3"):
        assert _verdicts(tmp_path / f"{k}.sqlite") == expected, outs[k]
        assert "triton" in outs[k]


def test_bench_runs_through_the_url(server, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--model", server.grpc_url, "--iterations", "5", "--warmup-s", "0",
                 "--json", str(out), "--quiet"]) == 0
    assert '"backend": "triton"' in out.read_text()


def test_bad_urls_and_names_are_refused(server):
    with pytest.raises(UserError, match=r"no ready model 'nope'; check the name given to `ds2a serve --name`"):
        open_model(server.grpc_url.replace("/ds2a", "/nope"))
    with pytest.raises(UserError, match=r"no ready model 'nope'; check the name given to `ds2a serve --name`"):
        open_model(server.http_url.replace("/ds2a", "/nope"))
    closed = free_ports(1)[0]
    for url in (f"triton://127.0.0.1:{closed}/ds2a", f"triton+http://127.0.0.1:{closed}/ds2a"):
        with pytest.raises(UserError, match=rf"cannot reach the Triton server at {url.replace('+', '[+]')}"):
            open_model(url)
    with pytest.raises(UserError, match="HTTP"):  # gRPC client at the HTTP port: the message names the protocols
        open_model(f"triton://127.0.0.1:{server.http}/ds2a?timeout=3")
    with pytest.raises(UserError, match="unknown option"):
        open_model(server.grpc_url + "?timout=3")
    with pytest.raises(UserError, match="drop --backend"):
        open_model(server.grpc_url, backend="onnxruntime")
    with pytest.raises(UserError, match="server chooses its device"):
        open_model(server.grpc_url, device="cuda")


def _config(url: str) -> dict:
    import tritonclient.grpc as g

    client = g.InferenceServerClient(url.split("//")[1].split("/")[0])
    try:
        return client.get_model_config("ds2a", as_json=True)["config"]
    finally:
        client.close()


@pytest.mark.parametrize("change, message", [
    (lambda c: c["parameters"].pop("ds2a_meta"), "is not a ds2a model"),
    (lambda c: c["input"][0].update(name="INPUT_1"), "ds2a stations send one input 'images'"),
    (lambda c: c["input"][0].update(data_type="TYPE_FP32"), "ds2a stations send"),
    (lambda c: c["input"][0].update(dims=["3", "256", "256"]), "ds2a stations send"),
    (lambda c: c["output"][0].update(name="OUTPUT_1"), "ds2a stations need"),
    (lambda c: c["output"][0].update(data_type="TYPE_INT64"), "expected uint8 class ids"),
])
def test_foreign_models_are_refused_with_the_reason(server, change, message):
    """The served config, altered the way another team's model would differ, is refused."""
    config = _config(server.grpc_url)
    TritonSegmenter(server.grpc_url)._read_config(config)  # the real one passes
    change(config)
    seg = TritonSegmenter.__new__(TritonSegmenter)
    seg.url, seg.name = server.grpc_url, "ds2a"
    with pytest.raises(UserError, match=message):
        seg._read_config(config)


def test_station_survives_a_server_crash_and_resumes(tmp_path):
    """Kill tritonserver under a paced station, start a new server on the same ports: frames while it was away
    are recorded NONE (not inspected, never PASS) and inspection goes on after the restart."""
    first = ServeProcess(tmp_path / "serve1.log").start()
    ports = (first.http, first.grpc, first.metrics)
    db = tmp_path / "station.sqlite"
    station = subprocess.Popen(
        [sys.executable, "-m", "ds2a", "inspect", "--model", first.grpc_url + "?timeout=2",
         "--source", "demo://?frames=2000&fps=8&width=320&height=180&speed=24", "--headless", "--db", str(db)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    second = None
    frame = np.zeros((256, 256, 3), np.uint8)
    probe = open_model(first.grpc_url + "?timeout=2", retry_s=0.2, max_retry_s=0.4)  # the backend, in-process
    try:
        probe.infer(frame)
        assert _wait_rows(db, "verdict IN ('PASS', 'FAIL')", 3, 60), "the station never inspected a frame"
        triton = first.tritonserver_pid()
        stubs = [int(p) for p in subprocess.run(["pgrep", "-P", str(triton)], capture_output=True,
                                                text=True).stdout.split()]
        serve_pid = first.proc.pid
        os.kill(triton, signal.SIGKILL)
        with pytest.raises(ModelUnavailable):
            probe.infer(frame)
        t0 = time.monotonic()
        with pytest.raises(ModelUnavailable, match="retrying in"):
            probe.infer(frame)  # within the backoff: refused without waiting on the network
        assert time.monotonic() - t0 < 0.1
        assert _wait_rows(db, "reasons LIKE '%not inspected%'", 2, 30), "no frame was recorded as not inspected"
        assert first.wait_exit() == 1, first.log()  # `ds2a serve` noticed the crash, cleaned up, exit 1
        assert stubs and not [p for p in stubs if _running(p)], "orphaned backend stubs left running"
        assert not list(Path("/dev/shm").glob(f"pytrtion{serve_pid}-*")), "shared memory left behind"
        inspected_before = _count(db, "verdict IN ('PASS', 'FAIL')")
        second = ServeProcess(tmp_path / "serve2.log", ports=ports).start()
        assert _wait_rows(db, "verdict IN ('PASS', 'FAIL')", inspected_before + 3, 60), "no frames after restart"
        deadline = time.monotonic() + 10
        while True:
            try:
                np.testing.assert_array_equal(probe.infer(frame).class_map, probe.infer(frame).class_map)
                break
            except ModelUnavailable:
                assert time.monotonic() < deadline, "the backend did not reconnect"
                time.sleep(0.1)
        assert probe.reconnects == 1 and probe.away_frames >= 2
    finally:
        probe.close()
        station.send_signal(signal.SIGTERM)
        out = station.communicate(timeout=60)[0]
        if second is not None:
            second.stop()
        first.stop()
    assert station.returncode == 143, out  # stopped by SIGTERM, records flushed
    con = sqlite3.connect(db)
    rows = con.execute("SELECT seq, verdict, reasons FROM frames ORDER BY seq").fetchall()
    con.close()
    away = [s for s, v, r in rows if r and "not inspected" in r]
    assert away and all(v == "NONE" for s, v, r in rows if s in set(away))
    assert any(v in ("PASS", "FAIL") for s, v, _ in rows if s > max(away))  # resumed after the restart
    assert "model unavailable" in out and "model back after" in out


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's exit is reaped by whoever is pid 1 here, maybe late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _count(db: Path, where: str) -> int:
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute(f"SELECT COUNT(*) FROM frames WHERE {where}").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _wait_rows(db: Path, where: str, n: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if db.exists() and _count(db, where) >= n:
            return True
        time.sleep(0.5)
    return False



def test_the_python_backend_stub_loads_this_interpreters_libpython(server):
    """The trap `ds2a serve` fixes: the stub must map the running interpreter's libpython, not the system's
    (the fixture starts the server with LD_LIBRARY_PATH unset)."""
    import sysconfig

    triton = server.tritonserver_pid()
    stubs = subprocess.run(["pgrep", "-P", str(triton), "-f", "triton_python_backend_stub"], capture_output=True,
                           text=True).stdout.split()
    assert stubs, "no Python-backend stub under tritonserver"
    maps = Path(f"/proc/{stubs[0]}/maps").read_text()
    libs = {line.split()[-1] for line in maps.splitlines() if "libpython" in line}
    libdir = os.path.realpath(sysconfig.get_config_var("LIBDIR"))
    assert libs and all(os.path.realpath(p).startswith(libdir + os.sep) for p in libs), libs


STATION_SCRIPT = """
import importlib.abc, json, sys

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "onnxruntime", "pytriton"):
            raise ImportError(f"{name} is blocked on this station")

sys.meta_path.insert(0, Block())
import numpy as np
from ds2a.runtime import open_model
with open_model(sys.argv[1]) as m:
    cm = m.infer(np.full((256, 256, 3), 40, np.uint8)).class_map
print(json.dumps({"sum": int(cm.sum()), "mods": sorted(k for k in sys.modules if k.split(".")[0] in
                  ("torch", "onnxruntime", "pytriton"))}))
"""


def test_a_station_needs_neither_torch_nor_onnxruntime(server, local):
    import json

    for url in (server.grpc_url, server.http_url):
        out = subprocess.run([sys.executable, "-c", STATION_SCRIPT, url], capture_output=True, text=True, cwd=ROOT,
                             timeout=120)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout.strip().splitlines()[-1])
        assert got["mods"] == []
        assert got["sum"] == int(local.infer(np.full((256, 256, 3), 40, np.uint8)).class_map.sum())


def test_eval_through_the_url_scores_like_the_local_model(server, tmp_path, capsys):
    import json

    data = tmp_path / "synth"
    assert main(["synth", str(data), "--train", "1", "--test", "3", "--size", "256x256", "--seed", "1"]) == 0
    scores = {}
    for key, model in (("served", server.grpc_url), ("local", str(DEMO_MODEL))):
        assert main(["eval", "--model", model, "--data", str(data), "--json", str(tmp_path / f"{key}.json")]) == 0
        scores[key] = json.loads((tmp_path / f"{key}.json").read_text())
    assert scores["served"]["backend"] == "triton"
    assert scores["served"]["mIoU"] == scores["local"]["mIoU"]


def test_health_metrics_and_statistics_are_open_model_control_is_not(server, local):
    import json
    import urllib.error
    import urllib.request

    base = f"http://127.0.0.1:{server.http}"
    assert urllib.request.urlopen(f"{base}/v2/health/ready", timeout=10).status == 200
    with open_model(server.http_url) as m:
        m.infer(np.zeros((256, 256, 3), np.uint8))
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10).read().decode()
    assert 'nv_inference_exec_count{model="ds2a",version="1"}' in metrics
    stats = json.loads(urllib.request.urlopen(f"{base}/v2/models/ds2a/stats", timeout=10).read())
    assert stats["model_stats"][0]["batch_stats"][0]["batch_size"] >= 1
    with pytest.raises(urllib.error.HTTPError):  # loading/unloading models stays behind PyTriton's token
        urllib.request.urlopen(urllib.request.Request(f"{base}/v2/repository/models/ds2a/unload", data=b"{}",
                                                      method="POST"), timeout=10)


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_a_request_past_its_timeout_is_not_inspected_not_fatal(server, kind):
    url = server.grpc_url if kind == "grpc" else server.http_url
    with open_model(url, retry_s=0.05) as m:
        frame = np.zeros((256, 256, 3), np.uint8)
        m.infer(frame)
        m.timeout_s = 0.001  # no answer can come that fast
        m._connect()
        with pytest.raises(ModelUnavailable, match="unavailable"):
            m.infer(frame)
        m.timeout_s = 30.0
        time.sleep(0.1)
        m.infer(frame)  # back after the backoff
        assert m.reconnects == 1
