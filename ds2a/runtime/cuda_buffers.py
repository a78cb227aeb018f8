"""GPU memory for the TensorRT backend: pinned host + device buffers, one stream, CUDA graphs.

cuda-python (`cuda.bindings.runtime`, older `cuda.cudart`) is the layer NVIDIA's own TensorRT
samples use since 10.x; pycuda is the fallback on older JetPacks where it is what is
installed. Both sit behind the same small API so the backend never branches on which one.
`cuda_call` turns cuda-python's (error, value) tuples into exceptions.

CUDA state is per host thread (the current context; pycuda's context stack), and the
inspection loop opens a model on one thread and infers on another. So each API has
`activate()`: a `with` block that makes this GPU current on the calling thread and leaves
the thread as it found it, without touching any other GPU: since CUDA 12, cudaSetDevice(N)
creates GPU N's primary context at once (hundreds of MB, and an error on an exclusive-process
GPU another program holds), so CudaPythonApi asks the driver which context was current and
puts back exactly that one, or none. pycuda aborts the process at exit if a context is still
pushed, so PycudaApi never leaves one pushed outside such a block.
"""
from __future__ import annotations

import ctypes
import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError

ONNX_HINT = "or run the .onnx model with the ONNX Runtime backend (--backend onnxruntime)"
CUDA_ERROR_NOT_INITIALIZED = 3  # CUresult: cuInit has not run in this process
# cuda-python's major must be the driver's CUDA major (cuda-bindings support policy): one extra per major
CUDA_PYTHON_FIX = "pip install 'ds2a-edge[cu12]' on a CUDA 12 driver, 'ds2a-edge[cu13]' on CUDA 13 (`ds2a doctor` says which)"


class CudaError(RuntimeError):
    """A CUDA runtime call failed (message carries the CUDA error name and text)."""


