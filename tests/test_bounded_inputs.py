"""Inputs that used to hang, overflow or be executed elsewhere: thread counts, CSV cells a spreadsheet would
run as formulas."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.inspect.parts import PartVerdict
from ds2a.records.database import Records
from ds2a.records.report import cell
from ds2a.runtime.options import MAX_THREADS, check_options

DEMO_MODEL = Path(__file__).resolve().parents[1] / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"
HOSTILE_IDS = ["=1+2", "@SUM(A1:A9)", "+CMD|' /C calc'!A0", "-2+3", "\tx", "\rx", "=HYPERLINK(\"http://e.x\")"]


@pytest.mark.parametrize("verb", ["inspect", "eval", "bench"])
@pytest.mark.parametrize("threads", ["100000", "99999999999", str(MAX_THREADS + 1)])
def test_too_many_threads_is_a_usage_error_at_parse_time(verb, threads, capsys):
    with pytest.raises(SystemExit) as exc:
        main([verb, "--model", str(DEMO_MODEL), "--threads", threads])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"'{threads}' is too many threads: give 1 to {MAX_THREADS}" in err and "Traceback" not in err


def test_serve_bounds_threads_too(capsys):
    pytest.importorskip("aiohttp")  # imported by nothing here; serve's parser is torch- and triton-free
    with pytest.raises(SystemExit):
        main(["serve", str(DEMO_MODEL), "--threads", "100000"])
    assert f"must be a whole number in [0, {MAX_THREADS}]" in capsys.readouterr().err


@pytest.mark.parametrize("backend, key", [("onnxruntime", "intra_op_threads"), ("onnxruntime", "inter_op_threads"),
                                          ("pytorch", "threads")])
@pytest.mark.parametrize("value", [100000, 10 ** 11, -1, 2.5, "4", True])
def test_python_thread_options_are_bounded_and_typed(backend, key, value):
    with pytest.raises(UserError, match=f"option {key} .*give a whole number of threads from 1 to {MAX_THREADS}"):
        check_options(backend, {key: value}, "m")
    assert check_options(backend, {key: 4}, "m") == {key: 4}


def test_the_thread_bound_is_checked_before_a_model_opens():
    from ds2a.runtime import open_model

    with pytest.raises(UserError, match="intra_op_threads 100000000000"):
        open_model(str(DEMO_MODEL), intra_op_threads=10 ** 11)


def _db(path: Path, part_ids) -> Path:
    rec = Records(str(path))
    rec.start_run("m.onnx", "onnxruntime", "imgs/", ["background", "=damage"], {}, None)
    for i, pid in enumerate(part_ids):
        rec.add_verdict(PartVerdict(pid, "part", False, ["=damage: 1 region(s) > max_count 0"], i, i, 1, 1.0, 2.0))
    rec.commit()
    rec.finish_run("finished", {})
    rec.close()
    return path


def test_report_csv_never_writes_a_cell_a_spreadsheet_would_run(tmp_path):
    ids = HOSTILE_IDS + ["plain-1", "cell-0003"]
    db = _db(tmp_path / "i.sqlite", ids)
    out = tmp_path / "parts.csv"
    assert main(["report", str(db), "--csv", str(out)]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][-1] == "'=damage_regions"
    written = [r[1] for r in rows[1:]]
    assert written == ["'" + p for p in HOSTILE_IDS] + ["plain-1", "cell-0003"]
    for r in rows[1:]:
        assert r[4] == "'=damage: 1 region(s) > max_count 0"
        assert r[0] == "1" and r[8] == "1.000"  # numbers stay numbers
    assert all(not value.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows for value in row)


@pytest.mark.parametrize("value, shown", [("=x", "'=x"), ("x=", "x="), ("", ""), (-3, -3), (None, None), ("@", "'@")])
def test_cell_quotes_only_text_that_starts_like_a_formula(value, shown):
    assert cell(value) == shown
