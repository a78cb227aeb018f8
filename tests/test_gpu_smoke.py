"""GPU smoke test: real engines of the demo model agree with ONNX Runtime, and how fast they run.

Runs only where TensorRT and a CUDA GPU exist (skipped with the reason otherwise). Builds
FP32 / FP16 / INT8 engines from the demo ONNX (FP16/INT8 ONNX made with `ds2a calibrate`
on a small synthetic set when the demo folder has none), checks class-map agreement with
the FP32 ONNX on ONNX Runtime (FP32 >= 99.8 % (TF32), FP16 >= 99.5 %, INT8 >= 98 %), and records
median latency. DS2A_SMOKE_OUT=path.json also writes the numbers there.
The cuda-python buffer test needs only a GPU.
"""
from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

ROOT = Path(__file__).resolve().parents[1]
DEMO_PT = ROOT / "ds2a" / "assets" / "demo" / "ds2a_tiny_synth.pt"
_EXPORTED: dict = {}


def _demo_onnx() -> Path:
    """The demo checkpoint exported to FP32 ONNX once per session (the FP32 ONNX is not committed)."""
    if "fp32" not in _EXPORTED:
        if not DEMO_PT.is_file():
            pytest.skip(f"demo checkpoint {DEMO_PT} not present")
        pytest.importorskip("torch", reason="exporting the demo checkpoint needs PyTorch")
        from ds2a.cli import main

        out = Path(tempfile.mkdtemp(prefix="ds2a_gpu_smoke_")) / "ds2a_tiny_synth.onnx"
        if main(["export", str(DEMO_PT), "--out", str(out)]) != 0:
            pytest.skip("`ds2a export` of the demo checkpoint failed here; see its message above")
        _EXPORTED["fp32"] = out
    return _EXPORTED["fp32"]
AGREEMENT = {"fp32": 0.998, "fp16": 0.995, "int8": 0.98}
RESULTS: dict = {}


def _gpu_reason() -> str:
    """'' when a CUDA GPU answers through cuda-python, else why not."""
    from ds2a.errors import UserError
    from ds2a.runtime.cuda_buffers import load_cudart, open_cuda

    if load_cudart() is None and importlib.util.find_spec("pycuda") is None:
        return "neither cuda-python nor pycuda is installed"
    try:
        open_cuda(0)
    except UserError as exc:
        return str(exc)
    return ""


GPU_REASON = _gpu_reason()
TRT_REASON = "" if importlib.util.find_spec("tensorrt") else "TensorRT Python package not installed"
needs_gpu = pytest.mark.skipif(bool(GPU_REASON), reason=f"no usable GPU: {GPU_REASON}")
needs_trt = pytest.mark.skipif(bool(TRT_REASON or GPU_REASON), reason=TRT_REASON or f"no usable GPU: {GPU_REASON}")


@needs_gpu
def test_cuda_python_buffers_round_trip_through_the_gpu():
    from ds2a.runtime.cuda_buffers import HostDeviceBuffer, open_cuda

    api = open_cuda(0)
    info = api.device_info()
    assert info.name and info.compute_capability[0] >= 5
    stream = api.create_stream()
    a = HostDeviceBuffer(api, (4, 64, 64, 3), np.uint8)
    b = HostDeviceBuffer(api, (4, 64, 64, 3), np.uint8)
    a.host[...] = np.random.default_rng(0).integers(0, 256, a.shape, dtype=np.uint8)
    a.to_device(stream)
    if api.name == "cuda-python":  # device -> device copy, then back, all on one stream
        rt = api.cudart
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        from ds2a.runtime.cuda_buffers import cuda_call

        cuda_call(rt.cudaMemcpyAsync(b.device, a.device, a.nbytes, kind, stream))
        b.to_host(stream)
        api.synchronize(stream)
        assert np.array_equal(a.host, b.host)
    a.free()
    b.free()
    api.destroy_stream(stream)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu_smoke")


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    import onnx

    from ds2a.data.synth import render_cell

    dims = onnx.load(str(_demo_onnx()), load_external_data=False).graph.input[0].type.tensor_type.shape.dim
    h, w = dims[1].dim_value, dims[2].dim_value
    rng = np.random.default_rng(0)
    return np.stack([render_cell(rng, (h, w))[0] for _ in range(16)])


