"""Fakes of the two CUDA memory layers (cuda-python, pycuda) with CUDA's semantics, not only its names.

One `Machine` plays the driver: its GPUs, device memory, streams and the state CUDA keeps per
host thread. The fakes fail where the real thing fails:

- per-thread current context (driver API: cuCtxGetCurrent / cuCtxSetCurrent, cuda-bindings
  `driver` docstrings): a thread starts with none; a runtime call that needs one then
  initialises the primary context of the runtime's device (0 unless cudaSetDevice chose
  another); since CUDA 12 cudaSetDevice initialises the device's primary context at once
  (cuda-bindings `runtime` docstring of cudaSetDevice), 11.x defers that to the next call.
  `Machine.primary` lists the GPUs whose primary context exists (what costs memory on that
  GPU); a GPU in exclusive-process mode owned by another process (`busy`) refuses one;
  a kernel launched into a stream of another device fails (CUDA C Programming Guide,
  "Stream and Event Behavior"); copies do not;
- pycuda's per-thread context stack (pycuda `src/cpp/cuda.hpp`, `context_stack`): an operation
  without a current context raises LogicError "invalid device context", `Context.pop()` pops
  the calling thread's stack, and a context still pushed at exit aborts the process with
  pycuda's message (`install(..., abort_at_exit=True)`, for subprocess tests);
- stream capture: work on a capturing stream is recorded, not run; a synchronize or an
  invalid operation invalidates the capture; an invalidated stream refuses all work until
  cudaStreamEndCapture, which then returns cudaErrorStreamCaptureInvalidated and an empty
  cudaGraph_t (handle 0), not None;
- last errors: each CUDA runtime keeps its own. cuda-python's is process-global in 11.8 (its
  own cudart in Cython: cuda/_lib/ccudart/ccudart.pyx, `_setLastError`) and per thread in
  12.x/13.x (a statically linked cudart); TensorRT's is that of the cudart it links, which it
  reads (and so clears) after its own launches. Neither sees the other's: cuda-python's
  cudaGetLastError cannot clear an error for TensorRT. A sticky error (`Machine.corrupt`, e.g.
  an illegal address) is returned by every later call of every runtime and is never cleared;
- the cudaGraphInstantiate signature of each cuda-python major: see `FakeCudart`.

`attach_tensorrt(fake_trt, machine)` makes a tests/trt_stubs FakeTensorRT execute on this
machine with TensorRT's own rules (see `DeviceContext`).
"""
from __future__ import annotations

import atexit
import ctypes
import itertools
import os
import sys
import threading
import types
from enum import IntEnum
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from trt_stubs import fake_trt


class cudaError_t(IntEnum):  # noqa: N801 - cuda-python's name; values are CUDA's
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorDevicesUnavailable = 46
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorNotReady = 600
    cudaErrorIllegalAddress = 700
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureWrongThread = 908


