"""`ds2a doctor --smoke`: the checks that need real hardware, each skipped with its reason elsewhere.

Every part runs against the public runtime API (`open_model`, `open_cuda`, `ds2a build-engine`)
on a tiny 1x1-conv model written here, and compares TensorRT's class map with ONNX Runtime's.
A part needs some of: TensorRT, a GPU, onnx, cuda-python, pycuda, two GPUs, an AGX Orin; where
a need is missing the part reports `skipped` and why, never `passed`. The `--device 1` parts run
in a fresh process and ask the driver whether GPU 0 got a context (cuDevicePrimaryCtxGetState,
which creates none) and how much of GPU 0's memory is used (nvidia-smi), before and after.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)
SIZE = (32, 48)
CLASSES = ["background", "a", "b", "c"]


class Skip(Exception):
    """A part cannot run here; the message says why."""


def needs_missing(report: Dict[str, Any], needs: Tuple[str, ...]) -> Optional[str]:
    """The first unmet need of a part as a reason, None when all are met."""
    gpus = report.get("gpus") or []
    checks = {
        "tensorrt": (bool(report["tensorrt"].get("importable")), "TensorRT is not importable"),
        "gpu": (bool(gpus) or bool(report["pycuda"].get("device_count")), "no CUDA GPU is usable"),
        "cuda-python": (bool(report["cuda_python"].get("devices")), "cuda-python sees no GPU"),
        "pycuda": (bool(report["pycuda"].get("device_count")), "pycuda is not installed or sees no GPU"),
        "two-gpus": (len(gpus) >= 2, f"needs two GPUs, this machine has {len(gpus)}"),
        "agx-orin": ("agx orin" in (report["platform"].get("board") or "").lower(), "DLA check needs a Jetson AGX Orin"),
        "onnx": (_importable("onnx"), "the onnx package is not installed (pip install onnx)"),
    }
    missing = [checks[need][1] for need in needs if not checks[need][0]]
    return "; ".join(missing) or None


def _importable(name: str) -> bool:
    import importlib.util  # noqa: PLC0415

    return importlib.util.find_spec(name) is not None


# --- the tiny model and helpers the parts share ---------------------------------------------
def write_tiny_onnx(path: str, batch: Any = 1, instance_norm: bool = False) -> str:
    """uint8 NHWC frames -> 1x1 conv -> logits + class_map, with ds2a metadata (`batch` may be 'N').

    `instance_norm`: an InstanceNormalization on the conv output (what GroupNorm exports to), the
    op TensorRT 8.6 turns into a plugin unless told to import it natively."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    from ..meta import ModelMeta  # noqa: PLC0415

    h, w = SIZE
    k = len(CLASSES)
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.02, (k, 3, 1, 1)).astype(np.float32)
    bias = rng.normal(0, 0.5, k).astype(np.float32)
    conv_out = "conv" if instance_norm else "logits"
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x", "W", "B"], [conv_out]),
             helper.make_node("ArgMax", ["logits"], ["am"], axis=1, keepdims=0),
             helper.make_node("Cast", ["am"], ["class_map"], to=TensorProto.UINT8)]
    inits = [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")]
    if instance_norm:
        nodes.insert(3, helper.make_node("InstanceNormalization", ["conv", "S", "T"], ["logits"], epsilon=1e-5))
        inits += [numpy_helper.from_array(rng.uniform(0.5, 1.5, k).astype(np.float32), "S"),
                  numpy_helper.from_array(rng.normal(0, 0.5, k).astype(np.float32), "T")]
    graph = helper.make_graph(
        nodes, "ds2a_smoke", [helper.make_tensor_value_info("images", TensorProto.UINT8, [batch, h, w, 3])],
        [helper.make_tensor_value_info("class_map", TensorProto.UINT8, [batch, h, w]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k, h, w])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"ds2a": ModelMeta(arch="smoke", classes=list(CLASSES), input_size=SIZE).to_json()})
    onnx.save(model, path)
    return path


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n,) + SIZE + (3,), dtype=np.uint8)


