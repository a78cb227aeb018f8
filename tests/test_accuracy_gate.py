"""The accuracy gate of every engine build (ds2a/engine/verify.py) and the engine's self-test at every start.

Engines are built by the real builder against a fake of the newest TensorRT 10 (tests/trt_stubs):
an honest fake answers like ONNX Runtime on the same ONNX (class = blue // 64), a "miscompiled"
one loses the defect classes 2 and 3, as a TensorRT release that compiles GridSample wrongly
loses detections. Neither a build, nor an open, nor an inspection may accept the wrong one.
"""
from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from trt_stubs.fake_trt import NP, FakeContext
from trt_stubs.helpers import NEWEST_10, build, fake_for
from trt_stubs.onnx_models import make_onnx

from ds2a.engine.verify import DEFAULT_THRESHOLDS, VerifyOptions, rejected_path, report_path
from ds2a.errors import UserError
from ds2a.export.metadata import attach_golden_file, load_onnx, read_meta
from ds2a.records.report import model_checks
from ds2a.runtime import open_model
from ds2a.runtime.selftest import SelfTestFailed, golden_of
from ds2a.trt.sidecar import read_sidecar


def miscompile(monkeypatch: pytest.MonkeyPatch, shift: bool = False) -> None:
    """Every fake engine from now on answers background where the right answer is class 2 or 3
    (`shift`: answers the next class everywhere)."""
    honest = FakeContext._execute

    def wrong(self: FakeContext) -> None:
        honest(self)
        io = self._engine._io
        inp = next(t for t in io.values() if t["mode"] == "INPUT")
        shape = self._in_shape.get(inp["name"], tuple(inp["shape"]))
        view = self._fake.state.cuda.view(self._addr["class_map"], tuple(shape[:3]), NP["UINT8"])
        if shift:
            view[...] = (view + 1) % 4
        else:
            view[view >= 2] = 0

    monkeypatch.setattr(FakeContext, "_execute", wrong)


def frames(n: int = 6, size: int = 8) -> list:
    """Blue levels spread over all four classes, in blocks."""
    rng = np.random.default_rng(3)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (2, 2, 3), dtype=np.uint8)
        out.append(cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST))
    return out


@pytest.fixture
def golden_onnx(tmp_path: Path) -> str:
    """A tiny ONNX (tests/trt_stubs/onnx_models.py) carrying golden frames, as `ds2a export` writes it."""
    path = make_onnx(tmp_path / "m.onnx")
    attach_golden_file(path, frames(), "test frames")
    return path


def test_an_honest_engine_passes_and_carries_the_result_and_its_own_golden_maps(tmp_path, golden_onnx):
    fake, cuda = fake_for(NEWEST_10)
    engine = str(tmp_path / "m.engine")
    report = build(fake, cuda, golden_onnx, engine)
    rec = read_sidecar(engine)
    gate = rec["verification"]
    assert report.verification == gate and gate["passed"] and not gate["accepted_mismatch"]
    assert gate["agreement"] == 1.0 and gate["frames_source"] == "the golden frames in the ONNX"
    assert gate["reference"].startswith("ONNX Runtime") and gate["onnxruntime_version"]
    assert gate["tensorrt_version"] == NEWEST_10 and gate["date"] and gate["precision"] == "fp32"
    golden = golden_of(type("M", (), {"extra": rec["meta"]["extra"]})())
    assert golden.produced_by.startswith(f"TensorRT {NEWEST_10}")  # the engine's own answers
    original = golden_of(read_meta(load_onnx(golden_onnx), golden_onnx))
    assert all((a == b).all() for a, b in zip(golden.frames, original.frames))  # the ONNX's frames, copied
    with open_model(engine, trt_module=fake, cuda_api=cuda) as model:  # the round trip ends in a passed self-test
        assert model.selftest.status == "passed" and model.selftest.frames == len(original.frames)
        assert model.build_gate == gate  # what a run records and the page shows (ds2a/records/report.py)
    assert not Path(rejected_path(engine)).exists() and not list(tmp_path.glob("*.verifying*"))