class cudaMemcpyKind(IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaStreamCaptureMode(IntEnum):  # noqa: N801
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaStreamCaptureStatus(IntEnum):  # noqa: N801
    cudaStreamCaptureStatusNone = 0
    cudaStreamCaptureStatusActive = 1
    cudaStreamCaptureStatusInvalidated = 2


E = cudaError_t
NONE, ACTIVE, INVALIDATED = (cudaStreamCaptureStatus.cudaStreamCaptureStatusNone,
                             cudaStreamCaptureStatus.cudaStreamCaptureStatusActive,
                             cudaStreamCaptureStatus.cudaStreamCaptureStatusInvalidated)


class Stream:
    def __init__(self, device: int) -> None:
        self.device = device
        self.queue: List[Callable[[], None]] = []
        self.capture = NONE
        self.captured: List[Callable[[], None]] = []
        self.capture_thread = 0


class Machine:
    """The driver: GPUs, memory, streams, and CUDA's per-thread state."""

    def __init__(self, gpus: Sequence[Tuple[str, Tuple[int, int]]] = (("NVIDIA Orin", (8, 7)),),
                 sm_count: int = 16, driver_cuda: int = 11040, busy: Sequence[int] = ()) -> None:
        self.gpus = list(gpus)
        self.driver_cuda = driver_cuda  # cuDriverGetVersion: 11040 is JetPack 5's CUDA 11.4
        self.primary: List[int] = []  # GPUs whose primary context was initialised, in order
        self.busy = set(busy)  # exclusive-process GPUs another process holds
        self.sticky: Optional[E] = None  # see corrupt()
        self.sm_count = sm_count  # 16 on an AGX Orin, 8 on an Orin NX 16GB: same name and cc
        self._tls = threading.local()
        self.stacks: Dict[int, List["Context"]] = {}  # pycuda context stack per thread
        self.mem: Dict[int, Tuple[int, np.ndarray]] = {}  # device pointer -> (device, bytes)
        self.pinned: Dict[int, Any] = {}  # cudaMallocHost pointer -> ctypes buffer
        self.streams: Dict[int, Stream] = {}
        self.events: Dict[int, Dict[str, Any]] = {}
        self.graphs: Dict[int, List[Callable[[], None]]] = {}
        self.kernels = self.graph_launches = 0
        self._ids = itertools.count(0x10000, 0x1000)
        self.lock = threading.Lock()

    # per-thread state -----------------------------------------------------------------------
    def _state(self) -> Any:
        if not hasattr(self._tls, "device"):
            self._tls.device, self._tls.ctx = 0, None
        return self._tls

    def stack(self) -> List["Context"]:
        return self.stacks.setdefault(threading.get_ident(), [])

    def init_primary(self, device: int) -> E:
        """cuDevicePrimaryCtxRetain: the context (and its memory) exists on `device` from now on."""
        if device in self.busy:
            return self.fail(E.cudaErrorDevicesUnavailable)
        if device not in self.primary:
            self.primary.append(device)
        return E.cudaSuccess

    def current_context(self) -> Optional[int]:
        """The device of the context current on this thread (pycuda's pushed one first), None if none."""
        stack = self.stack()
        return stack[-1].device if stack else self._state().ctx

    def current_device(self) -> int:
        """The device a runtime call that needs a context runs on; with none current the runtime
        initialises its device's primary context first (CUDA's implicit initialisation)."""
        ctx = self.current_context()
        if ctx is not None:
            return ctx
        st = self._state()
        if self.init_primary(st.device) == E.cudaSuccess:
            st.ctx = st.device
        return st.device

    def runtime_device(self) -> int:
        """cudaGetDevice: the current context's device, else the runtime's choice; creates nothing."""
        ctx = self.current_context()
        return ctx if ctx is not None else self._state().device

    def set_device(self, device: int, eager: bool = True) -> E:
        """cudaSetDevice; `eager` (CUDA 12+) initialises the primary context and makes it current now."""
        if not 0 <= device < len(self.gpus):
            return self.fail(E.cudaErrorInvalidDevice)
        st = self._state()
        st.device = device
        if not eager:
            st.ctx = device if device in self.primary else None
            return E.cudaSuccess
        err = self.init_primary(device)
        if err == E.cudaSuccess:
            st.ctx = device
        return err

    def set_context(self, device: Optional[int]) -> None:
        """cuCtxSetCurrent: bind the primary context of `device` to this thread, or unbind (None)."""
        self._state().ctx = device

    def fail(self, err: E) -> E:
        """A failed operation's error; the runtime that made the call records it (FakeCudart, DeviceContext)."""
        return err

    def corrupt(self, err: E = None) -> None:  # type: ignore[assignment]
        """A sticky error (the context is corrupt): every later call fails with it, nothing clears it."""
        self.sticky = err if err is not None else E.cudaErrorIllegalAddress

    def pushed(self) -> Dict[int, int]:
        """Threads that still have a pycuda context pushed -> how many."""
        return {t: len(s) for t, s in self.stacks.items() if s}

    # memory and streams ---------------------------------------------------------------------
    def new_id(self) -> int:
        with self.lock:
            return next(self._ids)

    def alloc(self, nbytes: int) -> int:
        ptr = self.new_id()
        self.mem[ptr] = (self.current_device(), np.zeros(int(nbytes), np.uint8))
        return ptr

    def view(self, ptr: int, shape: Any, dtype: Any) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return self.mem[int(ptr)][1][:n].view(dtype).reshape(shape)

    def new_stream(self) -> int:
        handle = self.new_id()
        self.streams[handle] = Stream(self.current_device())
        return handle

    def submit(self, handle: int, op: Callable[[], None], kernel: bool = False) -> E:
        """Queue work on a stream (recorded instead while it captures)."""
        s = self.streams.get(int(handle))
        if s is None:
            return self.fail(E.cudaErrorInvalidResourceHandle)
        if s.capture == INVALIDATED:
            return self.fail(E.cudaErrorStreamCaptureInvalidated)
        if kernel and s.device != self.current_device():
            return self.fail(E.cudaErrorInvalidResourceHandle)
        (s.captured if s.capture == ACTIVE else s.queue).append(op)
        if kernel:
            self.kernels += 1
        return E.cudaSuccess

    def synchronize(self, handle: int) -> E:
        s = self.streams[int(handle)]
        if s.capture != NONE:  # not allowed while capturing: the capture is invalidated
            s.capture = INVALIDATED
            return self.fail(E.cudaErrorStreamCaptureUnsupported)
        ops, s.queue = s.queue, []
        for op in ops:
            op()
        return E.cudaSuccess

    def invalidate_capture(self, handle: int) -> None:
        """Work a capture cannot record (TensorRT's first enqueue after a shape change)."""
        s = self.streams[int(handle)]
        if s.capture == ACTIVE:
            s.capture = INVALIDATED
            self.fail(E.cudaErrorStreamCaptureInvalidated)

    def begin_capture(self, handle: int) -> E:
        s = self.streams.get(int(handle))
        if s is None or s.capture != NONE:
            return self.fail(E.cudaErrorIllegalState)
        s.capture, s.captured, s.capture_thread = ACTIVE, [], threading.get_ident()
        return E.cudaSuccess

    def end_capture(self, handle: int) -> Tuple[E, Optional[int]]:
        s = self.streams[int(handle)]
        if s.capture == NONE:
            return self.fail(E.cudaErrorIllegalState), None
        if s.capture_thread != threading.get_ident():  # ThreadLocal/Global modes
            return self.fail(E.cudaErrorStreamCaptureWrongThread), None
        status, s.capture = s.capture, NONE
        if status == INVALIDATED:
            return self.fail(E.cudaErrorStreamCaptureInvalidated), None
        graph = self.new_id()
        self.graphs[graph] = s.captured
        return E.cudaSuccess, graph

    def capturing(self) -> List[int]:
        """Streams still in capture mode (a leak: they refuse all later work)."""
        return [h for h, s in self.streams.items() if s.capture != NONE]


# --- cuda-python ----------------------------------------------------------------------------
class _Handle:
    """cudaStream_t, cudaEvent_t, cudaGraph_t, cudaGraphExec_t: opaque objects with int() (0 when empty)."""

    def __init__(self, value: int = 0) -> None:
        self.value = int(value)

    def __int__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.value:#x}>"


class cudaStream_t(_Handle):  # noqa: N801
    pass


class cudaEvent_t(_Handle):  # noqa: N801
    pass


class cudaGraph_t(_Handle):  # noqa: N801
    pass


class cudaGraphExec_t(_Handle):  # noqa: N801
    pass


def _handle(value: Any, kind: type, arg: str) -> int:
    """Cython's coercion: the handle type or an int; anything else is a TypeError."""
    if isinstance(value, (kind, int)) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"Argument '{arg}' is not instance of type (expected <class 'int'> or {kind.__name__}), "
                    f"found {type(value).__name__}")


