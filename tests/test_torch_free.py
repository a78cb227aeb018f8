"""The device side (engine, runtime, inspect, bench, precision, data, ...) works with torch absent.

A Jetson runs `ds2a inspect` / `ds2a bench` with numpy, OpenCV, ONNX Runtime and TensorRT only,
so a subprocess blocks `import torch` and then imports those packages and runs a model.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fakes.onnx_models import reference_logits, tiny_onnx

# packages that must never need torch; the first two must exist, the rest are checked when present
REQUIRED = ["ds2a.runtime", "ds2a.bench"]
OPTIONAL = ["ds2a", "ds2a.meta", "ds2a.preprocess", "ds2a.timing", "ds2a.metrics", "ds2a.data",
            "ds2a.engine", "ds2a.inspect", "ds2a.precision", "ds2a.runtime.onnxruntime_backend",
            "ds2a.cli.bench", "ds2a.bench.latency", "ds2a.bench.machine", "ds2a.bench.report",
            "ds2a.bench.stats", "ds2a.bench.matrix", "ds2a.opencv", "ds2a.cli.doctor", "ds2a.doctor.smoke",
            "ds2a.trt", "ds2a.notify", "ds2a.web", "ds2a.web.station", "ds2a.runtime.triton_backend"]

SCRIPT = textwrap.dedent(
    """
    import importlib, importlib.abc, importlib.util, json, sys, warnings

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"torch is blocked in this test (import of {name})")
            return None

    # where torch is not installed (a Jetson, the Python 3.8 run) its absence is the test; blocking
    # there would also break libraries that merely probe for it (importlib.util.find_spec("torch"))
    if importlib.util.find_spec("torch") is not None:
        sys.meta_path.insert(0, BlockTorch())
    required, optional, onnx_path = json.loads(sys.argv[1])
    imported, missing = [], []
    for name in required + optional:
        try:
            importlib.import_module(name)
            imported.append(name)
        except ModuleNotFoundError as exc:
            if name in required or exc.name != name:
                raise
            missing.append(name)
    import numpy as np
    from ds2a.runtime import open_model

    frame = np.random.default_rng(1).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    with open_model(onnx_path, return_logits=True) as seg:
        res = seg.infer(frame[0])
    np.save(sys.argv[2], res.logits)
    torch_loaded = [m for m in sys.modules if m.split(".")[0] == "torch"]
    print(json.dumps({"imported": imported, "missing": missing, "torch": torch_loaded,
                      "class_map": res.class_map.tolist()}))
    """
)


def test_device_packages_import_and_onnxruntime_runs_without_torch(tmp_path: Path) -> None:
    import numpy as np

    onnx_path = tiny_onnx(tmp_path / "m.onnx")
    out_npy = tmp_path / "logits.npy"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps([REQUIRED, OPTIONAL, str(onnx_path)]), str(out_npy)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(REQUIRED) <= set(report["imported"])
    assert report["torch"] == []
    frame = np.random.default_rng(1).integers(0, 256, (1, 32, 48, 3), dtype=np.uint8)
    ref = reference_logits(frame)[0]
    np.testing.assert_allclose(np.load(out_npy), ref, rtol=1e-4, atol=1e-3)
    assert np.mean(np.asarray(report["class_map"]) == ref.argmax(0)) > 0.999


def test_the_blocker_really_blocks_torch() -> None:
    """Guard against a silently broken blocker: importing torch in the same setup must fail."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed here, so nothing needs blocking")
    script = SCRIPT.split("required, optional")[0] + "import torch\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "torch is blocked" in proc.stderr