def test_a_miscompiled_engine_is_never_installed_and_is_kept_with_a_report(tmp_path, golden_onnx, monkeypatch):
    fake, cuda = fake_for(NEWEST_10)
    miscompile(monkeypatch)
    engine = str(tmp_path / "m.engine")
    with pytest.raises(UserError, match=r"does not answer like ONNX Runtime.*not installed.*--deform-attn.*--opset"
                                        r".*FP32.*--accept-mismatch") as err:
        build(fake, cuda, golden_onnx, engine)
    assert not Path(engine).exists() and not Path(engine + ".json").exists()
    rejected = rejected_path(engine)
    assert rejected.endswith("m.rejected.engine") and Path(rejected).is_file() and rejected in str(err.value)
    report = json.loads(Path(report_path(rejected)).read_text())
    assert not report["passed"] and report["failures"] and report["worst_frames"][0]["agreement"] < 0.95
    assert report["per_class_iou"]["smudge"] in (0.0, None) and report["verdict_flips"]["escapes"] >= 0
    assert read_sidecar(rejected)["verification"]["passed"] is False
    assert not list(tmp_path.glob("*.verifying*"))


def test_accept_mismatch_installs_it_and_says_so_in_the_sidecar(tmp_path, golden_onnx, monkeypatch):
    fake, cuda = fake_for(NEWEST_10)
    miscompile(monkeypatch)
    engine = str(tmp_path / "m.engine")
    build(fake, cuda, golden_onnx, engine, verify=VerifyOptions(accept_mismatch=True))
    gate = read_sidecar(engine)["verification"]
    assert gate["accepted_mismatch"] and not gate["passed"] and gate["failures"]
    with open_model(engine, trt_module=fake, cuda_api=cuda) as model:  # it answers as when it was accepted
        assert model.selftest.status == "passed"
        checks = model_checks({"selftest": model.selftest.to_dict(), "build_gate": model.build_gate})
    assert checks.startswith("self-test passed, build gate accepted mismatch (") and "% of pixels agree" in checks


def test_an_engine_whose_answers_changed_after_the_build_is_refused_at_open(tmp_path, golden_onnx, monkeypatch):
    """Built honestly, then the machine answers differently (another TensorRT, driver or a corrupted plan)."""
    fake, cuda = fake_for(NEWEST_10)
    engine = str(tmp_path / "m.engine")
    build(fake, cuda, golden_onnx, engine)
    miscompile(monkeypatch)
    with pytest.raises(SelfTestFailed, match=r"m.engine failed its self-test.*rebuild the engine"):
        open_model(engine, trt_module=fake, cuda_api=cuda)


def test_inspect_never_starts_with_an_engine_that_fails_its_self_test(tmp_path, golden_onnx, monkeypatch):
    from ds2a.inspect import InspectOptions, inspect

    fake, cuda = fake_for(NEWEST_10)
    engine = str(tmp_path / "m.engine")
    build(fake, cuda, golden_onnx, engine)
    miscompile(monkeypatch)
    db = tmp_path / "runs.db"
    options = InspectOptions(model=engine, source="demo://?frames=10", headless=True, db=str(db), jsonl=True,
                             backend_options={"trt_module": fake, "cuda_api": cuda})
    out = __import__("io").StringIO()
    with pytest.raises(SelfTestFailed):
        inspect(options, out=out)
    assert "PASS" not in out.getvalue() and '"verdict"' not in out.getvalue()
    if db.exists():  # nothing judged: no frame, no part
        with sqlite3.connect(str(db)) as con:
            tables = [r[0] for r in con.execute("select name from sqlite_master where type='table'")]
            for table in tables:
                cols = [c[1] for c in con.execute(f"pragma table_info({table})")]
                if "verdict" in cols:
                    assert con.execute(f"select count(*) from {table} where verdict='PASS'").fetchone()[0] == 0


def test_an_onnx_edited_after_export_is_refused_before_its_engine_is_compared(tmp_path, golden_onnx):
    import onnx
    from onnx import numpy_helper

    model = load_onnx(golden_onnx)
    for t in model.graph.initializer:
        if t.name == "step":  # class = blue // 32 now: other answers, same metadata
            t.CopyFrom(numpy_helper.from_array(np.array(32.0, np.float32), "step"))
    onnx.save(model, golden_onnx)
    fake, cuda = fake_for(NEWEST_10)
    with pytest.raises(SelfTestFailed, match="m.onnx failed its self-test"):
        build(fake, cuda, golden_onnx, str(tmp_path / "m.engine"))
    assert not (tmp_path / "m.engine").exists()


