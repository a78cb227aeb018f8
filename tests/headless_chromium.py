"""Headless Chromium for the browser tests (Debian's chromium + chromium-driver, selenium from the dev extra):
one way to start it, skipped with the reason where it cannot run."""
from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable, Iterator

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or next((p for p in ("/usr/lib/chromium/chromedriver",) if os.path.exists(p)),
                                              None)


def chromium(window: str = "1280,1800") -> Iterator[Any]:
    """A selenium driver for a fixture to yield (quit afterwards); pytest.skip where none can start."""
    pytest.importorskip("selenium", reason="browser tests need selenium: pip install -e '.[dev]'")
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    if not CHROMIUM or not DRIVER:
        pytest.skip("no chromium/chromedriver (Debian: apt-get install chromium chromium-driver; `make test` "
                    "installs them as root)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={window}", "--disable-extensions"):
        opts.add_argument(arg)
    try:
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    except WebDriverException as exc:
        pytest.skip(f"chromium could not start here: {str(exc).splitlines()[0]}")
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(fn: Callable[[], Any], timeout: float = 10.0) -> Any:
    """fn() once it is truthy (WebDriver errors while the page is still changing count as not yet), else its last
    value after `timeout` seconds."""
    from selenium.common.exceptions import WebDriverException

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            value = fn()
            if value:
                return value
        except WebDriverException:
            pass
        time.sleep(0.05)
    return fn()
