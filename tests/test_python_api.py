"""The README's "Python API" block runs as written, and the library calls it shows behave as stages.

The block is taken from README.md itself (so the README cannot drift from the code) and run from
the repository root in a fresh interpreter with TMPDIR pointed at a test folder: it must succeed,
write its files only there, and leave records a `ds2a report` can read.
"""
from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ds2a.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torch")
pytest.importorskip("onnx")


def readme_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section should hold exactly one python block"
    return blocks[0]


def new_files() -> set:
    """Untracked and ignored paths in the checkout (bytecode caches aside): anything the block writes here shows up."""
    out = subprocess.run(["git", "status", "--porcelain", "--ignored", "--untracked-files=all"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    return {line[3:] for line in out.stdout.splitlines()
            if line[:2] in ("??", "!!") and "__pycache__" not in line and ".pytest_cache" not in line}


def demo_assets() -> dict:
    return {p.name: p.read_bytes() for p in (ROOT / "ds2a" / "assets" / "demo").iterdir() if p.is_file()}


def test_readme_python_block_runs_as_written_and_writes_only_under_tmp(tmp_path: Path) -> None:
    code = readme_block()
    for call in ("export_onnx(", "calibrate(", "evaluate(", "inspect("):  # the stages the section promises
        assert call in code
    before, assets = new_files(), demo_assets()
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert new_files() - before == set(), "the README block wrote inside the repository"
    assert demo_assets() == assets, "the README block changed the committed demo model"

    work = [p for p in tmp_path.iterdir() if p.name.startswith("ds2a-api-")]
    assert len(work) == 1
    work = work[0]
    for name in ("model.onnx", "model.int8.onnx", "inspect.sqlite"):
        assert (work / name).is_file(), name
    miou = re.search(r"mIoU (\d\.\d+); (\d+) of (\d+) defective parts escaped", proc.stdout)
    assert miou, proc.stdout[-2000:]
    assert 0.3 < float(miou.group(1)) <= 1.0  # the demo model on its own kind of data, not a broken graph
    assert int(miou.group(2)) <= int(miou.group(3))

    summary = re.search(r"finished: (\d+) parts, (\d+) failed", proc.stdout)
    assert summary, proc.stdout[-2000:]
    with sqlite3.connect(str(work / "inspect.sqlite")) as db:
        status, = db.execute("SELECT status FROM runs").fetchone()
        frames, = db.execute("SELECT COUNT(*) FROM frames").fetchone()
        parts, failed = db.execute("SELECT COUNT(*), SUM(verdict = 'FAIL') FROM verdicts WHERE level = 'part'").fetchone()
    assert status == "finished"
    assert frames == 30
    assert (parts, failed) == (int(summary.group(1)), int(summary.group(2)))


def test_build_engine_checks_its_outputs_before_looking_for_tensorrt(tmp_path: Path, monkeypatch) -> None:
    """A Python caller gets the same refusal as `ds2a build-engine`: the engine may not replace its ONNX."""
    from ds2a.engine import builder

    onnx_path = tmp_path / "model.onnx"
    onnx_path.write_bytes(b"not read")

    def no_tensorrt() -> None:
        raise AssertionError("TensorRT was looked for before the output paths were checked")

    monkeypatch.setattr(builder, "import_tensorrt", no_tensorrt)
    with pytest.raises(UserError, match="model.onnx"):
        builder.build_engine(str(onnx_path), str(onnx_path))
    assert onnx_path.read_bytes() == b"not read"
    assert builder.default_engine_path(str(onnx_path)) == str(tmp_path / "model.engine")
