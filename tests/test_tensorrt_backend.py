"""TensorRT backend: data flow through pinned buffers / stream / CUDA graph, sidecar enforcement, bad engines.

Engines are built by the real builder code against a fake of a real TensorRT release; the
fake execution context computes class = blue // 64 on the fake GPU memory, so a wrong copy,
size or address shows up as a wrong class map. The no-driver case uses the real cuda-python.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings

import numpy as np
import pytest
from cuda_fakes import FakeCudaDriver, Machine, pycuda_entries
from trt_stubs.fake_trt import MAGIC
from trt_stubs.helpers import NEWEST_10, build, fake_for
from trt_stubs.onnx_models import CLASSES, make_onnx

from ds2a.errors import UserError
from ds2a.runtime import cuda_buffers, open_model
from ds2a.runtime.cuda_buffers import CudaError, cuda_call, explain_no_gpu
from ds2a.runtime.options import add_backend_arguments, options_from_args
from ds2a.runtime.tensorrt_backend import TensorRTSegmenter


def expected(frames: np.ndarray) -> list:
    return [((f[..., 0].astype(int) // 64) % 4).astype(np.uint8).tolist() for f in frames]


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


@pytest.fixture
def built(trt_engine):
    """(fake, cuda, engine path) for a fixed-batch FP16 engine built with the newest 10.x (tests/conftest.py)."""
    return trt_engine


def test_infer_returns_the_engines_class_map_and_logits(built):
    fake, cuda, engine = built
    with TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda, return_logits=True) as seg:
        assert (seg.backend, seg.meta.classes, seg.input_size, seg.batch_size) == ("tensorrt", CLASSES, (8, 8), 1)
        x = frames(1)
        result = seg.infer(x[0])
        assert result.class_map.tolist() == expected(x)[0] and result.class_map.dtype == np.uint8
        assert result.logits.shape == (4, 8, 8) and (result.logits.argmax(0) == result.class_map).all()
        assert set(seg.last_timings) == {"h2d_ms", "compute_ms", "d2h_ms", "enqueue_ms"}
        assert seg.last_timings["enqueue_ms"] >= 0


def test_frames_of_other_sizes_and_gray_are_resized(built):
    fake, cuda, engine = built
    seg = TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)
    big = np.full((32, 48, 3), 200, np.uint8)
    assert seg.infer(big).class_map.shape == (8, 8) and (seg.infer(big).class_map == 3).all()
    assert (seg.infer(np.full((16, 16), 70, np.uint8)).class_map == 1).all()
    with pytest.raises(UserError, match="cannot run tensorrt on a frame of shape"):
        seg.infer(np.zeros((8, 8, 5), np.uint8))
    seg.close()


def test_fixed_batch_engine_pads_and_splits_batches(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    engine = str(tmp_path / "b2.engine")
    build(fake, cuda, make_onnx(tmp_path / "m.onnx", batch=2), engine)
    fake.state.executions = 0  # the build's accuracy gate ran the engine too
    with TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda) as seg:
        x = frames(3, seed=1)
        assert [r.class_map.tolist() for r in seg.infer_batch(x)] == expected(x)
        assert fake.state.executions == 2


def test_dynamic_batch_engine_sets_input_shapes_up_to_the_profile_max(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    engine = str(tmp_path / "dyn.engine")
    build(fake, cuda, make_onnx(tmp_path / "m.onnx", batch="batch"), engine, batch=(1, 2, 4))
    fake.state.executions = 0  # the build's accuracy gate ran the engine too
    with TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda) as seg:
        assert seg.batch_size is None
        x = frames(5, seed=2)
        assert [r.class_map.tolist() for r in seg.infer_batch(x)] == expected(x)
        assert fake.state.executions == 2  # 4 + 1, no padding
        assert seg.context._in_shape["images"] == (1, 8, 8, 3)


def test_cuda_graph_is_captured_once_then_replayed_with_new_frames(built):
    fake, cuda, engine = built
    with TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda, cuda_graph=True) as seg:
        for seed in range(4):
            x = frames(1, seed=seed)
            assert seg.infer(x[0]).class_map.tolist() == expected(x)[0]
        assert cuda.graph_launches == 3 and seg._graph is not None  # run 1 plain, runs 2..4 replay
        assert "gpu_ms" in seg.last_timings


def test_close_frees_every_buffer(built):
    fake, cuda, engine = built
    cuda.freed = 0  # the build's accuracy gate opened and closed the engine too
    seg = TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)
    seg.close()
    seg.close()
    assert cuda.freed == 3 and cuda.mem == {}


def test_open_model_dispatches_engines_here(built):
    fake, cuda, engine = built
    with open_model(engine, trt_module=fake, cuda_api=cuda) as seg:
        assert isinstance(seg, TensorRTSegmenter)


# --- the sidecar is enforced -------------------------------------------------------------------------
def test_engine_from_another_tensorrt_release_is_refused_with_the_rebuild_command(built):
    _, _, engine = built
    other, cuda = fake_for("10.13.3.9")
    with pytest.raises(UserError, match=rf"built with TensorRT {NEWEST_10} but this machine runs TensorRT "
                                        r"10\.13\.3\.9.*ds2a build-engine .*m\.onnx --out .*m\.engine --workspace 1"):
        TensorRTSegmenter(engine, trt_module=other, cuda_api=cuda)


def test_engine_for_another_compute_capability_is_refused(built):
    fake, _, engine = built
    _, cuda = fake_for(NEWEST_10, gpu="NVIDIA GeForce RTX 3080", cc=(8, 6))
    with pytest.raises(UserError, match=r"built for NVIDIA Orin \(compute capability 8\.7\).*RTX 3080 \(8\.6\)"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)


def test_engine_from_another_gpu_model_of_the_same_capability_needs_consent(built, caplog):
    fake, _, engine = built
    _, cuda = fake_for(NEWEST_10, gpu="NVIDIA Jetson AGX Orin", cc=(8, 7))
    fake.state.cuda = cuda
    with pytest.raises(UserError, match="allow_other_gpu=True"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)
    TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda, allow_other_gpu=True).close()
    assert "slow kernels" in caplog.text


def test_allow_other_gpu_is_a_command_line_flag_too(built, caplog):
    """`ds2a inspect/bench/eval --allow-other-gpu`: the refusal names it, and it runs with a warning."""
    fake, _, engine = built
    _, cuda = fake_for(NEWEST_10, gpu="NVIDIA Jetson AGX Orin", cc=(8, 7))
    fake.state.cuda = cuda
    with pytest.raises(UserError, match="--allow-other-gpu"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    args = parser.parse_args(["--allow-other-gpu"])
    options = options_from_args(args, "tensorrt", engine)
    assert options == {"allow_other_gpu": True}
    with pytest.raises(UserError, match="--allow-other-gpu only applies to TensorRT models"):
        options_from_args(args, "onnxruntime", "m.onnx")
    caplog.set_level(logging.WARNING)
    open_model(engine, trt_module=fake, cuda_api=cuda, **options).close()
    assert any(r.levelno == logging.WARNING and "slow kernels" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("cc,ok", [((8, 9), True), ((7, 2), False)])
def test_ampere_plus_engine_runs_on_any_ampere_or_newer_gpu(tmp_path, cc, ok):
    fake, cuda = fake_for(NEWEST_10)
    engine = str(tmp_path / "hw.engine")
    build(fake, cuda, make_onnx(tmp_path / "m.onnx"), engine, hardware_compat="ampere+")
    _, other = fake_for(NEWEST_10, gpu="other GPU", cc=cc)
    fake.state.cuda = other
    if ok:
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=other).close()
    else:
        with pytest.raises(UserError, match="Ampere and newer"):
            TensorRTSegmenter(engine, trt_module=fake, cuda_api=other)


def test_version_compatible_engine_loads_in_a_newer_release_of_the_same_major(tmp_path):
    fake, cuda = fake_for("10.13.3.9")
    engine = str(tmp_path / "vc.engine")
    build(fake, cuda, make_onnx(tmp_path / "m.onnx"), engine, version_compatible=True)
    newer, cuda2 = fake_for(NEWEST_10)
    with TensorRTSegmenter(engine, trt_module=newer, cuda_api=cuda2) as seg:
        x = frames(1)
        assert seg.infer(x[0]).class_map.tolist() == expected(x)[0]
    older, cuda3 = fake_for("10.3.0")
    with pytest.raises(UserError, match="version-compatible engine from TensorRT 10.13.3.9"):
        TensorRTSegmenter(engine, trt_module=older, cuda_api=cuda3)


def test_engine_changed_after_its_build_is_refused(built):
    fake, cuda, engine = built
    with open(engine, "ab") as f:
        f.write(b" ")
    with pytest.raises(UserError, match="does not match its sidecar"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)


def test_unreadable_sidecar_is_refused(built):
    fake, cuda, engine = built
    with open(engine + ".json", "w") as f:
        f.write("{not json")
    with pytest.raises(UserError, match="unreadable"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)
    with open(engine + ".json", "w") as f:
        json.dump({"hello": 1}, f)
    with pytest.raises(UserError, match="not a ds2a engine sidecar"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)


@pytest.mark.parametrize("classes, words", [("background", "not str 'background'"),
                                             (["ok", "ok"], "appears twice"), ([1, 2], "non-empty names")])
def test_a_sidecar_with_an_edited_class_list_is_one_clear_line(built, classes, words):
    fake, cuda, engine = built
    data = json.load(open(engine + ".json"))
    data["meta"]["classes"] = classes
    with open(engine + ".json", "w") as f:
        json.dump(data, f)
    with pytest.raises(UserError) as exc:
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)
    message = str(exc.value)
    assert words in message and f"{engine}.json" in message and "ds2a build-engine" in message and "\n" not in message


# --- bad engines ---------------------------------------------------------------------------------------
def test_truncated_or_empty_engine_is_refused(built, caplog):
    fake, cuda, engine = built
    import os

    os.remove(engine + ".json")
    data = open(engine, "rb").read()
    with open(engine, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)
    assert "no sidecar" in caplog.text
    open(engine, "wb").close()
    with pytest.raises(UserError, match="is empty"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)
    with pytest.raises(UserError, match="does not exist.*ds2a build-engine"):
        TensorRTSegmenter(engine + ".missing", trt_module=fake, cuda_api=cuda)


def test_engine_without_our_outputs_is_refused(tmp_path):
    fake, cuda = fake_for(NEWEST_10)
    engine = tmp_path / "foreign.engine"
    io = [{"name": "images", "shape": [1, 8, 8, 3], "dtype": "UINT8", "mode": "INPUT", "profile": []},
          {"name": "boxes", "shape": [1, 100, 4], "dtype": "FLOAT", "mode": "OUTPUT", "profile": []}]
    engine.write_bytes(MAGIC + json.dumps({"version": NEWEST_10, "io": io}).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UserError, match=r"has outputs \[boxes float32 \[1, 100, 4\]\]; expected .*'class_map'.*ds2a export"):
            TensorRTSegmenter(str(engine), trt_module=fake, cuda_api=cuda)


def test_engine_without_sidecar_runs_with_generic_classes(built, caplog):
    fake, cuda, engine = built
    import os

    os.remove(engine + ".json")
    seg = TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda)
    assert "no sidecar" in caplog.text
    assert seg.meta.classes == ["class_0", "class_1", "class_2", "class_3"] and seg.input_size == (8, 8)
    seg.close()


def test_unknown_options_are_refused_and_cpu_device_is_refused(built):
    fake, cuda, engine = built
    with pytest.raises(UserError, match=r"option 'intra_op_threads' only applies to ONNX Runtime models; "
                                        r".*m\.engine runs on TensorRT"):
        open_model(engine, trt_module=fake, cuda_api=cuda, intra_op_threads=2)
    with pytest.raises(TypeError):  # keyword-only, nothing swallowed
        TensorRTSegmenter(engine, 0, trt_module=fake, cuda_api=cuda)  # type: ignore[misc]
    with pytest.raises(UserError, match="runs on a CUDA GPU"):
        TensorRTSegmenter(engine, device="cpu", trt_module=fake)


# --- no GPU / no driver / no TensorRT ---------------------------------------------------------------
def test_without_a_driver_the_message_says_so_plainly(built):
    fake, _, engine = built
    if cuda_buffers.load_cudart() is None:
        with pytest.raises(UserError, match="needs cuda-python .* or pycuda"):
            TensorRTSegmenter(engine, trt_module=fake)
        return
    count = cuda_buffers.load_cudart().cudaGetDeviceCount()
    if int(getattr(count[0], "value", count[0])) == 0:
        pytest.skip("this machine has a working CUDA GPU")
    with pytest.raises(UserError, match="no NVIDIA driver|sees no GPU|driver supports CUDA"):
        TensorRTSegmenter(engine, trt_module=fake)


def test_no_gpu_messages_name_the_cause_and_fix():
    assert "no NVIDIA driver is installed" in explain_no_gpu("cudaErrorInsufficientDriver", 0, 13040)
    old = explain_no_gpu("cudaErrorInsufficientDriver", 12020, 13040)
    assert "supports CUDA 12.2" in old and "built for CUDA 13.4" in old and "cuda-python==12.*" in old
    assert "sees no GPU" in explain_no_gpu("cudaErrorNoDevice", 12020, 12020)


def test_cuda_call_turns_error_codes_into_exceptions():
    class Err:
        def __init__(self, value, name):
            self.value, self.name = value, name

    assert cuda_call((Err(0, "cudaSuccess"), 42)) == 42
    assert cuda_call((Err(0, "cudaSuccess"), 1, 2)) == (1, 2)
    assert cuda_call((Err(0, "cudaSuccess"),)) is None
    with pytest.raises(CudaError, match="cudaErrorMemoryAllocation"):
        cuda_call((Err(2, "cudaErrorMemoryAllocation"), None))


def test_missing_tensorrt_is_a_user_error(built, monkeypatch):
    _, cuda, engine = built
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(UserError, match="TensorRT's Python package is not importable"):
        open_model(engine, cuda_api=cuda)


# --- the cuda-python layer, against the installed cuda-python's real names ---------------------------
class RecordingCudart:
    """Stands in for cuda.bindings.runtime: names must exist in the real module; calls are recorded."""

    def __init__(self, real, count_error: str = "cudaSuccess", driver: int = 13000) -> None:
        import ctypes

        self._real, self._ctypes, self._keep, self.calls = real, ctypes, [], []
        self._count_error, self._driver = count_error, driver

    def __getattr__(self, name):
        real_attr = getattr(self._real, name)  # AttributeError for a name cuda-python lacks
        if not callable(real_attr) or name.startswith("cudaError") or isinstance(real_attr, type):
            return real_attr
        ok = self._real.cudaError_t.cudaSuccess

        def call(*args):
            self.calls.append(name)
            if name == "cudaGetDeviceCount":
                return getattr(self._real.cudaError_t, self._count_error), 1
            if name == "cudaDriverGetVersion":
                return ok, self._driver
            if name == "cudaRuntimeGetVersion":
                return ok, 13040
            if name == "cudaGetDeviceProperties":
                prop = type("Prop", (), {"name": b"NVIDIA H100 80GB HBM3\x00", "major": 9, "minor": 0,
                                         "totalGlobalMem": 80 << 30})
                return ok, prop
            if name == "cudaMallocHost":
                buf = self._ctypes.create_string_buffer(args[0])
                self._keep.append(buf)
                return ok, self._ctypes.addressof(buf)
            if name == "cudaEventElapsedTime":
                return ok, 1.25
            if name in ("cudaMalloc", "cudaStreamCreate", "cudaEventCreate", "cudaStreamEndCapture",
                        "cudaGraphInstantiateWithFlags", "cudaGetDevice"):
                return ok, len(self.calls)
            return (ok,)
        return call


@pytest.fixture
def real_cudart():
    rt = cuda_buffers.load_cudart()
    if rt is None:
        pytest.skip("cuda-python not installed")
    return rt


def test_cuda_python_layer_uses_only_names_cuda_python_has(real_cudart):
    rt = RecordingCudart(real_cudart)
    drv = FakeCudaDriver(Machine())
    api = cuda_buffers.CudaPythonApi(0, cudart=rt, driver=drv)
    info = api.device_info()
    assert (info.name, info.compute_capability, info.cc_text) == ("NVIDIA H100 80GB HBM3", (9, 0), "9.0")
    stream = api.create_stream()
    buf = cuda_buffers.HostDeviceBuffer(api, (2, 8, 8, 3), np.uint8)
    buf.host[...] = 7  # pinned host memory is a writable numpy view of the allocation
    assert buf.host.shape == (2, 8, 8, 3) and buf.nbytes == 384
    buf.to_device(stream)
    buf.to_host(stream, 192)
    start, end = api.create_event(), api.create_event()
    api.record_event(start, stream)
    with api.activate():
        api.begin_capture(stream)
        graph = api.end_capture(stream)
        api.launch_graph(graph, stream)
        api.begin_capture(stream)
        api.abort_capture(stream)
    api.record_event(end, stream)
    api.synchronize(stream)
    assert api.elapsed_ms(start, end) == 1.25
    api.destroy_graph(graph)
    buf.free()
    assert {"cudaMallocHost", "cudaMemcpyAsync", "cudaStreamBeginCapture", "cudaGraphInstantiateWithFlags",
            "cudaGraphLaunch", "cudaGetLastError", "cudaSetDevice", "cudaFreeHost", "cudaFree"} <= set(rt.calls)
    real_driver = cuda_buffers.load_cuda_driver()
    assert {"cuCtxGetCurrent", "cuCtxSetCurrent"} <= set(drv.calls)
    assert all(hasattr(real_driver, name) for name in set(drv.calls) | {"CUcontext"})  # the driver-API names too


@pytest.mark.parametrize("error,driver,message", [
    ("cudaErrorNoDevice", 13000, "sees no GPU"),
    ("cudaErrorInsufficientDriver", 0, "no NVIDIA driver is installed"),
    ("cudaErrorInsufficientDriver", 12020, "supports CUDA 12.2"),
])
def test_cuda_python_layer_explains_a_missing_gpu(real_cudart, error, driver, message):
    with pytest.raises(UserError, match=message):
        cuda_buffers.CudaPythonApi(0, cudart=RecordingCudart(real_cudart, error, driver), driver=FakeCudaDriver(Machine()))


def test_cuda_python_layer_refuses_a_gpu_index_that_does_not_exist(real_cudart):
    with pytest.raises(UserError, match="GPU 3 does not exist: this machine has 1"):
        cuda_buffers.CudaPythonApi(3, cudart=RecordingCudart(real_cudart), driver=FakeCudaDriver(Machine()))


# --- pycuda fallback ------------------------------------------------------------------------------------
def test_pycuda_is_used_when_cuda_python_is_absent(monkeypatch):
    machine = Machine()
    for name, module in pycuda_entries(machine):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(cuda_buffers, "load_cudart", lambda: None)
    api = cuda_buffers.open_cuda(0)
    assert api.name == "pycuda" and not api.supports_graphs
    assert api.device_info().compute_capability == (8, 7) and machine.pushed() == {}
    stream = api.create_stream()
    buf = cuda_buffers.HostDeviceBuffer(api, (1, 8, 8, 3), np.uint8)
    buf.host[...] = 9
    buf.to_device(stream)
    api.synchronize(stream)  # async: the copy reads the host buffer when it runs
    buf.host[...] = 0
    buf.to_host(stream)
    api.synchronize(stream)
    assert (buf.host == 9).all()  # through the fake GPU memory and back
    buf.free()
    api.close()
    assert machine.mem == {} and machine.pushed() == {}  # each operation popped what it pushed


def test_neither_cuda_python_nor_pycuda_is_a_user_error(monkeypatch):
    monkeypatch.setattr(cuda_buffers, "load_cudart", lambda: None)
    monkeypatch.setitem(sys.modules, "pycuda", None)
    monkeypatch.setitem(sys.modules, "pycuda.driver", None)
    with pytest.raises(UserError, match="needs cuda-python .* or pycuda"):
        cuda_buffers.open_cuda(0)


def test_cuda_graph_request_without_graph_support_warns_and_runs_plain(built, caplog):
    fake, cuda, engine = built
    cuda.supports_graphs = False
    cuda.name = "pycuda"
    seg = TensorRTSegmenter(engine, trt_module=fake, cuda_api=cuda, cuda_graph=True)
    assert "CUDA graphs need cuda-python; pycuda runs without them" in caplog.text
    x = frames(2, seed=5)
    assert [seg.infer(f).class_map.tolist() for f in x] == expected(x)
    assert cuda.graph_launches == 0
    seg.close()