def _ull(value: Any, arg: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"an integer is required for '{arg}' (unsigned long long), got {type(value).__name__}")
    return value


class FakeCudart:
    """`cuda.bindings.runtime` / `cuda.cudart` of one cuda-python major, on a Machine.

    Every function returns (cudaError_t, *values) like the real bindings. Signatures from
    the real wheels (pip download --no-deps, read, not installed):
      - cuda-python 11.8.0 (`cuda/cudart.pyx`) and cuda-bindings 11.8.7 (`cuda/bindings/runtime.pyx`):
        cudaGraphInstantiate(graph, char* pLogBuffer, size_t bufferSize)
        -> (err, pGraphExec, pErrorNode)
      - cuda-bindings 12.9.0 (`cuda/bindings/runtime.pyx`) and 13.4.4 (which ships no .pyx: the
        compiled `cuda/bindings/runtime` module's docstrings and `runtime.pxd`):
        cudaGraphInstantiate(graph, unsigned long long flags) -> (err, pGraphExec)
      - all of them: cudaGraphInstantiateWithFlags(graph, unsigned long long flags) -> (err, pGraphExec),
        cudaStreamEndCapture(stream) -> (err, pGraph), cudaGetLastError() -> (err,),
        cudaSetDevice(int device) -> (err,), cudaGetDevice() -> (err, device).
    """

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaStreamCaptureMode = cudaStreamCaptureMode
    cudaStreamCaptureStatus = cudaStreamCaptureStatus

    def __init__(self, machine: Machine, major: int = 13) -> None:
        self.m, self.major = machine, major
        self.calls: List[str] = []
        # this runtime's own last error: process-global in 11.8, per thread in 12.x/13.x
        self._errors: Any = types.SimpleNamespace() if major == 11 else threading.local()

    def __getattribute__(self, name: str) -> Any:
        attr = object.__getattribute__(self, name)
        if not (name.startswith("cuda") and isinstance(attr, types.MethodType)):
            return attr
        object.__getattribute__(self, "calls").append(name)
        if name in ("cudaGetLastError", "cudaGetErrorString"):
            return attr
        m, errors = self.m, object.__getattribute__(self, "_errors")

        def call(*args: Any, **kw: Any) -> Any:
            result = attr(*args, **kw)
            if m.sticky is not None:  # a corrupt context fails every call
                result = (m.sticky,) + tuple(None for _ in result[1:])
            if int(result[0]) != 0:
                errors.last = result[0]
            return result
        return call

    def _ok(self, *values: Any) -> Tuple[Any, ...]:
        return (E.cudaSuccess,) + values

    # device --------------------------------------------------------------------------------
    def cudaGetDeviceCount(self) -> Tuple[Any, ...]:  # noqa: N802
        return self._ok(len(self.m.gpus))

    def cudaDriverGetVersion(self) -> Tuple[Any, ...]:  # noqa: N802
        return self._ok(self.major * 1000 + 40)

    def cudaRuntimeGetVersion(self) -> Tuple[Any, ...]:  # noqa: N802
        return self._ok(self.major * 1000 + 40)

    def cudaGetDeviceProperties(self, device: int) -> Tuple[Any, ...]:  # noqa: N802
        if not 0 <= device < len(self.m.gpus):
            return self.m.fail(E.cudaErrorInvalidDevice), None
        name, cc = self.m.gpus[device]
        prop = types.SimpleNamespace(name=name.encode() + b"\x00" * 8, major=cc[0], minor=cc[1],
                                     totalGlobalMem=8 << 30, multiProcessorCount=self.m.sm_count)
        return self._ok(prop)

    def cudaSetDevice(self, device: int) -> Tuple[Any, ...]:  # noqa: N802
        return (self.m.set_device(int(device), eager=self.major >= 12),)

    def cudaGetDevice(self) -> Tuple[Any, ...]:  # noqa: N802
        return self._ok(self.m.runtime_device())

    def cudaGetLastError(self) -> Tuple[Any, ...]:  # noqa: N802
        """This runtime's last error, cleared unless sticky (TensorRT's runtime has its own)."""
        if self.m.sticky is not None:
            return (self.m.sticky,)
        err, self._errors.last = getattr(self._errors, "last", E.cudaSuccess), E.cudaSuccess
        return (err,)

    def cudaGetErrorString(self, err: Any) -> Tuple[Any, ...]:  # noqa: N802
        return self._ok(E(int(err)).name.encode())

    # memory --------------------------------------------------------------------------------
    def cudaMallocHost(self, size: int) -> Tuple[Any, ...]:  # noqa: N802
        buf = ctypes.create_string_buffer(int(size))
        ptr = ctypes.addressof(buf)
        self.m.pinned[ptr] = buf
        return self._ok(ptr)

    def cudaFreeHost(self, ptr: int) -> Tuple[Any, ...]:  # noqa: N802
        return (E.cudaSuccess,) if self.m.pinned.pop(int(ptr), None) is not None else \
            (self.m.fail(E.cudaErrorInvalidValue),)

    def cudaMalloc(self, size: int) -> Tuple[Any, ...]:  # noqa: N802
        return self._ok(self.m.alloc(size))

    def cudaFree(self, ptr: int) -> Tuple[Any, ...]:  # noqa: N802
        return (E.cudaSuccess,) if self.m.mem.pop(int(ptr), None) is not None else \
            (self.m.fail(E.cudaErrorInvalidValue),)

    def cudaMemcpyAsync(self, dst: int, src: int, count: int, kind: Any, stream: Any) -> Tuple[Any, ...]:  # noqa: N802
        m, dst, src, count = self.m, int(dst), int(src), int(count)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice and dst in m.mem:
            def op() -> None:  # the host memory is read when the copy runs, not when it is queued
                m.mem[dst][1][:count] = np.frombuffer(ctypes.string_at(src, count), np.uint8)
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost and src in m.mem:
            def op() -> None:
                ctypes.memmove(dst, m.mem[src][1].ctypes.data, count)
        else:
            return (m.fail(E.cudaErrorInvalidValue),)
        return (m.submit(_handle(stream, cudaStream_t, "stream"), op),)

    # streams, events ---------------------------------------------------------------------------
    def cudaStreamCreate(self) -> Tuple[Any, ...]:  # noqa: N802
        return self._ok(cudaStream_t(self.m.new_stream()))

    def cudaStreamDestroy(self, stream: Any) -> Tuple[Any, ...]:  # noqa: N802
        self.m.streams.pop(_handle(stream, cudaStream_t, "stream"), None)
        return (E.cudaSuccess,)

    def cudaStreamSynchronize(self, stream: Any) -> Tuple[Any, ...]:  # noqa: N802
        return (self.m.synchronize(_handle(stream, cudaStream_t, "stream")),)

    def cudaEventCreate(self) -> Tuple[Any, ...]:  # noqa: N802
        handle = self.m.new_id()
        self.m.events[handle] = {"device": self.m.current_device(), "done": False}
        return self._ok(cudaEvent_t(handle))

    def cudaEventDestroy(self, event: Any) -> Tuple[Any, ...]:  # noqa: N802
        self.m.events.pop(_handle(event, cudaEvent_t, "event"), None)
        return (E.cudaSuccess,)

    def cudaEventRecord(self, event: Any, stream: Any) -> Tuple[Any, ...]:  # noqa: N802
        ev = self.m.events[_handle(event, cudaEvent_t, "event")]
        handle = _handle(stream, cudaStream_t, "stream")
        if ev["device"] != self.m.streams[handle].device:
            return (self.m.fail(E.cudaErrorInvalidResourceHandle),)
        ev["done"] = False
        return (self.m.submit(handle, lambda: ev.update(done=True)),)

    def cudaEventElapsedTime(self, start: Any, end: Any) -> Tuple[Any, ...]:  # noqa: N802
        a, b = (self.m.events[_handle(e, cudaEvent_t, "event")] for e in (start, end))
        if not (a["done"] and b["done"]):
            return self.m.fail(E.cudaErrorNotReady), None
        return self._ok(0.25)

    # capture and graphs ------------------------------------------------------------------------
    def cudaStreamBeginCapture(self, stream: Any, mode: cudaStreamCaptureMode) -> Tuple[Any, ...]:  # noqa: N802
        if not isinstance(mode, cudaStreamCaptureMode):
            raise TypeError("Argument 'mode' has incorrect type (expected cudaStreamCaptureMode)")
        return (self.m.begin_capture(_handle(stream, cudaStream_t, "stream")),)

    def cudaStreamEndCapture(self, stream: Any) -> Tuple[Any, ...]:  # noqa: N802
        """(err, cudaGraph_t): on failure the graph is an empty cudaGraph_t (handle 0), as the bindings return."""
        err, graph = self.m.end_capture(_handle(stream, cudaStream_t, "stream"))
        return err, cudaGraph_t(graph or 0)

    def cudaStreamIsCapturing(self, stream: Any) -> Tuple[Any, ...]:  # noqa: N802
        return self._ok(self.m.streams[_handle(stream, cudaStream_t, "stream")].capture)

    def _instantiate(self, graph: Any) -> Tuple[Any, Optional[cudaGraphExec_t]]:
        ops = self.m.graphs.get(_handle(graph, cudaGraph_t, "graph"))
        if ops is None:
            return self.m.fail(E.cudaErrorInvalidValue), None
        exe = self.m.new_id()
        self.m.graphs[exe] = list(ops)
        return E.cudaSuccess, cudaGraphExec_t(exe)

    def cudaGraphInstantiate(self, graph: Any, *args: Any) -> Tuple[Any, ...]:  # noqa: N802
        if self.major == 11:  # (graph, char* pLogBuffer, size_t bufferSize) -> (err, exec, errNode)
            if len(args) != 2:
                raise TypeError(f"cudaGraphInstantiate() takes exactly 3 positional arguments ({len(args) + 1} given)")
            if not isinstance(args[0], bytes):
                raise TypeError(f"expected bytes, {type(args[0]).__name__} found")
            err, exe = self._instantiate(graph)
            return err, exe, None
        if len(args) != 1:  # 12.x / 13.x: (graph, unsigned long long flags) -> (err, exec)
            raise TypeError(f"cudaGraphInstantiate() takes exactly 2 positional arguments ({len(args) + 1} given)")
        _ull(args[0], "flags")
        return self._instantiate(graph)

    def cudaGraphInstantiateWithFlags(self, graph: Any, flags: int) -> Tuple[Any, ...]:  # noqa: N802
        _ull(flags, "flags")
        return self._instantiate(graph)

    def cudaGraphLaunch(self, graphExec: Any, stream: Any) -> Tuple[Any, ...]:  # noqa: N802, N803
        ops = self.m.graphs.get(_handle(graphExec, cudaGraphExec_t, "graphExec"))
        if ops is None:
            return (self.m.fail(E.cudaErrorInvalidValue),)
        handle = _handle(stream, cudaStream_t, "stream")
        for op in ops:
            err = self.m.submit(handle, op)
            if err:
                return (err,)
        self.m.graph_launches += 1
        return (E.cudaSuccess,)

    def cudaGraphDestroy(self, graph: Any) -> Tuple[Any, ...]:  # noqa: N802
        self.m.graphs.pop(_handle(graph, cudaGraph_t, "graph"), None)
        return (E.cudaSuccess,)

    def cudaGraphExecDestroy(self, graphExec: Any) -> Tuple[Any, ...]:  # noqa: N802, N803
        self.m.graphs.pop(_handle(graphExec, cudaGraphExec_t, "graphExec"), None)
        return (E.cudaSuccess,)


