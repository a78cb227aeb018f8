"""An inspection run from Python, without the CLI: what it returns is what the database says,
the rules file is refused before the model opens, and the library never imports ds2a.cli."""
from __future__ import annotations

import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from ds2a.errors import UserError
from ds2a.inspect import InspectOptions, inspect
from ds2a.records.database import connect
from ds2a.records.report import summarise

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ROOT / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"


def test_a_python_run_returns_what_the_database_records(tmp_path):
    db = tmp_path / "r.sqlite"
    options = InspectOptions(model=str(DEMO_MODEL), source="demo://?frames=40&width=320&height=180&speed=24",
                             headless=True, db=str(db), backend_options={"intra_op_threads": 1})
    table = io.StringIO()
    summary = inspect(options, table=table)

    st = summary.stats
    assert summary.status == "finished" and summary.run_id == 1 and st.frames == 40
    assert summary.text in table.getvalue()  # the table printed is the one returned
    con = connect(str(db), create=False, readonly=True)
    con.row_factory = sqlite3.Row
    try:
        run = con.execute("SELECT * FROM runs WHERE id=?", (summary.run_id,)).fetchone()
        stored = json.loads(run["stats"])
        assert (run["status"], run["frames"], run["dropped"], run["corrupt"]) == ("finished", st.frames, st.dropped,
                                                                                 st.corrupt)
        assert run["e2e_fps"] == round(st.e2e_fps, 2) and stored["wall_s"] == round(st.wall_s, 3)
        # one reading of the output time per frame: the database's and the summary table's are the same numbers
        rows = con.execute("SELECT output_ms, latency_ms FROM timings WHERE run_id=? ORDER BY frame_id",
                           (summary.run_id,)).fetchall()
        assert [r["output_ms"] for r in rows] == st.timings.samples["output"]
        assert [r["latency_ms"] for r in rows] == st.timings.samples["latency"]
        report = summarise(con, summary.run_id)
    finally:
        con.close()
    assert report["latency_ms"]["output_ms"] == st.timings.summary()["output"]
    assert (report["parts"], report["pass"], report["fail"]) == (len(summary.parts), summary.parts_passed,
                                                                 summary.parts_failed)
    assert stored["parts"] == len(summary.parts) >= 1 and stored["parts_failed"] == summary.parts_failed
    assert report["frames"] == st.frames and report["frames_fail"] == summary.frames_failed
    assert report["frames_no_part"] == st.no_part
    assert summary.truth is not None and report["truth"] == summary.truth  # demo:// knows its ground truth


def test_json_lines_go_to_out_and_the_summary_to_table(tmp_path):
    out, table = io.StringIO(), io.StringIO()
    options = InspectOptions(model=str(DEMO_MODEL), source="demo://?frames=40&width=320&height=180&speed=24",
                             headless=True, jsonl=True, max_frames=25, backend_options={"intra_op_threads": 1})
    summary = inspect(options, out=out, table=table)
    frames = [x for x in map(json.loads, out.getvalue().splitlines()) if x["type"] == "frame"]
    assert len(frames) == summary.stats.frames == 25
    assert [f["ms"]["output"] for f in frames] == [round(v, 2) for v in summary.stats.timings.samples["output"]]
    assert "stopped because       max frames" in table.getvalue()


def test_a_bad_rules_file_is_refused_before_the_model_opens(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("classes: {damage: {max_count: -1}}\n")
    options = InspectOptions(model=str(tmp_path / "missing.onnx"), rules=str(rules), headless=True)
    with pytest.raises(UserError, match=r"classes\.damage\.max_count is -1"):
        inspect(options, table=io.StringIO())


def test_the_library_never_imports_the_cli():
    code = ("import sys, ds2a.inspect, ds2a.records.report, ds2a.sources, ds2a.web.data, ds2a.web.station, "
            "ds2a.web.server, ds2a.doctor.report\nprint(sorted(m for m in sys.modules if m.startswith('ds2a.cli')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"


def test_records_and_sources_sit_below_inspection_and_the_page():
    """Records and sources are shared rooms: they must not reach up into the station, the page or precision."""
    code = ("import sys, ds2a.records, ds2a.sources, ds2a.data.calibration, ds2a.data.picture_stats\n"
            "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
            "(['ds2a', 'inspect'], ['ds2a', 'web'], ['ds2a', 'precision'], ['ds2a', 'export'])))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
