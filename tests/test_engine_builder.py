"""`ds2a build-engine`: precision per release, builder options, sidecar, and every bad input handled.

Planning (`plan_precision`, option checks) runs on the features detected on fakes of the real
TensorRT surfaces (tests/trt_stubs), as do the builds; skipped only when a release's bindings
wheel cannot be obtained.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Tuple

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from trt_stubs.helpers import NEWEST_10, build, fake_for, features
from trt_stubs.onnx_models import CLASSES, make_onnx

from ds2a.cli import main as cli_main
from ds2a.engine import builder as builder_mod
from ds2a.engine.builder import BuildOptions, build_engine, check_options, inspect_onnx, parse_batch, plan_precision
from ds2a.errors import UserError
from ds2a.export.onnx_export import decompose_layernorm
from ds2a.meta import file_sha256
from ds2a.runtime.tensorrt_backend import TensorRTSegmenter
from ds2a.trt import platform as trt_platform
from ds2a.trt.features import import_tensorrt
from ds2a.trt.sidecar import EngineRecord, read_sidecar, rebuild_command, verify_sidecar
from ds2a.trt.versions import require_supported, same_release

ROOT = Path(__file__).resolve().parents[1]


# --- versions and planning ------------------------------------------------------------------------
def test_features_detected_on_each_release_surface():
    assert features("8.5.2").explicit_batch_flag and not features("8.5.2").builder_optimization_level
    assert not features("8.5.2").version_compatible and not features("8.5.2").normalization_layer
    assert features("8.6.1").hardware_compat and not features("8.6.1").strongly_typed
    assert features("8.6.1").native_instancenorm and features("8.6.1").explicit_batch_flag
    assert features("10.3.0").strongly_typed and not features("10.3.0").same_compute_capability
    assert not features("10.3.0").explicit_batch_flag  # implicit batch is gone: no EXPLICIT_BATCH needed
    assert features("10.13.3.9").same_compute_capability and features("10.13.3.9").weak_typing
    assert features("11.4.0.106").strongly_typed_only and not features("11.4.0.106").int8_calibrator
    with pytest.raises(UserError, match="needs 8.5 or newer"):
        require_supported("8.4.3")
    assert same_release("10.13.3.9", "10.13.3.9") and not same_release("10.13.3.9", "10.13.2.6")


def _info(tmp_path, precision, **kw):
    return inspect_onnx(make_onnx(tmp_path / f"model.{precision}.onnx", precision, **kw))


PLANS = [  # version, graph, --fp16, strongly typed, flags, precision
    ("8.5.2", "fp32", False, False, [], "fp32"),
    ("8.6.1", "fp32", True, False, ["FP16", "OBEY_PRECISION_CONSTRAINTS"], "fp16"),
    ("8.6.1", "fp16", False, False, ["FP16", "OBEY_PRECISION_CONSTRAINTS"], "fp16"),
    ("8.6.1", "int8", False, False, ["INT8"], "int8"),
    ("8.6.1", "int8", True, False, ["INT8", "FP16", "OBEY_PRECISION_CONSTRAINTS"], "int8"),
    ("10.3.0", "fp32", False, True, [], "fp32"),
    ("10.13.3.9", "fp16", False, True, [], "fp16"),
    ("10.13.3.9", "int8", False, True, [], "int8"),
    ("10.13.3.9", "fp32", True, False, ["FP16", "OBEY_PRECISION_CONSTRAINTS"], "fp16"),
    ("11.4.0.106", "fp16", True, True, [], "fp16"),
    ("11.4.0.106", "int8", False, True, [], "int8"),
]


@pytest.mark.parametrize("version,graph,fp16,typed,flags,precision", PLANS)
def test_precision_plan_per_release(tmp_path, version, graph, fp16, typed, flags, precision):
    f = features(version)
    plan = plan_precision(_info(tmp_path, graph), BuildOptions(fp16=fp16), f)
    assert (plan.strongly_typed, plan.flags, plan.precision) == (typed, flags, precision)
    assert plan.explicit_batch == (f.explicit_batch_flag and not typed)
    assert plan.pin_fp32 == ("FP16" in flags)


def test_redundant_precision_flag_on_11_is_noted_not_refused(tmp_path):
    plan = plan_precision(_info(tmp_path, "int8"), BuildOptions(int8=True), features("11.4.0.106"))
    assert plan.precision == "int8" and any("ignored" in n for n in plan.notes)


@pytest.mark.parametrize("version", ["8.6.1", "10.13.3.9", "11.4.0.106"])
def test_int8_without_qdq_says_which_calibrate_command_makes_it(tmp_path, version):
    with pytest.raises(UserError, match=r"ds2a calibrate .*--precision int8 --out .*model\.int8\.onnx"):
        plan_precision(_info(tmp_path, "fp32"), BuildOptions(int8=True), features(version))


def test_fp16_flag_on_11_says_which_calibrate_command_makes_it(tmp_path):
    with pytest.raises(UserError, match=r"removed the FP16 builder flag.*--precision fp16"):
        plan_precision(_info(tmp_path, "fp32"), BuildOptions(fp16=True), features("11.4.0.106"))


@pytest.mark.parametrize("opts,version,message", [
    (BuildOptions(hardware_compat="same-cc"), "10.3.0", "needs TensorRT 10.9"),
    (BuildOptions(hardware_compat="ampere+"), "8.5.2", "needs TensorRT 8.6"),
    (BuildOptions(optimization_level=3), "8.5.2", "needs TensorRT 8.6"),
    (BuildOptions(version_compatible=True), "8.5.2", "needs TensorRT 8.6"),
    (BuildOptions(optimization_level=9), "10.13.3.9", "must be 0..5"),
    (BuildOptions(workspace_gib=0), "10.13.3.9", "positive number of GiB"),
    (BuildOptions(gpu_fallback=True), "10.13.3.9", "only applies with --dla-core"),
    (BuildOptions(hardware_compat="turing+"), "10.13.3.9", "not one of"),
])
def test_options_the_release_lacks_are_refused(opts, version, message):
    with pytest.raises(UserError, match=message):
        check_options(opts, features(version), version)


@pytest.mark.parametrize("text,expected", [("1:4:8", (1, 4, 8)), ("2", (2, 2, 2))])
def test_batch_range_parses(text, expected):
    assert parse_batch(text) == expected


@pytest.mark.parametrize("text", ["4:2:8", "0:1:1", "a:b:c", "1:2"])
def test_bad_batch_range_is_refused(text):
    with pytest.raises(UserError, match="MIN:OPT:MAX"):
        parse_batch(text)


# --- bad ONNX inputs --------------------------------------------------------------------------------
def test_missing_truncated_and_garbage_onnx_are_refused(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        inspect_onnx(str(tmp_path / "nope.onnx"))
    good = Path(make_onnx(tmp_path / "good.onnx"))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\xff\x00not an onnx file" * 10)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for bad in (truncated, garbage, empty):
        with pytest.raises(UserError, match="truncated or corrupt|no ONNX graph"):
            inspect_onnx(str(bad))


def test_onnx_outside_our_input_convention_is_refused(tmp_path):
    node = helper.make_node("Identity", ["x"], ["class_map"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("class_map", TensorProto.FLOAT, [1, 1, 8, 8])])
    path = tmp_path / "gray.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(UserError, match=r"one input 'images' uint8 \(N,H,W,3\)"):
        inspect_onnx(str(path))


def test_cpu_oriented_int8_onnx_points_to_the_tensorrt_placement(tmp_path):
    model = onnx.load(make_onnx(tmp_path / "m.onnx"))
    model.graph.node.append(helper.make_node("QLinearConv", ["x_t"] * 8, ["qc"], name="qconv"))
    path = tmp_path / "model.int8.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UserError, match=r"CPU-oriented INT8 .*QLinearConv.*ds2a calibrate"):
        inspect_onnx(str(path))


def test_inspect_reads_precision_meta_and_dynamic_batch(tmp_path):
    info = _info(tmp_path, "int8", batch="batch")
    assert (info.precision, info.has_qdq, info.dynamic_batch) == ("int8", True, True)
    assert info.meta.classes == CLASSES
    assert _info(tmp_path, "fp16").precision == "fp16" and not _info(tmp_path, "fp32").dynamic_batch


# --- builds against fakes of real releases ------------------------------------------------------------
@pytest.mark.parametrize("version,pinned", [("8.6.1", ["norm", "softmax", "reduce"]), (NEWEST_10, [])])
def test_fp16_onnx_builds_weak_with_fp32_pins_or_strongly_typed(tmp_path, version, pinned):
    fake, cuda = fake_for(version)
    report = build(fake, cuda, make_onnx(tmp_path / "m.onnx", "fp16"), str(tmp_path / "m.engine"))
    rec = fake.state.builds[-1]
    assert report.precision == "fp16" and rec["pinned"] == pinned
    assert ("FP16" in rec["config_flags"]) == bool(pinned)
    assert ("STRONGLY_TYPED" in rec["network_flags"]) == (not pinned)


def test_fp32_onnx_with_fp16_flag_on_10x_pins_norm_softmax_reduce(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    build(fake, cuda, make_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.engine"), fp16=True)
    rec = fake.state.builds[-1]
    assert rec["network_flags"] == [] and {"FP16", "OBEY_PRECISION_CONSTRAINTS"} <= set(rec["config_flags"])
    assert rec["pinned"] == ["norm", "softmax", "reduce"]


def test_dynamic_batch_gets_one_profile_from_the_batch_range(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    onnx_path = make_onnx(tmp_path / "m.onnx", batch="batch")
    build(fake, cuda, onnx_path, str(tmp_path / "a.engine"), batch=(1, 4, 8))
    assert fake.state.builds[-1]["profiles"] == [{"images": ((1, 8, 8, 3), (4, 8, 8, 3), (8, 8, 8, 3))}]
    build(fake, cuda, onnx_path, str(tmp_path / "b.engine"))
    assert fake.state.builds[-1]["profiles"] == [{"images": ((1, 8, 8, 3),) * 3}]


def test_batch_range_on_a_fixed_batch_onnx_is_refused(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    with pytest.raises(UserError, match="fixed at batch 1"):
        build(fake, cuda, make_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.engine"), batch=(1, 2, 4))


def test_workspace_limit_and_optimization_level_reach_the_config(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    build(fake, cuda, make_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.engine"), workspace_gib=1.5,
          optimization_level=5, version_compatible=True, hardware_compat="ampere+")
    rec = fake.state.builds[-1]
    assert rec["pools"] == {"WORKSPACE": int(1.5 * (1 << 30))}
    assert rec["attrs"]["builder_optimization_level"] == 5
    assert str(rec["attrs"]["hardware_compatibility_level"]) == "HardwareCompatibilityLevel.AMPERE_PLUS"
    assert "VERSION_COMPATIBLE" in rec["config_flags"]


def test_dla_core_with_gpu_fallback(tmp_path):
    fake, cuda = fake_for(NEWEST_10)  # 8.x's DLA takes no Q/DQ network (see the refusal test below)
    build(fake, cuda, make_onnx(tmp_path / "m.onnx", "int8"), str(tmp_path / "m.engine"), dla_core=1, gpu_fallback=True)
    rec = fake.state.builds[-1]
    assert rec["attrs"]["DLA_core"] == 1 and str(rec["attrs"]["default_device_type"]) == "DeviceType.DLA"
    assert "GPU_FALLBACK" in rec["config_flags"]


def test_dla_core_the_device_lacks_or_fp32_on_dla_is_refused(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    fake.state.num_dla_cores = 0
    with pytest.raises(UserError, match="has 0 DLA core"):
        build(fake, cuda, make_onnx(tmp_path / "i.onnx", "int8"), str(tmp_path / "m.engine"), dla_core=0)
    fake.state.num_dla_cores = 2
    with pytest.raises(UserError, match="DLA runs FP16/INT8 only"):
        build(fake, cuda, make_onnx(tmp_path / "f.onnx", "fp32"), str(tmp_path / "m.engine"), dla_core=0)


def test_timing_cache_is_saved_then_reused_by_the_next_build(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    cache = tmp_path / "trt.cache"
    onnx_path = make_onnx(tmp_path / "m.onnx")
    log: list = []
    build(fake, cuda, onnx_path, str(tmp_path / "a.engine"), timing_cache=str(cache), log=log)
    first = cache.read_bytes()
    assert fake.state.timing_cache_loaded == [b""] and first
    build(fake, cuda, onnx_path, str(tmp_path / "b.engine"), timing_cache=str(cache), log=log)
    assert fake.state.timing_cache_loaded[-1] == first  # the second build started from the first's cache
    assert cache.read_bytes().startswith(first) and len(cache.read_bytes()) > len(first)
    assert any("reusing" in line for line in log)


def test_sidecar_records_what_the_engine_is_tied_to(tmp_path):
    fake, cuda = fake_for(NEWEST_10, gpu="NVIDIA GeForce RTX 4090", cc=(8, 9))
    onnx_path = make_onnx(tmp_path / "m.onnx", "fp16")
    engine = str(tmp_path / "m.engine")
    build(fake, cuda, onnx_path, engine, workspace_gib=2)
    rec = read_sidecar(engine)
    tied_to = (rec["tensorrt_version"], rec["gpu_name"], rec["compute_capability"])
    assert tied_to == (NEWEST_10, "NVIDIA GeForce RTX 4090", "8.9")
    assert rec["precision"] == "fp16" and rec["onnx_sha256"] == file_sha256(onnx_path)
    assert rec["engine_sha256"] == file_sha256(engine)
    assert rec["meta"]["classes"] == CLASSES and rec["meta"]["mean"] and rec["meta"]["palette"]
    assert {i["name"]: (i["shape"], i["dtype"]) for i in rec["inputs"]} == {"images": ([1, 8, 8, 3], "uint8")}
    assert [o["name"] for o in rec["outputs"]] == ["class_map", "logits"]
    assert rec["build_options"]["workspace_gib"] == 2 and rec["build_seconds"] >= 0
    assert rebuild_command(rec, engine).endswith(f"--out {engine} --workspace 2")
    assert rec.precision == "fp16" and rec.build_args == ["--workspace", "2"]  # typed, too
    assert (rec["os"], rec["cpu_arch"]) == (platform.system(), platform.machine())
    on_disk = json.loads(Path(engine + ".json").read_text())
    assert set(on_disk) == {  # the file format: the keys every sidecar has carried
        "format", "format_version", "tensorrt_version", "gpu_name", "compute_capability", "sm_count", "total_memory",
        "board", "module", "os", "cpu_arch", "precision", "strongly_typed", "builder_flags", "inputs", "outputs", "batch_profile", "meta",
        "onnx_path", "onnx_sha256", "build_options", "build_args", "version_compatible", "hardware_compat",
        "dla_core", "build_seconds", "calibration_cache_sha256", "built_at", "engine_sha256", "verification"}
    assert EngineRecord.from_json(rec.to_json()) == rec and json.loads(rec.to_json()) == on_disk


def test_an_older_sidecar_reads_and_keeps_keys_this_version_does_not_know(tmp_path):
    engine = tmp_path / "old.engine"
    engine.write_bytes(b"plan")
    old = {"format": "ds2a-engine", "format_version": 1, "tensorrt_version": "8.5.2.2", "gpu_name": "Orin",
           "compute_capability": [8, 7], "precision": "int8", "inputs": [], "outputs": [], "future_key": {"a": 1}}
    Path(f"{engine}.json").write_text(json.dumps(old))
    rec = read_sidecar(str(engine))
    assert rec.compute_capability == [8, 7] and rec.hardware_compat == "none" and rec.build_args == []
    assert rec.extra == {"future_key": {"a": 1}} and rec["future_key"] == {"a": 1} and rec.get("board") is None
    assert rebuild_command(rec, str(engine)) == f"ds2a build-engine MODEL.onnx --out {engine}"
    for broken, words in (({**old, "format": "other"}, "is not a ds2a engine sidecar"),
                          ({k: v for k, v in old.items() if k != "gpu_name"}, "lacks gpu_name")):
        Path(f"{engine}.json").write_text(json.dumps(broken))
        with pytest.raises(UserError, match=words):
            read_sidecar(str(engine))
    Path(f"{engine}.json").write_text("{not json")
    with pytest.raises(UserError, match="is unreadable"):
        read_sidecar(str(engine))


def test_parser_errors_are_reported_per_node(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    fake.state.parse_errors = {2: "Unsupported attribute group=3", 99: "model-level problem"}
    with pytest.raises(UserError, match=r"node 2 'head' \(Conv\): Unsupported attribute group=3\n  model: model-level"):
        build(fake, cuda, make_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.engine"))


def test_graph_check_runs_before_tensorrt_parses(tmp_path):
    fake, cuda = fake_for("8.6.1", as_version="8.5.2")  # 8.5's parser has no LayerNormalization
    with pytest.raises(UserError, match=r"(?s)cannot be parsed by TensorRT 8\.5.*LayerNormalization"):
        build(fake, cuda, make_onnx(tmp_path / "m.onnx", layernorm=True), str(tmp_path / "m.engine"))
    assert "OnnxParser.parse" not in fake.used


def test_failed_build_is_a_user_error_and_writes_nothing(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    fake.state.build_fails = True
    with pytest.raises(UserError, match="failed to build"):
        build(fake, cuda, make_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.engine"))
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.engine.json").exists()


def test_progress_monitor_prints_top_phases(tmp_path, caplog):
    fake, cuda = fake_for(NEWEST_10)
    caplog.set_level(logging.INFO, logger="ds2a")
    build(fake, cuda, make_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.engine"))
    monitor = fake.state.builds[-1]["attrs"]["progress_monitor"]
    monitor.phase_start("Building engine", None, 3)
    monitor.phase_start("Tactic search", "Building engine", 10)
    monitor.phase_start("Kernel timing", "Tactic search", 99)
    assert monitor.step_complete("Building engine", 1) is True
    log = caplog.messages
    assert "  Building engine (3 steps)" in log and "    Tactic search (10 steps)" in log
    assert not any("Kernel timing" in line for line in log)
    assert any(line.startswith("wrote ") and "TensorRT build" in line for line in log)


def test_missing_tensorrt_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError, match="TensorRT's Python package is not importable.*JetPack"):
        import_tensorrt()


# --- command line -------------------------------------------------------------------------------------
def test_cli_builds_with_the_installed_tensorrt(tmp_path, monkeypatch, capsys):
    fake, cuda = fake_for(NEWEST_10)
    monkeypatch.setattr(builder_mod, "import_tensorrt", lambda: fake)
    monkeypatch.setattr("ds2a.runtime.cuda_buffers.open_cuda", lambda device=0: cuda)
    onnx_path = make_onnx(tmp_path / "m.int8.onnx", "int8", batch="batch")
    rc = cli_main(["build-engine", onnx_path, "--batch", "1:2:4", "--timing-cache", str(tmp_path / "c.bin")])
    assert rc == 0
    engine = tmp_path / "m.int8.engine"
    assert engine.is_file() and json.loads((tmp_path / "m.int8.engine.json").read_text())["precision"] == "int8"
    assert "INT8 engine" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    rc = cli_main(["build-engine", make_onnx(tmp_path / "m.onnx"), "--batch", "8:1:1"])
    assert rc == 2 and "MIN:OPT:MAX" in capsys.readouterr().err


def test_deploy_script_is_the_same_command():
    proc = subprocess.run([sys.executable, str(ROOT / "deploy" / "build_engine.py"), "--help"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0 and "--timing-cache" in proc.stdout and "--dla-core" in proc.stdout


def test_engine_and_runtime_modules_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import ds2a.engine, ds2a.cli.build_engine, ds2a.runtime.tensorrt_backend, ds2a.runtime.cuda_buffers\n"
            "import ds2a.trt, ds2a.trt.compat, ds2a.trt.sidecar, ds2a.trt.platform\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


# --- legacy implicit INT8 from a calibration cache (TensorRT 8.5-10.x) ---------------------------------
CACHE_TEXT = "TRT-8501-EntropyCalibration2\nx_t: 3c010a14\nfeat: 3d4ccccd\n"


@pytest.mark.parametrize("version,explicit_batch", [("8.6.1", True), ("10.13.3.9", False)])
def test_calibration_cache_builds_implicit_int8_on_8_and_10(tmp_path, version, explicit_batch):
    cache = tmp_path / "model.calib.cache"
    cache.write_text(CACHE_TEXT)
    fake, cuda = fake_for(version)
    engine = str(tmp_path / "m.engine")
    report = build(fake, cuda, make_onnx(tmp_path / "m.onnx"), engine, int8=True, calib_cache=str(cache))
    rec = fake.state.builds[-1]
    assert report.precision == "int8" and rec["config_flags"] == ["INT8"]
    assert ("EXPLICIT_BATCH" in rec["network_flags"]) == explicit_batch and "STRONGLY_TYPED" not in rec["network_flags"]
    calibrator = rec["attrs"]["int8_calibrator"]
    assert calibrator.read_calibration_cache() == CACHE_TEXT.encode() and calibrator.get_batch(["images"]) is None
    assert read_sidecar(engine)["calibration_cache_sha256"] == file_sha256(str(cache))
    assert "--calib-cache" in rebuild_command(read_sidecar(engine), engine)


def test_calibration_cache_on_11_says_to_use_qdq(tmp_path):
    cache = tmp_path / "c.cache"
    cache.write_text(CACHE_TEXT)
    with pytest.raises(UserError, match=r"removed INT8 calibrators.*ds2a calibrate .*--precision int8"):
        plan_precision(_info(tmp_path, "fp32"), BuildOptions(int8=True, calib_cache=str(cache)),
                       features("11.4.0.106"))


def test_missing_or_foreign_calibration_cache_is_refused(tmp_path):
    info, f = _info(tmp_path, "fp32"), features("10.13.3.9")
    with pytest.raises(UserError, match="does not exist"):
        plan_precision(info, BuildOptions(int8=True, calib_cache=str(tmp_path / "none.cache")), f)
    bad = tmp_path / "bad.cache"
    bad.write_text('{"act_scales": {}}')
    with pytest.raises(UserError, match="not a TensorRT calibration cache"):
        plan_precision(info, BuildOptions(int8=True, calib_cache=str(bad)), f)
    good = tmp_path / "good.cache"
    good.write_text(CACHE_TEXT)
    with pytest.raises(UserError, match="already has Q/DQ nodes"):
        plan_precision(_info(tmp_path, "int8"), BuildOptions(int8=True, calib_cache=str(good)), f)


# --- version-compatible engines: NVIDIA's matrix ---------------------------------------------------------
def _vc_record(built: str) -> dict:
    return {"tensorrt_version": built, "version_compatible": True, "gpu_name": "NVIDIA Orin",
            "compute_capability": "8.7", "precision": "fp16", "inputs": [], "outputs": [], "onnx_path": "m.onnx"}


@pytest.mark.parametrize("built,runtime", [
    ("8.6.1", "8.6.2"), ("8.6.1", "10.3.0"), ("8.6.2", "10.16.1.11"),  # 8.x VC engines load on 10.x
    ("10.3.0", "10.13.3.9"), ("10.13.3.9", "11.4.0.106"), ("11.0.0", "11.4.0.106"),  # 10.x ones on 11.x
])
def test_version_compatible_engine_loads_where_nvidia_says(built, runtime):
    assert verify_sidecar(_vc_record(built), "m.engine", runtime, "NVIDIA Orin", (8, 7), board=None) == []


@pytest.mark.parametrize("built,runtime,loads_in", [
    ("10.13.3.9", "10.3.0", "10.13.3.9 or a later 10.x or 11.x"),  # older runtime of the same major
    ("8.6.1", "11.4.0.106", "8.6.1 or a later 8.x or 10.x"),  # 8.x engines: not on 11.x
    ("11.4.0.106", "10.16.1.11", "11.4.0.106 or a later 11.x"),  # never on an older major
    ("8.6.1", "8.5.2", "8.6.1 or a later 8.x or 10.x"),  # 8.5 has no lean runtime
    ("8.5.2", "10.3.0", "8.5.2 or a later 8.x"),  # 8.5 cannot build version-compatible engines
])
def test_version_compatible_engine_is_refused_elsewhere_with_where_it_loads(built, runtime, loads_in):
    with pytest.raises(UserError, match=rf"version-compatible engine from TensorRT {built}.*loads in TensorRT "
                                        rf"{re.escape(loads_in)}\b.*rebuild it on this device: ds2a build-engine"):
        verify_sidecar(_vc_record(built), "m.engine", runtime, "NVIDIA Orin", (8, 7), board=None)


def test_tensorrt_8_6_version_compatible_engine_runs_on_a_10_x_runtime(tmp_path):
    fake86, cuda = fake_for("8.6.1")
    engine = str(tmp_path / "vc.engine")
    build(fake86, cuda, make_onnx(tmp_path / "m.onnx"), engine, version_compatible=True)
    assert fake86.state.parser_flags == ["NATIVE_INSTANCENORM"]  # 8.6 would otherwise use the plugin
    fake10, cuda10 = fake_for(NEWEST_10)
    with TensorRTSegmenter(engine, trt_module=fake10, cuda_api=cuda10) as seg:
        x = np.random.default_rng(0).integers(0, 255, (1, 8, 8, 3), dtype=np.uint8)
        assert seg.infer(x[0]).class_map.tolist() == ((x[0, ..., 0] // 64) % 4).tolist()


@pytest.mark.parametrize("hw", ["ampere+"])
def test_tensorrt_8_6_hardware_compatible_build_imports_instancenorm_natively(tmp_path, hw):
    """NvOnnxParser.h: NATIVE_INSTANCENORM "is required when building version-compatible or
    hardware-compatible engines"; the demo ONNX has InstanceNormalization nodes (from GroupNorm)."""
    fake, cuda = fake_for("8.6.1")
    build(fake, cuda, make_onnx(tmp_path / "m.onnx"), str(tmp_path / "hc.engine"), hardware_compat=hw)
    assert fake.state.parser_flags == ["NATIVE_INSTANCENORM"]
    assert fake.state.builds[-1]["attrs"]["hardware_compatibility_level"].name == "AMPERE_PLUS"


