"""Recipes (`ds2a inspect --recipes DIR`, ds2a/inspect/recipes.py): recipe files checked at start with one-line
errors, the recipe to start with, changeovers between parts by the trigger payload (a real mosquitto), the Modbus
recipe register (a pymodbus server as the PLC), OPC UA SelectRecipe and the book's API; a candidate whose model
fails to open or fails its self-test is refused and the recipe in force stays; no part is judged by two recipes;
every part's record names its recipe and the sha256 of the recipe's files."""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest
from test_notify import wait_until
from test_trigger import Line, PlcProgram, Station, bright, broker, folder, plc, records  # noqa: F401 - fixtures

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.inspect import run as run_module
from ds2a.inspect.recipes import RecipeBook, read_recipe
from ds2a.inspect.run import InspectOptions, inspect
from ds2a.sources import Source

STRICT = "rules: {classes: {damage: {max_count: 0}}}\n"


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Dict[str, Path]:
    """Threshold models (ONNX Runtime, known answers): `a` calls pixels darker than 60 damage, `b` darker than
    250 (so a bright frame FAILs under b and PASSes under a); `a_golden` carries golden frames, `edited` is that
    file with its threshold changed, so its self-test fails."""
    pytest.importorskip("onnxruntime")
    import onnx
    from fakes.onnx_models import threshold_onnx
    from onnx import numpy_helper

    from ds2a.export.metadata import attach_golden_file

    d = tmp_path_factory.mktemp("models")
    a, b = threshold_onnx(d / "a.onnx"), threshold_onnx(d / "b.onnx", threshold=250.0)
    golden = threshold_onnx(d / "a_golden.onnx")
    frames = []
    for i in range(4):
        img = np.full((32, 32, 3), 200, np.uint8)
        img[:, : 8 * (i + 1)] = 100  # between the two thresholds: damage only for the edited model
        frames.append(img)
    attach_golden_file(golden, frames, "test frames")
    model = onnx.load(str(golden))
    for i, init in enumerate(model.graph.initializer):
        if init.name == "thr":
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.array(150.0, np.float32), "thr"))
    onnx.save(model, str(d / "edited.onnx"))
    (d / "broken.onnx").write_bytes(b"not an onnx file")
    return {"a": a, "b": b, "a_golden": golden, "edited": d / "edited.onnx", "broken": d / "broken.onnx"}


def book_dir(path: Path, models: Dict[str, Path], recipes: Dict[str, str]) -> Path:
    """A recipes folder: {name: model key or YAML text}; a key writes `model: <file>` with the strict rules."""
    path.mkdir()
    for name, spec in recipes.items():
        text = f"model: {models[spec]}\n{STRICT}" if spec in models else spec
        (path / f"{name}.yaml").write_text(text)
    return path


class SlowSource(Source):
    """A folder of images read at `fps`: the run lasts long enough for changeovers."""

    def __init__(self, inner: Source, fps: float) -> None:
        super().__init__(inner.uri)
        self.inner, self.delay = inner, 1.0 / fps
        self.gives_parts, self.gives_roi, self.frame_hw = inner.gives_parts, inner.gives_roi, inner.frame_hw
        self.fps, self.stats = inner.fps, inner.stats

    def read(self):
        time.sleep(self.delay)
        return None if self._stop.is_set() else self.inner.read()

    def close(self) -> None:
        self.inner.close()


def slow(monkeypatch, fps: float) -> None:
    real = run_module.open_source
    monkeypatch.setattr(run_module, "open_source", lambda uri: SlowSource(real(uri), fps))


def capture_book(monkeypatch) -> Dict[str, Any]:
    """The run's RecipeBook, as the page and OPC UA get it."""
    box: Dict[str, Any] = {}

    class Book(RecipeBook):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            box["book"] = self

    monkeypatch.setattr(run_module, "RecipeBook", Book)
    return box


def per_frame(monkeypatch) -> List[Tuple[int, Any]]:
    """(seq, recipe) of every frame the Publisher is given."""
    seen: List[Tuple[int, Any]] = []

    class Publisher(run_module.Publisher):
        def __call__(self, res: Any) -> None:
            seen.append((res.seq, res.recipe))
            super().__call__(res)

    monkeypatch.setattr(run_module, "Publisher", Publisher)
    return seen


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def recipe_sha(recipe: Path, rules: str, model: Path) -> str:
    return hashlib.sha256(f"recipe {sha(recipe)}\nrules {rules}\nmodel {sha(model)}\n".encode()).hexdigest()


