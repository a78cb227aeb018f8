#!/usr/bin/env python3
"""Run the device-side tests under a real Python 3.8 (JetPack 5's Python), or say why not.

The static check (tests/test_py38.py) runs everywhere; this adds the real interpreter where one
exists: $PY38, `python3.8` on PATH, or pyenv's versions/3.8.*. It keeps a virtual environment in
.venv38/ with the device-side dependencies (what pip resolves for 3.8), installs ds2a with
--no-deps, parses every Python file with 3.8, and runs the torch-free test files below.
Exit status: pytest's, or 0 with a printed reason when no 3.8 interpreter exists or its
environment cannot be installed (no package index).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv38"
REQUIREMENTS = ["numpy", "opencv-python-headless", "pyyaml", "onnxruntime", "onnx", "matplotlib", "pytest",
                "hypothesis"]
# Test files that need neither torch nor interpreter-specific wheels (the TensorRT binding wheels of
# tests/test_trt_api_surface.py are built per Python version; calibration is a workstation step).
TORCH_FREE_TESTS = [
    "test_torch_free.py", "test_runtime.py", "test_tensorrt_backend.py", "test_engine_builder.py", "test_trt_compat.py",
    "test_inspect_command.py", "test_inspect_loop.py", "test_inspect_output.py", "test_sources.py", "test_rules.py",
    "test_quantify.py", "test_records.py", "test_bench.py", "test_data.py", "test_synth.py", "test_transforms.py",
    "test_metrics.py", "test_doctor.py", "test_inspect_failsafe.py", "test_model_checks.py",
    "test_input_properties.py", "test_cuda_semantics.py", "test_outputs.py", "test_triton_station.py",
    "test_backend_contract.py", "test_backend_options.py", "test_io_layout.py", "test_inspect_library.py",
    "test_eval_bench_api.py", "test_demo_truth.py", "test_atomic_writers.py", "test_doctor_camera.py",
    "test_overlay_legend.py", "test_selftest.py", "test_accuracy_gate.py",
]


def say(msg: str) -> None:
    print(f"py38: {msg}", flush=True)


def find_python38() -> Optional[str]:
    candidates = [os.environ.get("PY38", ""), shutil.which("python3.8") or ""]
    pyenv = shutil.which("pyenv")
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    if pyenv:
        out = subprocess.run([pyenv, "root"], capture_output=True, text=True)
        roots.insert(0, out.stdout.strip())
    for root in filter(None, roots):
        candidates += sorted(glob.glob(os.path.join(root, "versions", "3.8.*", "bin", "python")), reverse=True)
    for exe in filter(None, candidates):
        out = subprocess.run([exe, "-c", "import sys; print(sys.version_info[:2] == (3, 8))"],
                             capture_output=True, text=True)
        if out.stdout.strip() == "True":
            return exe
    return None


def ensure_venv(python38: str) -> Path:
    """.venv38 with REQUIREMENTS and ds2a (editable, no dependencies); rebuilt when the list changes."""
    py = VENV / "bin" / "python"
    stamp = VENV / "ds2a-requirements.txt"
    wanted = "\n".join(REQUIREMENTS) + "\n"
    if py.exists() and stamp.exists() and stamp.read_text() == wanted:
        return py
    say(f"creating {VENV.name} with {python38}")
    subprocess.run([python38, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run(pip + REQUIREMENTS, check=True)
    subprocess.run(pip + ["--no-deps", "-e", str(ROOT)], check=True)
    stamp.write_text(wanted)
    return py


def main() -> int:
    python38 = find_python38()
    if python38 is None:
        say("SKIPPED: no Python 3.8 interpreter here ($PY38, python3.8 on PATH, pyenv versions/3.8.*); "
            "the static check in tests/test_py38.py still ran")
        return 0
    try:
        py = ensure_venv(python38)
    except subprocess.CalledProcessError as exc:  # e.g. no package index reachable
        say(f"SKIPPED: could not set up {VENV.name} ({' '.join(exc.cmd[:4])}... exited {exc.returncode}); "
            "the static check in tests/test_py38.py still ran")
        return 0
    files = [str(p) for p in sorted(ROOT.glob("ds2a/**/*.py")) + sorted(ROOT.glob("deploy/*.py"))]
    subprocess.run([str(py), "-c", "import ast, sys\nfor f in sys.argv[1:]:\n    ast.parse(open(f).read(), f)"] + files,
                   check=True)
    tests: List[str] = []
    for name in TORCH_FREE_TESTS:
        path = ROOT / "tests" / name
        if path.is_file():
            tests.append(str(path))
        else:
            say(f"{name} not found, not run")
    say(f"{len(files)} files parse under {python38}; running {len(tests)} test files")
    return subprocess.run([str(py), "-m", "pytest", "-q", "-p", "no:cacheprovider"] + sys.argv[1:] + tests,
                          cwd=str(ROOT)).returncode


if __name__ == "__main__":
    sys.exit(main())