@dataclass(frozen=True)
class DeviceInfo:
    """What an engine is tied to: the GPU model and its compute capability."""

    index: int
    name: str
    compute_capability: Tuple[int, int]
    total_memory: int = 0
    sm_count: int = 0  # tells Jetson modules apart: AGX Orin, Orin NX and Orin Nano are all "Orin" 8.7

    @property
    def cc_text(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def load_cudart() -> Any:
    """The cuda-python runtime module (new or old layout), or None when cuda-python is absent."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            return None
    return cudart


def load_cuda_driver() -> Any:
    """cuda-python's driver-API module (`cuda.bindings.driver`, older `cuda.cuda`), None when absent."""
    try:
        from cuda.bindings import driver  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cuda as driver  # type: ignore[no-redef]  # older cuda-python
        except ImportError:
            return None
    return driver


def _error_code(err: Any) -> int:
    return int(getattr(err, "value", err))


def cuda_call(result: Any) -> Any:
    """cuda-python returns (err, *values): raise CudaError on failure, else give the value(s)."""
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if _error_code(err) != 0:
        name = getattr(err, "name", str(err))
        text = ""
        cudart = load_cudart()
        if cudart is not None:
            try:
                text = cudart.cudaGetErrorString(err)[1].decode()
            except Exception:  # pragma: no cover - the message is a nicety
                text = ""
        raise CudaError(f"CUDA error {name}: {text}".rstrip(": "))
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def explain_no_gpu(err_name: str, driver_version: int, runtime_version: int) -> str:
    """A plain sentence for why the TensorRT backend cannot get a GPU, and what to do."""
    if "InsufficientDriver" in err_name and driver_version == 0:
        return ("no NVIDIA driver is installed or loaded on this machine (CUDA reports "
                "'insufficient driver'), so TensorRT cannot run here: install the NVIDIA driver "
                f"(JetPack on a Jetson) {ONNX_HINT}")
    if "InsufficientDriver" in err_name:
        have, need = _cuda_text(driver_version), _cuda_text(runtime_version)
        return (f"the NVIDIA driver supports CUDA {have} but cuda-python was built for CUDA {need} "
                f"(CUDA reports 'insufficient driver'): update the driver, or install a cuda-python "
                f"matching the driver (pip install 'cuda-python=={have.split('.')[0]}.*')")
    if "NoDevice" in err_name:
        return ("CUDA sees no GPU on this machine (check CUDA_VISIBLE_DEVICES and `nvidia-smi`), "
                f"so TensorRT cannot run here; {ONNX_HINT}")
    return f"CUDA could not start ({err_name}); check the driver with `nvidia-smi`, {ONNX_HINT}"


def _cuda_text(version: int) -> str:
    return f"{version // 1000}.{(version % 1000) // 10}"


class CudaPythonApi:
    """GPU operations through cuda-python; raw pointers are plain ints."""

    name = "cuda-python"
    supports_graphs = True

    def __init__(self, device: int = 0, cudart: Any = None, driver: Any = None) -> None:
        self.cudart = cudart or load_cudart()
        if self.cudart is None:
            raise UserError(f"cuda-python is not installed: {CUDA_PYTHON_FIX} {ONNX_HINT}")
        self.driver = driver if driver is not None else load_cuda_driver()
        self.device = int(device)
        self._check_device()  # nothing is made current here: activate() does that, per block

    def _check_device(self) -> None:
        rt = self.cudart
        result = rt.cudaGetDeviceCount()
        err, count = result[0], (result[1] if len(result) > 1 else 0)
        if _error_code(err) != 0:
            driver = rt.cudaDriverGetVersion()
            runtime = rt.cudaRuntimeGetVersion()
            dv = int(driver[1]) if _error_code(driver[0]) == 0 else 0
            rv = int(runtime[1]) if _error_code(runtime[0]) == 0 else 0
            raise UserError(explain_no_gpu(getattr(err, "name", str(err)), dv, rv))
        if not 0 <= self.device < int(count):
            raise UserError(f"GPU {self.device} does not exist: this machine has {count} CUDA device(s); "
                            f"pick --device 0..{max(0, int(count) - 1)}")

    @contextmanager
    def activate(self) -> Iterator[None]:
        """Run the block with this GPU current on the calling thread, then put back the context that
        was current before, or none: never cudaSetDevice(other), which would create a context there.

        The driver says what is current (cuCtxGetCurrent; cudaGetDevice answers 0 on a fresh thread
        whether or not GPU 0 has a context), as trtexec selects the device before any work
        (samples/common/sampleDevice.h, setCudaDevice).
        """
        before = self._current_context()
        if before is not None and self._context_device() == self.device:
            yield  # this GPU's context is already current: nothing to change or restore
            return
        cuda_call(self.cudart.cudaSetDevice(self.device))
        try:
            yield
        finally:
            self._restore_context(before)

    def _current_context(self) -> Any:
        """The context bound to this thread (a CUcontext), None when none is."""
        if self.driver is None:
            raise UserError("cuda-python's driver module (cuda.bindings.driver) is missing: reinstall "
                            f"cuda-python ({CUDA_PYTHON_FIX})")
        err, ctx = self.driver.cuCtxGetCurrent()
        if _error_code(err) == CUDA_ERROR_NOT_INITIALIZED:  # no CUDA call yet in this process: nothing bound
            return None
        cuda_call((err, ctx))
        return ctx if ctx is not None and int(ctx) != 0 else None

    def _context_device(self) -> int:
        return int(cuda_call(self.driver.cuCtxGetDevice()))

    def _restore_context(self, ctx: Any) -> None:
        """Bind `ctx` again (None: unbind what the block made current); CUDA's own result is kept."""
        cuda_call(self.driver.cuCtxSetCurrent(ctx if ctx is not None else self.driver.CUcontext(0)))

    def device_info(self) -> DeviceInfo:
        prop = cuda_call(self.cudart.cudaGetDeviceProperties(self.device))
        name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
        return DeviceInfo(self.device, name.rstrip("\x00").strip(), (int(prop.major), int(prop.minor)),
                          int(getattr(prop, "totalGlobalMem", 0)), int(getattr(prop, "multiProcessorCount", 0)))

    # memory --------------------------------------------------------------------------------
    def alloc_host(self, shape: Sequence[int], dtype: Any) -> Tuple[np.ndarray, int]:
        """Page-locked host memory as a numpy array (so async copies really are async)."""
        dtype = np.dtype(dtype)
        nbytes = max(1, int(np.prod(shape)) * dtype.itemsize)
        ptr = int(cuda_call(self.cudart.cudaMallocHost(nbytes)))
        raw = (ctypes.c_uint8 * nbytes).from_address(ptr)
        arr = np.frombuffer(raw, dtype=np.uint8, count=nbytes)[: int(np.prod(shape)) * dtype.itemsize]
        return arr.view(dtype).reshape(tuple(shape)), ptr

    def free_host(self, ptr: int) -> None:
        cuda_call(self.cudart.cudaFreeHost(ptr))

    def alloc_device(self, nbytes: int) -> int:
        return int(cuda_call(self.cudart.cudaMalloc(max(1, int(nbytes)))))

    def free_device(self, ptr: int) -> None:
        cuda_call(self.cudart.cudaFree(ptr))

    def copy_h2d(self, dst: int, host: np.ndarray, nbytes: int, stream: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_call(self.cudart.cudaMemcpyAsync(dst, host.ctypes.data, nbytes, kind, stream))

    def copy_d2h(self, host: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        kind = self.cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_call(self.cudart.cudaMemcpyAsync(host.ctypes.data, src, nbytes, kind, stream))

    # streams, events, graphs ----------------------------------------------------------------
    def create_stream(self) -> Any:
        return cuda_call(self.cudart.cudaStreamCreate())

    def stream_handle(self, stream: Any) -> int:
        return int(stream)

    def synchronize(self, stream: Any) -> None:
        cuda_call(self.cudart.cudaStreamSynchronize(stream))

    def destroy_stream(self, stream: Any) -> None:
        cuda_call(self.cudart.cudaStreamDestroy(stream))

    def create_event(self) -> Any:
        return cuda_call(self.cudart.cudaEventCreate())

    def record_event(self, event: Any, stream: Any) -> None:
        cuda_call(self.cudart.cudaEventRecord(event, stream))

    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(cuda_call(self.cudart.cudaEventElapsedTime(start, end)))

    def destroy_event(self, event: Any) -> None:
        cuda_call(self.cudart.cudaEventDestroy(event))

    def begin_capture(self, stream: Any) -> None:
        mode = self.cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_call(self.cudart.cudaStreamBeginCapture(stream, mode))

    def end_capture(self, stream: Any) -> Any:
        """Finish a capture and instantiate it: returns (graph, executable graph).

        cudaGraphInstantiateWithFlags(graph, flags) has the same signature on cuda-python 11.4+,
        12 and 13 (cudaGraphInstantiate does not: 11.x takes a log buffer). On failure the
        capture is already ended (the stream takes plain work again) and CudaError is raised.
        cudaGetLastError here only resets cuda-python's own record of the error: TensorRT's CUDA
        runtime keeps its own, and a sticky error (a corrupt context) cannot be cleared at all;
        the next plain run then fails loudly instead.
        """
        rt = self.cudart
        err, graph = rt.cudaStreamEndCapture(stream)  # on failure `graph` is an empty cudaGraph_t
        if _error_code(err) != 0:
            rt.cudaGetLastError()
            cuda_call((err,))
        try:
            exe = cuda_call(rt.cudaGraphInstantiateWithFlags(graph, 0))
        except CudaError:
            rt.cudaGraphDestroy(graph)
            rt.cudaGetLastError()
            raise
        return graph, exe

    def abort_capture(self, stream: Any) -> None:
        """End a capture whose work failed, so the stream takes plain work again (as trtexec does).

        The partial graph is destroyed; cuda-python's own last error is reset (see end_capture
        for why that is all it does)."""
        rt = self.cudart
        err, graph = rt.cudaStreamEndCapture(stream)
        if _error_code(err) == 0 and graph is not None and int(graph) != 0:
            rt.cudaGraphDestroy(graph)
        rt.cudaGetLastError()

    def launch_graph(self, graph: Any, stream: Any) -> None:
        cuda_call(self.cudart.cudaGraphLaunch(graph[1], stream))

    def destroy_graph(self, graph: Any) -> None:
        cuda_call(self.cudart.cudaGraphExecDestroy(graph[1]))
        cuda_call(self.cudart.cudaGraphDestroy(graph[0]))


def _in_context(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a PycudaApi method with the context pushed on the calling thread, popped after."""
    @functools.wraps(method)
    def run(self: "PycudaApi", *args: Any, **kw: Any) -> Any:
        with self.activate():
            return method(self, *args, **kw)
    return run


class PycudaApi:
    """The same operations through pycuda (older JetPacks); no CUDA graphs.

    pycuda keeps a context stack per thread and aborts at exit while one is pushed, so the
    device's primary context is pushed only for the duration of each operation.
    """

    name = "pycuda"
    supports_graphs = False

    def __init__(self, device: int = 0) -> None:
        import pycuda.driver as cuda  # noqa: PLC0415 - optional dependency

        self.cuda = cuda
        self.device = int(device)
        try:
            cuda.init()
            count = cuda.Device.count()
        except cuda.Error as exc:
            raise UserError(explain_no_gpu(str(exc), 0 if "driver" in str(exc).lower() else 1, 0)) from None
        if not 0 <= self.device < count:
            raise UserError(f"GPU {self.device} does not exist: this machine has {count} CUDA device(s)")
        self._dev = cuda.Device(self.device)
        self._ctx = self._dev.retain_primary_context()
        self._host: dict = {}

    @contextmanager
    def activate(self) -> Iterator[None]:
        """Run the block with this GPU's primary context pushed on the calling thread."""
        self._ctx.push()
        try:
            yield
        finally:
            self.cuda.Context.pop()

    def device_info(self) -> DeviceInfo:
        attribute = getattr(self.cuda, "device_attribute", None)
        sms = self._dev.get_attribute(attribute.MULTIPROCESSOR_COUNT) if attribute is not None else 0
        return DeviceInfo(self.device, self._dev.name(), tuple(self._dev.compute_capability()),
                          int(self._dev.total_memory()), int(sms))

    @_in_context
    def alloc_host(self, shape: Sequence[int], dtype: Any) -> Tuple[np.ndarray, int]:
        arr = self.cuda.pagelocked_empty(tuple(shape), np.dtype(dtype))
        self._host[arr.ctypes.data] = arr
        return arr, arr.ctypes.data

    def free_host(self, ptr: int) -> None:
        self._host.pop(ptr, None)

    @_in_context
    def alloc_device(self, nbytes: int) -> int:
        mem = self.cuda.mem_alloc(max(1, int(nbytes)))
        self._host[int(mem)] = mem  # keep the allocation alive until free_device
        return int(mem)

    @_in_context
    def free_device(self, ptr: int) -> None:
        mem = self._host.pop(ptr, None)
        if mem is not None:
            mem.free()

    @_in_context
    def copy_h2d(self, dst: int, host: np.ndarray, nbytes: int, stream: Any) -> None:
        self.cuda.memcpy_htod_async(dst, host.reshape(-1).view(np.uint8)[:nbytes], stream)

    @_in_context
    def copy_d2h(self, host: np.ndarray, src: int, nbytes: int, stream: Any) -> None:
        self.cuda.memcpy_dtoh_async(host.reshape(-1).view(np.uint8)[:nbytes], src, stream)

    @_in_context
    def create_stream(self) -> Any:
        return self.cuda.Stream()

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    @_in_context
    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def destroy_stream(self, stream: Any) -> None:
        pass

    @_in_context
    def create_event(self) -> Any:
        return self.cuda.Event()

    @_in_context
    def record_event(self, event: Any, stream: Any) -> None:
        event.record(stream)

    @_in_context
    def elapsed_ms(self, start: Any, end: Any) -> float:
        return float(start.time_till(end))

    def destroy_event(self, event: Any) -> None:
        pass

    def close(self) -> None:
        """Drop what is still held (nothing is left pushed: each operation popped its context)."""
        self._host.clear()


def open_cuda(device: int = 0, prefer: Optional[str] = None) -> Any:
    """cuda-python when installed, else pycuda; UserError naming both when neither is."""
    if prefer in (None, "cuda-python") and load_cudart() is not None:
        return CudaPythonApi(device)
    try:
        import pycuda.driver  # noqa: F401, PLC0415
    except ImportError:
        raise UserError(
            f"the TensorRT backend needs cuda-python ({CUDA_PYTHON_FIX}) or pycuda (JetPack 5) for "
            f"GPU memory; neither is installed {ONNX_HINT}"
        ) from None
    return PycudaApi(device)


class HostDeviceBuffer:
    """A pinned host array paired with a device allocation of the same size."""

    def __init__(self, api: Any, shape: Sequence[int], dtype: Any) -> None:
        self.api = api
        self.dtype = np.dtype(dtype)
        self.shape = tuple(int(s) for s in shape)
        self.nbytes = max(1, int(np.prod(self.shape)) * self.dtype.itemsize)
        self.host, self._host_ptr = api.alloc_host(self.shape, self.dtype)
        self.device = api.alloc_device(self.nbytes)

    def to_device(self, stream: Any, nbytes: Optional[int] = None) -> None:
        self.api.copy_h2d(self.device, self.host, nbytes or self.nbytes, stream)

    def to_host(self, stream: Any, nbytes: Optional[int] = None) -> None:
        self.api.copy_d2h(self.host, self.device, nbytes or self.nbytes, stream)

    def free(self) -> None:
        if self.device:
            self.api.free_device(self.device)
            self.api.free_host(self._host_ptr)
            self.device = 0
