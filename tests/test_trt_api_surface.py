"""Every TensorRT name the builder and backend use exists in the release whose branch uses it.

The names are not listed by hand (a list would drift from the code): each release's real
Python bindings (PyPI wheels, loaded against stub libraries in a subprocess) give its
public surface; the builder and backend then run every option their branch supports
against a fake restricted to that surface, which raises on any missing name and records
the names used; finally the recorded names are resolved on the real module again.
8.5 has no bindings wheel: its branch runs on the 8.6 surface less what 8.6 added
(trt_stubs/surface85.py), reporting version 8.5.2.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np
import pytest
from trt_stubs import wheels
from trt_stubs.fake_trt import FakeCuda, FakeTensorRT
from trt_stubs.helpers import build, fake_for, features
from trt_stubs.onnx_models import make_onnx

from ds2a.engine import builder as builder_mod
from ds2a.errors import UserError
from ds2a.runtime.tensorrt_backend import TensorRTSegmenter

RELEASES = list(wheels.RELEASES)
BRANCHES = [(v, None) for v in RELEASES] + [("8.6.1", "8.5.2")]  # (surface, reported version)


def _scenarios(version: str) -> List[Tuple[str, Dict]]:
    """(onnx precision, build options) for every option the release's branch supports."""
    f = features(version)
    out: List[Tuple[str, Dict]] = [
        ("fp32", {}), ("fp16", {}), ("int8", {"int8": True}),
        ("fp32", {"batch": (1, 2, 4), "workspace_gib": 0.5, "timing_cache": "cache.bin", "verbose": True}),
        # TensorRT 8's DLA takes no Q/DQ network (builder.check_dla): FP16 there, INT8 from 10 on
        ("int8" if f.version >= (10, 0) else "fp16", {"dla_core": 0, "gpu_fallback": True}),
    ]
    if f.weak_typing:
        out += [("fp32", {"fp16": True}), ("int8", {"fp16": True})]
    if f.int8_calibrator:
        out.append(("fp32", {"int8": True, "calib_cache": "calib.cache"}))
    if f.builder_optimization_level:
        out.append(("fp32", {"optimization_level": 4, "version_compatible": True, "hardware_compat": "ampere+"}))
    if f.same_compute_capability:
        out.append(("fp16", {"hardware_compat": "same-cc"}))
    return out