def reference(onnx_path: str, batch: np.ndarray) -> np.ndarray:
    """ONNX Runtime's class maps for the same frames (one at a time, so any ONNX batch works)."""
    import onnxruntime as ort  # noqa: PLC0415

    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(["class_map"], {"images": f[None]})[0] for f in batch])


def class_maps(model: Any, batch: np.ndarray) -> np.ndarray:
    return np.stack([r.class_map for r in model.infer_batch(batch)])


# `python -m ds2a ...` with cuda-python hidden, so the CUDA layer is pycuda (as on JetPack 5)
PYCUDA_ONLY = """import importlib.abc, sys
class HideCudaPython(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "cuda":
            raise ImportError("cuda-python hidden by ds2a doctor --smoke")
sys.meta_path.insert(0, HideCudaPython())
from ds2a.cli import main
sys.exit(main(sys.argv[1:]))
"""


def ds2a_cli(*args: str, layer: str = "cuda-python", timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the CLI in a fresh process: its exit status is what a user's shell sees (an abort is -6)."""
    cmd = [sys.executable, "-c", PYCUDA_ONLY] if layer == "pycuda" else [sys.executable, "-m", "ds2a"]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)


class Workspace:
    """Files the parts share: ONNX models and engines built once, in a temporary folder."""

    def __init__(self, root: str, device: int, report: Optional[Dict[str, Any]] = None) -> None:
        self.root, self.device, self.report = root, device, report or {}
        self._built: Dict[str, str] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def onnx(self, dynamic: bool = False, instance_norm: bool = False) -> str:
        name = ("tiny_dyn" if dynamic else "tiny") + ("_in" if instance_norm else "") + ".onnx"
        if not os.path.isfile(self.path(name)):
            write_tiny_onnx(self.path(name), "N" if dynamic else 1, instance_norm=instance_norm)
        return self.path(name)

    def engine(self, name: str = "tiny.engine", *build_args: str, dynamic: bool = False,
               instance_norm: bool = False) -> str:
        """Build (once per name) with `ds2a build-engine`; a non-zero exit or a missing sidecar fails the part."""
        if name not in self._built:
            out = self.path(name)
            proc = ds2a_cli("build-engine", self.onnx(dynamic, instance_norm), "--out", out, "--device",
                            str(self.device), *build_args)
            if proc.returncode != 0 or not os.path.isfile(out + ".json"):
                raise AssertionError(f"ds2a build-engine {name} exited {proc.returncode}: {proc.stderr[-800:]}")
            self._built[name] = out
        return self._built[name]


def _open(ws: Workspace, engine: str, layer: Optional[str] = None, **options: Any) -> Any:
    from ..runtime import open_model  # noqa: PLC0415
    from ..runtime.cuda_buffers import open_cuda  # noqa: PLC0415

    if layer is not None:
        options["cuda_api"] = open_cuda(ws.device, prefer=layer)
    return open_model(engine, backend="tensorrt", device=ws.device, **options)


def _same(ws: Workspace, got: np.ndarray, batch: np.ndarray, onnx: Optional[str] = None) -> str:
    want = reference(onnx or ws.onnx(), batch)
    agree = float(np.mean(got == want))
    if agree < 0.999:
        raise AssertionError(f"TensorRT and ONNX Runtime agree on only {agree:.2%} of pixels")
    return f"{len(batch)} frames match ONNX Runtime ({agree:.2%} of pixels)"


# --- the parts ---------------------------------------------------------------------------------
def _build_exit(ws: Workspace, layer: str) -> str:
    out = ws.path(f"built_{layer}.engine")
    proc = ds2a_cli("build-engine", ws.onnx(), "--out", out, "--device", str(ws.device), layer=layer)
    if proc.returncode != 0 or not os.path.isfile(out + ".json"):
        raise AssertionError(f"build-engine under {layer} exited {proc.returncode}: {proc.stderr[-800:]}")
    record = json.load(open(out + ".json"))
    return f"build-engine exited 0 and wrote the sidecar (TensorRT {record['tensorrt_version']})"


