"""The operator's page without a browser: same numbers as `ds2a report`, every database string escaped,
the database never written, loopback by default and a token beyond it, clear errors at start.
(tests/test_web_browser.py drives the same page in headless Chromium.)"""
from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import cv2
import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")
pytest.importorskip("matplotlib", reason="the web page's charts need matplotlib: pip install -e '.[web]'")

from ds2a.cli import main  # noqa: E402
from ds2a.errors import UserError  # noqa: E402
from ds2a.inspect.loop import Result  # noqa: E402
from ds2a.inspect.parts import PartVerdict  # noqa: E402
from ds2a.inspect.quantify import Defect  # noqa: E402
from ds2a.records.database import Records  # noqa: E402
from ds2a.records.report import summarise  # noqa: E402
from ds2a.sources import Frame  # noqa: E402
from ds2a.web import data, page  # noqa: E402
from ds2a.web.server import BackgroundServer, Site, check_exposure, make_app, parse_bind  # noqa: E402

HOSTILE = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


def make_db(path: Path, parts: int = 12, hostile: bool = False, runs: int = 1, seed: int = 0) -> Path:
    """A records database like `ds2a inspect` writes: two frames per part, some parts FAIL with saved images.
    With `hostile`, the model, source, part ids, class names and reasons carry HTML."""
    rng = np.random.default_rng(seed)
    tag = HOSTILE if hostile else ""
    classes = ["background", "damage" + tag, "dust" + tag]
    fail_dir = path.parent / "fail"
    fail_dir.mkdir(parents=True, exist_ok=True)
    for r in range(runs):
        rec = Records(str(path))
        run_id = rec.start_run("model" + tag + ".onnx", "onnxruntime", "demo://" + tag, classes, {}, 0.1)
        t0 = time.time() - 600 + r
        seq = 0
        for p in range(parts):
            failed = bool(rng.random() < 0.4)
            part_id = f"cell-{p:04d}" + (tag if hostile and p == 1 else "")
            for k in range(2):
                image = np.full((48, 64, 3), 90 + 10 * k, np.uint8)
                defects = [Defect(1 + (seq % 2), classes[1 + (seq % 2)], 30.0 + seq, 3.0, (5, 6, 7, 8), (8.5, 10.0), 0.9)
                           ] if failed and k == 1 else []
                reasons = [f"{d.class_name}: count 1 > max_count 0" for d in defects]
                frame = Frame(image, seq, t0 + seq * 10.0, 0.0, part_id)
                res = Result(seq, frame, np.zeros((8, 8), np.uint8), defects, not defects, reasons,
                             ms={"queue": 1.0 + seq, "preprocess": 0.5, "infer": 20.0 + seq % 5, "postprocess": 1.0,
                                 "output": 2.0, "latency": 30.0 + seq})
                ann = raw = None
                if defects:
                    ann, raw = str(fail_dir / f"r{run_id}_{seq}_annotated.jpg"), str(fail_dir / f"r{run_id}_{seq}_raw.jpg")
                    cv2.imwrite(ann, np.full((48, 64, 3), (0, 0, 255), np.uint8))
                    cv2.imwrite(raw, image)
                rec.add_frame(res, ann, raw)
                seq += 1
            rec.add_verdict(PartVerdict(part_id, "part", not failed,
                                        [f"{classes[1]}: count 1 > max_count 0"] if failed else [],
                                        seq - 2, seq - 1, 2, t0 + (seq - 2) * 10.0, t0 + (seq - 1) * 10.0))
            rec.commit()
        rec.finish_run("finished", {"frames": seq, "dropped": 0, "corrupt": 0, "reconnects": 0, "e2e_fps": 9.5,
                                    "model_fps": 40.0})
        rec.close()
    return path


