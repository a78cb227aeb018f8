"""After `make demo` (runtime extras only) the training and conversion commands say which extra to install,
as one line and exit 2, instead of a ModuleNotFoundError traceback."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ds2a import cli

ROOT = Path(__file__).resolve().parents[1]
HIDE = ("torch", "onnx", "modelopt", "scipy", "onnxscript", "onnxslim")  # as if never installed


def _ds2a_without_extras(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    code = ("import sys\nfor m in %r: sys.modules[m] = None\nfrom ds2a.cli import main\nsys.exit(main(sys.argv[1:]))"
            % (HIDE,))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DS2A_DEBUG", None)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("args, words", [
    (["train", "--model", "ds2a_tiny", "--data", "data", "--out", "runs"],
     "ds2a train: error: PyTorch is not installed and `ds2a train` needs it: pip install 'ds2a-edge[train]'"),
    (["export", "ckpt.pt", "--out", "out.onnx"], "pip install 'ds2a-edge[train,export]'"),
    (["calibrate", "m.onnx", "--data", "data", "--precision", "int8", "--out", "q.onnx"],
     "ds2a calibrate: error: onnx is not installed and `ds2a calibrate` needs it: pip install 'ds2a-edge[calib]'"),
    (["convert-official", "ckpt.pt", "o.pt", "--arch", "r18"], "pip install 'ds2a-edge[train]'"),
])
def test_a_missing_extra_is_one_line_naming_it(tmp_path, args, words):
    (tmp_path / "data").mkdir()
    (tmp_path / "ckpt.pt").write_bytes(b"")
    (tmp_path / "m.onnx").write_bytes(b"")
    proc = _ds2a_without_extras(tmp_path, *args)
    err = proc.stderr.strip()
    assert proc.returncode == 2, err
    assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_missing_module_of_our_own_is_still_a_bug(monkeypatch):
    import types

    def run(args):
        raise ModuleNotFoundError("No module named 'ds2a.gone'", name="ds2a.gone")

    module = types.SimpleNamespace(add_arguments=lambda p: None, run=run)
    monkeypatch.setattr(cli, "_command_parser", lambda verb: (__import__("argparse").ArgumentParser(), module))
    with pytest.raises(ModuleNotFoundError):
        cli.main(["train"])


def test_the_message_names_both_extras_when_the_command_needs_more_than_its_own():
    exc = ModuleNotFoundError("No module named 'matplotlib'", name="matplotlib")
    assert cli.missing_extra("train", exc).endswith("pip install 'ds2a-edge[train,bench]'")
    assert cli.missing_extra("web", ModuleNotFoundError(name="aiohttp.web")).endswith("'ds2a-edge[web]'")
    assert cli.missing_extra("train", ModuleNotFoundError(name="numpyy")) is None