def part_build_exit_cuda_python(ws: Workspace) -> str:
    return _build_exit(ws, "cuda-python")


def part_build_exit_pycuda(ws: Workspace) -> str:
    return _build_exit(ws, "pycuda")


def _failed_open_exit(ws: Workspace, layer: str) -> str:
    """A refused engine must end in exit 2 with the message, not a CUDA abort (SIGABRT, -6)."""
    engine = ws.engine()
    bad = ws.path("mismatch.engine")
    with open(engine, "rb") as src, open(bad, "wb") as dst:
        dst.write(src.read())
    record = json.load(open(engine + ".json"))
    record["tensorrt_version"] = "8.5.0.1"
    json.dump(record, open(bad + ".json", "w"))
    proc = ds2a_cli("inspect", "--model", bad, "--source", "demo://?frames=2", "--headless", "--max-frames", "2",
                    "--device", str(ws.device), layer=layer)
    if proc.returncode != 2 or "8.5.0.1" not in proc.stderr:
        raise AssertionError(f"inspect on a mismatched engine under {layer} exited {proc.returncode}: "
                             f"{proc.stderr[-600:]}")
    return "a refused engine exits 2 with the rebuild command"


def part_failed_open_exit_cuda_python(ws: Workspace) -> str:
    return _failed_open_exit(ws, "cuda-python")


def part_failed_open_exit_pycuda(ws: Workspace) -> str:
    return _failed_open_exit(ws, "pycuda")


def _loop_thread(ws: Workspace, layer: str) -> str:
    """Open and warm up on this thread, infer on another (what `ds2a inspect` does)."""
    batch = frames(3)
    model = _open(ws, ws.engine(), layer)
    try:
        class_maps(model, batch[:1])
        out: Dict[str, Any] = {}
        thread = threading.Thread(target=lambda: out.update(maps=class_maps(model, batch)))
        thread.start()
        thread.join(60)
        if "maps" not in out:
            raise AssertionError(f"inference on a second thread under {layer} failed (see the log above)")
        return _same(ws, out["maps"], batch)
    finally:
        model.close()


def part_loop_thread_cuda_python(ws: Workspace) -> str:
    return _loop_thread(ws, "cuda-python")


def part_loop_thread_pycuda(ws: Workspace) -> str:
    return _loop_thread(ws, "pycuda")


def part_cuda_graphs(ws: Workspace) -> str:
    batch = frames(2)
    model = _open(ws, ws.engine(), "cuda-python", cuda_graph=True)
    try:
        maps = [class_maps(model, batch) for _ in range(3)]  # plain, capture, replay
    finally:
        model.close()
    if not all(np.array_equal(m, maps[0]) for m in maps):
        raise AssertionError("graph replays differ from the plain run")
    return "graph capture and replay on the installed cuda-python: " + _same(ws, maps[-1], batch)