def sql_counts(path: Path, run_id: int) -> Dict[str, int]:
    """The page's numbers straight from SQL, independently of the code under test."""
    con = sqlite3.connect(str(path))
    try:
        q = lambda sql: con.execute(sql, (run_id,)).fetchone()[0]  # noqa: E731
        return {"parts": q("SELECT COUNT(*) FROM verdicts WHERE run_id=?"),
                "pass": q("SELECT COUNT(*) FROM verdicts WHERE run_id=? AND verdict='PASS'"),
                "fail": q("SELECT COUNT(*) FROM verdicts WHERE run_id=? AND verdict='FAIL'"),
                "frames": q("SELECT COUNT(*) FROM frames WHERE run_id=?"),
                "frames_fail": q("SELECT COUNT(*) FROM frames WHERE run_id=? AND verdict='FAIL'")}
    finally:
        con.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Served:
    """The app on a background thread at 127.0.0.1:<free port>."""

    def __init__(self, db: Optional[Path], live=None, token: Optional[str] = None) -> None:
        self.server = BackgroundServer(make_app(Site(str(db) if db else None, live), token), "127.0.0.1", 0)
        self.port = self.server.start()
        self.url = f"http://127.0.0.1:{self.port}/"

    def get(self, path: str, headers: Optional[Dict[str, str]] = None):
        req = urllib.request.Request(self.url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read(), exc.headers

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()


def tiles(html: str) -> Dict[str, str]:
    return dict(re.findall(r"data-k='([a-z_]+)'>([^<]*)<", html))


def test_page_counts_are_report_numbers_and_sql(tmp_path, capsys):
    db = make_db(tmp_path / "i.sqlite", parts=15, runs=2, seed=3)
    with Served(db) as s:
        for run_id in (1, 2):
            status, body, headers = s.get(f"?run={run_id}")
            assert status == 200 and "script-src 'self'" in headers["Content-Security-Policy"]
            shown, want = tiles(body.decode()), sql_counts(db, run_id)
            assert {k: int(shown[k]) for k in want} == want
            assert want["fail"] > 0 and want["pass"] > 0  # the numbers can disagree
            assert shown["pass_rate"] == f"{100.0 * want['pass'] / want['parts']:.1f}%"
            assert main(["report", str(db), "--run", str(run_id)]) == 0  # and `ds2a report` says the same
            assert f"{want['parts']}: {want['pass']} PASS, {want['fail']} FAIL" in capsys.readouterr().out
            status, body, _ = s.get(f"api/summary?run={run_id}")
            con = data.open_readonly(str(db))
            assert json.loads(body) == json.loads(json.dumps(summarise(con, run_id)))
            con.close()
        status, body, _ = s.get("")  # no ?run: the latest
        assert "data-run='2'" in body.decode()
        assert s.get("?run=7")[0] == 404 and s.get("?run=x")[0] == 404


def test_trend_buckets_add_up_and_charts_are_svg(tmp_path):
    db = make_db(tmp_path / "i.sqlite", parts=20, seed=1)
    con = data.open_readonly(str(db))
    tr = data.trend(con, 1)
    want = sql_counts(db, 1)
    assert sum(tr["parts"]) == want["parts"] and sum(tr["passed"]) == want["pass"]
    n_defects = con.execute("SELECT COUNT(*) FROM defects WHERE run_id=1").fetchone()[0]
    assert sum(sum(v) for v in tr["defects"].values()) == n_defects > 0
    assert tr["n"] <= 31 and tr["interval_s"] in data.STEPS_S
    con.close()
    assert data.interval_for(10) == 1 and data.interval_for(3600) == 120 and data.interval_for(1e9) == 86400
    with Served(db) as s:
        for name in ("pass_rate", "defects"):
            status, body, headers = s.get(f"chart/{name}.svg?run=1")
            assert status == 200 and headers["Content-Type"].startswith("image/svg+xml") and b"<svg" in body[:400]
        assert s.get("chart/other.svg?run=1")[0] == 404


def test_every_database_string_is_escaped(tmp_path):
    db = make_db(tmp_path / "i.sqlite", parts=6, hostile=True, seed=2)
    with Served(db) as s:
        pages = [s.get("")[1].decode()]
        con = sqlite3.connect(str(db))
        frame_ids = [r[0] for r in con.execute("SELECT id FROM frames WHERE verdict='FAIL'")]
        con.close()
        pages += [s.get(f"failure/{i}")[1].decode() for i in frame_ids]
        svg = s.get("chart/defects.svg?run=1")[1].decode()
    for html in pages:
        assert "<script>document" not in html and "<img src=x" not in html
        assert "&lt;script&gt;document.title=&#x27;pwned&#x27;&lt;/script&gt;" in html
        assert set(re.findall(r"<script[^>]*>", html)) <= {"<script src='static/page.js' defer>",
                                                            "<script src='../static/page.js' defer>"}
    assert "<script>" not in svg and "&lt;script&gt;" in svg  # class names in the chart's legend, too


def test_failure_page_lists_the_regions_and_serves_only_recorded_images(tmp_path):
    db = make_db(tmp_path / "i.sqlite", parts=8, seed=4)
    con = sqlite3.connect(str(db))
    fid, raw = con.execute("SELECT id, raw_path FROM frames WHERE verdict='FAIL' LIMIT 1").fetchone()
    regions = con.execute("SELECT COUNT(*) FROM defects WHERE frame_id=?", (fid,)).fetchone()[0]
    con.close()
    with Served(db) as s:
        html = s.get(f"failure/{fid}")[1].decode()
        assert html.count("<tr><td>") == regions >= 1
        for link in re.findall(r"(?:src|href)='([^']+)'", html):  # every relative link of the page resolves
            target = urllib.parse.urljoin(f"{s.url}failure/{fid}", link)
            assert s.get(target[len(s.url):])[0] == 200, link
        status, body, headers = s.get(f"image/{fid}/raw")
        assert status == 200 and body == Path(raw).read_bytes() and headers["Content-Type"] == "image/jpeg"
        assert s.get(f"image/{fid}/annotated")[0] == 200
        assert s.get("image/1/raw")[0] == 404  # a PASS frame: no image
        assert s.get(f"image/{fid}/..%2F..%2Fetc%2Fpasswd")[0] == 404
        assert s.get("failure/999999")[0] == 404
        assert s.get("static/page.js")[0] == 200 and s.get("static/..%2Fserver.py")[0] == 404
        os.remove(raw)
        assert s.get(f"image/{fid}/raw")[0] == 404  # file gone: said, not a traceback
        secret = tmp_path / "secret.txt"
        secret.write_text("not for the plant network")
        con = sqlite3.connect(str(db))
        con.execute("UPDATE frames SET raw_path=? WHERE id=?", (str(secret), fid))
        con.commit()
        con.close()
        assert s.get(f"image/{fid}/raw")[0] == 404  # a database row never turns the page into a file server


def test_database_is_opened_read_only_and_never_changed(tmp_path):
    db = make_db(tmp_path / "i.sqlite", parts=5)
    before = digest(db)
    with Served(db) as s:
        assert s.get("")[0] == 200 and s.get("chart/pass_rate.svg?run=1")[0] == 200
        assert s.get("failure/2")[0] == 200
    assert digest(db) == before  # SQLite's WAL readers may add an empty -wal and a -shm, never rows
    wal = Path(str(db) + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    con = data.open_readonly(str(db))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        con.execute("DELETE FROM runs")
    con.close()


def test_token_guards_the_page(tmp_path):
    db = make_db(tmp_path / "i.sqlite", parts=3)
    token = "s3cret-token-for-test"
    with Served(db, token=token) as s:
        assert s.get("")[0] == 401 and s.get("api/summary")[0] == 401 and s.get("live.jpg")[0] == 401
        assert s.get("?token=wrong-token-xxxxxx")[0] == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(s.url + f"?run=1&token={token}", timeout=10) as resp:  # sets a cookie, drops the token
            assert resp.status == 200 and "token" not in resp.url and "run=1" in resp.url
        with opener.open(s.url + "api/summary", timeout=10) as resp:
            assert resp.status == 200
        assert s.get("api/summary", {"Authorization": f"Bearer {token}"})[0] == 200


@pytest.mark.parametrize("bind,token,insecure,ok", [
    ("127.0.0.1:8080", None, False, True), ("localhost:0", None, False, True), ("[::1]:8080", None, False, True),
    ("0.0.0.0:8080", None, False, False), ("192.168.1.20:8080", None, False, False),
    ("0.0.0.0:8080", "long-enough-token", False, True), ("0.0.0.0:8080", None, True, True),
    ("0.0.0.0:8080", "short", False, False)])
def test_binding_beyond_loopback_needs_a_token(bind, token, insecure, ok):
    host, port = parse_bind(bind)
    if ok:
        check_exposure(host, port, token, insecure)
    else:
        with pytest.raises(UserError, match="--web-token"):
            check_exposure(host, port, token, insecure)


@pytest.mark.parametrize("bad", ["8080", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:99999", "http://h:1/x", ""])
def test_bad_bind_is_refused(bad):
    with pytest.raises(UserError, match="HOST:PORT"):
        parse_bind(bad)


def test_web_command_errors_at_start(tmp_path, capsys):
    db = make_db(tmp_path / "i.sqlite", parts=2)
    assert main(["web", str(db), "--bind", "0.0.0.0:0"]) == 2
    assert "--web-token" in capsys.readouterr().err
    assert main(["web", str(tmp_path / "none.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err
    other = tmp_path / "other.sqlite"
    sqlite3.connect(str(other)).execute("CREATE TABLE x (a)").connection.commit()
    assert main(["web", str(other)]) == 2
    assert "not a ds2a inspection database" in capsys.readouterr().err
    with Served(db) as s:  # a port in use
        assert main(["web", str(db), "--bind", f"127.0.0.1:{s.port}"]) == 2
        assert "cannot listen" in capsys.readouterr().err


def test_inspect_refuses_bad_web_and_notify_flags_before_the_model_opens(tmp_path, capsys):
    missing = str(tmp_path / "no-model.onnx")  # never opened: the flags fail first
    for flags, msg in ((["--web", "0.0.0.0:8080"], "--web-token"), (["--web", "nonsense"], "HOST:PORT"),
                       (["--web-insecure"], "only applies with --web"),
                       (["--notify", "http://broker/x"], "unknown scheme"),
                       (["--notify", "modbus://plc:502?unit=1"], "coil=N")):
        assert main(["inspect", "--model", missing, "--headless", *flags]) == 2
        err = capsys.readouterr().err
        assert msg in err and "no-model" not in err


def test_page_without_runs_and_without_db(tmp_path):
    db = tmp_path / "empty.sqlite"
    Records(str(db)).close()
    with Served(db) as s:
        assert "No runs recorded yet" in s.get("")[1].decode()
    with Served(None) as s:
        assert "no --db" in s.get("")[1].decode() and s.get("api/live")[0] == 404


def test_overview_html_escapes_run_picker(tmp_path):
    runs: List[dict] = [{"id": 1, "started_at": None, "status": HOSTILE, "parts": 0}]
    html = page.overview("db<b>", runs, 1, None, [], False)
    assert "<b>" not in html.replace("<body", "") and "db&lt;b&gt;" in html and "&lt;script&gt;" in html


def test_live_view_draws_only_when_asked_and_once_per_frame(tmp_path):
    from ds2a.web.live import LiveView

    class CountingRenderer:
        calls = 0

        def render(self, image, *args):
            CountingRenderer.calls += 1
            return image

    live = LiveView(CountingRenderer(), max_width=32)
    assert live.jpeg() is None and live.state()["seq"] == -1
    for seq in range(10):
        frame = Frame(np.full((48, 64, 3), seq * 20, np.uint8), seq, time.time(), time.perf_counter(), "cell-1")
        live.publish(Result(seq, frame, None, [], seq % 2 == 0, []), [])
        time.sleep(0.01)
    assert CountingRenderer.calls == 0  # nobody watching: nothing drawn or encoded
    jpg = live.jpeg()
    assert live.jpeg() is jpg and CountingRenderer.calls == 1  # cached per frame
    assert cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR).shape[:2] == (24, 32)  # scaled to max_width
    live.publish(None, [PartVerdict("cell-1", "part", False, ["damage"], 0, 9, 10, 0.0, 1.0)])
    st = live.state()
    assert (st["seq"], st["verdict"], st["parts"], st["fail"], st["last_part"]["verdict"]) == (9, "FAIL", 1, 1, "FAIL")
    assert 20 < st["fps"] < 120  # about one frame per 10 ms, not a burst's instantaneous rate


def test_charts_are_drawn_once_per_snapshot_and_a_snapshot_serves_a_refresh_period(tmp_path, monkeypatch):
    import ds2a.web.charts as charts
    import ds2a.web.server as server

    db = make_db(tmp_path / "i.sqlite", parts=4)
    drawn: List[int] = []
    real = charts.defects_svg
    monkeypatch.setattr(charts, "defects_svg", lambda trend, colours=None: drawn.append(1) or real(trend, colours))
    site = Site(str(db))
    snap = site.snapshot(1)
    first = site.chart("defects", 1, snap["version"])
    assert site.chart("defects", 1, snap["version"]) is first and len(drawn) == 1  # same snapshot: cached
    con = sqlite3.connect(str(db))  # a frame added to run 1, as during a live run
    con.execute("INSERT INTO frames (run_id, seq, t, verdict, n_defects) VALUES (1, 999, ?, 'PASS', 0)", (time.time(),))
    con.commit()
    con.close()
    assert site.snapshot(1) is snap and site.chart("defects", 1) is first  # within REFRESH_S: the same read
    monkeypatch.setattr(server, "REFRESH_S", 0.0)
    newer = site.snapshot(1)
    assert newer["version"] != snap["version"] and newer["summary"]["frames"] == snap["summary"]["frames"] + 1
    assert site.chart("defects", 1, snap["version"]) is first  # the page's numbers came from that snapshot
    assert site.chart("defects", 1, newer["version"]) is not first and len(drawn) == 2
    site.close()


def test_ds2a_web_serves_until_interrupted(tmp_path):
    import signal
    import socket
    import subprocess
    import sys

    db = make_db(tmp_path / "i.sqlite", parts=5)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "ds2a", "web", str(db), "--bind", f"127.0.0.1:{port}"],
                            cwd=str(Path(__file__).resolve().parents[1]), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        body = None
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/summary", timeout=2) as resp:
                    body = json.loads(resp.read())
                break
            except OSError:
                time.sleep(0.1)
        assert body is not None and (body["parts"], body["fail"]) == (sql_counts(db, 1)["parts"], sql_counts(db, 1)["fail"])
    finally:
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=10)[0]
    assert proc.returncode == 0 and f"127.0.0.1:{port}" in out


def test_a_busy_port_is_refused_when_inspect_starts_its_server(tmp_path):
    with Served(None) as s:
        other = BackgroundServer(make_app(Site(None)), "127.0.0.1", s.port)
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1"):
            other.start()
