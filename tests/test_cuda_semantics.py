"""The TensorRT backend under CUDA's real rules: threads, contexts, devices, capture state, signatures.

The model runs on tests/cuda_fakes.py: a fake machine whose cuda-python (per major version)
and pycuda layers fail where the real ones fail (see that module), and a FakeTensorRT of a
real release that executes on it with TensorRT's rules. Class = blue // 64 on the fake GPU
memory, so a wrong copy, shape or address shows up as a wrong class map.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import pytest
from cuda_fakes import FakeCudaDriver, FakeCudart, LogicError, Machine, attach_tensorrt, pycuda_entries
from trt_stubs import wheels
from trt_stubs.helpers import NEWEST_10, build, fake_for
from trt_stubs.onnx_models import make_onnx

from ds2a.engine.builder import BuildOptions, build_engine
from ds2a.errors import UserError
from ds2a.inspect.loop import InspectionLoop
from ds2a.runtime import cuda_buffers
from ds2a.runtime.tensorrt_backend import TensorRTSegmenter
from ds2a.sources import Frame, Source
from ds2a.trt.sidecar import read_sidecar

TESTS = Path(__file__).resolve().parent
ORIN = ("NVIDIA Orin", (8, 7))


def expected(x: np.ndarray) -> List[list]:
    return [((f[..., 0].astype(int) // 64) % 4).astype(np.uint8).tolist() for f in x]


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def make_engine(tmp_path: Path, name: str = "m", **options: Any) -> Any:
    """(FakeTensorRT, engine path): an 8x8 engine built for NVIDIA Orin by the real builder code."""
    fake, cuda = fake_for(NEWEST_10)
    engine = str(tmp_path / f"{name}.engine")
    onnx = make_onnx(tmp_path / f"{name}.onnx", options.pop("precision", "fp32"),
                     batch="batch" if "batch" in options else 1)
    build(fake, cuda, onnx, engine, **options)
    return fake, engine


def cudart_api(machine: Machine, device: int = 0, major: int = 13) -> cuda_buffers.CudaPythonApi:
    return cuda_buffers.CudaPythonApi(device, cudart=FakeCudart(machine, major), driver=FakeCudaDriver(machine))


def pycuda_api(machine: Machine, monkeypatch: Any, device: int = 0) -> cuda_buffers.PycudaApi:
    for name, module in pycuda_entries(machine):
        monkeypatch.setitem(sys.modules, name, module)
    return cuda_buffers.PycudaApi(device)


def on_thread(fn: Any) -> Any:
    """fn() on a new thread (as the inspection loop calls infer); returns its result or raises its error."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            out["error"] = exc
    t = threading.Thread(target=run)
    t.start()
    t.join(30)
    if "error" in out:
        raise out["error"]
    return out["value"]


# --- 1. pycuda: a model opened on one thread infers on another ------------------------------------
def test_the_fake_pycuda_refuses_work_on_a_thread_without_a_current_context(monkeypatch):
    machine = Machine()
    api = pycuda_api(machine, monkeypatch)
    drv = sys.modules["pycuda.driver"]
    with pytest.raises(LogicError, match="invalid device context"):
        drv.Stream()  # nothing pushed on this thread
    assert isinstance(api.create_stream(), drv.Stream)  # the API makes the context current itself


def test_pycuda_model_opened_on_the_main_thread_infers_on_another(tmp_path, monkeypatch):
    fake, engine = make_engine(tmp_path)
    machine = Machine([ORIN])
    attach_tensorrt(fake, machine)
    seg = TensorRTSegmenter(engine, trt_module=fake, cuda_api=pycuda_api(machine, monkeypatch))
    seg.warmup(2)
    x = frames(3, seed=1)
    got = on_thread(lambda: [seg.infer(f).class_map.tolist() for f in x])
    assert got == expected(x)
    assert machine.pushed() == {}  # between calls no thread holds the context
    seg.close()
    assert machine.pushed() == {} and machine.mem == {}