def part_capture_failure(ws: Workspace) -> str:
    """Make one capture fail (as an illegal call inside it would): results stay right and the stream is usable."""
    model = _open(ws, ws.engine(), "cuda-python", cuda_graph=True)
    api = model.cuda
    real_end = api.end_capture
    calls = {"n": 0}

    def failing_end(stream: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            api.destroy_graph(real_end(stream))  # end it for real, then fail as a broken capture does
            from ..runtime.cuda_buffers import CudaError  # noqa: PLC0415

            raise CudaError("CUDA error cudaErrorStreamCaptureInvalidated: injected by ds2a doctor --smoke")
        return real_end(stream)

    api.end_capture = failing_end
    batch = frames(2)
    try:
        maps = [class_maps(model, batch) for _ in range(3)]
        stream = getattr(model, "_stream", None)
        status = api.cudart.cudaStreamIsCapturing(stream)[1] if stream is not None else None
    finally:
        model.close()
    if calls["n"] == 0:
        raise AssertionError("the backend never captured a graph, so the fallback was not exercised")
    if status is not None and int(getattr(status, "value", status)) != 0:
        raise AssertionError(f"the stream is still capturing after the failed capture ({status})")
    return "stream not capturing, and after a failed capture: " + _same(ws, maps[-1], batch)


def part_dynamic_batch(ws: Workspace) -> str:
    engine = ws.engine("tiny_dyn.engine", "--batch", "1:2:4", dynamic=True)
    sizes = [1, 3, 2, 4, 1, 4, 2]
    graphs, plain = _open(ws, engine, cuda_graph=True), _open(ws, engine, cuda_graph=False)
    try:
        for i, n in enumerate(sizes):
            batch = frames(n, seed=i)
            a, b = class_maps(graphs, batch), class_maps(plain, batch)
            if not np.array_equal(a, b):
                raise AssertionError(f"batch {n} (step {i}): graphs differ from plain execution")
            _same(ws, a, batch, ws.onnx(dynamic=True))
    finally:
        graphs.close()
        plain.close()
    return f"batch sizes {sizes}: graphs == plain == ONNX Runtime"


def part_version_compatible(ws: Workspace) -> str:
    from ..trt.versions import parse_version  # noqa: PLC0415

    version = str(ws.report.get("tensorrt", {}).get("version", "0"))
    if parse_version(version) < (8, 6):
        raise Skip(f"TensorRT {version} cannot build version-compatible engines (8.6+)")
    engine = ws.engine("tiny_vc.engine", "--version-compatible")
    detail = _runs_like_onnxruntime(ws, engine)
    return f"a version-compatible engine loads and runs ({detail}); loads in other releases need those releases"


def _runs_like_onnxruntime(ws: Workspace, engine: str) -> str:
    """Open `engine`, run two frames and compare its class maps with ONNX Runtime's."""
    model = _open(ws, engine)
    try:
        return _same(ws, class_maps(model, frames(2)), frames(2))
    finally:
        model.close()


def part_device_1(ws: Workspace) -> str:
    ws1 = Workspace(ws.root, 1, ws.report)
    engine = ws1.engine("tiny_dev1.engine")
    return "--device 1: " + _loop_thread_on(ws1, engine)


def _loop_thread_on(ws: Workspace, engine: str, layer: Optional[str] = None) -> str:
    batch = frames(2)
    model = _open(ws, engine, layer)
    try:
        out: Dict[str, Any] = {}
        thread = threading.Thread(target=lambda: out.update(maps=class_maps(model, batch)))
        thread.start()
        thread.join(60)
        if "maps" not in out:
            raise AssertionError(f"inference on the loop thread failed{f' under {layer}' if layer else ''}")
        return _same(ws, out["maps"], batch)
    finally:
        model.close()


def part_timing_caches(ws: Workspace) -> str:
    corrupt = ws.path("corrupt.cache")
    with open(corrupt, "wb") as f:
        f.write(os.urandom(4096))
    ws.engine("tiny_tc.engine", "--timing-cache", corrupt)
    fresh = ws.path("fresh.cache")
    ws.engine("tiny_tc2.engine", "--timing-cache", fresh)
    if not os.path.isfile(fresh) or os.path.getsize(fresh) == 0:
        raise AssertionError("no timing cache was written for a fresh build")
    return ("a corrupt timing cache still builds an engine with its sidecar; a fresh one is written "
            "(a foreign cache needs another GPU or TensorRT release: copy one here and build with it)")


def part_dla(ws: Workspace) -> str:
    engine = ws.engine("tiny_dla.engine", "--dla-core", "0", "--gpu-fallback", "--fp16")
    record = json.load(open(engine + ".json"))
    detail = _runs_like_onnxruntime(ws, engine)
    return f"DLA core {record.get('dla_core', 0)} engine loads and runs: {detail}"


def part_open_close(ws: Workspace, cycles: int = 100) -> str:
    from ..runtime.cuda_buffers import cuda_call, load_cudart  # noqa: PLC0415

    cudart = load_cudart()
    engine = ws.engine()
    _open(ws, engine).close()  # first load pays TensorRT's one-time allocations
    cuda_call(cudart.cudaSetDevice(ws.device))
    free_before = int(cuda_call(cudart.cudaMemGetInfo())[0])
    for _ in range(cycles):
        _open(ws, engine).close()
    free_after = int(cuda_call(cudart.cudaMemGetInfo())[0])
    lost = free_before - free_after
    if lost > 64 * 2**20:
        raise AssertionError(f"{cycles} open/close cycles lost {lost / 2**20:.0f} MiB of GPU memory")
    return f"{cycles} open/close cycles, GPU memory change {lost / 2**20:+.1f} MiB"


def part_hardware_compatible(ws: Workspace) -> str:
    """An ampere+ build of a model with InstanceNormalization (8.6 needs the native import for it)."""
    reason = hardware_compat_blocker(ws.report, ws.device)
    if reason:
        raise Skip(reason)
    engine = ws.engine("tiny_hc.engine", "--hardware-compat", "ampere+", instance_norm=True)
    record = json.load(open(engine + ".json"))
    if record.get("hardware_compat") != "ampere+":
        raise AssertionError(f"the sidecar says hardware_compat={record.get('hardware_compat')!r}, not ampere+")
    model = _open(ws, engine)
    try:
        batch = frames(2)
        detail = _same(ws, class_maps(model, batch), batch, ws.onnx(instance_norm=True))
    finally:
        model.close()
    return f"a hardware-compatible (ampere+) engine with InstanceNormalization builds and runs: {detail}"


def hardware_compat_blocker(report: Dict[str, Any], device: int) -> Optional[str]:
    """Why `--hardware-compat ampere+` cannot be built here (None: it can): TensorRT 8.6+, a discrete GPU
    of compute capability 8.0 or newer (ds2a build-engine refuses it on a Jetson)."""
    from ..trt.versions import parse_version  # noqa: PLC0415

    version = str(report.get("tensorrt", {}).get("version", "0"))
    if parse_version(version) < (8, 6):
        return f"TensorRT {version} cannot build hardware-compatible engines (8.6+)"
    if report.get("platform", {}).get("jetson"):
        return "hardware-compatible engines are for discrete GPUs; this is a Jetson"
    gpu = next((g for g in report.get("gpus") or [] if int(g.get("index", -1)) == device), None)
    if gpu is None:
        return f"GPU {device} is not listed"
    major = int(str(gpu.get("compute_capability", "0")).split(".")[0])
    if major < 8:
        return f"GPU {device} has compute capability {gpu.get('compute_capability')}; ampere+ needs 8.0 or newer"
    return None


def part_profile_min_above_one(ws: Workspace) -> str:
    """`--batch 2:2:4`: single frames (the inspection loop's) are padded up to the profile's minimum."""
    engine = ws.engine("tiny_min2.engine", "--batch", "2:2:4", dynamic=True)
    model = _open(ws, engine)
    try:
        model.warmup(2)  # batches of one frame
        for i, n in enumerate((1, 3, 5)):
            batch = frames(n, seed=30 + i)
            _same(ws, class_maps(model, batch), batch, ws.onnx(dynamic=True))
    finally:
        model.close()
    return "a profile with minimum batch 2 takes 1, 3 and 5 frames, each matching ONNX Runtime"


# A fresh interpreter (no context anywhere yet) that runs ds2a commands and reports GPU 0 around them
GPU0_CHILD = """import json, sys
layer, commands = sys.argv[1], json.loads(sys.argv[2])
if layer == "pycuda":
    import importlib.abc
    class HideCudaPython(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "cuda":
                raise ImportError("cuda-python hidden by ds2a doctor --smoke")
    sys.meta_path.insert(0, HideCudaPython())
from ds2a.cli import main
from ds2a.doctor.smoke import gpu_state
before = gpu_state(0)
codes = [main(argv) for argv in commands]
print("DS2A_GPU0 " + json.dumps({"codes": codes, "before": before, "after": gpu_state(0)}))
"""


def gpu_state(index: int, lib: Any = None, smi: Optional[Callable[[int], Optional[float]]] = None) -> Dict[str, Any]:
    """{"context": whether GPU `index`'s primary context exists in this process, "used_mib": GPU memory used
    by everyone}. Asked without creating a context: cuInit, cuDeviceGet, cuDevicePrimaryCtxGetState
    (libcuda; cuda-bindings `driver` docstrings), and nvidia-smi for the memory."""
    import ctypes  # noqa: PLC0415

    context: Optional[bool] = None
    try:
        lib = lib if lib is not None else ctypes.CDLL("libcuda.so.1")
        dev, flags, active = ctypes.c_int(0), ctypes.c_uint(0), ctypes.c_int(0)
        if (lib.cuInit(0) == 0 and lib.cuDeviceGet(ctypes.byref(dev), index) == 0
                and lib.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)) == 0):
            context = bool(active.value)
    except (OSError, AttributeError):
        context = None
    return {"context": context, "used_mib": (smi or _smi_used_mib)(index)}