class CUresult(IntEnum):  # noqa: N801 - cuda-python's name; values are CUDA's
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_INVALID_DEVICE = 101
    CUDA_ERROR_INVALID_CONTEXT = 201


class CUcontext(_Handle):  # noqa: N801
    pass


PRIMARY = 0xC0000  # the fake's handle of device d's primary context is PRIMARY + d


class FakeCudaDriver:
    """`cuda.bindings.driver` (older `cuda.cuda`): the context calls the CUDA layer uses, on a Machine.

    Follows the docstrings of cuda-bindings 13.4.4's `driver` module (the same calls exist in
    11.8 and 12.x): cuCtxGetCurrent() -> (CUresult, CUcontext), a NULL context (int 0) when none
    is bound; cuCtxSetCurrent(ctx) -> (CUresult,), NULL unbinds; cuCtxGetDevice() -> (CUresult,
    CUdevice), CUDA_ERROR_INVALID_CONTEXT without a context; cuDevicePrimaryCtxGetState(dev) ->
    (CUresult, flags, active), which asks without creating anything.
    """

    CUresult = CUresult
    CUcontext = CUcontext

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self.calls: List[str] = []

    def cuCtxGetCurrent(self) -> Tuple[Any, ...]:  # noqa: N802
        self.calls.append("cuCtxGetCurrent")
        ctx = self.m.current_context()
        return CUresult.CUDA_SUCCESS, CUcontext(0 if ctx is None else PRIMARY + ctx)

    def cuCtxSetCurrent(self, ctx: Any) -> Tuple[Any, ...]:  # noqa: N802
        self.calls.append("cuCtxSetCurrent")
        value = 0 if ctx is None else _handle(ctx, CUcontext, "ctx")
        if value and not 0 <= value - PRIMARY < len(self.m.gpus):
            return (CUresult.CUDA_ERROR_INVALID_CONTEXT,)
        self.m.set_context(value - PRIMARY if value else None)
        return (CUresult.CUDA_SUCCESS,)

    def cuCtxGetDevice(self) -> Tuple[Any, ...]:  # noqa: N802
        self.calls.append("cuCtxGetDevice")
        ctx = self.m.current_context()
        if ctx is None:
            return CUresult.CUDA_ERROR_INVALID_CONTEXT, 0
        return CUresult.CUDA_SUCCESS, ctx

    def cuDevicePrimaryCtxGetState(self, dev: int) -> Tuple[Any, ...]:  # noqa: N802
        if not 0 <= int(dev) < len(self.m.gpus):
            return CUresult.CUDA_ERROR_INVALID_DEVICE, 0, 0
        return CUresult.CUDA_SUCCESS, 0, int(int(dev) in self.m.primary)