def verdict_rows(db: Path) -> List[Tuple[str, str, str, str]]:
    records(db)  # `ds2a report --check` finds every invariant kept
    con = sqlite3.connect(str(db))
    rows = [tuple(r) for r in con.execute("SELECT part_id, verdict, recipe, recipe_sha256 FROM verdicts ORDER BY id")]
    con.close()
    return rows


def audit_rows(db: Path) -> List[Tuple[str, str, Dict[str, Any]]]:
    con = sqlite3.connect(str(db))
    rows = [(r[0], r[1], json.loads(r[2])) for r in
            con.execute("SELECT user, origin, detail FROM audit WHERE action='recipe_select' ORDER BY id")]
    con.close()
    return rows


# --- recipe files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text,msg", [
    ("model: m.onnx\nrules: {classes: {damage: {max_count: 0}}}\ncolour: red\n", "unknown key(s) colour; valid keys"),
    ("model: m.onnx\nrules: [unclosed\n", "is not valid YAML"),
    ("rules: {classes: {damage: {max_count: 0}}}\n", "'model' is missing"),
    ("model: nowhere.onnx\nrules: {classes: {damage: {max_count: 0}}}\n", "model file nowhere.onnx does not exist"),
    ("model: m.onnx\nrules: nowhere.rules.yaml\n", "rules file nowhere.rules.yaml does not exist"),
    ("model: m.onnx\n", "'rules' is missing"),
    ("model: m.onnx\nrules: {min_area_px: 10}\n", "state no limit, so it could never FAIL"),
    ("model: m.onnx\nrules: {classes: {damage: {max_count: 0}}}\nroi: [0, 0, 4, 4]\n", "could never FAIL"),
    ("model: m.onnx\nrules: {classes: {damage: {max_count: 0}}}\nroi: [1, 2]\n", "roi [1, 2] is not a window"),
    ("model: m.onnx\nrules: {classes: {damage: {max_cont: 0}}}\n", "unknown key(s) max_cont"),
    ("model: m.onnx\nrules: {classes: {damage: {max_count: 0}}}\nmm_per_pixel: .nan\n", "mm_per_pixel"),
    ("model: m.onnx\nrules: {classes: {damage: {max_count: 0}}}\npart_id: rfid\n", "--part-id rfid"),
    ("- model: m.onnx\n", "top level must be a mapping"),
])
def test_a_bad_recipe_file_is_one_line_naming_the_file_and_the_fix(tmp_path, text, msg):
    (tmp_path / "m.onnx").write_bytes(b"x")
    (tmp_path / "cell.yaml").write_text(text)
    with pytest.raises(UserError) as err:
        RecipeBook(str(tmp_path))
    assert msg in str(err.value) and "cell.yaml" in str(err.value) and "\n" not in str(err.value)


def test_a_recipe_reads_its_rules_file_window_scale_and_hashes_its_three_files(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"model bytes")
    (tmp_path / "cell.rules.yaml").write_text("classes: {damage: {max_area_mm2: 2.0}}\n")
    (tmp_path / "cell.yaml").write_text("model: m.onnx\nrules: cell.rules.yaml\nroi: [10, 20, 300, 200]\n"
                                        "mm_per_pixel: 0.05\n")
    r = read_recipe(str(tmp_path / "cell.yaml"))
    assert (r.name, r.roi, r.mm_per_pixel, r.rules.mm_per_pixel) == ("cell", (10, 20, 300, 200), 0.05, 0.05)
    assert r.rules.classes["damage"].max_area_mm2 == 2.0 and r.model == str(tmp_path / "m.onnx")
    assert r.sha256 == recipe_sha(tmp_path / "cell.yaml", sha(tmp_path / "cell.rules.yaml"), tmp_path / "m.onnx")
    (tmp_path / "cell.rules.yaml").write_text("classes: {damage: {max_area_mm2: 3.0}}\n")
    assert read_recipe(str(tmp_path / "cell.yaml")).sha256 != r.sha256  # a changed rules file is another recipe