def test_standard_build_leaves_the_parser_flags_alone(tmp_path):
    fake, cuda = fake_for("8.6.1")
    build(fake, cuda, make_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.engine"))
    assert fake.state.parser_flags == []


# --- one home for TensorRT facts ------------------------------------------------------------------------
def test_graph_check_runs_for_releases_between_the_targets(tmp_path):
    """A TensorRT 9.x runtime is checked like any other (9.x parsers read opsets up to 19)."""
    fake, cuda = fake_for("10.3.0", as_version="9.2.0")
    path = make_onnx(tmp_path / "m.onnx")
    model = onnx.load(path)
    model.opset_import[0].version = 20
    onnx.save(model, path)
    with pytest.raises(UserError, match=r"cannot be parsed by TensorRT 9\.2:\n.*opset 20 is newer than this parser"):
        build(fake, cuda, path, str(tmp_path / "m.engine"))
    assert "OnnxParser.parse" not in fake.used


def _imports(package: str, skip: tuple = ()) -> set:
    """Absolute names of the ds2a modules a package's sources import (relative imports resolved)."""
    import ast

    found = set()
    for path in (p for p in (ROOT / "ds2a" / package).glob("*.py") if p.name not in skip):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                base = "ds2a" if node.level == 2 else f"ds2a.{package}" if node.level == 1 else ""
                found.add(f"{base}.{node.module}".strip(".") if node.level else node.module)
    return found


def test_runtime_and_builder_share_ds2a_trt_and_not_each_other():
    runtime, engine = _imports("runtime"), _imports("engine")
    assert {"ds2a.trt.sidecar", "ds2a.trt.features"} <= runtime and "ds2a.trt.features" in engine
    assert not {m for m in runtime if m.startswith("ds2a.engine")}, "the runtime imports the builder"
    # only the accuracy gate runs the new engine, the way a station does (ds2a/engine/verify.py)
    assert not {m for m in _imports("engine", skip=("verify.py",)) if m.startswith("ds2a.runtime.tensorrt_backend")}
    assert not (ROOT / "ds2a" / "engine" / "sidecar.py").exists() and not (ROOT / "ds2a" / "engine" / "versions.py").exists()


# --- timing cache, sidecar and empty engines --------------------------------------------------------------
@pytest.mark.parametrize("kind", ["foreign", "corrupt"])
def test_foreign_or_corrupt_timing_cache_is_set_aside_and_the_build_completes(tmp_path, kind):
    other, other_cuda = fake_for("10.13.3.9", gpu="NVIDIA GeForce RTX 4090", cc=(8, 9))
    cache = tmp_path / "trt.cache"
    onnx_path = make_onnx(tmp_path / "m.onnx")
    build(other, other_cuda, onnx_path, str(tmp_path / "other.engine"), timing_cache=str(cache))
    if kind == "corrupt":
        cache.write_bytes(b"\x00garbage" * 8)
    stale = cache.read_bytes()
    fake, cuda = fake_for(NEWEST_10)
    log: list = []
    engine = tmp_path / "m.engine"
    build(fake, cuda, onnx_path, str(engine), timing_cache=str(cache), log=log)
    assert engine.is_file() and read_sidecar(str(engine))["engine_sha256"] == file_sha256(str(engine))
    assert any("starting a fresh one" in line for line in log)
    assert fake.state.timing_cache_loaded == [stale, b""]
    fresh = cache.read_bytes()
    assert fresh and fresh != stale
    build(fake, cuda, onnx_path, str(tmp_path / "again.engine"), timing_cache=str(cache), log=log)
    assert fake.state.timing_cache_loaded[-1] == fresh  # the fresh cache is this device's and is reused


def test_an_engine_never_stays_without_its_sidecar(tmp_path, monkeypatch):
    fake, cuda = fake_for(NEWEST_10)

    def no_space(path, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(builder_mod, "write_sidecar", no_space)
    with pytest.raises(OSError, match="No space"):
        build(fake, cuda, make_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.engine"))
    assert not (tmp_path / "m.engine").exists()


def test_empty_serialized_engine_is_a_user_error_and_writes_nothing(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    fake.state.build_empty = True
    with pytest.raises(UserError, match="returned an empty engine"):
        build(fake, cuda, make_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.engine"))
    assert not (tmp_path / "m.engine").exists() and not (tmp_path / "m.engine.json").exists()


# --- DLA, hardware compatibility and Jetson modules ------------------------------------------------------
@pytest.mark.parametrize("graph,fp16,version", [("fp16", False, "8.6.1"), ("int8", True, NEWEST_10),
                                               ("fp32", True, "8.6.1")])
def test_dla_with_layers_pinned_to_fp32_needs_gpu_fallback_before_the_build(tmp_path, graph, fp16, version):
    fake, cuda = fake_for(version)
    onnx_path = make_onnx(tmp_path / "m.onnx", graph)
    with pytest.raises(UserError, match=r"keeps normalization, softmax, reduce layers in FP32.*add --gpu-fallback"):
        build(fake, cuda, onnx_path, str(tmp_path / "m.engine"), dla_core=0, fp16=fp16)
    assert "OnnxParser.parse" not in fake.used
    build(fake, cuda, onnx_path, str(tmp_path / "m.engine"), dla_core=0, fp16=fp16, gpu_fallback=True)
    assert "GPU_FALLBACK" in fake.state.builds[-1]["config_flags"]


@pytest.mark.parametrize("version", ["8.5.2", "8.6.1"])
@pytest.mark.parametrize("fallback", [False, True])
def test_dla_with_a_qdq_onnx_on_tensorrt_8_is_refused_before_the_build(tmp_path, version, fallback):
    """TensorRT 8's DLA does not support explicit quantization: refuse instead of a GPU-only 'DLA' engine."""
    fake, cuda = fake_for("8.6.1", as_version=version) if version.startswith("8.5") else fake_for(version)
    with pytest.raises(UserError, match=r"does not run explicitly quantized \(Q/DQ\).*--precision fp16.*--calib-cache"):
        build(fake, cuda, make_onnx(tmp_path / "m.onnx", "int8"), str(tmp_path / "m.engine"), dla_core=0,
              gpu_fallback=fallback)
    assert "OnnxParser.parse" not in fake.used


def test_dla_with_a_qdq_onnx_on_tensorrt_10_still_builds(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    build(fake, cuda, make_onnx(tmp_path / "m.onnx", "int8"), str(tmp_path / "m.engine"), dla_core=0,
          gpu_fallback=True)
    assert fake.state.builds[-1]["attrs"]["DLA_core"] == 0


@pytest.fixture
def board(tmp_path, monkeypatch):
    """Pretend to be a Jetson: write the device-tree model file ds2a reads."""
    path = tmp_path / "model"
    monkeypatch.setattr(trt_platform, "MODEL_FILE", str(path))
    monkeypatch.setattr(trt_platform, "TEGRA_RELEASE", str(tmp_path / "no_tegra_release"))

    def set_board(name: str) -> None:
        path.write_bytes(name.encode() + b"\x00")

    return set_board


@pytest.mark.parametrize("jetson,dla", [(True, None), (False, 0)])
def test_hardware_compat_on_jetson_or_dla_is_refused_before_the_build(tmp_path, board, jetson, dla):
    if jetson:
        board("NVIDIA Jetson AGX Orin Developer Kit")
    fake, cuda = fake_for(NEWEST_10)
    with pytest.raises(UserError, match=r"--hardware-compat ampere\+ is for discrete GPUs.*drop --hardware-compat"):
        build(fake, cuda, make_onnx(tmp_path / "m.onnx", "int8"), str(tmp_path / "m.engine"),
              hardware_compat="ampere+", dla_core=dla, gpu_fallback=dla is not None)
    assert "OnnxParser.parse" not in fake.used


@dataclass(frozen=True)
class Module:
    """A Jetson GPU as the CUDA layer reports it: every Orin module is "Orin", compute capability 8.7."""

    sm_count: int
    total_memory: int
    index: int = 0
    name: str = "Orin"
    compute_capability: Tuple[int, int] = (8, 7)

    @property
    def cc_text(self) -> str:
        return "8.7"


AGX_ORIN_64 = ("NVIDIA Jetson AGX Orin Developer Kit", Module(16, 62 << 30))
ORIN_NX_16 = ("NVIDIA Jetson Orin NX Engine Reference Carrier", Module(8, 15 << 30))


@pytest.mark.parametrize("board_name,module,why", [
    (ORIN_NX_16[0], ORIN_NX_16[1], "built on a NVIDIA Jetson AGX Orin Developer Kit, this is a NVIDIA Jetson Orin NX"),
    (AGX_ORIN_64[0], Module(14, 62 << 30), "with 16 SMs, this one has 14"),  # AGX Orin 32GB has 14 SMs
    (AGX_ORIN_64[0], Module(16, 30 << 30), "with 62 GiB, this one has 30 GiB"),
])
def test_jetson_module_identity_is_recorded_and_checked(tmp_path, board, board_name, module, why):
    board(AGX_ORIN_64[0])
    fake, cuda = fake_for(NEWEST_10, gpu="Orin")
    engine = str(tmp_path / "m.engine")
    build_engine(make_onnx(tmp_path / "m.onnx"), engine, BuildOptions(), trt=fake, device=AGX_ORIN_64[1], cuda_api=cuda)
    rec = read_sidecar(engine)
    assert (rec["board"], rec["sm_count"], rec["total_memory"]) == (AGX_ORIN_64[0], 16, 62 << 30)
    assert verify_sidecar(rec, engine, NEWEST_10, "Orin", (8, 7), device=AGX_ORIN_64[1], board=AGX_ORIN_64[0]) == []
    with pytest.raises(UserError, match=re.escape(why) + r".*rebuild it on this device"):
        verify_sidecar(rec, engine, NEWEST_10, "Orin", (8, 7), device=module, board=board_name)
    notes = verify_sidecar(rec, engine, NEWEST_10, "Orin", (8, 7), device=module, board=board_name, allow_other_gpu=True)
    assert len(notes) == 1 and why in notes[0]  # the runtime logs them (ds2a/runtime/tensorrt_backend.py)


ORIN_64_COMPATIBLE = b"nvidia,p3737-0000+p3701-0005\x00nvidia,p3701-0005\x00nvidia,tegra234\x00"
ORIN_NX_COMPATIBLE = b"nvidia,p3768-0000+p3767-0000\x00nvidia,p3767-0000\x00nvidia,tegra234\x00"


@pytest.fixture
def module(tmp_path, monkeypatch):
    """Pretend to be a Jetson module: write the device-tree compatible list ds2a reads."""
    path = tmp_path / "compatible"
    monkeypatch.setattr(trt_platform, "COMPATIBLE_FILE", str(path))
    return path.write_bytes


def test_the_same_module_on_another_carrier_board_loads(tmp_path, board, module):
    """The model string names the carrier kit; the module's part number decides."""
    board(AGX_ORIN_64[0])
    module(ORIN_64_COMPATIBLE)
    fake, cuda = fake_for(NEWEST_10, gpu="Orin")
    engine = str(tmp_path / "m.engine")
    build_engine(make_onnx(tmp_path / "m.onnx"), engine, BuildOptions(), trt=fake, device=AGX_ORIN_64[1], cuda_api=cuda)
    rec = read_sidecar(engine)
    assert rec["module"] == "p3701-0005" and trt_platform.module_identity() == "p3701-0005"
    carrier = "Seeed reComputer Industrial J4012 (AGX Orin 64GB)"
    assert verify_sidecar(rec, engine, NEWEST_10, "Orin", (8, 7), device=AGX_ORIN_64[1], board=carrier,
                          module="p3701-0005") == []
    with pytest.raises(UserError, match=r"module p3701-0005 .*this is module p3767-0000.*--allow-other-gpu"):
        verify_sidecar(rec, engine, NEWEST_10, "Orin", (8, 7), device=AGX_ORIN_64[1], board=ORIN_NX_16[0],
                       module="p3767-0000")


def test_module_part_number_is_read_from_the_device_tree(module):
    assert trt_platform.module_identity() is None
    module(ORIN_NX_COMPATIBLE)
    assert trt_platform.module_identity() == "p3767-0000"
    module(b"nvidia,p3767-0005\x00nvidia,tegra234\x00")
    assert trt_platform.module_identity() == "p3767-0005"


@pytest.mark.parametrize("flags", [{"version_compatible": True}, {"hardware_compat": "ampere+"}, {}])
def test_an_engine_from_another_cpu_architecture_is_refused_with_the_rebuild_command(tmp_path, flags):
    """NVIDIA: serialized engines are not portable across platforms, compatible ones included."""
    fake, cuda = fake_for(NEWEST_10, gpu="NVIDIA RTX A6000", cc=(8, 6))
    engine = str(tmp_path / "m.engine")
    build(fake, cuda, make_onnx(tmp_path / "m.onnx"), engine, **flags)
    rec = read_sidecar(engine)
    here = {"os": platform.system(), "cpu_arch": platform.machine()}
    assert verify_sidecar(rec, engine, NEWEST_10, "NVIDIA RTX A6000", (8, 6), host=here, board=None) == []
    other = dict(here, cpu_arch="aarch64" if platform.machine() != "aarch64" else "x86_64")
    with pytest.raises(UserError, match=rf"built on {here['os']} {here['cpu_arch']} but this machine is "
                                        rf"{other['os']} {other['cpu_arch']}.*rebuild it on this device: ds2a build-engine"):
        verify_sidecar(rec, engine, NEWEST_10, "NVIDIA RTX A6000", (8, 6), host=other, board=None)


def test_board_model_is_read_from_the_device_tree(board):
    assert trt_platform.board_model() is None and not trt_platform.is_jetson()
    board("NVIDIA Jetson Orin Nano Developer Kit")
    assert trt_platform.board_model() == "NVIDIA Jetson Orin Nano Developer Kit" and trt_platform.is_jetson()


# --- TensorRT 8.5 FP16: the decomposed LayerNorm ----------------------------------------------------------
def test_fp16_on_8_5_pins_the_decomposed_layernorm_arithmetic(tmp_path):
    model = onnx.load(make_onnx(tmp_path / "ln.onnx", layernorm=True))
    assert decompose_layernorm(model) == 1
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    fake, cuda = fake_for("8.6.1", as_version="8.5.2")
    build(fake, cuda, path, str(tmp_path / "m.engine"), fp16=True)
    nodes = list(model.graph.node)
    layer_op = {(n.name or f"n{i}"): n for i, n in enumerate(nodes)}
    pinned = [layer_op[name] for name in fake.state.builds[-1]["pinned"]]
    ops = [n.op_type for n in pinned]
    assert {"Sqrt", "Div"} <= set(ops) and ops.count("ReduceMean") == 3  # 2 in the norm + the model's own
    square = next(n for n in pinned if n.op_type == "Mul")
    assert square.input[0] == square.input[1]  # the variance's square, not the scale multiply
    assert not any(n.op_type == "Add" and n.input[1] == "ln_b" for n in pinned)  # the bias add stays FP16


def test_decomposed_layernorm_detection_finds_pow_form_and_ignores_other_divisions():
    def node(op, inputs, out):
        return helper.make_node(op, inputs, [out])
    nodes = [node("ReduceMean", ["x"], "m"), node("Sub", ["x", "m"], "d"), node("Pow", ["d", "two"], "d2"),
             node("ReduceMean", ["d2"], "v"), node("Add", ["v", "eps"], "ve"), node("Sqrt", ["ve"], "s"),
             node("Div", ["d", "s"], "n"), node("Div", ["n", "k"], "scaled"), node("Sqrt", ["n"], "other_root")]
    assert builder_mod.decomposed_layernorm_tensors(nodes) == ["d2", "ve", "s", "n"]


def test_build_releases_the_cuda_layer_it_opened_to_read_the_device(tmp_path, monkeypatch):
    """pycuda aborts the process at exit when a context is still pushed; the builder closes what it opens."""
    fake, cuda = fake_for(NEWEST_10)
    opened: list = []
    closed: list = []
    cuda.close = lambda: closed.append(True)
    monkeypatch.setattr(builder_mod, "import_tensorrt", lambda: fake)
    monkeypatch.setattr("ds2a.runtime.cuda_buffers.open_cuda", lambda device=0: opened.append(device) or cuda)
    build_engine(make_onnx(tmp_path / "m.onnx"), str(tmp_path / "m.engine"), BuildOptions())
    assert opened == [0, 0] and closed == [True, True]  # the build, then the accuracy gate running the engine
