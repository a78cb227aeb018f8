"""The operator's page in a real browser (headless Chromium via selenium and Debian's chromium-driver):
counts against SQL, a failure opened from the gallery, hostile database strings shown as text, and
the live view moving while `ds2a inspect --web` runs."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")
pytest.importorskip("selenium", reason="browser tests need selenium: pip install -e '.[dev]'")

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException, WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from test_web import HOSTILE, Served, make_db, sql_counts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or next((p for p in ("/usr/lib/chromium/chromedriver",) if os.path.exists(p)), None)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM or not DRIVER:
        pytest.skip("no chromium/chromedriver (Debian: apt-get install chromium chromium-driver; `make test` "
                    "installs them as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,1800", "--disable-extensions"):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    except WebDriverException as exc:
        pytest.skip(f"chromium could not start here: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


def wait_for(fn, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = fn()
            if value:
                return value
        except WebDriverException:
            pass
        time.sleep(0.1)
    return fn()


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
        n_fail_shown = con.execute("SELECT COUNT(*) FROM frames WHERE run_id=1 AND verdict='FAIL'").fetchone()[0]
        first = browser.find_elements(By.CSS_SELECTOR, "#failures a.fail")
        assert len(first) == min(n_fail_shown, 24)
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
        browser.get(url)
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
        banner = browser.find_element(By.ID, "live-verdict").text.split()
        assert tuple(banner[::-1]) in set(con.execute("SELECT part_id, verdict FROM verdicts").fetchall())
        con.close()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
