"""The supported Python range is real: nothing in the repository needs a newer Python than setup.cfg says.

JetPack 5 ships Python 3.8. `vermin` finds library calls and syntax newer than that; it does not
see `key.removeprefix(...)` on a value of unknown type, a `tuple[...]` alias evaluated at import
under `from __future__ import annotations`, or `int | None` outside an annotation, so a small AST
pass covers those. Both checks are shown to fail on a 3.9+ snippet. `.ci/py38_tests.py` then runs
the device-side tests under a real 3.8 interpreter where one exists.
"""
from __future__ import annotations

import ast
import configparser
import re
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["ds2a", "deploy", "calibration", "benchmarks", "tests", ".ci"]
GENERIC_BUILTINS = {"tuple", "list", "dict", "set", "frozenset", "type"}
TYPE_NAMES = GENERIC_BUILTINS | {"int", "float", "str", "bytes", "bool", "complex", "object"}
STR_METHODS_3_9 = {"removeprefix", "removesuffix"}


def minimum_python() -> Tuple[int, int]:
    """The one statement of the supported range: setup.cfg's python_requires (">=3.8")."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    match = re.fullmatch(r">=\s*(\d+)\.(\d+)", cfg["options"]["python_requires"].strip())
    assert match, "python_requires must read '>=X.Y'"
    return int(match.group(1)), int(match.group(2))


def python_files() -> List[Path]:
    files: List[Path] = []
    for name in CHECKED:
        base = ROOT / name
        files += [base] if base.is_file() else sorted(base.rglob("*.py"))
    return [p for p in files if "__pycache__" not in p.parts]


def _lazy_annotations(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
               for n in tree.body)


def _annotation_nodes(tree: ast.Module) -> set:
    """ids of every node inside an annotation (not evaluated under `from __future__ import annotations`)."""
    roots = []
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            roots.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            roots.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            roots.append(node.annotation)
    return {id(n) for root in roots for n in ast.walk(root)}


def _is_type_expr(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, ast.Name):
        return node.id in TYPE_NAMES
    if isinstance(node, ast.Subscript):
        return _is_type_expr(node.value) or (isinstance(node.value, ast.Name) and node.value.id[:1].isupper())
    return isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and (
        _is_type_expr(node.left) or _is_type_expr(node.right))


def runtime_violations(source: str, filename: str = "<snippet>") -> List[str]:
    """What Python 3.8 fails on at run time that vermin does not report (file:line: reason)."""
    tree = ast.parse(source, filename)
    skip = _annotation_nodes(tree) if _lazy_annotations(tree) else set()
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id in GENERIC_BUILTINS:
            found.append(f"{where}: {node.value.id}[...] evaluated at run time needs 3.9; use typing."
                         f"{node.value.id.capitalize()}")
        elif isinstance(node, ast.Attribute) and node.attr in STR_METHODS_3_9:
            found.append(f"{where}: .{node.attr}() needs 3.9; slice after startswith/endswith")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and _is_type_expr(node):
            found.append(f"{where}: X | Y of types at run time needs 3.10; use typing.Union/Optional")
    return found


def vermin(paths: List[Path], target: Tuple[int, int], eval_annotations: bool) -> subprocess.CompletedProcess:
    pytest.importorskip("vermin", reason="vermin is in the dev extra: pip install -e '.[dev]'")
    cmd = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", f"-t={target[0]}.{target[1]}-", "--violations", "--no-tips",
           "--no-parse-comments"] + (["--eval-annotations"] if eval_annotations else [])
    return subprocess.run(cmd + [str(p) for p in paths], capture_output=True, text=True, timeout=300)


def check_files(paths: List[Path], target: Tuple[int, int]) -> List[str]:
    """All problems for Python `target`: vermin (annotations evaluated where they are) plus the AST pass."""
    problems: List[str] = []
    lazy, eager = [], []
    for path in paths:
        source = path.read_text()
        problems += runtime_violations(source, str(path.relative_to(ROOT) if ROOT in path.parents else path))
        (lazy if _lazy_annotations(ast.parse(source)) else eager).append(path)
    for group, evaluated in ((lazy, False), (eager, True)):
        if group:
            proc = vermin(group, target, evaluated)
            if proc.returncode != 0:
                problems.append(f"vermin (exit {proc.returncode}):\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}")
    return problems


def test_supported_range_is_stated_once_and_everything_agrees() -> None:
    low = minimum_python()
    assert low == (3, 8), "JetPack 5.1 ships Python 3.8; deploy/README.md's table depends on it"
    from ds2a.doctor.probe import MIN_PYTHON

    assert MIN_PYTHON == low, "ds2a doctor's Python check must match setup.cfg"
    ruff = (ROOT / "ruff.toml").read_text()
    assert f'target-version = "py{low[0]}{low[1]}"' in ruff
    readme = (ROOT / "README.md").read_text()
    stated = set(re.findall(r"Python (3\.\d+)\+", readme))
    assert stated == {f"{low[0]}.{low[1]}"}, f"README states Python {stated}; setup.cfg says >={low[0]}.{low[1]}"


def test_repository_needs_nothing_newer_than_the_minimum() -> None:
    problems = check_files(python_files(), minimum_python())
    assert not problems, "\n".join(problems)


NEWER = {
    "str_method_on_unknown_value": "def strip(k):\n    return k.removeprefix('module.')\n",
    "alias_under_lazy_annotations": "from __future__ import annotations\nPair = tuple[int, int]\n",
    "union_at_run_time": "from typing import Optional\nMaybe = int | None\n",
    "annotation_evaluated_at_def": "def f(x: list[int]) -> dict[str, int]:\n    return {}\n",
    "library_call": "import functools\n\n@functools.cache\ndef f():\n    return 1\n",
}


@pytest.mark.parametrize("name", sorted(NEWER))
def test_the_check_fails_on_code_that_needs_a_newer_python(name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.py"
    path.write_text(NEWER[name])
    assert check_files([path], (3, 8)), f"{name} needs 3.9+ but passed the 3.8 check"


def test_the_check_passes_code_that_runs_on_the_minimum(tmp_path: Path) -> None:
    path = tmp_path / "ok.py"
    path.write_text("from __future__ import annotations\nfrom typing import Optional, Tuple\n\n"
                    "Pair = Tuple[int, int]\n\n\ndef f(k: str, x: list[int] | None) -> Optional[dict[str, int]]:\n"
                    "    return {k[len('module.'):] if k.startswith('module.') else k: 1}\n\n\n"
                    "flags = 1 | 2\n")
    assert check_files([path], (3, 8)) == []
