"""Library output goes through the "ds2a" logger: a host program silences or redirects it; the
`ds2a` command prints the same lines through one handler that it removes when main() returns."""
from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path
from typing import List

from ds2a.cli import Console, main
from ds2a.inspect import InspectOptions, inspect

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"
DEMO = "demo://?frames=40&width=320&height=180&speed=24"

# a dataset with a mask that has no image: open_dataset(..., on_error="skip") warns about it
_ORPHAN = """
import logging, sys, numpy as np, cv2
from pathlib import Path
if sys.argv[2] == "silenced":
    logging.getLogger("ds2a").setLevel(logging.CRITICAL)
    logging.getLogger("ds2a").addHandler(logging.NullHandler())
root = Path(sys.argv[1])
for sub in ("images", "masks"):
    (root / sub).mkdir(parents=True, exist_ok=True)
cv2.imwrite(str(root / "images" / "a.png"), np.zeros((8, 8, 3), np.uint8))
cv2.imwrite(str(root / "masks" / "a.png"), np.zeros((8, 8), np.uint8))
cv2.imwrite(str(root / "masks" / "orphan.png"), np.zeros((8, 8), np.uint8))
from ds2a.data import open_dataset
open_dataset(str(root), "all", on_error="skip")
"""

_INSPECT = f"""
import io, logging
logging.getLogger("ds2a").setLevel(logging.CRITICAL)
from ds2a.inspect import InspectOptions, inspect
inspect(InspectOptions(model={str(DEMO_MODEL)!r}, source={DEMO!r}, headless=True,
                       backend_options={{"intra_op_threads": 1}}), table=io.StringIO())
"""


def _python(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_a_host_that_silences_the_ds2a_logger_sees_nothing(tmp_path: Path) -> None:
    loud = _python(_ORPHAN, str(tmp_path / "a"), "default")
    assert loud.returncode == 0 and "leaving out unpaired files" in loud.stderr  # Python's last-resort handler
    quiet = _python(_ORPHAN, str(tmp_path / "b"), "silenced")
    assert quiet.returncode == 0 and (quiet.stdout, quiet.stderr) == ("", "")
    run = _python(_INSPECT)  # a whole inspection: its summary goes to `table`, everything else is logging
    assert run.returncode == 0 and (run.stdout, run.stderr) == ("", ""), run.stderr


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_a_host_handler_receives_the_messages_and_nothing_is_printed(capfd) -> None:
    logger = logging.getLogger("ds2a")
    handler, saved = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        table = io.StringIO()
        inspect(InspectOptions(model=str(DEMO_MODEL), source=DEMO, headless=True,
                               backend_options={"intra_op_threads": 1}), table=table)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)
    messages = [r.getMessage() for r in handler.records]
    assert any(m.startswith("model   ") for m in messages) and any(m.startswith("source  ") for m in messages)
    assert all(r.name.startswith("ds2a.") for r in handler.records)
    assert "frames" in table.getvalue()
    assert capfd.readouterr() == ("", "")


def test_console_prints_bare_messages_info_on_its_stream_and_problems_on_the_other() -> None:
    info, problems = io.StringIO(), io.StringIO()
    logger = logging.getLogger("ds2a.test_console")
    console = Console(info, problems)
    logger.addHandler(console)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        logger.info("model   m.onnx")
        logger.info("\rit 1/9", extra={"end": ""})
        logger.warning("warning: records: cannot write r.sqlite")
        logger.error("ERROR: records: lost")
    finally:
        logger.removeHandler(console)
        logger.propagate = True
    assert info.getvalue() == "model   m.onnx\n\rit 1/9"
    assert problems.getvalue() == "warning: records: cannot write r.sqlite\nERROR: records: lost\n"


def test_the_cli_prints_its_lines_and_leaves_no_handler_behind(capsys) -> None:
    logger = logging.getLogger("ds2a")
    before = (list(logger.handlers), logger.level, logger.propagate)
    args = ["inspect", "--model", str(DEMO_MODEL), "--source", DEMO, "--headless", "--threads", "1"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "self-test passed" in out.splitlines()[0]  # the model proves itself before the run's table
    assert "\nmodel   " in out and "\nsource  " in out and "frames" in out and "model   " not in err
    assert (list(logger.handlers), logger.level, logger.propagate) == before
    assert main(args + ["--jsonl"]) == 0  # stdout is JSON lines: the messages go to stderr
    out, err = capsys.readouterr()
    assert "\nmodel   " in err and out.startswith('{"type": "frame"') and "model   " not in out
    assert (list(logger.handlers), logger.level, logger.propagate) == before