def _smi_used_mib(index: int) -> Optional[float]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i",
                              str(index)], capture_output=True, text=True, timeout=30).stdout
        return float(out.strip().splitlines()[0])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def judge_gpu0(result: Dict[str, Any], what: str) -> str:
    """The verdict on a GPU0_CHILD run: every command exited 0 and GPU 0 got no context from it."""
    if any(code != 0 for code in result["codes"]):
        raise AssertionError(f"{what}: exit statuses {result['codes']}")
    before, after = result["before"], result["after"]
    if after.get("context") is None:
        raise Skip(f"{what} ran, but the driver could not be asked about GPU 0's context (libcuda not loadable)")
    if after["context"] and not before.get("context"):
        raise AssertionError(f"{what} created a context on GPU 0, which the model does not use")
    mem = ""
    if before.get("used_mib") is not None and after.get("used_mib") is not None:
        mem = f"; GPU 0 memory used {before['used_mib']:.0f} -> {after['used_mib']:.0f} MiB (all processes)"
    return f"{what}: exit 0, no context on GPU 0{mem}"


def _run_on_gpu1(ws: Workspace, layer: str) -> Dict[str, Any]:
    """build-engine --device 1 and inspect --device 1 (loop thread) in one fresh process under `layer`."""
    onnx, engine = ws.onnx(), ws.path(f"tiny_gpu1_{layer}.engine")
    commands = [["build-engine", onnx, "--out", engine, "--device", "1"],
                ["inspect", "--model", engine, "--source", "demo://?frames=40", "--headless", "--max-frames", "40",
                 "--device", "1"]]
    proc = subprocess.run([sys.executable, "-c", GPU0_CHILD, layer, json.dumps(commands)], capture_output=True,
                          text=True, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("DS2A_GPU0 ")), None)
    if line is None:
        raise AssertionError(f"the --device 1 run under {layer} exited {proc.returncode}: {proc.stderr[-800:]}")
    return json.loads(line[len("DS2A_GPU0 "):])


