"""The operator's page in a real browser (headless Chromium via selenium and Debian's chromium-driver):
counts against SQL, failures grouped by part and one opened, hostile database strings shown as text,
the live view moving while `ds2a inspect --web` runs and saying when the run ended, both parts of the
banner labelled, the live count and the charts following the tiles' snapshot, the video's colours."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")
pytest.importorskip("selenium", reason="browser tests need selenium: pip install -e '.[dev]'")

from headless_chromium import chromium, wait_for  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from test_web import HOSTILE, Records, Served, make_db, sql_counts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
@pytest.fixture(scope="module")
def browser():
    yield from chromium()


def loaded(driver, element) -> bool:
    return bool(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element))


def test_page_counts_match_sql_and_a_failure_opens(browser, tmp_path):
    db = make_db(tmp_path / "i.sqlite", parts=16, runs=2, seed=5)
    with Served(db) as s:
        browser.get(s.url)
        assert browser.find_element(By.ID, "run").get_attribute("value") == "2"
        for run_id in (2, 1):
            if run_id == 1:  # choosing a run in the picker reloads the page for it
                browser.execute_script("const r = document.getElementById('run'); r.value = '1';"
                                       "r.dispatchEvent(new Event('change'));")
                assert wait_for(lambda: "run=1" in browser.current_url)
            want = sql_counts(db, run_id)
            shown = {el.get_attribute("data-k"): el.text for el in browser.find_elements(By.CSS_SELECTOR, "[data-k]")}
            assert {k: int(shown[k]) for k in want} == want
            charts = [browser.find_element(By.ID, i) for i in ("chart-pass", "chart-defects")]
            assert wait_for(lambda: all(loaded(browser, c) for c in charts))
        con = sqlite3.connect(str(db))
        fail_parts = con.execute("SELECT part_id, first_seq, last_seq FROM verdicts WHERE run_id=1 AND "
                                 "verdict='FAIL' ORDER BY id DESC").fetchall()
        shown_parts = browser.find_elements(By.CSS_SELECTOR, "#failures .part")  # one entry per FAIL part
        assert [p.get_attribute("data-part") for p in shown_parts] == [p for p, _, _ in fail_parts[:12]]
        for entry, (_, lo, hi) in zip(shown_parts, fail_parts):
            want = [i for (i,) in con.execute("SELECT id FROM frames WHERE run_id=1 AND verdict='FAIL' AND seq "
                                              "BETWEEN ? AND ? ORDER BY seq", (lo, hi))]
            assert [int(a.get_attribute("data-frame")) for a in entry.find_elements(By.CSS_SELECTOR, "a.fail")] == want
        first = shown_parts[0].find_elements(By.CSS_SELECTOR, "a.fail")
        frame_id = int(first[0].get_attribute("data-frame"))
        assert frame_id == con.execute("SELECT MAX(id) FROM frames WHERE run_id=1 AND verdict='FAIL'").fetchone()[0]
        regions = con.execute("SELECT class_name FROM defects WHERE frame_id=?", (frame_id,)).fetchall()
        con.close()
        first[0].click()
        assert wait_for(lambda: f"/failure/{frame_id}" in browser.current_url)
        rows = browser.find_elements(By.CSS_SELECTOR, "#regions tbody tr")
        assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == [c for (c,) in regions]
        assert wait_for(lambda: loaded(browser, browser.find_element(By.ID, "annotated")))
        assert browser.execute_script("return getComputedStyle(document.body).backgroundColor") == "rgb(246, 248, 250)"
        browser.find_element(By.ID, "raw-link").click()
        assert wait_for(lambda: browser.current_url.endswith(f"/image/{frame_id}/raw"))
        assert browser.execute_script("return document.images[0].naturalWidth") == 64


def test_hostile_strings_are_shown_as_text_never_run(browser, tmp_path):
    db = make_db(tmp_path / "i.sqlite", parts=6, hostile=True, seed=2)
    with Served(db) as s:
        browser.get(s.url)
        wait_for(lambda: browser.find_elements(By.ID, "failures"))
        time.sleep(0.5)  # give any injected handler the chance to run
        with pytest.raises(NoAlertPresentException):
            browser.switch_to.alert.text
        assert "pwned" not in browser.title
        assert HOSTILE in browser.find_element(By.CSS_SELECTOR, "#run .meta").text  # shown literally
        assert browser.execute_script("return document.querySelectorAll('img[src=x], script:not([src])').length") == 0
        browser.find_elements(By.CSS_SELECTOR, "#failures a.fail")[0].click()
        wait_for(lambda: "/failure/" in browser.current_url)
        assert "pwned" not in browser.title and HOSTILE in browser.find_element(By.ID, "why").text


def test_live_view_moves_while_inspecting(browser, tmp_path):
    from fakes.onnx_models import threshold_onnx

    model = threshold_onnx(tmp_path / "thr.onnx")
    db = tmp_path / "live.sqlite"
    cmd = [sys.executable, "-m", "ds2a", "inspect", "--model", str(model), "--source",
           "demo://?fps=15&width=320&height=180&speed=12", "--headless", "--db", str(db), "--save-fail",
           str(tmp_path / "fail"), "--web", "127.0.0.1:0", "--duration", "60"]  # stopped by SIGINT below
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        for line in proc.stdout:
            if line.startswith("web "):
                url = line.split()[1]
                break
        assert url and url.startswith("http://127.0.0.1:"), "no web line printed"
        browser.get(url)  # maybe before the run is recorded: the page then shows it once it is
        assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "section#run[data-run='1']"), 20)
        seq = browser.find_element(By.ID, "live-seq")
        img = browser.find_element(By.ID, "live-img")
        assert wait_for(lambda: seq.text.isdigit(), 10)
        first = int(seq.text)
        assert wait_for(lambda: int(seq.text) >= first + 5, 10)  # the verdict panel follows the run
        assert wait_for(lambda: loaded(browser, img), 10)
        src0 = img.get_attribute("src")
        shot0 = img.screenshot_as_png
        # generous: under a loaded CI machine the page's refresh and the new picture's decode can lag
        assert wait_for(lambda: img.get_attribute("src") != src0 and img.screenshot_as_png != shot0, 25)
        assert browser.find_element(By.ID, "live-frame-verdict").text in ("PASS", "FAIL", "NONE")
        assert wait_for(lambda: int(browser.find_element(By.ID, "live-parts").text) > 0, 10)
        con = sqlite3.connect(str(db))  # the banner names a part the records hold, with its verdict
        decided = tuple(browser.execute_script(  # both read at once: the page polls meanwhile
            "return ['live-last-part', 'live-last-verdict'].map(i => document.getElementById(i).textContent)"))
        assert decided in set(con.execute("SELECT part_id, verdict FROM verdicts").fetchall())
        assert "last decided part" in browser.find_element(By.ID, "live-verdict").text
        con.close()
        proc.send_signal(signal.SIGINT)  # the run ends: the open page says so, with the run's numbers
        ended = browser.find_element(By.ID, "live-ended")
        assert wait_for(lambda: ended.is_displayed() and "ended" in ended.text, 15), ended.text
        tail = proc.communicate(timeout=15)[0]
        con = sqlite3.connect(str(db))
        parts, fails = con.execute("SELECT COUNT(*), SUM(verdict='FAIL') FROM verdicts").fetchone()
        status = con.execute("SELECT status FROM runs").fetchone()[0]
        con.close()
        assert status == "interrupted" and f"ended ({status}): {parts} parts," in ended.text, (status, ended.text, tail)
        assert f"{fails} FAIL" in ended.text and browser.find_element(By.ID, "live-parts").text == str(parts)
        picked = browser.find_element(By.CSS_SELECTOR, "#run option:checked").text  # the picker agrees too
        assert picked.endswith(f"{status} · {parts} parts") and browser.find_element(
            By.CSS_SELECTOR, "[data-k=parts]").text == str(parts)
        time.sleep(1.5)  # the station has gone: the page keeps saying that the run ended
        assert ended.is_displayed() and "no connection" not in browser.find_element(By.ID, "live").text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, 130)  # 130: stopped by SIGINT with the records flushed (ds2a/cli/inspect.py)


def _live_site(db, run_id=1):
    """A live view of run `run_id` of `db`, fed by the test instead of an inspection."""
    from ds2a.inspect.overlay import Renderer
    from ds2a.web.live import LiveView

    classes = ["background", "damage", "dust"]
    return LiveView(Renderer(classes, [(0, 0, 0), (20, 60, 230), (240, 150, 30)]), records=SimpleNamespace(run_id=run_id))


def _frame(seq, part_id, passed=True):
    from ds2a.inspect.loop import Result
    from ds2a.sources import Frame

    frame = Frame(np.full((48, 64, 3), 100, np.uint8), seq, time.time(), time.perf_counter(), part_id)
    return Result(seq, frame, np.zeros((8, 8), np.uint8), [], passed, [] if passed else ["damage: count 1 > max_count 0"])


def test_banner_labels_the_last_decided_part_and_the_part_in_view(browser, tmp_path):
    from ds2a.inspect.parts import PartVerdict

    live = _live_site(None)
    with Served(None, live=live) as s:
        live.publish(_frame(0, "cell-000013"), [])
        live.publish(_frame(1, "cell-000014", passed=False),
                     [PartVerdict("cell-000013", "part", True, [], 0, 0, 1, 0.0, 1.0)])
        browser.get(s.url)
        assert wait_for(lambda: browser.find_element(By.ID, "live-last-part").text == "cell-000013")
        banner = browser.find_element(By.ID, "live-verdict").text
        assert "last decided part" in banner and "PASS" in banner and "cell-000014" not in banner
        in_view = browser.find_element(By.ID, "live-part").find_element(By.XPATH, "..").text
        assert "in view" in in_view and "cell-000014" in in_view and "FAIL" in in_view


def test_live_count_tiles_and_charts_come_from_one_snapshot(browser, tmp_path, monkeypatch):
    import ds2a.web.page as page
    import ds2a.web.server as server
    from ds2a.inspect.parts import PartVerdict

    monkeypatch.setattr(server, "REFRESH_S", 0.5)
    monkeypatch.setattr(page, "REFRESH_S", 1)
    db = make_db(tmp_path / "i.sqlite", parts=5, seed=3)
    live = _live_site(db)
    for k in range(40):  # the live view counted more parts than the records hold (another moment)
        live.publish(None, [PartVerdict(f"x{k}", "part", True, [], 0, 0, 1, 0.0, 1.0)])
    with Served(db, live=live) as s:
        browser.get(s.url)
        tile = browser.find_element(By.CSS_SELECTOR, "[data-k=parts]")
        assert wait_for(lambda: browser.find_element(By.ID, "live-parts").text == tile.text == "5")
        version0 = browser.find_element(By.CSS_SELECTOR, "section#run").get_attribute("data-version")
        assert all(f"v={version0}" in browser.find_element(By.ID, i).get_attribute("src")
                   for i in ("chart-pass", "chart-defects"))
        con = sqlite3.connect(str(db))  # two more parts decided, as a running inspection writes them
        for k in range(2):
            con.execute("INSERT INTO verdicts (run_id, part_id, level, verdict, reasons, first_seq, last_seq, "
                        "n_frames, t_start, t_end) VALUES (1, ?, 'part', 'FAIL', '[]', 900, 901, 2, ?, ?)",
                        (f"late-{k}", time.time(), time.time()))
        con.commit()
        con.close()
        assert wait_for(lambda: tile.text == "7", 10)
        assert browser.find_element(By.CSS_SELECTOR, "#run option:checked").text.endswith(" · 7 parts")
        version1 = browser.find_element(By.CSS_SELECTOR, "section#run").get_attribute("data-version")
        assert version1 != version0 and browser.find_element(By.ID, "live-parts").text == "7"
        assert all(f"v={version1}" in browser.find_element(By.ID, i).get_attribute("src")
                   for i in ("chart-pass", "chart-defects"))
        assert [p.get_attribute("data-part") for p in browser.find_elements(By.CSS_SELECTOR, "#failures .part")
                ][:2] == ["late-1", "late-0"]  # the failures list follows the same refresh


def test_the_page_says_when_the_run_ended_with_its_summary(browser, tmp_path):
    db = make_db(tmp_path / "i.sqlite", parts=6, seed=4)
    live = _live_site(db)
    with Served(db, live=live) as s:
        live.publish(_frame(0, "cell-0005"), [])
        browser.get(s.url)
        ended = browser.find_element(By.ID, "live-ended")
        assert wait_for(lambda: browser.find_element(By.ID, "live-seq").text == "0") and not ended.is_displayed()
        want = sql_counts(db, 1)
        live.close({"run": 1, "status": "finished", "parts": want["parts"], "pass": want["pass"],
                    "fail": want["fail"], "pass_rate": want["pass"] / want["parts"], "frames": want["frames"]})
        assert wait_for(lambda: ended.is_displayed(), 5)
        assert (f"Run 1 ended (finished): {want['parts']} parts, {want['pass']} PASS, {want['fail']} FAIL"
                in ended.text) and live.end_seen
        src = browser.find_element(By.ID, "live-img").get_attribute("src")
        time.sleep(1.0)
        assert browser.find_element(By.ID, "live-img").get_attribute("src") == src  # the live picture stopped


def test_chart_and_table_colours_are_the_videos(browser, tmp_path):
    from ds2a.inspect.overlay import Renderer

    db = make_db(tmp_path / "i.sqlite", parts=12, seed=5)
    live = _live_site(db)  # a palette of its own: nothing matches by accident of defaults
    painted = Renderer(live.classes, live.palette, "mask").render(
        np.zeros((8, 16, 3), np.uint8), np.repeat(np.array([[1] * 8 + [2] * 8], np.uint8), 8, axis=0), False, [])
    video = {"damage": "#{2:02x}{1:02x}{0:02x}".format(*painted[7, 2]),  # the video's pixels (BGR) as CSS
             "dust": "#{2:02x}{1:02x}{0:02x}".format(*painted[7, 13])}
    assert video == {"damage": "#e63c14", "dust": "#1e96f0"}
    with Served(db, live=live) as s:
        browser.get(s.url)
        fills = {r.get_attribute("data-class"): r.find_element(By.CSS_SELECTOR, "svg rect").get_attribute("fill")
                 for r in browser.find_elements(By.CSS_SELECTOR, "#defects tr[data-class]")}
        assert fills and all(fills[name] == video[name] for name in fills)
        chart = browser.find_element(By.ID, "chart-defects").get_attribute("src")
        svg = browser.execute_script("const r = new XMLHttpRequest(); r.open('GET', arguments[0], false); "
                                     "r.send(); return r.responseText;", chart)
        for name in fills:
            assert f"fill: {video[name]}" in svg


def test_a_page_opened_before_the_run_is_recorded_shows_it_when_it_is(browser, tmp_path):
    db = tmp_path / "i.sqlite"
    Records(str(db)).close()  # the database exists, no run in it yet (the model is warming up)
    live = _live_site(db, run_id=None)
    with Served(db, live=live) as s:
        live.publish(_frame(0, "cell-0001"), [])
        browser.get(s.url)
        assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "p.empty"))  # "No runs recorded yet."
        make_db(db, parts=3, seed=8)  # the run is recorded ...
        live.records.run_id = 1  # ... and it is the one this station inspects
        assert wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "section#run[data-run='1']"), 10)
        assert wait_for(lambda: browser.find_element(By.ID, "live-parts").text
                        == browser.find_element(By.CSS_SELECTOR, "[data-k=parts]").text == "3")
