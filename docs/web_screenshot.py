#!/usr/bin/env python3
"""Remake docs/web.png: the operator's page during a demo run, taken in headless Chromium.

    python docs/web_screenshot.py            # about a minute; needs chromium, chromium-driver, selenium
"""
from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path = ROOT / "docs" / "web.png", seconds: float = 35.0) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ds2a-shot-"))
    cmd = [sys.executable, "-m", "ds2a", "inspect", "--model", "ds2a/assets/demo/ds2a_tiny_synth.int8.onnx",
           "--source", "demo://?fps=6&width=960&height=540&speed=48&seed=3", "--headless", "--threads", "1",
           "--db", str(tmp / "inspect.sqlite"), "--save-fail", str(tmp / "fail"), "--web", "127.0.0.1:0"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = next(line.split()[1] for line in proc.stdout if line.startswith("web "))
        time.sleep(seconds)  # let the counts, trend and gallery fill
        opts = webdriver.ChromeOptions()
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900",
                    "--hide-scrollbars"):
            opts.add_argument(arg)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
        try:
            driver.get(url)
            time.sleep(4)  # live picture, charts, thumbnails
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1280, min(int(height) + 40, 2150))
            time.sleep(1.5)
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
