#!/usr/bin/env python3
"""Remake docs/web.png: the operator's page during a demo run, taken in headless Chromium.

    python docs/web_screenshot.py            # about a minute; needs chromium, chromium-driver, selenium

The run's records go to runs/web_shot/ (emptied first), so the page's header shows a path
relative to the repository root.
"""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[1]


def main(out: Path = ROOT / "docs" / "web.png", seconds: float = 35.0, size: Tuple[int, int] = (1280, 2007)) -> None:
    work = Path("runs") / "web_shot"  # relative to ROOT, the command's working directory
    shutil.rmtree(ROOT / work, ignore_errors=True)
    (ROOT / work).mkdir(parents=True)
    cmd = [sys.executable, "-m", "ds2a", "inspect", "--model", "ds2a/assets/demo/ds2a_tiny_synth.int8.onnx",
           "--source", "demo://?fps=6&width=960&height=540&speed=48&seed=3", "--headless", "--threads", "1",
           "--db", str(work / "inspect.sqlite"), "--save-fail", str(work / "fail"), "--web", "127.0.0.1:0"]
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
            driver.set_window_size(*size)
            inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
            driver.set_window_size(2 * size[0] - inner[0], 2 * size[1] - inner[1])  # the picture is the viewport
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