# --- pycuda ---------------------------------------------------------------------------------
class PycudaError(Exception):
    pass


class LogicError(PycudaError):
    pass


PYCUDA_ABORT = ("PyCUDA ERROR: The context stack was not empty upon module cleanup.\n"
                "A context was still active when the context stack was being cleaned up. "
                "The program will be aborted now. Use Context.pop() to avoid this problem.")


class Context:
    """A device's primary context; push/pop act on the calling thread's stack."""

    machine: Machine

    def __init__(self, device: int) -> None:
        self.device = device

    def push(self) -> None:
        self.machine.stack().append(self)

    @staticmethod
    def pop() -> None:
        stack = Context.machine.stack()
        if not stack:
            raise LogicError("context::pop failed: invalid device context - cannot pop non-current context")
        stack.pop()

    @staticmethod
    def get_current() -> Optional["Context"]:
        stack = Context.machine.stack()
        return stack[-1] if stack else None

    def get_device(self) -> Any:
        return Device(self.device)


def _need_context(what: str) -> Context:
    ctx = Context.get_current()
    if ctx is None:
        raise LogicError(f"{what} failed: invalid device context - no currently active context?")
    return ctx


class Device:
    @staticmethod
    def count() -> int:
        return len(Context.machine.gpus)

    def __init__(self, index: int) -> None:
        if not 0 <= index < len(Context.machine.gpus):
            raise LogicError("cuDeviceGet failed: invalid device ordinal")
        self.index = index

    def name(self) -> str:
        return Context.machine.gpus[self.index][0]

    def compute_capability(self) -> Tuple[int, int]:
        return Context.machine.gpus[self.index][1]

    def total_memory(self) -> int:
        return 8 << 30

    def get_attribute(self, attribute: str) -> int:
        if attribute != "MULTIPROCESSOR_COUNT":
            raise LogicError(f"cuDeviceGetAttribute: attribute {attribute} is not modelled by this fake")
        return Context.machine.sm_count

    def retain_primary_context(self) -> Context:
        if Context.machine.init_primary(self.index):
            raise LogicError("cuDevicePrimaryCtxRetain failed: all CUDA-capable devices are busy or unavailable")
        return Context(self.index)