# --- 2. pycuda: no context left pushed, whatever the path -----------------------------------------
def test_failed_open_and_close_leave_no_pycuda_context_pushed(tmp_path, monkeypatch):
    fake, engine = make_engine(tmp_path)
    other = Machine([("NVIDIA GeForce RTX 3080", (8, 6))])
    attach_tensorrt(fake, other)
    with pytest.raises(UserError, match="compute capability"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=pycuda_api(other, monkeypatch))
    assert other.pushed() == {}
    machine = Machine([ORIN])
    attach_tensorrt(fake, machine)
    fake.state.out_of_memory = True  # a failure after the buffers exist frees them, inside the context
    with pytest.raises(UserError, match="execution context"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=pycuda_api(machine, monkeypatch))
    assert machine.pushed() == {} and machine.mem == {}


CHILD = """
import json, sys
sys.path[:0] = [{tests!r}]
import cuda_fakes
from trt_stubs.fake_trt import FakeTensorRT
machine = cuda_fakes.Machine([({gpu!r}, {cc!r})])
cuda_fakes.install_pycuda(machine)
fake = cuda_fakes.attach_tensorrt(FakeTensorRT(json.load(open({surface!r}))), machine)
sys.modules["tensorrt"] = fake
from ds2a.cli import main
sys.exit(main({argv!r}))
"""


def run_child(tmp_path: Path, argv: List[str], gpu: Any = ORIN) -> subprocess.CompletedProcess:
    """`ds2a ARGV` in a fresh interpreter whose pycuda is the fake, aborting at exit like pycuda."""
    surface, why = wheels.surface(NEWEST_10)
    if surface is None:
        pytest.skip(f"TensorRT {NEWEST_10} bindings unavailable: {why}")
    path = tmp_path / "surface.json"
    path.write_text(json.dumps(surface))
    code = CHILD.format(tests=str(TESTS), gpu=gpu[0], cc=tuple(gpu[1]), surface=str(path), argv=argv)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                          cwd=str(tmp_path))