def test_labelled_verify_data_gives_miou_of_engine_and_reference(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for sub in ("img_dir/test", "ann_dir/test"):
        (root / sub).mkdir(parents=True)
    for i, f in enumerate(frames(8)):
        cv2.imwrite(str(root / "img_dir/test" / f"{i}.png"), f)
        cv2.imwrite(str(root / "ann_dir/test" / f"{i}.png"), (f[..., 0] // 64).astype(np.uint8))
    fake, cuda = fake_for(NEWEST_10)
    onnx_path = make_onnx(tmp_path / "m.onnx")
    build(fake, cuda, onnx_path, str(tmp_path / "ok.engine"), verify=VerifyOptions(data=str(root), frames=8))
    gate = read_sidecar(str(tmp_path / "ok.engine"))["verification"]
    assert gate["frames"] == 8 and gate["miou_engine"] == gate["miou_reference"] == 1.0 and gate["miou_delta"] == 0
    assert gate["parts_vs_labels"]["engine"]["labelled"] == 8 and gate["frames_source"] == f"--verify-data {root}"
    miscompile(monkeypatch)
    with pytest.raises(UserError, match=r"mIoU on the labelled frames drops by"):
        build(fake, cuda, onnx_path, str(tmp_path / "bad.engine"), verify=VerifyOptions(data=str(root), frames=8))


def test_without_onnx_runtime_the_golden_maps_are_the_reference(tmp_path, golden_onnx, monkeypatch):
    fake, cuda = fake_for(NEWEST_10)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    build(fake, cuda, golden_onnx, str(tmp_path / "m.engine"), verify=VerifyOptions(data=str(tmp_path)))
    gate = read_sidecar(str(tmp_path / "m.engine"))["verification"]
    assert gate["reference"].startswith("the golden class maps in m.onnx") and gate["onnxruntime_version"] is None
    assert any("ONNX Runtime is missing" in n for n in gate["notes"])
    plain = make_onnx(tmp_path / "plain.onnx")  # no golden frames and no ONNX Runtime: nothing to compare with
    with pytest.raises(UserError, match="ONNX Runtime is not installed and the ONNX carries no golden frames"):
        build(fake, cuda, plain, str(tmp_path / "plain.engine"))
    assert not (tmp_path / "plain.engine").exists()


def test_thresholds_per_precision_are_settable():
    from ds2a.engine.verify import MIN_DEFECT_PX
    from ds2a.inspect.rules import DEFAULT_MIN_AREA_PX

    assert MIN_DEFECT_PX == DEFAULT_MIN_AREA_PX  # part verdicts as the station's default rules give them
    assert DEFAULT_THRESHOLDS["int8"].min_agreement < DEFAULT_THRESHOLDS["fp16"].min_agreement
    t = VerifyOptions(min_agreement=0.9, max_miou_drop=0.02).thresholds("int8")
    assert (t.min_agreement, t.max_miou_drop, t.min_frame_agreement) == (0.9, 0.02, DEFAULT_THRESHOLDS["int8"].min_frame_agreement)
    assert VerifyOptions(data="d", min_agreement=0.9).to_args() == ["--verify-data", "d", "--min-agreement", "0.9"]


def test_a_stricter_threshold_rejects_what_the_default_accepts(tmp_path, golden_onnx, monkeypatch):
    """The gate can fail: with the same slightly wrong engine, the verdict follows the threshold."""
    honest = FakeContext._execute

    def one_pixel_off(self: FakeContext) -> None:
        honest(self)
        inp = next(t for t in self._engine._io.values() if t["mode"] == "INPUT")
        shape = self._in_shape.get(inp["name"], tuple(inp["shape"]))
        view = self._fake.state.cuda.view(self._addr["class_map"], tuple(shape[:3]), NP["UINT8"])
        view[:, 0, 0] = (view[:, 0, 0] + 1) % 4

    monkeypatch.setattr(FakeContext, "_execute", one_pixel_off)
    fake, cuda = fake_for(NEWEST_10)
    loose = VerifyOptions(min_agreement=0.98, min_frame_agreement=0.98, min_defect_agreement=0.9)
    build(fake, cuda, golden_onnx, str(tmp_path / "a.engine"), verify=loose)  # 63 of 64 pixels: 98.4 %
    with pytest.raises(UserError, match=r"98.44 % of pixels agree \(needs >= 99.5 % for fp32\)"):
        build(fake, cuda, golden_onnx, str(tmp_path / "b.engine"))


def test_doctor_shows_the_gate_result_of_an_engine(tmp_path, golden_onnx):
    from ds2a.doctor.model_check import check_model, gate_summary

    fake, cuda = fake_for(NEWEST_10)
    engine = str(tmp_path / "m.engine")
    build(fake, cuda, golden_onnx, engine)
    gate = check_model(engine, {"importable": False}, [])["accuracy_gate"]
    assert gate["status"] == "passed" and gate["passed"] and gate["tensorrt_version"] == NEWEST_10
    assert gate["line"].startswith("passed on ") and "100.000 % of pixels" in gate["line"]
    assert f"TensorRT {NEWEST_10}, ONNX Runtime " in gate["line"]
    assert gate_summary(None)["status"] == "none" and "rebuild it" in gate_summary(None)["line"]
    accepted = gate_summary({"passed": False, "accepted_mismatch": True, "agreement": 0.5, "defect_agreement": 0.1})
    assert accepted["status"] == "accepted mismatch"


def onnxruntime_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake engines that answer what ONNX Runtime answers for the ONNX they were parsed from: a correct
    compiler of any model, here the committed demo model (the fake builder keeps no weights)."""
    import onnxruntime as ort
    from trt_stubs import fake_trt

    sessions: dict = {}
    parse = fake_trt._Parser.parse

    def remember(self, model: bytes, path=None) -> bool:
        self._fake.state.onnx_bytes = bytes(model)
        return parse(self, model, path)

    def execute(self: FakeContext) -> None:
        self._fake.state.executions += 1
        data = self._fake.state.onnx_bytes
        if data not in sessions:
            sessions[data] = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        io, cuda = self._engine._io, self._fake.state.cuda
        inp = next(t for t in io.values() if t["mode"] == "INPUT")
        shape = self._in_shape.get(inp["name"], tuple(inp["shape"]))
        x = cuda.view(self._addr[inp["name"]], shape, NP[inp["dtype"]])
        out = sessions[data].run(["class_map"], {inp["name"]: x.copy()})[0]
        cuda.view(self._addr["class_map"], out.shape, np.uint8)[...] = out

    monkeypatch.setattr(fake_trt._Parser, "parse", remember)
    monkeypatch.setattr(FakeContext, "_execute", execute)


def test_the_demo_model_check_builds_gates_self_tests_and_times_a_real_model(tmp_path, monkeypatch, tiny_checkpoint):
    """The real architecture (deformable attention, decoder, head) exported by ds2a, through the check the
    GPU smoke runs on the committed demo files (untrained 32x32 weights keep it fast)."""
    pytest.importorskip("torch")
    from ds2a.doctor.demo_model import demo_model_check, demo_variants
    from ds2a.export import ExportOptions, export_onnx

    assert all("int8.onnx" not in path for _, path in demo_variants())  # ONNX Runtime's INT8 placement: not for TensorRT
    onnx_path = str(tmp_path / "real.onnx")
    export_onnx(tiny_checkpoint, onnx_path, ExportOptions(batch=None))  # dynamic batch
    onnxruntime_engine(monkeypatch)
    fake, cuda = fake_for(NEWEST_10)
    variants = [("FP32", onnx_path)]
    layers = [("cuda-python", cuda), ("pycuda", cuda)]  # one fake stands in for both layers' memory
    result = demo_model_check(str(tmp_path), frames=4, iterations=3, variants=variants, trt=fake, layers=layers)
    rows = result["rows"]
    assert [(r["cuda"], r["batch"], r["timed_batch"]) for r in rows] == [
        ("cuda-python", "1", 1), ("pycuda", "1", 1), ("cuda-python", "1:2:4", 4), ("pycuda", "1:2:4", 4)]
    for row in rows:
        assert (row["gate"], row["selftest"], row["precision"]) == ("passed", "passed", "fp32")
        assert row["agreement"] == 1.0 and row["miou_engine"] == row["miou_onnxruntime"] is not None
        assert row["median_ms"] > 0 and row["iterations"] == 3 and "compute_ms_median" in row
    assert (tmp_path / "real.dynamic.engine").is_file() and (tmp_path / "real.engine").is_file()
    table = (tmp_path / "demo_model_gpu.md").read_text()
    assert "| FP32 | fp32 | pycuda | 1:2:4 (4) | passed | 100.0000% |" in table
    assert json.loads((tmp_path / "demo_model_gpu.json").read_text())["tensorrt"] == NEWEST_10
    miscompile(monkeypatch, shift=True)  # the same check on a TensorRT that answers other classes: refused
    with pytest.raises(UserError, match="does not answer like ONNX Runtime"):
        demo_model_check(str(tmp_path / "bad"), frames=4, iterations=3, variants=variants, trt=fake, layers=layers)


def test_the_committed_tensorrt_ready_demo_files_pass_the_gpu_check_path_without_torch(tmp_path, monkeypatch):
    """The FP32, FP16 and TensorRT-placement INT8 demo ONNX files the GPU smoke builds on the device (committed, so
    a Jetson needs neither torch nor ModelOpt): parseable by every TensorRT release, each passes the build gate and
    its self-test through a TensorRT that answers as ONNX Runtime does, as a batch-1 and a dynamic-batch engine,
    and carries its golden frames and drift reference."""
    import onnx

    from ds2a.doctor.demo_model import demo_model_check, demo_variants
    from ds2a.export.metadata import read_meta
    from ds2a.trt.compat import blockers, check_versions

    variants = demo_variants()
    assert [label for label, _ in variants] == ["FP32", "FP16", "INT8 (TensorRT placement)"]
    for _, path in variants:
        model = onnx.load(path, load_external_data=False)
        extra = read_meta(model, path).extra
        assert extra["golden"] and extra["drift_reference"] and extra["deform_attn"] == "gather"
        assert {v: blockers(f) for v, f in check_versions(model).items()} == {"8.5": [], "8.6": [], "10": [], "11": []}
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # a dynamic batch
    onnxruntime_engine(monkeypatch)
    fake, cuda = fake_for(NEWEST_10)
    result = demo_model_check(str(tmp_path), frames=4, iterations=2, variants=variants, trt=fake, cuda_api=cuda)
    assert [(r["gate"], r["selftest"]) for r in result["rows"]] == [("passed", "passed")] * 6
    assert [(r["precision"], r["batch"]) for r in result["rows"]] == [
        (precision, batch) for precision in ("fp32", "fp16", "int8") for batch in ("1", "1:2:4")]


def test_the_command_exits_non_zero_on_a_mismatch_and_installs_with_accept_mismatch(tmp_path, golden_onnx, monkeypatch,
                                                                                     capsys):
    from ds2a.cli import main
    from ds2a.engine import builder as builder_mod

    fake, cuda = fake_for(NEWEST_10)
    monkeypatch.setattr(builder_mod, "import_tensorrt", lambda: fake)
    monkeypatch.setattr("ds2a.runtime.cuda_buffers.open_cuda", lambda device=0: cuda)
    miscompile(monkeypatch)
    out = str(tmp_path / "m.engine")
    assert main(["build-engine", golden_onnx, "--out", out]) != 0
    err = capsys.readouterr().err
    assert "does not answer like ONNX Runtime" in err and "Traceback" not in err and not Path(out).exists()
    assert main(["build-engine", golden_onnx, "--out", out, "--accept-mismatch", "--min-agreement", "0.9"]) == 0
    captured = capsys.readouterr()
    assert "accuracy gate FAILED, installed with --accept-mismatch" in captured.out and Path(out).is_file()
    assert read_sidecar(out)["verification"]["thresholds"]["min_agreement"] == 0.9