class DeviceAllocation:
    def __init__(self, nbytes: int) -> None:
        self.ctx = _need_context("cuMemAlloc")
        self.ptr = Context.machine.alloc(nbytes)

    def __int__(self) -> int:
        return self.ptr

    def free(self) -> None:  # pycuda activates the allocation's own context to free it
        Context.machine.mem.pop(self.ptr, None)


class PycudaStream:
    def __init__(self, flags: int = 0) -> None:
        _need_context("cuStreamCreate")
        self.handle = Context.machine.new_stream()

    def synchronize(self) -> None:
        _need_context("cuStreamSynchronize")
        if Context.machine.synchronize(self.handle):
            raise LogicError("cuStreamSynchronize failed: operation not permitted when stream is capturing")


class PycudaEvent:
    def __init__(self, flags: int = 0) -> None:
        self.device = _need_context("cuEventCreate").device
        self.done = False

    def record(self, stream: Optional[PycudaStream] = None) -> "PycudaEvent":
        _need_context("cuEventRecord")
        self.done = False
        Context.machine.submit(stream.handle, lambda: setattr(self, "done", True))
        return self

    def time_till(self, end: "PycudaEvent") -> float:
        _need_context("cuEventElapsedTime")
        if not (self.done and end.done):
            raise LogicError("cuEventElapsedTime failed: device not ready")
        return 0.25


