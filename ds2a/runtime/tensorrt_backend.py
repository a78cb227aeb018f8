"""TensorRT backend: runs a `.engine` built by `ds2a build-engine` on the local GPU.

Loading checks the engine's sidecar (`model.engine.json`) against the running TensorRT
release and GPU first, so a mismatch says how to rebuild instead of failing deep inside
TensorRT. Inference is name-based (`set_tensor_address` + `execute_async_v3`, TensorRT 8.5+)
on one CUDA stream with pinned host buffers and async copies; an optional CUDA graph
replays the copy+enqueue+copy sequence for the current batch size. Every GPU operation runs
with the GPU made current on the calling thread, so a model opened on one thread can infer
on another (the inspection loop does).
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..errors import UserError
from ..meta import ModelMeta
from ..preprocess import normalize
from ..trt.features import import_tensorrt
from ..trt.sidecar import EngineRecord, read_sidecar, rebuild_command, verify_sidecar
from ..trt.versions import require_supported
from .base import Frames, InferResult, Segmenter, fit_batch, make_results
from .cuda_buffers import CudaError, HostDeviceBuffer, open_cuda
from .io_layout import read_io_layout

logger = logging.getLogger(__name__)

NP_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
            "BOOL": np.bool_, "UINT8": np.uint8}


def _device_index(device: Union[int, str]) -> int:
    """0, '0', 'cuda', 'cuda:1', 'gpu' -> an index; 'cpu' is refused (TensorRT needs a GPU)."""
    if isinstance(device, int):
        return device
    text = str(device).lower().strip()
    if text in ("cuda", "gpu", "auto", "tensorrt", ""):
        return 0
    if text.startswith(("cuda:", "gpu:")):
        text = text.split(":", 1)[1]
    if text.isdigit():
        return int(text)
    raise UserError(f"TensorRT runs on a CUDA GPU; device '{device}' is not one (use 0, 1 or 'cuda:N'), "
                    "or use the ONNX model with --backend onnxruntime for the CPU")


def _np_type(trt_dtype: Any) -> Any:
    name = getattr(trt_dtype, "name", str(trt_dtype).split(".")[-1]).upper()
    if name not in NP_TYPES:
        raise UserError(f"engine tensor type {name} is not one ds2a can feed or read ({', '.join(NP_TYPES)})")
    return NP_TYPES[name]


class TensorRTSegmenter(Segmenter):
    """A Segmenter over a deserialized TensorRT engine.

    Options: device (GPU index), cuda_graph (capture the work once a batch size repeats, then
    replay it; cuda-python only; a failed capture falls back to plain runs), return_logits
    (also copy back the logits output), allow_other_gpu (same compute capability but another
    GPU model: warn instead of refuse). `trt_module` and `cuda_api` replace tensorrt and the
    CUDA layer (tests).
    """

    backend = "tensorrt"

    def __init__(self, path: str, *, device: Union[int, str] = 0, cuda_graph: bool = False,
                 return_logits: bool = False, allow_other_gpu: bool = False, trt_module: Any = None,
                 cuda_api: Any = None) -> None:
        self.path = str(path)
        self._buffers: Dict[str, HostDeviceBuffer] = {}
        self._graph: Any = None  # (graph, executable) for the context's current input shape
        self._batch = 0  # batch the context's input shape is set to (dynamic engines)
        self._ready = False  # one plain enqueue ran at that shape: TensorRT may now be captured
        self._stream: Any = None
        self._events: List[Any] = []
        self._check_file()
        record = read_sidecar(self.path)
        # the build's accuracy gate against ONNX Runtime (ds2a/engine/verify.py), for the run's records and page
        self.build_gate: Optional[Dict[str, Any]] = record.get("verification") if record is not None else None
        trt = trt_module if trt_module is not None else import_tensorrt()
        self.trt = trt
        self.tensorrt_version = str(trt.__version__)
        require_supported(self.tensorrt_version)  # refuses releases without name-based I/O
        self.cuda = cuda_api or open_cuda(_device_index(device))
        try:
            with self._on_device():
                self._open(record, cuda_graph, return_logits, allow_other_gpu)
        except BaseException:
            self.close()
            raise

    def _on_device(self) -> Any:
        """A `with` block with this GPU current on the calling thread (CUDA state is per thread)."""
        return self.cuda.activate()

    def _open(self, record: Optional[EngineRecord], cuda_graph: bool, return_logits: bool,
              allow_other_gpu: bool) -> None:
        self.device = self.cuda.device_info()
        if record is not None:
            for note in verify_sidecar(record, self.path, self.tensorrt_version, self.device.name,
                                       self.device.compute_capability, allow_other_gpu=bool(allow_other_gpu),
                                       device=self.device):
                logger.warning(note)
        else:
            logger.warning(f"{self.path} has no sidecar {self.path}.json: TensorRT version/GPU are not checked and "
                           "class names are generic; build engines with `ds2a build-engine` to get one")
        self._record = record
        self._load_engine(record)
        self._read_io()
        super().__init__(self._meta(record))
        self.layout.check_outputs(self.path, self.meta, self._hw)
        self.return_logits = bool(return_logits) and self._logits is not None
        self.cuda_graph = bool(cuda_graph) and getattr(self.cuda, "supports_graphs", False)
        if cuda_graph and not self.cuda_graph:
            logger.warning(f"CUDA graphs need cuda-python; {self.cuda.name} runs without them")
        self._allocate()

    # --- loading -------------------------------------------------------------------------
    def _check_file(self) -> None:
        if not os.path.isfile(self.path):
            raise UserError(f"engine file {self.path} does not exist; build it with "
                            f"`ds2a build-engine MODEL.onnx --out {self.path}`")
        if os.path.getsize(self.path) == 0:
            raise UserError(f"engine file {self.path} is empty; build it again with "
                            f"`ds2a build-engine MODEL.onnx --out {self.path}`")

    def _rebuild_hint(self, record: Optional[EngineRecord]) -> str:
        return rebuild_command(record, self.path) if record is not None else f"ds2a build-engine MODEL.onnx --out {self.path}"

    def _load_engine(self, record: Optional[EngineRecord]) -> None:
        trt = self.trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")  # plugin layers (--deform-attn trt-plugin) deserialize by name
        self.runtime = trt.Runtime(self._logger)
        if record is not None and record.version_compatible:
            self.runtime.engine_host_code_allowed = True  # the lean runtime is embedded in the plan
        if record is not None and record.dla_core is not None:
            self.runtime.DLA_core = int(record.dla_core)  # the core the layers were placed on at build
        with open(self.path, "rb") as f:
            data = f.read()
        try:
            engine = self.runtime.deserialize_cuda_engine(data)
        except Exception:  # some releases raise instead of returning None
            engine = None
        if engine is None:
            raise UserError(f"TensorRT {self.tensorrt_version} could not load {self.path}: the file is truncated "
                            "or corrupt, or was built by another TensorRT release or GPU; rebuild it on this "
                            f"device: {self._rebuild_hint(record)}")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:  # TensorRT logs the cause; on small boards it is GPU memory
            raise UserError(f"TensorRT could not create an execution context for {self.path} (see its log "
                            "above; usually the GPU is out of memory): close other GPU programs (on a Jetson "
                            "the CPU shares that memory) and try again")

    def _read_io(self) -> None:
        """Find the image input and the class-map/logits outputs (ds2a/runtime/io_layout.py); refuse anything else."""
        trt, eng = self.trt, self.engine
        self._shapes: Dict[str, Tuple[int, ...]] = {}
        self._types: Dict[str, Any] = {}
        inputs, outputs = [], []
        for i in range(eng.num_io_tensors):
            name = eng.get_tensor_name(i)
            self._shapes[name] = tuple(int(d) for d in tuple(eng.get_tensor_shape(name)))
            self._types[name] = _np_type(eng.get_tensor_dtype(name))
            (inputs if eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
        layout = read_io_layout(self.path, [(n, self._types[n], self._shapes[n]) for n in inputs],
                                [(n, self._types[n], self._shapes[n]) for n in outputs],
                                "build it from a `ds2a export` ONNX")
        self.layout = layout
        self._float_input = layout.float_input
        self._input = layout.input_name
        shape = self._shapes[self._input]
        h, w = shape[2:4] if layout.float_input else shape[1:3]
        self._hw = (int(h), int(w))
        self._class_map = layout.class_map
        self._logits = layout.logits
        self._outputs = outputs
        if layout.batch is not None:
            self._fixed_batch: Optional[int] = layout.batch
            self._min_batch = self._max_batch = layout.batch
        else:
            self._fixed_batch = None
            profile = eng.get_tensor_profile_shape(self._input, 0)  # (min, opt, max) shapes of profile 0
            self._min_batch = max(1, int(tuple(profile[0])[0]))
            self._max_batch = int(tuple(profile[2])[0])

    def _meta(self, record: Optional[EngineRecord]) -> ModelMeta:
        if record is not None and record.meta:
            try:
                meta = ModelMeta.from_dict(record.meta)
            except (ValueError, TypeError, IndexError) as exc:  # an edited class list, palette or size
                raise UserError(f"engine metadata {self.path}.json has a bad 'meta' ({exc}); rebuild the engine with "
                                f"`{rebuild_command(record, self.path)}`") from None
        else:
            k = self._shapes[self._logits][1] if self._logits else 4
            meta = ModelMeta(arch="unknown", classes=[f"class_{i}" for i in range(k)], input_size=self._hw)
        meta.input_size = self._hw  # the engine's own shape wins
        return meta

    def _allocate(self) -> None:
        """Buffers for the largest batch, bound to the context once."""
        self._stream = self.cuda.create_stream()
        for name in [self._input] + self._outputs:
            shape = (self._max_batch,) + self._shapes[name][1:]
            buf = HostDeviceBuffer(self.cuda, shape, self._types[name])
            self._buffers[name] = buf
            if not self.context.set_tensor_address(name, buf.device):
                raise UserError(f"TensorRT refused the buffer for tensor '{name}' of {self.path} (see its log "
                                f"above); rebuild the engine on this device: {self._rebuild_hint(self._record)}")
        self._set_batch(self._max_batch)
        self._events = [self.cuda.create_event() for _ in range(4)]

    def _set_batch(self, n: int) -> None:
        """Set a dynamic engine's input batch; a new shape drops the graph captured for the old one."""
        if self._fixed_batch is not None or n == self._batch:
            return
        shape = (n,) + self._shapes[self._input][1:]
        if not self.context.set_input_shape(self._input, shape):
            raise UserError(f"TensorRT refused input shape {list(shape)} for {self.path} (see its log above): "
                            f"the engine's batch profile does not allow it; rebuild with a wider --batch: "
                            f"{self._rebuild_hint(self._record)}")
        self._batch, self._ready = n, False
        self._drop_graph()

    # --- inference -----------------------------------------------------------------------
    @property
    def batch_size(self) -> Optional[int]:
        return self._fixed_batch

    def infer_batch(self, frames: Frames) -> List[InferResult]:
        batch = self.prepare_batch(frames)
        results: List[InferResult] = []
        with self._on_device():  # the caller may be another thread than the one that opened the model
            for chunk, count in self._chunks(batch):
                results.extend(self._run(chunk, count))
        return results

    def _chunks(self, batch: np.ndarray) -> List[Tuple[np.ndarray, int]]:
        """[(chunk, real frames)] the engine accepts: a fixed batch is padded to it; a dynamic batch is
        split at the profile's maximum and a chunk below its minimum is padded up to it (TensorRT
        runs only shapes within the profile: NvInferRuntime.h, IOptimizationProfile / setInputShape)."""
        if self._fixed_batch is not None:
            return fit_batch(batch, self._fixed_batch)
        parts = [batch[i:i + self._max_batch] for i in range(0, len(batch), self._max_batch)]
        return [fit_batch(p, self._min_batch)[0] if len(p) < self._min_batch else (p, len(p)) for p in parts]

    def _run(self, chunk: np.ndarray, count: int) -> List[InferResult]:
        """One chunk: plain enqueue at a new shape, then capture once, then replay the graph.

        TensorRT does shape-dependent set-up in the first enqueue after a shape change, which a
        capture cannot hold, so a graph is captured only after one plain run at the same shape.
        """
        n = len(chunk)
        inp = self._buffers[self._input]
        if self._float_input:
            inp.host[:n] = normalize(chunk, self.meta.mean, self.meta.std)
        else:
            np.copyto(inp.host[:n], chunk)
        self._set_batch(n)
        want_logits = self.return_logits or not self._class_map
        fetch = [name for name in (self._class_map, self._logits if want_logits else None) if name]
        cuda, stream, ev = self.cuda, self._stream, self._events
        if self.cuda_graph and self._graph is None and self._ready:
            self._graph = self._capture(n, fetch)
        cuda.record_event(ev[0], stream)
        if self._graph is not None:
            cuda.launch_graph(self._graph, stream)
        else:
            timed = self._enqueue(n, fetch, ev)
        cuda.record_event(ev[3], stream)
        cuda.synchronize(stream)
        if self._graph is not None:
            self.last_timings = {"gpu_ms": cuda.elapsed_ms(ev[0], ev[3])}
        else:
            self._ready = True
            self.last_timings = {"h2d_ms": cuda.elapsed_ms(ev[0], ev[1]), "compute_ms": cuda.elapsed_ms(ev[1], ev[2]),
                                 "d2h_ms": cuda.elapsed_ms(ev[2], ev[3]), "enqueue_ms": timed}
        class_map = self._buffers[self._class_map].host[:n].copy() if self._class_map else None
        logits = None
        if self._logits in fetch:
            logits = self._buffers[self._logits].host[:n].astype(np.float32)
        return make_results(class_map, logits, count, keep_logits=self.return_logits)

    def _enqueue(self, n: int, fetch: List[str], events: Optional[List[Any]] = None) -> float:
        """Copy in, enqueue, copy out on the stream; returns the host milliseconds of the enqueue."""
        cuda, stream = self.cuda, self._stream
        inp = self._buffers[self._input]
        inp.to_device(stream, n * inp.nbytes // self._max_batch)
        if events:
            cuda.record_event(events[1], stream)
        t_enqueue = time.perf_counter()
        if not self.context.execute_async_v3(cuda.stream_handle(stream)):
            raise RuntimeError(f"TensorRT failed to enqueue {self.path} (see the TensorRT log)")
        enqueue_ms = (time.perf_counter() - t_enqueue) * 1e3  # host time to enqueue, as trtexec reports
        if events:
            cuda.record_event(events[2], stream)
        for name in fetch:
            buf = self._buffers[name]
            buf.to_host(stream, n * buf.nbytes // self._max_batch)
        return enqueue_ms

    def _capture(self, n: int, fetch: List[str]) -> Any:
        """The chunk's work as a CUDA graph, or None (graphs then stay off) when capture fails.

        Some engines hold operations a capture cannot record; as trtexec does, the capture is
        ended and inference goes on without graphs. Nothing here relies on clearing CUDA's error
        state (TensorRT's runtime keeps its own; a sticky error cannot be cleared): if the GPU is
        really broken the plain run that follows raises.
        """
        cuda, stream = self.cuda, self._stream
        cuda.begin_capture(stream)
        try:
            self._enqueue(n, fetch)
        except Exception as exc:  # noqa: BLE001 - any failure inside the capture means: no graphs
            cuda.abort_capture(stream)
            return self._without_graphs(exc)
        try:
            return cuda.end_capture(stream)
        except CudaError as exc:  # end_capture has ended the capture
            return self._without_graphs(exc)

    def _without_graphs(self, exc: BaseException) -> None:
        self.cuda_graph = False
        logger.warning(f"CUDA graph capture failed for {self.path} ({exc}); running without CUDA graphs")
        return None

    def _drop_graph(self) -> None:
        if self._graph is not None:
            graph, self._graph = self._graph, None
            self.cuda.destroy_graph(graph)

    def close(self) -> None:
        """Free graphs, buffers, events and the stream (safe to call twice, and after a failed open)."""
        cuda = getattr(self, "cuda", None)
        if cuda is None:
            return
        with self._on_device():
            self.context = self.engine = None  # TensorRT objects go before the memory they point at
            self._drop_graph()
            for buf in self._buffers.values():
                buf.free()
            self._buffers.clear()
            for event in self._events:
                cuda.destroy_event(event)
            self._events = []
            if self._stream is not None:
                cuda.destroy_stream(self._stream)
                self._stream = None
        if hasattr(cuda, "close"):
            cuda.close()
        self.cuda = None