@pytest.fixture(scope="module")
def reference(frames) -> np.ndarray:
    from ds2a.runtime.onnxruntime_backend import OnnxRuntimeSegmenter

    with OnnxRuntimeSegmenter(str(_demo_onnx())) as seg:
        return np.stack([r.class_map for r in seg.infer_batch(frames)])


def _onnx_for(precision: str, workdir: Path) -> Path:
    demo = _demo_onnx()
    if precision == "fp32":
        return demo
    from ds2a.cli import main

    data = workdir / "synth"
    if not data.is_dir():
        assert main(["synth", str(data), "--train", "32", "--test", "4", "--size", "256x256", "--seed", "0"]) == 0
    out = workdir / f"{demo.stem}.{precision}.onnx"
    try:
        rc = main(["calibrate", str(demo), "--data", str(data), "--precision", precision, "--num-images", "32",
                   "--target", "tensorrt", "--out", str(out)])
    except Exception as exc:  # e.g. nvidia-modelopt missing for the TensorRT INT8 placement
        pytest.skip(f"`ds2a calibrate --precision {precision}` cannot run here: {type(exc).__name__}: {exc}")
    if rc != 0 or not out.is_file():
        pytest.skip(f"`ds2a calibrate --precision {precision}` failed here (rc {rc}); see its message above")
    return out


@needs_trt
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_engine_agrees_with_onnxruntime_and_is_timed(precision, workdir, frames, reference):
    from ds2a.engine.builder import BuildOptions, build_engine
    from ds2a.runtime.tensorrt_backend import TensorRTSegmenter

    onnx_path = _onnx_for(precision, workdir)
    engine = workdir / f"demo.{precision}.engine"
    report = build_engine(str(onnx_path), str(engine), BuildOptions(timing_cache=str(workdir / "timing.cache")))
    assert report.precision == precision
    for graph in (False, True):
        with TensorRTSegmenter(str(engine), cuda_graph=graph) as seg:
            maps = np.stack([seg.infer(f).class_map for f in frames])
            agreement = float((maps == reference).mean())
            seg.warmup(10)
            times = []
            for f in frames[:1].repeat(50, axis=0):
                t0 = time.perf_counter()
                seg.infer(f)
                times.append((time.perf_counter() - t0) * 1e3)
            key = f"{precision}{'+graph' if graph else ''}"
            RESULTS[key] = {"agreement": agreement, "median_ms": float(np.median(times)),
                            "p95_ms": float(np.percentile(times, 95)), "build_s": report.build_seconds,
                            "gpu": seg.device.name, "tensorrt": seg.tensorrt_version, **seg.last_timings}
        print(f"{key}: agreement {agreement:.4%}, median {RESULTS[key]['median_ms']:.2f} ms")
        assert agreement >= AGREEMENT[precision], RESULTS[key]
    if os.environ.get("DS2A_SMOKE_OUT"):
        Path(os.environ["DS2A_SMOKE_OUT"]).write_text(json.dumps(RESULTS, indent=2))


@needs_trt
@pytest.mark.skipif(importlib.util.find_spec("polygraphy") is None, reason="polygraphy not installed")
def test_polygraphy_sees_the_same_class_maps(workdir, frames, reference):
    """Independent check of our buffers: polygraphy's own TensorRT runner on the FP32 engine."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    engine = workdir / "demo.fp32.engine"
    if not engine.is_file():
        pytest.skip("the FP32 engine is built by test_engine_agrees_with_onnxruntime_and_is_timed")
    with TrtRunner(EngineFromBytes(engine.read_bytes())) as runner:
        maps = [runner.infer({"images": f[None]})["class_map"][0] for f in frames]
    assert float((np.stack([np.asarray(m) for m in maps]) == reference).mean()) >= AGREEMENT["fp32"]