def _copy(what: str, stream: PycudaStream, op: Callable[[], None]) -> None:
    _need_context(what)
    if Context.machine.submit(stream.handle, op):
        raise LogicError(f"{what} failed: operation not permitted when stream is capturing")


def pycuda_modules(machine: Machine) -> Tuple[types.ModuleType, types.ModuleType]:
    """(pycuda, pycuda.driver) over `machine`."""
    Context.machine = machine
    drv = types.ModuleType("pycuda.driver")
    drv.Error, drv.LogicError = PycudaError, LogicError
    drv.Context, drv.Device, drv.Stream, drv.Event = Context, Device, PycudaStream, PycudaEvent
    drv.init = lambda flags=0: None
    # pycuda src/wrapper/wrap_cudadrv.cpp: get_version() is the CUDA pycuda was built against (a tuple),
    # get_driver_version() the driver's cuDriverGetVersion (an int)
    drv.get_version = lambda: (machine.driver_cuda // 1000, machine.driver_cuda % 1000 // 10, 0)
    drv.get_driver_version = lambda: machine.driver_cuda
    drv.device_attribute = types.SimpleNamespace(MULTIPROCESSOR_COUNT="MULTIPROCESSOR_COUNT")
    drv.mem_alloc = DeviceAllocation

    def pagelocked_empty(shape: Any, dtype: Any) -> np.ndarray:
        _need_context("cuMemHostAlloc")
        return np.zeros(shape, dtype)

    def memcpy_htod_async(dest: Any, src: np.ndarray, stream: PycudaStream) -> None:
        data, ptr = src.view(np.uint8).reshape(-1), int(dest)  # a view: read when the copy runs
        _copy("cuMemcpyHtoDAsync", stream, lambda: machine.mem[ptr][1].__setitem__(slice(0, data.size), data))

    def memcpy_dtoh_async(dest: np.ndarray, src: Any, stream: PycudaStream) -> None:
        out, ptr = dest.view(np.uint8).reshape(-1), int(src)
        _copy("cuMemcpyDtoHAsync", stream, lambda: out.__setitem__(slice(None), machine.mem[ptr][1][:out.size]))

    drv.pagelocked_empty = pagelocked_empty
    drv.memcpy_htod_async, drv.memcpy_dtoh_async = memcpy_htod_async, memcpy_dtoh_async
    pkg = types.ModuleType("pycuda")
    pkg.driver = drv
    return pkg, drv


def pycuda_entries(machine: Machine) -> List[Tuple[str, Any]]:
    """sys.modules entries that make `import pycuda.driver` this fake and hide cuda-python."""
    pkg, drv = pycuda_modules(machine)
    return [("pycuda", pkg), ("pycuda.driver", drv), ("cuda", None), ("cuda.bindings", None),
            ("cuda.bindings.runtime", None), ("cuda.cudart", None)]


def install_pycuda(machine: Machine) -> None:
    """For a subprocess: the fake pycuda, and pycuda's abort at exit while a context is pushed."""
    sys.modules.update(pycuda_entries(machine))
    atexit.register(_abort_if_pushed, machine)


def _abort_if_pushed(machine: Machine) -> None:
    if machine.pushed():
        sys.stderr.write(PYCUDA_ABORT + "\n")
        sys.stderr.flush()
        os.abort()


# --- TensorRT on the machine ------------------------------------------------------------------
class DeviceContext(fake_trt.FakeContext):
    """IExecutionContext with the rules TensorRT follows on a real GPU.

    - enqueue launches kernels: the stream must belong to the calling thread's current device,
      which must be the device the engine was loaded on;
    - TensorRT's CUDA runtime is its own: it reads its own last error after its launches and never
      sees cuda-python's; a sticky error (`Machine.corrupt`) fails every enqueue;
    - `state.fault_in_capture`: an enqueue into a capturing stream corrupts the context (an illegal
      address inside the captured work);
    - the first enqueue after a shape change does set-up a capture cannot record: inside a
      capture it invalidates the capture and returns False;
    - set_input_shape outside the profile and set_tensor_address of an unknown name return False;
    - each enqueue computes from the shape and addresses it was given (a graph keeps them).
    """

    def __init__(self, fake: Any, engine: Any, device: int) -> None:
        super().__init__(fake, engine)
        object.__setattr__(self, "_device", device)
        object.__setattr__(self, "_fresh_shape", True)

    def set_input_shape(self, name: str, shape: Any) -> bool:
        io = self._engine._io.get(name)
        if io is None or io["mode"] != "INPUT" or self._fake.state.reject_shape:
            return False
        lo, hi = io["profile"][0], io["profile"][2]
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        if self._in_shape.get(name) != tuple(shape):
            object.__setattr__(self, "_fresh_shape", True)
        return super().set_input_shape(name, shape)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        if name not in self._engine._io or self._fake.state.reject_address:
            return False
        return super().set_tensor_address(name, ptr)

    def execute_async_v3(self, stream_handle: int) -> bool:
        m: Machine = self._fake.state.cuda
        if m.sticky is not None:
            return False
        stream = m.streams.get(int(stream_handle))
        if stream is None or m.current_device() != self._device:
            return False
        if stream.capture == ACTIVE and getattr(self._fake.state, "fault_in_capture", False):
            m.corrupt()
            return False
        if self._fresh_shape or self._fake.state.uncapturable:
            m.invalidate_capture(stream_handle)
        if stream.capture == INVALIDATED:
            return False
        shape, addr = dict(self._in_shape), dict(self._addr)
        if m.submit(stream_handle, lambda: self._execute_as(shape, addr), kernel=True):
            return False
        object.__setattr__(self, "_fresh_shape", False)
        return True

    def _execute_as(self, shape: Dict[str, Any], addr: Dict[str, int]) -> None:
        now = (dict(self._in_shape), dict(self._addr))
        self._in_shape.update(shape)
        self._addr.update(addr)
        try:
            self._execute()
        finally:
            self._in_shape.clear()
            self._in_shape.update(now[0])
            self._addr.clear()
            self._addr.update(now[1])


class DeviceEngine(fake_trt.FakeEngine):
    def __init__(self, fake: Any, io: List[Dict[str, Any]], device: int) -> None:
        super().__init__(fake, io)
        object.__setattr__(self, "_device", device)

    def create_execution_context(self) -> Optional[DeviceContext]:
        if self._fake.state.out_of_memory:
            return None
        return DeviceContext(self._fake, self, self._device)


class DeviceBuilder(fake_trt._Builder):
    """trt.Builder: builds on the device current on the calling thread (TensorRT calls the CUDA runtime,
    which initialises device 0's primary context when none is current); records it in state.built_on."""

    def build_serialized_network(self, network: Any, config: Any) -> Optional[bytes]:
        self._fake.state.built_on = self._fake.state.cuda.current_device()
        return super().build_serialized_network(network, config)


class DeviceRuntime(fake_trt._Runtime):
    """trt.Runtime: engines live on the device current on the loading thread; records DLA_core."""

    def deserialize_cuda_engine(self, data: bytes) -> Optional[DeviceEngine]:
        self._fake.state.loaded_dla_core = self.__dict__.get("DLA_core")
        engine = super().deserialize_cuda_engine(data)
        if engine is None:
            return None
        io = [engine._io[name] for name in engine._order]
        return DeviceEngine(self._fake, io, self._fake.state.cuda.current_device())


def attach_tensorrt(fake: Any, machine: Machine) -> Any:
    """Make FakeTensorRT `fake` load and run engines on `machine`; returns `fake`."""
    fake.state.cuda = machine
    state = fake.state
    state.reject_address = state.reject_shape = state.uncapturable = state.out_of_memory = False
    fake.state.loaded_dla_core = None
    fake._classes["Runtime"] = lambda f, logger: DeviceRuntime(f)
    fake._classes["Builder"] = lambda f, logger: DeviceBuilder(f)
    fake.state.built_on = None
    return fake
