"""Committed text can be rerun by a reader from the repository alone.

Every tracked text file outside tests/ (results, docs, scripts, the package's docstrings) must not
hold an absolute path into the temporary directory, a home directory or another machine-local
root such as /work/ or /root/: commands are run from the repository root, so results name
`runs/...`, `$DATA` or `$WORK` instead. And every `*.py` script a command line (`python x.py`) or
a code span names must exist in the repository, unless the line says it is an upstream
(official) file. tests/ is exempt: its fixtures build such paths on purpose.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable, List, Set, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Machine-local roots. The look-behind keeps URLs (https://host/home/x), relative paths
# (runs/tmp/x) and placeholders ($WORK/db) out; /dev, /usr, /etc, /var/lib, /opt, /proc stay
# allowed: deploy docs and device code name them on purpose.
_ROOTS = [r"/tmp", r"/var/tmp", r"/private/tmp", r"/private/var/folders", r"/root", r"/work",
          r"/scratch", r"/home/[\w.-]+", r"/Users/[\w.-]+"]
for _extra in (tempfile.gettempdir(), str(Path.home())):  # this machine's own, where unusual
    if _extra not in ("", "/") and not any(re.fullmatch(r, _extra) for r in _ROOTS):
        _ROOTS.append(re.escape(_extra))
MACHINE_PATH = re.compile(r"(?<![\w.~:/$@-])(?:" + "|".join(_ROOTS) + r")(?![\w-])[^\s`'\"()<>|;,]*")

# `python [options] SCRIPT.py`; a `*.py` token in a code span or a fenced block.
COMMAND = re.compile(r"\bpython(?:3(?:\.\d+)?)?\s+(?:-[A-Za-z]+\s+)*(?P<script>[^\s`'\"|;&()<>{}$*]+\.py)(?![\w/])")
PY_TOKEN = re.compile(r"(?<![\w/.*{}<>$-])(?P<script>\.?/?[\w-][\w./-]*\.py)(?![\w/])")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
UPSTREAM = re.compile(r"\b(official|upstream)\b", re.IGNORECASE)


def tracked_files() -> List[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return [f for f in out.decode().split("\0") if f]


def text_of(path: Path) -> str | None:
    """The file's text, or None for binary files (images, models)."""
    data = path.read_bytes()
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def machine_paths(text: str) -> List[Tuple[int, str]]:
    """(line number, path) of every absolute path into a machine-local root."""
    return [(n, m.group(0)) for n, line in enumerate(text.splitlines(), 1) for m in MACHINE_PATH.finditer(line)]


def _exists(script: str, tracked: Set[str], folders: Set[str]) -> bool:
    """Present in the repository: by its path from the root or as the tail of one (`runtime/options.py`).
    A path whose first folder is not one of the repository's (`onnxruntime/quantization/calibrate.py`)
    names another project's file and is not ours to check."""
    script = script[2:] if script.startswith("./") else script
    if script in tracked or any(f.endswith("/" + script) for f in tracked):
        return True
    first = script.split("/")[0]
    return "/" in script and first not in folders


def missing_scripts(text: str, tracked: Iterable[str], markdown: bool = False) -> List[Tuple[int, str]]:
    """(line number, name) of every `*.py` script named in a command line or code span that the
    repository does not hold. Absolute names are left to machine_paths (deploy docs name /opt/... on purpose)."""
    tracked = set(tracked)
    folders = {part for f in tracked for part in f.split("/")[:-1]}
    found: List[Tuple[int, str]] = []
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if markdown and line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        names = {m.group("script") for m in COMMAND.finditer(line)}
        spans = [line] if fenced else CODE_SPAN.findall(line)
        upstream = bool(UPSTREAM.search(line))
        for span in spans:
            names |= {m.group("script") for m in PY_TOKEN.finditer(span)
                      if not (upstream and "/" not in m.group("script"))}
        found += [(n, s) for s in sorted(names) if not s.startswith("/") and not _exists(s, tracked, folders)]
    return found


def _checked_files() -> List[Tuple[str, str]]:
    files = []
    for name in tracked_files():
        path = ROOT / name
        if name.startswith("tests/") or not path.is_file():
            continue
        text = text_of(path)
        if text is not None:
            files.append((name, text))
    return files


def test_no_tracked_text_file_names_a_machine_path() -> None:
    bad = [f"{name}:{n}: {p}" for name, text in _checked_files() for n, p in machine_paths(text)]
    assert not bad, ("absolute machine paths in committed files; use a path relative to the repository "
                     "root or a placeholder ($DATA, $WORK, runs/...):\n" + "\n".join(bad))


def test_every_named_script_is_in_the_repository() -> None:
    tracked = tracked_files()
    bad = [f"{name}:{n}: {s}" for name, text in _checked_files()
           for n, s in missing_scripts(text, tracked, markdown=name.endswith(".md"))]
    assert not bad, ("scripts named in commands or code spans that the repository does not hold; commit "
                     "them under benchmarks/ or say how to redo the step with shipped commands:\n" + "\n".join(bad))


@pytest.mark.parametrize("line", [
    "- command: `python -m ds2a inspect --db /tmp/ds2a-soak-lyzmwb16/db/soak.sqlite --duration 600`",
    "warning: records: cannot write /tmp/ds2a-soak-x/db/soak.sqlite (database is locked)",
    "ds2a synth /tmp/ds2a_synth --train 400",
    "`env PYTHONPATH=/tmp/h6/head python -m ds2a calibrate r18_512.onnx`",
    "--out=/tmp",
    "python -m ds2a inspect --model /work/main/ds2a/assets/demo/ds2a_tiny_synth.int8.onnx",
    'REAL = Path(os.environ.get("DS2A_REAL_DATA", "/work/shared/data/real_defects"))',
    "cache in /root/.cache/ds2a",
    "data under /home/alice/defects",
    "see /Users/bob/runs",
    "kept in /var/tmp/ds2a",
])
def test_machine_path_check_flags_bad_samples(line: str) -> None:
    assert machine_paths(f"intro\n{line}\n")[0][0] == 2