def exercise(fake: FakeTensorRT, cuda: FakeCuda, tmp: Path) -> Set[str]:
    """Build every scenario and run each engine through the backend (with and without CUDA graphs)."""
    version = str(fake.__version__)
    for i, (precision, opts) in enumerate(_scenarios(version)):
        dynamic = "batch" in opts
        onnx = make_onnx(tmp / f"m{i}.onnx", precision, batch="batch" if dynamic else 1,
                         layernorm=features(version).normalization_layer)
        if "timing_cache" in opts:
            opts = dict(opts, timing_cache=str(tmp / opts["timing_cache"]))
        if "calib_cache" in opts:
            (tmp / "calib.cache").write_text("TRT-8501-EntropyCalibration2\nx_t: 3c010a14\n")
            opts = dict(opts, calib_cache=str(tmp / "calib.cache"))
        engine = str(tmp / f"m{i}.engine")
        build(fake, cuda, onnx, engine, **opts)
        with TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda, cuda_graph=bool(i % 2),
                               return_logits=True) as seg:
            frames = np.random.default_rng(i).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
            for _ in range(3):
                results = seg.infer_batch(frames)
            assert [r.class_map.tolist() for r in results] == [((f[..., 0] // 64) % 4).tolist() for f in frames]
    return set(fake.used)


@pytest.fixture(scope="module")
def used_names(tmp_path_factory) -> Dict[Tuple[str, str], Set[str]]:
    """Names recorded per branch (computed once; a missing wheel leaves its branch out)."""
    found: Dict[Tuple[str, str], Set[str]] = {}
    for surface_version, reported in BRANCHES:
        if wheels.surface(surface_version)[0] is None:
            continue
        fake, cuda = fake_for(surface_version, as_version=reported)
        found[(surface_version, reported or surface_version)] = exercise(
            fake, cuda, tmp_path_factory.mktemp(f"trt{reported or surface_version}"))
    return found


def _branch(used_names, surface_version: str, reported: str = None) -> Set[str]:
    key = (surface_version, reported or surface_version)
    if key not in used_names:
        pytest.skip(f"TensorRT {surface_version} bindings unavailable: {wheels.surface(surface_version)[1]}")
    return used_names[key]


@pytest.mark.parametrize("version", RELEASES)
def test_real_bindings_import_against_stub_libraries(version):
    site, why = wheels.obtain(version)
    if site is None:
        pytest.skip(f"TensorRT {version} bindings unavailable: {why}")
    proc = wheels.run_with_real_trt(version, "import tensorrt as trt; print(trt.__version__, trt.Builder.__name__)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [version, "Builder"]


@pytest.mark.parametrize("surface_version,reported", BRANCHES)
def test_every_name_used_exists_in_the_real_release(used_names, surface_version, reported):
    used = _branch(used_names, surface_version, reported)
    assert {"Builder.build_serialized_network", "OnnxParser.parse", "Runtime.deserialize_cuda_engine",
            "IExecutionContext.execute_async_v3", "IExecutionContext.set_tensor_address"} <= used
    code = (
        "import json, sys, tensorrt as trt\n"
        "missing = []\n"
        "for name in json.loads(sys.argv[1] if len(sys.argv) > 1 else sys.stdin.read()):\n"
        "    obj = trt\n"
        "    for part in name.split('.'):\n"
        "        if not hasattr(obj, part):\n"
        "            missing.append(name); break\n"
        "        obj = getattr(obj, part)\n"
        "print(json.dumps(missing))\n"
    )
    site, why = wheels.obtain(surface_version)
    proc = wheels.subprocess.run([wheels.sys.executable, "-c", code], input=json.dumps(sorted(used)),
                                 env=wheels.env_for(surface_version, site), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


def test_tensorrt_8_branch_uses_explicit_batch_and_weak_typing(used_names):
    used = _branch(used_names, "8.6.1")
    assert "NetworkDefinitionCreationFlag.EXPLICIT_BATCH" in used
    weak = {"BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", "ILayer.precision"}
    assert weak <= used
    assert "IBuilderConfig.progress_monitor" not in used  # no IProgressMonitor before 10.0
    assert {"IInt8EntropyCalibrator2", "IBuilderConfig.int8_calibrator"} <= used
    assert {"OnnxParser.set_flag", "OnnxParserFlag.NATIVE_INSTANCENORM"} <= used  # version-compatible builds


def test_tensorrt_8_5_branch_skips_what_8_6_added(used_names):
    used = _branch(used_names, "8.6.1", "8.5.2")
    assert not {"IBuilderConfig.builder_optimization_level", "IBuilderConfig.hardware_compatibility_level",
                "BuilderFlag.VERSION_COMPATIBLE", "OnnxParser.set_flag"} & used
    assert "NetworkDefinitionCreationFlag.EXPLICIT_BATCH" in used


@pytest.mark.parametrize("version", ["10.3.0", "10.13.3.9", "10.16.1.11"])
def test_tensorrt_10_branch_is_strongly_typed_unless_fp16_is_requested(used_names, version):
    used = _branch(used_names, version)
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in used
    assert "NetworkDefinitionCreationFlag.EXPLICIT_BATCH" not in used
    assert {"BuilderFlag.FP16", "IBuilderConfig.progress_monitor"} <= used
    assert ("HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY" in used) == (version != "10.3.0")


def test_tensorrt_11_branch_never_touches_removed_precision_api(used_names):
    used = _branch(used_names, "11.4.0.106")
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in used
    assert not {n for n in used if n.startswith("BuilderFlag.") and n.split(".")[1] in
                ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS")}
    assert "ILayer.precision" not in used
    assert not {n for n in used if "Calibrator" in n or "int8_calibrator" in n}


def test_fake_refuses_a_name_the_release_lacks(tmp_path, monkeypatch):
    """Guard against a toothless fake: 11.x with the 10.x (weakly typed) branch forced must fail."""
    fake, cuda = fake_for("11.4.0.106")
    weak = features("10.13.3.9")
    monkeypatch.setattr(builder_mod, "detect_features", lambda trt: weak)
    onnx = make_onnx(tmp_path / "m.onnx", "fp32")
    with pytest.raises(AttributeError, match=r"BuilderFlag\.FP16 does not exist"):
        build(fake, cuda, onnx, str(tmp_path / "m.engine"), fp16=True)


def test_asking_11_for_the_removed_fp16_flag_is_a_user_error_instead(tmp_path):
    fake, cuda = fake_for("11.4.0.106")
    onnx = make_onnx(tmp_path / "model.onnx", "fp32")
    with pytest.raises(UserError, match=r"ds2a calibrate .*model\.onnx --data DATA_DIR --precision fp16"):
        build(fake, cuda, onnx, str(tmp_path / "m.engine"), fp16=True)


@pytest.mark.parametrize("version", RELEASES)
def test_progress_monitor_subclasses_the_real_interface(version):
    """Our IProgressMonitor subclass is built on the real pybind class (no GPU needed for that)."""
    if wheels.obtain(version)[0] is None:
        pytest.skip(f"TensorRT {version} bindings unavailable: {wheels.obtain(version)[1]}")
    code = (
        "import logging, tensorrt as trt\n"
        "from ds2a.engine.builder import _progress_monitor\n"
        "from ds2a.trt.features import detect_features\n"
        "lines = []\n"
        "handler = logging.Handler()\n"
        "handler.emit = lambda record: lines.append(record.getMessage())\n"
        "logging.getLogger('ds2a').addHandler(handler)\n"
        "logging.getLogger('ds2a').setLevel(logging.INFO)\n"
        "if detect_features(trt).progress_monitor:\n"
        "    m = _progress_monitor(trt)\n"
        "    assert isinstance(m, trt.IProgressMonitor)\n"
        "    m.phase_start('Build', None, 2)\n"
        "    assert m.step_complete('Build', 1) is True\n"
        "    m.phase_finish('Build')\n"
        "print(lines, type(trt.Logger(trt.Logger.WARNING)).__name__)\n"
    )
    proc = wheels.run_with_real_trt(version, code)
    assert proc.returncode == 0, proc.stderr
    has_monitor = features(version).progress_monitor
    assert proc.stdout.strip() == (("['  Build (2 steps)']" if has_monitor else "[]") + " Logger")


@pytest.mark.parametrize("version", RELEASES)
def test_cache_calibrator_subclasses_the_real_interface(version):
    if wheels.obtain(version)[0] is None:
        pytest.skip(f"TensorRT {version} bindings unavailable: {wheels.obtain(version)[1]}")
    if not features(version).int8_calibrator:
        pytest.skip(f"TensorRT {version} has no INT8 calibrators")
    code = (
        "import tensorrt as trt\n"
        "from ds2a.engine.builder import _cache_calibrator\n"
        "c = _cache_calibrator(trt, b'TRT-8501-EntropyCalibration2\\nx: 3c010a14\\n')\n"
        "assert isinstance(c, trt.IInt8EntropyCalibrator2)\n"
        "print(c.get_batch_size(), c.get_batch(['images']), c.read_calibration_cache().split()[0].decode())\n"
    )
    proc = wheels.run_with_real_trt(version, code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["1", "None", "TRT-8501-EntropyCalibration2"]