def part_gpu1_leaves_gpu0_cuda_python(ws: Workspace) -> str:
    return judge_gpu0(_run_on_gpu1(ws, "cuda-python"), "build and inspect on GPU 1 under cuda-python")


def part_gpu1_pycuda(ws: Workspace) -> str:
    detail = judge_gpu0(_run_on_gpu1(ws, "pycuda"), "build and inspect on GPU 1 under pycuda")
    ws1 = Workspace(ws.root, 1, ws.report)
    engine = ws.path("tiny_gpu1_pycuda.engine")
    return f"{detail}; on the loop thread: " + _loop_thread_on(ws1, engine, "pycuda")


# name -> (needs, function)
def part_demo_model(ws: Workspace) -> str:
    """The committed demo model, not a toy (ds2a/doctor/demo_model.py); results in ./demo_model_gpu.{json,md}."""
    from .demo_model import MAKE, demo_model_check, demo_variants

    if not demo_variants():
        raise Skip(f"no TensorRT-ready demo ONNX is committed; make them on a workstation: {MAKE}")
    rows = demo_model_check(ws.path("demo"), ws.device, out_dir=os.getcwd())["rows"]
    return "; ".join(f"{r['variant']}: gate {r['gate']}, self-test {r['selftest']}, mIoU {r['miou_engine']}, "
                     f"median {r['median_ms']:.2f} ms" for r in rows) + " (demo_model_gpu.json and .md written here)"