def test_the_book_names_numbers_and_refuses_unknown_names(tmp_path, models):
    book = RecipeBook(str(book_dir(tmp_path / "r", models, {"b-cell": "a", "a-cell": "b"})))
    assert book.names() == ["a-cell", "b-cell"]
    assert [book.by_number(n) for n in (0, 1, 2, 3)] == [None, "a-cell", "b-cell", "number 3"]
    with pytest.raises(UserError, match="--recipe c-cell is not a recipe of .*; choose one of a-cell, b-cell"):
        book.first("c-cell")
    with pytest.raises(UserError, match="holds 2 recipes; choose the one to start with: --recipe NAME"):
        book.first(None)
    with pytest.raises(UserError, match="holds no recipe"):
        RecipeBook(str(tmp_path))  # only a folder
    with pytest.raises(UserError, match="recipe nope is not a recipe"):
        book.request("nope", "eric", "engineer", "test")
    with pytest.raises(UserError, match="olga \\(operator\\) may not select recipes"):
        book.request("b-cell", "olga", "operator", "test")


@pytest.mark.parametrize("extra,msg", [
    ([], "holds 2 recipes; choose the one to start with: --recipe NAME (a, b)"),
    (["--recipe", "c"], "--recipe c is not a recipe of"),
    (["--recipe", "a", "--rules", "x.yaml"], "--rules with --recipes"),
])
def test_cli_recipe_errors_are_one_line_before_the_model_opens(tmp_path, models, capsys, extra, msg):
    d = book_dir(tmp_path / "r", models, {"a": "a", "b": "b"})
    rc = main(["inspect", "--recipes", str(d), "--headless", "--source", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    rc = main(["inspect", "--headless", "--recipe", "a"])
    err = capsys.readouterr().err
    assert rc == 2 and "--model MODEL, or --recipes DIR" in err


# --- a run with recipes -----------------------------------------------------------------------------


def test_the_recipe_at_start_judges_and_names_every_part(tmp_path, models):
    d = book_dir(tmp_path / "r", models, {"a": "a", "b": "b"})
    db = tmp_path / "i.sqlite"
    out = io.StringIO()
    summary = inspect(InspectOptions(model="", recipes=str(d), recipe="b", db=str(db), headless=True, jsonl=True,
                                     source=str(folder(tmp_path / "imgs", [False, False]))), out=out,
                      table=io.StringIO())
    want = recipe_sha(d / "b.yaml", "", models["b"])
    parts = [json.loads(x) for x in out.getvalue().splitlines() if json.loads(x)["type"] == "part"]
    assert [(p["recipe"], p["recipe_sha256"]) for p in parts] == [("b", want)] * 2  # the JSON lines name it too
    assert [(p.verdict, p.recipe, p.recipe_sha256) for p in summary.parts] == [("FAIL", "b", want)] * 2
    assert [r[1:] for r in verdict_rows(db)] == [("FAIL", "b", want)] * 2
    con = sqlite3.connect(str(db))
    stats = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    con.close()
    assert stats["recipes"]["start"] == {"name": "b", "sha256": want} and stats["recipes"]["names"] == ["a", "b"]


def test_cli_runs_the_recipe_named_at_start(tmp_path, models, capsys):
    d = book_dir(tmp_path / "r", models, {"a": "a", "b": "b"})
    db = tmp_path / "i.sqlite"
    rc = main(["inspect", "--recipes", str(d), "--recipe", "a", "--headless", "--db", str(db), "--threads", "1",
               "--source", str(folder(tmp_path / "imgs", [False, True, False]))])
    out = capsys.readouterr()
    assert rc == 0 and "recipe  a of" in out.out + out.err
    assert [r[1:3] for r in verdict_rows(db)] == [("PASS", "a"), ("FAIL", "a"), ("PASS", "a")]


def test_no_part_is_judged_by_two_recipes(tmp_path, models, monkeypatch):
    """Parts of 3 frames (a) and 2 frames (b), changeovers asked every 0.15 s wherever the line is: each part's
    frames were all judged by its recipe, and every part but the last has its recipe's number of frames."""
    d = book_dir(tmp_path / "r", models, {
        "a": f"model: {models['a']}\nrules: {{part: {{by: frames, frames: 3}}, classes: {{damage: {{max_count: 0}}}}}}\n",
        "b": f"model: {models['b']}\nrules: {{part: {{by: frames, frames: 2}}, classes: {{damage: {{max_count: 0}}}}}}\n"})
    slow(monkeypatch, 60)
    box, seen = capture_book(monkeypatch), per_frame(monkeypatch)
    done = threading.Event()

    def operator() -> None:
        assert wait_until(lambda: "book" in box and box["book"].active is not None, 20)
        i = 0
        while not done.is_set():
            time.sleep(0.15)
            i += 1
            box["book"].request("b" if i % 2 else "a", "eric", "engineer", "test")

    threading.Thread(target=operator, daemon=True).start()
    db = tmp_path / "i.sqlite"
    try:
        summary = inspect(InspectOptions(model="", recipes=str(d), recipe="a", db=str(db), headless=True,
                                         source=str(folder(tmp_path / "imgs", [False] * 150))),
                          out=open("/dev/null", "w"))
    finally:
        done.set()
    by_seq = dict(seen)
    parts = summary.parts
    used = {p.recipe for p in parts}
    assert used == {"a", "b"} and len(box["book"].changeovers) >= 3
    for p in parts:
        recipes = {by_seq[s] for s in range(p.first_seq, p.last_seq + 1)}
        assert recipes == {p.recipe}, f"part {p.part_id} was judged by {recipes}"
        assert p.verdict == ("PASS" if p.recipe == "a" else "FAIL")
    assert all(p.n_frames == {"a": 3, "b": 2}[p.recipe] for p in parts[:-1])
    assert len({p.part_id for p in parts}) == len(parts)  # ids stay unique across changeovers
    rows = verdict_rows(db)
    assert [(r[0], r[2]) for r in rows] == [(p.part_id, p.recipe) for p in parts]
    applied = [a for a in audit_rows(db) if a[2]["status"] == "applied"]
    assert applied and all(a[0] == "eric" and a[1] == "test" for a in applied)


def test_no_part_of_the_demo_conveyor_is_judged_by_two_recipes(tmp_path, monkeypatch):
    """Parts by the source's ids (demo://: several frames per cell, gaps between cells), changeovers asked
    every 0.2 s: every frame of a part was judged by the part's recipe."""
    pytest.importorskip("onnxruntime")
    model = Path(run_module.__file__).parents[1] / "assets" / "demo" / "ds2a_tiny_synth.int8.onnx"
    d = tmp_path / "r"
    d.mkdir()
    (d / "loose.yaml").write_text(f"model: {model}\nrules: {{classes: {{damage: {{max_count: 0}}}}}}\n")
    (d / "tight.yaml").write_text(f"model: {model}\nrules: {{min_area_px: 16, classes: {{damage: {{max_count: 0}}, "
                                  "smudge: {max_count: 0}}}\n")
    box, seen = capture_book(monkeypatch), per_frame(monkeypatch)
    done = threading.Event()

    def operator() -> None:
        assert wait_until(lambda: "book" in box and box["book"].active is not None, 30)
        i = 0
        while not done.is_set():
            time.sleep(0.2)
            i += 1
            box["book"].request("tight" if i % 2 else "loose", "eric", "engineer", "test")

    threading.Thread(target=operator, daemon=True).start()
    db = tmp_path / "i.sqlite"
    try:
        summary = inspect(InspectOptions(model="", recipes=str(d), recipe="loose", db=str(db), headless=True,
                                         source="demo://?frames=150", drift="off"), out=open("/dev/null", "w"))
    finally:
        done.set()
    by_seq = dict(seen)
    assert {p.recipe for p in summary.parts} == {"loose", "tight"}
    for p in summary.parts:
        assert {by_seq[s] for s in range(p.first_seq, p.last_seq + 1)} == {p.recipe}, p.part_id
    assert [(r[0], r[2]) for r in verdict_rows(db)] == [(p.part_id, p.recipe) for p in summary.parts]


def test_a_candidate_that_fails_to_open_or_its_self_test_is_refused_and_the_old_recipe_stays(tmp_path, models,
                                                                                                monkeypatch):
    d = book_dir(tmp_path / "r", models, {"a": "a", "broken": "broken", "edited": "edited"})
    slow(monkeypatch, 60)
    box = capture_book(monkeypatch)
    states: List[Dict[str, Any]] = []

    def operator() -> None:
        assert wait_until(lambda: "book" in box and box["book"].active is not None, 20)
        book = box["book"]
        for name in ("broken", "edited"):
            book.request(name, "eric", "engineer", "test")
            assert wait_until(lambda: (book.state()["last"] or {}).get("recipe") == name, 20)
            states.append(book.state())

    t = threading.Thread(target=operator, daemon=True)
    t.start()
    db = tmp_path / "i.sqlite"
    summary = inspect(InspectOptions(model="", recipes=str(d), recipe="a", db=str(db), headless=True,
                                     source=str(folder(tmp_path / "imgs", [False] * 90))), out=open("/dev/null", "w"))
    t.join(5)
    assert [s["last"]["status"] for s in states] == ["refused", "refused"]
    assert all(s["current"]["name"] == "a" and s["pending"] is None for s in states)
    assert "recipe broken refused, a stays" in states[0]["alarm"]
    assert "self-test" in states[1]["alarm"] and "edited.onnx" in states[1]["alarm"]
    assert {p.recipe for p in summary.parts} == {"a"} and all(p.verdict == "PASS" for p in summary.parts)
    assert any("recipe edited refused" in e for e in summary.stats.events)  # in the summary's notes
    refused = [a[2] for a in audit_rows(db) if a[2]["status"] == "refused"]
    assert [r["recipe"] for r in refused] == ["broken", "edited"]
    assert {r[2] for r in verdict_rows(db)} == {"a"}


# --- the line asks: MQTT trigger payload, Modbus register ---------------------------------------------


def test_mqtt_trigger_payload_changes_the_recipe_before_its_part(broker, models, tmp_path):  # noqa: F811
    d = book_dir(tmp_path / "r", models, {"a": "a", "b": "b", "broken": "broken"})
    db = tmp_path / "i.sqlite"
    line = Line(broker, "rc")
    st = Station(InspectOptions(model="", recipes=str(d), recipe="a", headless=True, db=str(db), max_frames=7,
                                source=str(folder(tmp_path / "imgs", [False] * 7)),
                                trigger=f"mqtt://127.0.0.1:{broker}/rc", trigger_timeout=10.0))
    assert line.online()
    payloads = ["P1", '{"part_id": "P2", "recipe": "b"}', "P3", '{"part_id": "P4", "recipe": "a"}',
                '{"part_id": "P5", "recipe": "nope"}', '{"part_id": "P6", "recipe": "broken"}', "P7"]
    for p in payloads:
        line.trigger(p)
    assert wait_until(lambda: len(line.results()) == 7, 30)
    st.join()
    res = line.results()
    line.sub.close()
    assert [(r["part_id"], r["verdict"], r["recipe"]) for r in res] == [
        ("P1", "PASS", "a"), ("P2", "FAIL", "b"), ("P3", "FAIL", "b"), ("P4", "PASS", "a"), ("P5", "NONE", "a"),
        ("P6", "NONE", "a"), ("P7", "PASS", "a")]
    assert [r["recipe_asked"] for r in res] == [None, "b", None, "a", "nope", "broken", None]
    assert res[4]["cause"] == "recipe" and "recipe nope is not one of this station's recipes" in res[4]["reasons"][0]
    assert res[5]["cause"] == "recipe" and "recipe broken was refused" in res[5]["reasons"][0]
    rows = verdict_rows(db)
    sha_b = recipe_sha(d / "b.yaml", "", models["b"])
    assert [(r[0], r[1], r[2]) for r in rows] == [(r["part_id"], r["verdict"], r["recipe"]) for r in res]
    assert rows[1][3] == rows[2][3] == sha_b and rows[0][3] == recipe_sha(d / "a.yaml", "", models["a"])
    assert sorted((a[0], a[2]["recipe"], a[2]["status"]) for a in audit_rows(db)) == [  # broken: tried once
        ("line", "a", "applied"), ("line", "b", "applied"), ("line", "broken", "refused")]


def test_modbus_recipe_register_changes_the_recipe_before_its_part(plc, models, tmp_path):  # noqa: F811
    port, _ = plc
    d = book_dir(tmp_path / "r", models, {"a": "a", "b": "b"})
    db = tmp_path / "i.sqlite"
    st = Station(InspectOptions(model="", recipes=str(d), recipe="a", headless=True, db=str(db), max_frames=5,
                                source=str(folder(tmp_path / "imgs", [False] * 5)),
                                trigger=f"modbus://127.0.0.1:{port}?unit=2&poll_ms=5", trigger_timeout=10))
    prog = PlcProgram(port)
    got = []
    for serial, number in ((1, 0), (2, 2), (3, 0), (4, 1), (5, 9)):  # 0 keeps; 1 = a, 2 = b (sorted names)
        prog.c.write_register(4, number, device_id=2)
        got.append(prog.part(serial, timeout=30))
    st.join()
    prog.close()
    assert [(g["result"], g["reason"]) for g in got] == [(1, 0), (2, 0), (2, 0), (1, 0), (3, 12)]  # 12: recipe
    assert [(r[0], r[1], r[2]) for r in verdict_rows(db)] == [
        ("1", "PASS", "a"), ("2", "FAIL", "b"), ("3", "FAIL", "b"), ("4", "PASS", "a"), ("5", "NONE", "a")]


def test_the_recipe_register_must_not_overlap_when_recipes_read_it(tmp_path, models, capsys):
    d = book_dir(tmp_path / "r", models, {"a": "a"})
    rc = main(["inspect", "--recipes", str(d), "--headless", "--trigger", "modbus://127.0.0.1:5020?serial=3"])
    err = capsys.readouterr().err
    assert rc == 2 and "registers serial and recipe overlap at 4" in err


# --- OPC UA SelectRecipe ----------------------------------------------------------------------------


def test_opcua_select_recipe_changes_to_a_real_recipe_between_parts(tmp_path, models, monkeypatch):
    asyncua = pytest.importorskip("asyncua", reason="asyncua missing: pip install -e '.[notify]'")
    from test_opcua import ds2a_node, free_port

    ua = asyncua.ua
    d = book_dir(tmp_path / "r", models, {"a": "a", "b": "b"})
    slow(monkeypatch, 40)
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    db = tmp_path / "i.sqlite"
    st = Station(InspectOptions(model="", recipes=str(d), recipe="a", headless=True, db=str(db), opcua=url,
                                source=str(folder(tmp_path / "imgs", [False] * 120))))

    async def client() -> Dict[str, Any]:
        for _ in range(200):  # the server starts once the model is open
            try:
                async with asyncua.Client(url) as c:
                    rec = await ds2a_node(c, "RecipeManagement")
                    select = await rec.get_child(f"{rec.nodeid.NamespaceIndex}:SelectRecipe")
                    names = await (await ds2a_node(c, "RecipeManagement", "RecipeList")).read_value()
                    with pytest.raises(ua.UaStatusCodeError) as unknown:
                        await rec.call_method(select, ua.Variant("c", ua.VariantType.String))
                    seq = await ds2a_node(c, "ResultManagement", "ResultSequence")
                    for _ in range(200):  # mid-run: a part judged by recipe a first
                        if await seq.read_value() >= 1:
                            break
                        await asyncio.sleep(0.05)
                    msg = await rec.call_method(select, ua.Variant("b", ua.VariantType.String))
                    active = ""
                    for _ in range(200):
                        active = await (await ds2a_node(c, "RecipeManagement", "ActiveRecipe")).read_value()
                        if active == "b":
                            break
                        await asyncio.sleep(0.05)
                    sha = await (await ds2a_node(c, "RecipeManagement", "ActiveRecipeSha256")).read_value()
                    last = await (await ds2a_node(c, "ResultManagement", "InternalRecipeId")).read_value()
                    for _ in range(100):
                        if last == "b":
                            break
                        await asyncio.sleep(0.05)
                        last = await (await ds2a_node(c, "ResultManagement", "InternalRecipeId")).read_value()
                    model = await (await ds2a_node(c, "Identification", "ModelSha256")).read_value()
                    judged_by = await (await ds2a_node(c, "ResultManagement", "ModelSha256")).read_value()
                    return {"names": names, "unknown": unknown.value.code, "msg": msg, "active": active, "sha": sha,
                            "last": last, "model": model, "judged_by": judged_by}
            except (OSError, asyncio.TimeoutError, ConnectionError):
                await asyncio.sleep(0.1)
        raise AssertionError("the OPC UA server never answered")

    got = asyncio.run(asyncio.wait_for(client(), 90))
    summary = st.join(60)
    assert got["names"] == ["a", "b"] and got["unknown"] == ua.StatusCodes.BadNotFound
    assert "b queued: applies before the next part" in got["msg"]
    assert got["active"] == "b" and got["sha"] == recipe_sha(d / "b.yaml", "", models["b"]) and got["last"] == "b"
    assert (got["model"], got["judged_by"]) == (sha(models["b"]),) * 2  # the identification follows the model
    recipes = [p.recipe for p in summary.parts]
    k = recipes.index("b")
    assert recipes == ["a"] * k + ["b"] * (len(recipes) - k) and k >= 1
    assert all(p.verdict == ("PASS" if p.recipe == "a" else "FAIL") for p in summary.parts)
    audit = audit_rows(db)  # the method calls (ds2a/notify/opcua_server.py) and the changeover (the book)
    assert sorted((a[0], a[2]["status"]) for a in audit) == [
        ("anonymous", "BadNotFound"), ("anonymous", "Good"), ("anonymous", "applied"), ("anonymous", "requested")]
    assert all(a[1].startswith("opc.tcp") for a in audit)
