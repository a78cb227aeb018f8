"""The operator's page as a newcomer reads it, without a browser: one palette (the video's), failures
grouped by part, one snapshot per refresh, both parts of the live banner, the run's end with its summary.
(tests/test_web_browser.py checks the same in headless Chromium.)"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")
pytest.importorskip("matplotlib", reason="the web page's charts need matplotlib: pip install -e '.[web]'")

from test_web import make_db, sql_counts  # noqa: E402

from ds2a.inspect.loop import Result  # noqa: E402
from ds2a.inspect.overlay import Renderer  # noqa: E402
from ds2a.inspect.parts import PartVerdict  # noqa: E402
from ds2a.meta import default_palette  # noqa: E402
from ds2a.records.database import Records  # noqa: E402
from ds2a.sources import Frame  # noqa: E402
from ds2a.web import data, page  # noqa: E402
from ds2a.web.charts import class_colours  # noqa: E402
from ds2a.web.live import LiveView  # noqa: E402
from ds2a.web.server import Site  # noqa: E402
from ds2a.web.station import Station, StationOptions  # noqa: E402

CLASSES = ["background", "damage", "dust"]
OWN_PALETTE = [(0, 0, 0), (20, 60, 230), (240, 150, 30)]  # BGR, unlike any default


def video_colours(palette):
    """The colours the overlay paints per class, read back from its pixels (mask mode) as '#rrggbb'."""
    painted = Renderer(CLASSES, palette, "mask").render(
        np.zeros((8, 16, 3), np.uint8), np.repeat(np.array([[1] * 8 + [2] * 8], np.uint8), 8, axis=0), False, [])
    return {"damage": "#{2:02x}{1:02x}{0:02x}".format(*painted[7, 2]),
            "dust": "#{2:02x}{1:02x}{0:02x}".format(*painted[7, 13])}


def chart_fills(svg: bytes):
    return set(re.findall(r"fill: (#[0-9a-f]{6})", svg.decode()))


def test_a_run_without_a_kept_palette_is_coloured_as_its_model_painted_it(tmp_path):
    db = make_db(tmp_path / "i.sqlite", parts=16, seed=1)  # stats without a palette: default_palette(3)
    want = video_colours(default_palette(3))
    site = Site(str(db))
    snap = site.snapshot(1)
    assert site.colours(snap) == want
    fills = chart_fills(site.chart("defects", 1))
    drawn = [name for name in want if name in snap["summary"]["defects"]]
    assert drawn and {want[n] for n in drawn} <= fills
    html = page.defects_section(snap["summary"], site.colours(snap))
    for name in drawn:
        assert re.search(rf"data-class='{name}'><td><svg[^>]*><rect[^>]*fill='{want[name]}'", html)
    site.close()


def test_the_live_page_uses_the_models_palette(tmp_path):
    db = tmp_path / "i.sqlite"
    records = Records(str(db))
    station = Station(StationOptions(web="127.0.0.1:0"), str(db))
    station.start(SimpleNamespace(observers=[]), lambda: Renderer(CLASSES, OWN_PALETTE), records)
    records.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, {}, None)  # no palette kept: the live one counts
    records.commit()
    assert station.site.colours(station.site.snapshot(1)) == video_colours(OWN_PALETTE)
    station.finish()
    records.finish_run("finished", {"frames": 0})
    station.close()
    records.close()


def test_a_run_keeps_its_models_palette_and_the_page_reads_it_later(tmp_path):
    import onnx
    from fakes.onnx_models import threshold_onnx

    from ds2a.cli import main
    from ds2a.meta import MBSD_CLASSES, ModelMeta

    own = [(0, 0, 0), (20, 60, 230), (240, 150, 30), (90, 200, 40)]
    model = onnx.load(str(threshold_onnx(tmp_path / "thr.onnx")))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {"ds2a": ModelMeta(arch="threshold", input_size=(32, 32), palette=own).to_json()})
    onnx.save(model, str(tmp_path / "own.onnx"))
    db = tmp_path / "i.sqlite"
    assert main(["inspect", "--model", str(tmp_path / "own.onnx"), "--source", "demo://?frames=12&width=320&height=180",
                 "--headless", "--db", str(db)]) == 0  # no --web: the records alone carry the colours
    con = sqlite3.connect(str(db))
    assert json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])["palette"] == [list(c) for c in own]
    con.close()
    site = Site(str(db))  # `ds2a web DB` later, without the model
    want = class_colours(MBSD_CLASSES, own)
    assert site.colours(site.snapshot(1)) == want and want["damage"] == "#e63c14"
    drawn = [name for name in want if name in site.snapshot(1)["summary"]["defects"]]
    assert drawn and {want[n] for n in drawn} <= chart_fills(site.chart("defects", 1))
    site.close()


def test_recent_failures_are_parts_each_with_its_fail_frames(tmp_path):
    db = make_db(tmp_path / "i.sqlite", parts=30, seed=7)
    con = data.open_readonly(str(db))
    groups = data.failed_parts(con, 1, limit=100)
    raw = sqlite3.connect(str(db))
    fail_parts = raw.execute("SELECT part_id, first_seq, last_seq FROM verdicts WHERE run_id=1 AND verdict='FAIL' "
                             "ORDER BY id DESC").fetchall()
    assert [g["part_id"] for g in groups] == [p for p, _, _ in fail_parts] and len(groups) > 3
    for g, (_, lo, hi) in zip(groups, fail_parts):
        assert [f["seq"] for f in g["frames"]] == [s for (s,) in raw.execute(
            "SELECT seq FROM frames WHERE run_id=1 AND verdict='FAIL' AND seq BETWEEN ? AND ? ORDER BY seq", (lo, hi))]
    n_fail_frames = raw.execute("SELECT COUNT(*) FROM frames WHERE run_id=1 AND verdict='FAIL'").fetchone()[0]
    assert sum(g["n_fail_frames"] for g in groups) == n_fail_frames  # every FAIL frame under its part, once
    html = page.gallery(data.failed_parts(con, 1, limit=2))
    assert html.count("class=part ") == 2 and f"data-part='{fail_parts[0][0]}'" in html
    raw.close()
    con.close()


def test_one_snapshot_is_one_read_however_the_run_writes_meanwhile(tmp_path, monkeypatch):
    db = make_db(tmp_path / "i.sqlite", parts=6, seed=2)
    writer = sqlite3.connect(str(db), isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    real_trend = data.trend

    def trend_after_a_part_is_written(con, run_id):  # the inspection decides a part between two queries
        writer.execute("INSERT INTO verdicts (run_id, part_id, level, verdict, t_start, t_end) VALUES "
                       "(1, 'late', 'part', 'PASS', ?, ?)", (time.time(), time.time()))
        return real_trend(con, run_id)

    monkeypatch.setattr(data, "trend", trend_after_a_part_is_written)
    con = data.open_readonly(str(db))
    snap = data.snapshot(con, 1)
    assert sum(snap["trend"]["parts"]) == snap["summary"]["parts"] == 6  # tiles and charts: the same moment
    outside = data.summary(con, 1)["parts"], sum(data.trend(con, 1)["parts"])  # without one read they disagree
    assert outside[0] == 7 and outside[1] == 8
    assert data.snapshot(con, 1)["version"] != snap["version"]
    con.close()
    writer.close()


def _result(seq, part_id, passed=True):
    frame = Frame(np.full((48, 64, 3), 100, np.uint8), seq, time.time(), time.perf_counter(), part_id)
    return Result(seq, frame, np.zeros((8, 8), np.uint8), [], passed, [] if passed else ["damage: count 1 > max_count 0"])


def test_the_live_counts_keep_none_parts_apart_from_pass_and_fail():
    """A part not fully inspected (NONE) is neither passed nor failed on the live page, as in `ds2a report`."""
    live = LiveView(Renderer(CLASSES, OWN_PALETTE))
    verdicts = [PartVerdict("a", "part", True, [], 0, 0, 1, 0, 1),
                PartVerdict("b", "part", False, ["damage: count 1 > max_count 0"], 1, 1, 1, 1, 2),
                PartVerdict("c", "part", False, ["not inspected: model unavailable"], 2, 2, 1, 2, 3, none=True,
                            uninspected=1)]
    live.publish(_result(2, "c", passed=False), verdicts)
    st = live.state()
    assert (st["parts"], st["pass"], st["fail"], st["none"]) == (3, 1, 1, 1)
    live.close()
    assert (live.ended["pass"], live.ended["fail"], live.ended["none"]) == (1, 1, 1)


def test_the_banner_labels_the_last_decided_part_and_the_part_in_view():
    live = LiveView(Renderer(CLASSES, OWN_PALETTE))
    live.publish(_result(0, "cell-000013"), [])
    live.publish(_result(1, "cell-000014", passed=False), [PartVerdict("cell-000013", "part", True, [], 0, 0, 1, 0, 1)])
    st = live.state()
    assert (st["last_part"]["part_id"], st["last_part"]["verdict"]) == ("cell-000013", "PASS")
    assert (st["part_id"], st["verdict"]) == ("cell-000014", "FAIL")
    assert st["shown"] is None  # no picture served yet
    live.jpeg()  # a viewer gets the picture of frame 1 ...
    live.publish(_result(2, "cell-000015"), [])  # ... and the run moves on
    st = live.state()
    assert st["part_id"] == "cell-000015" and (st["shown"]["part_id"], st["shown"]["seq"]) == ("cell-000014", 1)
    html = page.overview(None, [], None, None, [], True)
    assert "last decided part" in html and "<small>in view (the picture)</small> part <b id=live-part>" in html


def test_station_close_tells_a_watching_page_that_the_run_ended_with_its_summary(tmp_path):
    import urllib.request

    db = tmp_path / "i.sqlite"
    records = Records(str(db))
    station = Station(StationOptions(web="127.0.0.1:0"), str(db))
    station.start(SimpleNamespace(observers=[]), lambda: Renderer(CLASSES, OWN_PALETTE), records)
    records.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, {}, None)
    for seq in range(4):
        res = _result(seq, f"cell-{seq}", passed=seq != 2)
        records.add_frame(res)
        pv = PartVerdict(f"cell-{seq}", "part", res.passed, list(res.reasons), seq, seq, 1, res.frame.t_wall,
                         res.frame.t_wall)
        records.add_verdict(pv)
        station.live.publish(res, [pv])
    records.commit()
    url = f"http://127.0.0.1:{station.server.port}/api/live"
    seen = []

    def viewer():  # a page polling as page.js does
        while True:
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    seen.append(json.loads(resp.read()))
            except OSError:
                return
            if not seen[-1]["running"]:
                return
            time.sleep(0.3)

    watcher = threading.Thread(target=viewer)
    watcher.start()
    while not seen:
        time.sleep(0.02)
    station.finish()
    records.finish_run("finished", {"frames": 4})
    station.close()  # waits (at most END_WAIT_S) until the polling page has heard it
    watcher.join(5)
    records.close()
    want = sql_counts(db, 1)
    ended = seen[-1]
    assert not ended["running"] and ended["ended"]["status"] == "finished"
    assert {k: ended["ended"][k] for k in ("parts", "pass", "fail", "frames")} == \
        {k: want[k] for k in ("parts", "pass", "fail", "frames")}
    assert station.server is None


def test_a_station_nobody_watches_stops_without_waiting(tmp_path):
    records = Records(str(tmp_path / "i.sqlite"))
    station = Station(StationOptions(web="127.0.0.1:0"), str(tmp_path / "i.sqlite"))
    station.start(SimpleNamespace(observers=[]), lambda: Renderer(CLASSES, OWN_PALETTE), records)
    records.start_run("m.onnx", "onnxruntime", "demo://", CLASSES, {}, None)
    records.finish_run("empty", {})
    t0 = time.monotonic()
    station.close()
    records.close()
    assert time.monotonic() - t0 < 1.0 and station.live.ended["status"] == "empty"


def test_api_snapshot_is_one_refresh_tiles_tables_and_chart_addresses(tmp_path):
    from test_web import Served

    db = make_db(tmp_path / "i.sqlite", parts=10, seed=6)
    with Served(db) as s:
        status, body, _ = s.get("api/snapshot?run=1")
        snap = json.loads(body)
        assert status == 200 and {k: snap["summary"][k] for k in sql_counts(db, 1)} == sql_counts(db, 1)
        v = snap["version"]
        assert snap["charts"] == {"pass_rate": f"chart/pass_rate.svg?run=1&v={v}",
                                  "defects": f"chart/defects.svg?run=1&v={v}"}
        fail_parts = [p for (p,) in sqlite3.connect(str(db)).execute(
            "SELECT part_id FROM verdicts WHERE verdict='FAIL' ORDER BY id DESC")]
        assert re.findall(r"data-part='([^']*)'", snap["html"]["failures"]) == fail_parts
        assert s.get(snap["charts"]["defects"])[0] == 200
        assert f"data-version='{v}'" in s.get("?run=1")[1].decode()  # the page was drawn from the same read
        assert s.get("api/snapshot?run=9")[0] == 404  # a run the records do not hold


def test_viewers_asking_at_once_get_one_drawing_of_a_chart(tmp_path, monkeypatch):
    import ds2a.web.charts as charts

    db = make_db(tmp_path / "i.sqlite", parts=6, seed=3)
    drawn = []
    real = charts.defects_svg

    def slow(trend, colours=None):  # matplotlib on a busy station: long enough for the others to arrive
        drawn.append(1)
        time.sleep(0.3)
        return real(trend, colours)

    monkeypatch.setattr(charts, "defects_svg", slow)
    site = Site(str(db))
    version = site.snapshot(1)["version"]
    got = []
    viewers = [threading.Thread(target=lambda: got.append(site.chart("defects", 1, version))) for _ in range(4)]
    for v in viewers:
        v.start()
    for v in viewers:
        v.join(10)
    assert len(got) == 4 and len(set(got)) == 1 and len(drawn) == 1
    site.close()