def test_machine_path_check_flags_this_machines_temporary_directory() -> None:
    assert machine_paths(f"written to {tempfile.gettempdir()}/ds2a-shot/inspect.sqlite")


@pytest.mark.parametrize("line", [
    "ds2a inspect --source /dev/video0 --db runs/demo/inspect.sqlite",
    "export LD_LIBRARY_PATH=/usr/lib/aarch64-linux-gnu:/usr/local/cuda/lib64",
    "ds2a web /var/lib/ds2a/inspect.sqlite --bind 0.0.0.0:8080",
    "WorkingDirectory=/opt/ds2a",
    "read /proc/device-tree/model and /etc/nv_tegra_release",
    "https://github.com/user/repo/tree/main/tmp/x and http://host/home/page",
    "--db $WORK/db/soak.sqlite, --data $DATA/crackforest, runs/tmp/x, data/home/x",
    "a tmpfs mounted for the run; /tmpfs, /rooted and /workspace are other names",
    'os.path.expanduser("~/.pyenv")',
])
def test_machine_path_check_allows_legitimate_text(line: str) -> None:
    assert machine_paths(line) == []


TRACKED = ["benchmarks/soak.py", "benchmarks/peak_memory.py", "ds2a/runtime/options.py", "deploy/build_engine.py",
           "ds2a/export/parity.py"]


@pytest.mark.parametrize("text,missing", [
    ("| 3.09 | `python /tmp/h7/export_phases.py ds2a_r50_512.pt --out r.onnx` |", []),  # left to machine_paths
    ("    python export_phases.py ds2a_r50_512.pt --data synth512", ["export_phases.py"]),
    ("run `python3 benchmarks/export_variant.py --out x.onnx`", ["benchmarks/export_variant.py"]),
    ("options live in `runtime/backends.py`", ["runtime/backends.py"]),
    ("the layout: `ds2a/cli.py`", ["ds2a/cli.py"]),
])
def test_script_check_flags_missing_scripts(text: str, missing: List[str]) -> None:
    assert [s for _, s in missing_scripts(text, TRACKED)] == missing


def test_script_check_reads_fenced_blocks_of_markdown() -> None:
    text = "intro\n```bash\nsudo deploy/build_engine.py --x\nbenchmarks/make_report.py > out.md\n```\nno `x` here\n"
    assert missing_scripts(text, TRACKED, markdown=True) == [(4, "benchmarks/make_report.py")]


@pytest.mark.parametrize("text", [
    "    python benchmarks/soak.py --minutes 1 --out runs/soak.md",
    "python -m pytest -q tests/test_nothing.py",  # pytest's arguments: not a script run by python
    "python -c 'import x; print(1)'",
    "options per backend: `ds2a/runtime/options.py`; the same as `runtime/options.py`",
    "under `benchmarks/peak_memory.py` (`./benchmarks/soak.py`)",
    "Layer order (official `dssa_decoder.py`):",
    "ORT's `onnxruntime/quantization/calibrate.py` keeps every tensor",
    "`sudo python3 /opt/ds2a/deploy/inspect_camera.py`",
    "tests are `tests/test_*.py`; a template `{name}.py`",
])
def test_script_check_allows_present_and_foreign_scripts(text: str) -> None:
    assert missing_scripts(text, TRACKED) == []


def _benchmark(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_soak_report_names_no_machine_path() -> None:
    """benchmarks/soak.py rewrites benchmarks/results/soak.md: its scratch folder and the checkout's
    absolute paths (in the command and the station's warnings) come out as $WORK and relative paths."""
    import argparse

    soak = _benchmark("soak")
    work = str(Path(tempfile.gettempdir()) / "ds2a-soak-lyzmwb16")  # a name only: nothing is written
    db = f"{work}/db/soak.sqlite"
    cmd = ["/usr/bin/python3", "-m", "ds2a", "inspect", "--model", soak.DEMO_MODEL, "--db", db]
    r = {"cmd": cmd, "work": work, "disk_full_how": "a tmpfs", "inspected": 9, "recorded": 9, "dropped": 0,
         "parts": 2, "stats": {}, "events": [(1.0, "lock released")], "rss": [(0.0, 200.0)],
         "stderr": f"warning: records: cannot write {db} (database is locked)\n"
                   f"records: {db} writable again after 15.0 s; 12 queued rows written, nothing lost\n"}
    args = argparse.Namespace(minutes=1, fps=30, lock_s=15, lock_at=10, full_s=15)
    mem = {"first_quarter_mb": 200.0, "last_quarter_mb": 200.0, "max_mb": 200.0}
    text = soak.to_markdown(r, args, True, ["PASS  x"], mem)
    assert machine_paths(text) == [] and str(ROOT) not in text
    assert "--model ds2a/assets/demo/ds2a_tiny_synth.int8.onnx --db $WORK/db/soak.sqlite" in text
    assert "cannot write $WORK/db/soak.sqlite" in text


def test_benchmark_matrix_works_inside_the_checkout_by_default() -> None:
    """Its files' paths end up in the committed results (cpu_matrix.json), so the default is relative."""
    work = _benchmark("run_matrix").parse_args([]).work
    assert not Path(work).is_absolute() and machine_paths(work) == []