PARTS: Dict[str, Tuple[Tuple[str, ...], Callable[[Workspace], str]]] = {
    "build-engine exit status (cuda-python)": (("tensorrt", "cuda-python", "onnx"), part_build_exit_cuda_python),
    "build-engine exit status (pycuda)": (("tensorrt", "pycuda", "onnx"), part_build_exit_pycuda),
    "failed open exit status (cuda-python)": (("tensorrt", "cuda-python", "onnx"), part_failed_open_exit_cuda_python),
    "failed open exit status (pycuda)": (("tensorrt", "pycuda", "onnx"), part_failed_open_exit_pycuda),
    "loop thread (cuda-python)": (("tensorrt", "cuda-python", "onnx"), part_loop_thread_cuda_python),
    "loop thread (pycuda)": (("tensorrt", "pycuda", "onnx"), part_loop_thread_pycuda),
    "CUDA graphs": (("tensorrt", "cuda-python", "onnx"), part_cuda_graphs),
    "capture failure fallback": (("tensorrt", "cuda-python", "onnx"), part_capture_failure),
    "dynamic batch, graphs vs plain": (("tensorrt", "cuda-python", "onnx"), part_dynamic_batch),
    "version-compatible load": (("tensorrt", "gpu", "onnx"), part_version_compatible),
    "--device 1": (("tensorrt", "two-gpus", "onnx"), part_device_1),
    "corrupt and fresh timing caches": (("tensorrt", "gpu", "onnx"), part_timing_caches),
    "DLA placement": (("tensorrt", "agx-orin", "onnx"), part_dla),
    "100 open/close cycles": (("tensorrt", "cuda-python", "onnx"), part_open_close),
    "hardware-compatible build (InstanceNormalization)": (("tensorrt", "gpu", "onnx"), part_hardware_compatible),
    "profile minimum batch above 1": (("tensorrt", "gpu", "onnx"), part_profile_min_above_one),
    "GPU 1 leaves GPU 0 alone (cuda-python)": (("tensorrt", "cuda-python", "two-gpus", "onnx"),
                                               part_gpu1_leaves_gpu0_cuda_python),
    "--device 1 under pycuda, GPU 0 alone": (("tensorrt", "pycuda", "two-gpus", "onnx"), part_gpu1_pycuda),
    "demo model: build gate, self-test, mIoU, latency": (("tensorrt", "gpu", "onnx"), part_demo_model),
}


def run_smoke(report: Dict[str, Any], device: int = 0,
              parts: Optional[Dict[str, Tuple[Tuple[str, ...], Callable[[Workspace], str]]]] = None
              ) -> List[Dict[str, Any]]:
    """Run each part whose needs are met; [{"name", "status": passed/failed/skipped, "detail", "seconds"}],
    each also logged as it ends (the checks take minutes)."""
    results: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ds2a_smoke_") as root:
        ws = Workspace(root, device, report)
        for name, (needs, fn) in (parts if parts is not None else PARTS).items():
            start = time.perf_counter()
            reason = needs_missing(report, needs)
            if reason is not None:
                status, detail = "skipped", reason
            else:
                try:
                    status, detail = "passed", fn(ws)
                except Skip as exc:
                    status, detail = "skipped", str(exc)
                except Exception as exc:  # a failed check is a result, not a crash
                    status, detail = "failed", f"{type(exc).__name__}: {exc}"
            results.append({"name": name, "status": status, "detail": detail,
                            "seconds": round(time.perf_counter() - start, 2)})
            logger.info(f"smoke: {name}: {status}: {detail}")
    return results