def test_build_engine_under_pycuda_exits_cleanly(tmp_path):
    onnx = make_onnx(tmp_path / "m.onnx")
    proc = run_child(tmp_path, ["build-engine", str(onnx), "--out", str(tmp_path / "m.engine")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "PyCUDA ERROR" not in proc.stderr and (tmp_path / "m.engine.json").is_file()


def test_failed_open_under_pycuda_exits_with_the_message_not_an_abort(tmp_path):
    _, engine = make_engine(tmp_path)
    proc = run_child(tmp_path, ["bench", "--model", engine, "--iterations", "2", "--warmup-s", "0"],
                     gpu=("NVIDIA GeForce RTX 3080", (8, 6)))
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "compute capability" in proc.stderr and "PyCUDA ERROR" not in proc.stderr


# --- 3. CUDA graphs on every cuda-python major ------------------------------------------------------
@pytest.mark.parametrize("major", [11, 12, 13])
def test_cuda_graphs_work_with_each_cuda_python_major(tmp_path, major):
    fake, engine = make_engine(tmp_path)
    machine = Machine([ORIN])
    attach_tensorrt(fake, machine)
    rt = FakeCudart(machine, major)
    api = cuda_buffers.CudaPythonApi(0, cudart=rt, driver=FakeCudaDriver(machine))
    with TensorRTSegmenter(engine, trt_module=fake, cuda_api=api, cuda_graph=True) as seg:
        for seed in range(4):
            x = frames(1, seed=seed)
            assert seg.infer(x[0]).class_map.tolist() == expected(x)[0]
    assert machine.graph_launches == 3  # run 1 plain, then capture once and replay


def test_the_fake_cudart_has_each_majors_instantiate_signature():
    machine = Machine()
    for major, bad in ((11, (0,)), (12, (b"", 0)), (13, (b"", 0))):
        rt = FakeCudart(machine, major)
        stream = rt.cudaStreamCreate()[1]
        rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        graph = rt.cudaStreamEndCapture(stream)[1]
        with pytest.raises(TypeError):
            rt.cudaGraphInstantiate(graph, *bad)
        assert len(rt.cudaGraphInstantiate(graph, *((b"", 0) if major == 11 else (0,)))) == (3 if major == 11 else 2)


# --- 4. a failed capture is ended and inference goes on without graphs ------------------------------
@pytest.mark.parametrize("major", [11, 12, 13])
def test_failed_capture_ends_the_capture_and_falls_back_to_plain_execution(tmp_path, caplog, major):
    """The invalidated capture is ended, so the stream takes plain work again; TensorRT's enqueue does not
    depend on cuda-python clearing anything (each CUDA runtime keeps its own last error)."""
    fake, engine = make_engine(tmp_path)
    machine = Machine([ORIN])
    attach_tensorrt(fake, machine)
    fake.state.uncapturable = True  # an engine holding operations a capture cannot record
    seg = TensorRTSegmenter(engine, trt_module=fake, cuda_api=cudart_api(machine, major=major), cuda_graph=True)
    x = frames(4, seed=3)
    got = [seg.infer(f).class_map.tolist() for f in x]
    assert "CUDA graph capture failed" in caplog.text and "running without CUDA graphs" in caplog.text
    assert got == expected(x)
    assert machine.capturing() == [] and machine.graph_launches == 0 and not seg.cuda_graph
    seg.close()


def test_a_sticky_error_during_capture_is_raised_not_run_past(tmp_path):
    """A corrupt context cannot be cleared: after the failed capture the plain run fails and says so."""
    fake, engine = make_engine(tmp_path)
    machine = Machine([ORIN])
    attach_tensorrt(fake, machine)
    seg = TensorRTSegmenter(engine, trt_module=fake, cuda_api=cudart_api(machine), cuda_graph=True)
    x = frames(2, seed=7)
    assert seg.infer(x[0]).class_map.tolist() == expected(x)[0]  # plain run; the next one captures
    fake.state.fault_in_capture = True
    with pytest.raises(RuntimeError, match="cudaErrorIllegalAddress|failed to enqueue"):
        seg.infer(x[1])
    assert seg.cuda.cudart.cudaGetLastError()[0] == machine.sticky  # still there: sticky errors stay


def test_the_fake_keeps_each_runtimes_last_error_apart():
    """cuda-python's cudaGetLastError reports only its own calls' errors, and clears a non-sticky one."""
    machine = Machine([ORIN])
    for major in (11, 12, 13):
        rt = FakeCudart(machine, major)
        assert rt.cudaSetDevice(5)[0] == rt.cudaError_t.cudaErrorInvalidDevice
        assert rt.cudaGetLastError()[0] == rt.cudaError_t.cudaErrorInvalidDevice
        assert rt.cudaGetLastError()[0] == 0 and FakeCudart(machine, major).cudaGetLastError()[0] == 0
        stream = rt.cudaStreamCreate()[1]
        rt.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        machine.invalidate_capture(int(stream))
        err, graph = rt.cudaStreamEndCapture(stream)
        assert err == rt.cudaError_t.cudaErrorStreamCaptureInvalidated and int(graph) == 0


# --- 5. dynamic batch with graphs -------------------------------------------------------------------
def test_dynamic_batch_with_graphs_matches_plain_execution_for_alternating_sizes(tmp_path):
    fake, engine = make_engine(tmp_path, "dyn", batch=(1, 2, 4))
    sizes = [5, 5, 1, 1, 1, 3, 3, 4, 1, 4, 4, 2]
    inputs = [frames(n, seed=i) for i, n in enumerate(sizes)]
    results = {}
    for graph in (False, True):
        machine = Machine([ORIN])
        attach_tensorrt(fake, machine)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no capture failure, no fallback
            with TensorRTSegmenter(engine, trt_module=fake, cuda_api=cudart_api(machine), cuda_graph=graph) as seg:
                results[graph] = [[r.class_map.tolist() for r in seg.infer_batch(x)] for x in inputs]
        assert (machine.graph_launches > 0) == graph
    assert results[True] == results[False] == [expected(x) for x in inputs]


def test_dynamic_engine_whose_profile_starts_above_one_takes_single_frames(tmp_path):
    """`--batch 2:3:4`: TensorRT refuses a batch of 1 (outside the profile), so one frame is padded to 2."""
    fake, engine = make_engine(tmp_path, "dyn2", batch=(2, 3, 4))
    machine = Machine([ORIN])
    attach_tensorrt(fake, machine)
    with TensorRTSegmenter(engine, trt_module=fake, cuda_api=cudart_api(machine), cuda_graph=True) as seg:
        seg.warmup(3)  # batches of one frame, as `ds2a inspect` sends them
        for i, n in enumerate([1, 5, 1, 4, 2, 1]):
            x = frames(n, seed=20 + i)
            assert [r.class_map.tolist() for r in seg.infer_batch(x)] == expected(x)
        assert seg.context._in_shape["images"][0] >= 2


# --- 7. cuda-python on GPU 1: the inference thread runs on GPU 1 too ------------------------------
def test_cuda_python_device_1_infers_on_another_thread(tmp_path):
    fake, engine = make_engine(tmp_path)
    machine = Machine([ORIN, ORIN])
    attach_tensorrt(fake, machine)
    with TensorRTSegmenter(engine, device=1, trt_module=fake, cuda_api=cudart_api(machine, device=1),
                           cuda_graph=True) as seg:
        x = frames(3, seed=4)
        maps, left = on_thread(lambda: ([seg.infer(f).class_map.tolist() for f in x], machine.current_context()))
        assert maps == expected(x) and left is None  # the thread is left as it was found: no context bound
    assert machine.mem == {}


# --- a model on GPU 1 never creates a context on GPU 0 ----------------------------------------------
@pytest.mark.parametrize("major", [11, 12, 13])
@pytest.mark.parametrize("busy", [(), (0,)])
def test_a_model_on_gpu_1_leaves_gpu_0_without_a_context(tmp_path, major, busy):
    """Since CUDA 12 cudaSetDevice(0) creates GPU 0's primary context at once (memory on GPU 0, and an
    error when GPU 0 is exclusive-process and taken): the inference thread must not restore device 0.
    `busy`: GPU 0 belongs to another process in exclusive-process mode."""
    fake, engine = make_engine(tmp_path)
    machine = Machine([ORIN, ORIN], busy=busy)
    attach_tensorrt(fake, machine)
    with TensorRTSegmenter(engine, device=1, trt_module=fake, cuda_api=cudart_api(machine, 1, major)) as seg:
        seg.warmup(2)  # on this thread, as `ds2a inspect` does
        x = frames(4, seed=6)
        assert on_thread(lambda: [[r.class_map.tolist() for r in seg.infer_batch(x[i:i + 2])]
                                  for i in (0, 2)]) == [expected(x[:2]), expected(x[2:])]
        assert [seg.infer(f).class_map.tolist() for f in x] == expected(x)
    assert machine.primary == [1]


def test_activate_puts_back_the_context_that_was_current(tmp_path):
    machine = Machine([ORIN, ORIN])
    api0, api1 = cudart_api(machine, 0), cudart_api(machine, 1)
    with api0.activate():
        with api1.activate():
            assert machine.current_context() == 1
        assert machine.current_context() == 0  # GPU 0's context, which this block found, is current again
    assert machine.current_context() is None and machine.primary == [0, 1]


# --- the inspection loop's inference thread, under both memory layers ---------------------------------
class Frames(Source):
    def __init__(self, images: np.ndarray) -> None:
        super().__init__("test://frames")
        self.images, self.i = images, 0

    def read(self) -> Optional[Frame]:
        if self.i >= len(self.images):
            return None
        self.i += 1
        return self._frame(self.images[self.i - 1], self.i - 1)


@pytest.mark.parametrize("layer", ["cuda-python", "pycuda"])
def test_inspection_loop_runs_the_engine_on_its_inference_thread(tmp_path, monkeypatch, layer):
    fake, engine = make_engine(tmp_path)
    machine = Machine([ORIN, ORIN])
    attach_tensorrt(fake, machine)
    api = cudart_api(machine, device=1) if layer == "cuda-python" else pycuda_api(machine, monkeypatch)
    seg = TensorRTSegmenter(engine, device=api.device, trt_module=fake, cuda_api=api)
    seg.warmup(2)  # on the main thread, as `ds2a inspect` and `ds2a bench --source` do
    images = frames(6, seed=5)
    maps: List[list] = []
    loop = InspectionLoop(Frames(images), seg, lambda cm, conf, region: ([], True, []),
                          lambda res: maps.append(res.class_map.tolist()))
    stats = loop.run()
    seg.close()
    assert stats.frames == 6 and maps == expected(images)
    assert machine.pushed() == {} and machine.mem == {}


# --- unchecked TensorRT results, and the engine's DLA core -------------------------------------------
@pytest.mark.parametrize("failure,message", [
    ("out_of_memory", "could not create an execution context"),
    ("reject_address", "refused the buffer for tensor"),
    ("reject_shape", "refused input shape"),
])
def test_tensorrt_refusals_are_user_errors_and_free_everything(tmp_path, failure, message):
    fake, engine = make_engine(tmp_path, "dyn", batch=(1, 2, 4))
    machine = Machine([ORIN])
    attach_tensorrt(fake, machine)
    setattr(fake.state, failure, True)
    with pytest.raises(UserError, match=message):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=cudart_api(machine))
    assert machine.mem == {} and machine.pinned == {}


def test_the_engines_dla_core_is_applied_at_load(tmp_path):
    fake, engine = make_engine(tmp_path, "dla", precision="int8", dla_core=1, gpu_fallback=True)
    machine = Machine([ORIN])
    attach_tensorrt(fake, machine)
    TensorRTSegmenter(engine, trt_module=fake, cuda_api=cudart_api(machine)).close()
    assert fake.state.loaded_dla_core == 1
    fake, engine = make_engine(tmp_path, "gpu")
    attach_tensorrt(fake, machine)
    TensorRTSegmenter(engine, trt_module=fake, cuda_api=cudart_api(machine)).close()
    assert fake.state.loaded_dla_core is None


@pytest.mark.parametrize("layer", ["cuda-python", "pycuda"])
def test_an_engine_built_on_another_orin_module_is_refused_at_load(tmp_path, monkeypatch, layer):
    """AGX Orin and Orin NX both say "NVIDIA Orin" 8.7: the SM count in the sidecar tells them apart."""
    fake, engine = make_engine(tmp_path)
    sidecar = Path(engine + ".json")
    record = json.loads(sidecar.read_text())
    record["sm_count"] = 16  # built on an AGX Orin
    sidecar.write_text(json.dumps(record))
    machine = Machine([ORIN], sm_count=8)  # loaded on an Orin NX
    attach_tensorrt(fake, machine)
    api = cudart_api(machine) if layer == "cuda-python" else pycuda_api(machine, monkeypatch)
    assert api.device_info().sm_count == 8
    with pytest.raises(UserError, match="SM"):
        TensorRTSegmenter(engine, trt_module=fake, cuda_api=api)
    assert machine.pushed() == {} and machine.mem == {}


# --- build-engine --device N builds on GPU N under both CUDA layers ---------------------------------------
@pytest.mark.parametrize("layer", ["cuda-python", "pycuda"])
def test_build_engine_builds_on_the_gpu_given_with_device(tmp_path, monkeypatch, layer):
    """TensorRT builds on the thread's current context; with none, the CUDA runtime picks GPU 0."""
    fake, _ = fake_for(NEWEST_10)
    machine = Machine([("NVIDIA A2", (8, 6)), ORIN])
    attach_tensorrt(fake, machine)
    if layer == "pycuda":
        for name, module in pycuda_entries(machine):
            monkeypatch.setitem(sys.modules, name, module)
        monkeypatch.setattr(cuda_buffers, "load_cudart", lambda: None)
    else:
        monkeypatch.setattr(cuda_buffers, "load_cudart", lambda: FakeCudart(machine))
        monkeypatch.setattr(cuda_buffers, "load_cuda_driver", lambda: FakeCudaDriver(machine))
    engine = str(tmp_path / "m.engine")
    build_engine(make_onnx(tmp_path / "m.onnx"), engine, BuildOptions(device=1), trt=fake)
    assert fake.state.built_on == 1 and read_sidecar(engine)["gpu_name"] == "NVIDIA Orin"
    assert machine.primary == [1] and machine.pushed() == {} and machine.current_context() is None
