"""TensorRT backend: runs a `.engine` built by `ds2a build-engine` on the local GPU.

Loading checks the engine's sidecar (`model.engine.json`) against the running TensorRT
release and GPU first, so a mismatch says how to rebuild instead of failing deep inside
TensorRT. Inference is name-based (`set_tensor_address` + `execute_async_v3`, TensorRT 8.5+)
on one CUDA stream with pinned host buffers and async copies; an optional CUDA graph
replays the copy+enqueue+copy sequence per batch size.
"""
from __future__ import annotations

import os
import time
import warnings
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ..engine.sidecar import read_sidecar, rebuild_command, verify_sidecar
from ..engine.versions import features_for
from ..errors import UserError
from ..meta import OUTPUT_CLASS_MAP, OUTPUT_LOGITS, ModelMeta
from ..preprocess import normalize
from .base import Frames, InferResult, Segmenter, fit_batch, make_results
from .cuda_buffers import HostDeviceBuffer, open_cuda

NP_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
            "BOOL": np.bool_, "UINT8": np.uint8}
KNOWN_OPTIONS = ("return_logits", "allow_other_gpu", "trt_module", "cuda_api")


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

    Options: device (GPU index), cuda_graph (capture and replay per batch size; cuda-python
    only), return_logits (also copy back the logits output), allow_other_gpu (same compute
    capability but another GPU model: warn instead of refuse). `trt_module` and `cuda_api`
    replace tensorrt and the CUDA layer (tests).
    """

    backend = "tensorrt"

    def __init__(self, path: str, device: Union[int, str] = 0, cuda_graph: bool = False, **kw: Any) -> None:
        self.path = str(path)
        unknown = sorted(set(kw) - set(KNOWN_OPTIONS))
        if unknown:
            warnings.warn(f"TensorRT backend ignores option(s) {', '.join(unknown)} "
                          f"(it takes device, cuda_graph, {', '.join(KNOWN_OPTIONS[:2])})", UserWarning, stacklevel=2)
        self._buffers: Dict[str, HostDeviceBuffer] = {}
        self._graphs: Dict[int, Any] = {}
        self._stream: Any = None
        self._events: List[Any] = []
        self._check_file()
        record = read_sidecar(self.path)
        trt = kw.get("trt_module")
        if trt is None:
            from ..engine.builder import import_tensorrt

            trt = import_tensorrt()
        self.trt = trt
        self.tensorrt_version = str(trt.__version__)
        features_for(self.tensorrt_version)  # refuses releases without name-based I/O
        self.cuda = kw.get("cuda_api") or open_cuda(_device_index(device))
        self.device = self.cuda.device_info()
        if record is not None:
            verify_sidecar(record, self.path, self.tensorrt_version, self.device.name,
                           self.device.compute_capability, allow_other_gpu=bool(kw.get("allow_other_gpu")))
        else:
            warnings.warn(f"{self.path} has no sidecar {self.path}.json: TensorRT version/GPU are not checked and "
                          "class names are generic; build engines with `ds2a build-engine` to get one",
                          UserWarning, stacklevel=2)
        self._record = record
        self._load_engine(record)
        self._read_io()
        super().__init__(self._meta(record))
        self.return_logits = bool(kw.get("return_logits")) and self._logits is not None
        self.cuda_graph = bool(cuda_graph) and getattr(self.cuda, "supports_graphs", False)
        if cuda_graph and not self.cuda_graph:
            warnings.warn(f"CUDA graphs need cuda-python; {self.cuda.name} runs without them",
                          UserWarning, stacklevel=2)
        self._warmed: set = set()
        self._allocate()

    # --- loading -------------------------------------------------------------------------
    def _check_file(self) -> None:
        if not os.path.isfile(self.path):
            raise UserError(f"engine file {self.path} does not exist; build it with "
                            f"`ds2a build-engine MODEL.onnx --out {self.path}`")
        if os.path.getsize(self.path) == 0:
            raise UserError(f"engine file {self.path} is empty; build it again with "
                            f"`ds2a build-engine MODEL.onnx --out {self.path}`")

    def _rebuild_hint(self, record: Optional[Dict[str, Any]]) -> str:
        return rebuild_command(record, self.path) if record else f"ds2a build-engine MODEL.onnx --out {self.path}"

    def _load_engine(self, record: Optional[Dict[str, Any]]) -> None:
        trt = self.trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self._logger)
        if record and record.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True  # the lean runtime is embedded in the plan
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

    def _read_io(self) -> None:
        """Find the image input and the class-map/logits outputs by name; refuse anything else."""
        trt, eng = self.trt, self.engine
        self._shapes: Dict[str, Tuple[int, ...]] = {}
        self._types: Dict[str, Any] = {}
        inputs, outputs = [], []
        for i in range(eng.num_io_tensors):
            name = eng.get_tensor_name(i)
            self._shapes[name] = tuple(int(d) for d in tuple(eng.get_tensor_shape(name)))
            self._types[name] = _np_type(eng.get_tensor_dtype(name))
            (inputs if eng.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs).append(name)
        found = ", ".join(f"{n} {np.dtype(self._types[n]).name} {list(self._shapes[n])}" for n in inputs)
        shape = self._shapes[inputs[0]] if len(inputs) == 1 else ()
        if len(shape) == 4 and self._types[inputs[0]] == np.uint8 and shape[3] == 3:
            self._float_input, hw = False, shape[1:3]
        elif len(shape) == 4 and self._types[inputs[0]] in (np.float32, np.float16) and shape[1] == 3:
            self._float_input, hw = True, shape[2:4]
        else:
            raise UserError(f"{self.path} has inputs [{found}]; ds2a engines take one uint8 (N,H,W,3) or float32 "
                            f"(N,3,H,W) image input: build it from a `ds2a export` ONNX")
        self._input = inputs[0]
        self._hw = (int(hw[0]), int(hw[1]))
        self._class_map = OUTPUT_CLASS_MAP if OUTPUT_CLASS_MAP in outputs else None
        self._logits = OUTPUT_LOGITS if OUTPUT_LOGITS in outputs else None
        if self._class_map is None and self._logits is None:
            raise UserError(f"{self.path} has outputs {outputs}; expected '{OUTPUT_CLASS_MAP}' and/or "
                            f"'{OUTPUT_LOGITS}': build it from a `ds2a export` ONNX")
        self._outputs = outputs
        batch = shape[0]
        if batch > 0:
            self._fixed_batch: Optional[int] = batch
            self._max_batch = batch
        else:
            self._fixed_batch = None
            self._max_batch = int(tuple(eng.get_tensor_profile_shape(self._input, 0)[2])[0])

    def _meta(self, record: Optional[Dict[str, Any]]) -> ModelMeta:
        if record and record.get("meta"):
            meta = ModelMeta.from_dict(record["meta"])
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
            self.context.set_tensor_address(name, buf.device)
        if self._fixed_batch is None:
            self.context.set_input_shape(self._input, (self._max_batch,) + self._shapes[self._input][1:])
        self._events = [self.cuda.create_event() for _ in range(4)]

    # --- inference -----------------------------------------------------------------------
    @property
    def batch_size(self) -> Optional[int]:
        return self._fixed_batch

    def infer_batch(self, frames: Frames) -> List[InferResult]:
        batch = self.prepare_batch(frames)
        if self._fixed_batch is None:
            chunks = [(batch[i:i + self._max_batch], len(batch[i:i + self._max_batch]))
                      for i in range(0, len(batch), self._max_batch)]
        else:
            chunks = fit_batch(batch, self._fixed_batch)
        results: List[InferResult] = []
        for chunk, count in chunks:
            results.extend(self._run(chunk, count))
        return results

    def _run(self, chunk: np.ndarray, count: int) -> List[InferResult]:
        n = len(chunk)
        inp = self._buffers[self._input]
        if self._float_input:
            inp.host[:n] = normalize(chunk, self.meta.mean, self.meta.std)
        else:
            np.copyto(inp.host[:n], chunk)
        if self._fixed_batch is None:
            self.context.set_input_shape(self._input, (n,) + self._shapes[self._input][1:])
        want_logits = self.return_logits or not self._class_map
        fetch = [name for name in (self._class_map, self._logits if want_logits else None) if name]
        cuda, stream, ev = self.cuda, self._stream, self._events
        if self.cuda_graph and n in self._graphs:
            cuda.record_event(ev[0], stream)
            cuda.launch_graph(self._graphs[n], stream)
            cuda.record_event(ev[3], stream)
            cuda.synchronize(stream)
            self.last_timings = {"gpu_ms": cuda.elapsed_ms(ev[0], ev[3])}
        else:
            capture = self.cuda_graph and n in self._warmed
            if capture:
                cuda.begin_capture(stream)
            else:
                cuda.record_event(ev[0], stream)
            inp.to_device(stream, n * inp.nbytes // self._max_batch)
            if not capture:
                cuda.record_event(ev[1], stream)
            t_enqueue = time.perf_counter()
            if not self.context.execute_async_v3(cuda.stream_handle(stream)):
                raise RuntimeError(f"TensorRT failed to enqueue {self.path} (see the TensorRT log)")
            enqueue_ms = (time.perf_counter() - t_enqueue) * 1e3  # host time to enqueue, as trtexec reports
            if not capture:
                cuda.record_event(ev[2], stream)
            for name in fetch:
                buf = self._buffers[name]
                buf.to_host(stream, n * buf.nbytes // self._max_batch)
            if capture:
                self._graphs[n] = cuda.end_capture(stream)
                return self._run(chunk, count)  # first replay does the work
            cuda.record_event(ev[3], stream)
            cuda.synchronize(stream)
            self._warmed.add(n)
            self.last_timings = {"h2d_ms": cuda.elapsed_ms(ev[0], ev[1]),
                                 "compute_ms": cuda.elapsed_ms(ev[1], ev[2]),
                                 "d2h_ms": cuda.elapsed_ms(ev[2], ev[3]),
                                 "enqueue_ms": enqueue_ms}
        class_map = self._buffers[self._class_map].host[:n].copy() if self._class_map else None
        logits = None
        if self._logits in fetch:
            logits = self._buffers[self._logits].host[:n].astype(np.float32)
        return make_results(class_map, logits, count, keep_logits=self.return_logits)

    def close(self) -> None:
        """Free graphs, buffers, events and the stream (safe to call twice)."""
        cuda = getattr(self, "cuda", None)
        if cuda is None:
            return
        self.context = self.engine = None  # TensorRT objects go before the memory they point at
        for graph in self._graphs.values():
            cuda.destroy_graph(graph)
        self._graphs.clear()
        for buf in self._buffers.values():
            buf.free()
        self._buffers.clear()
        for event in self._events:
            cuda.destroy_event(event)
        self._events = []
        if self._stream is not None:
            cuda.destroy_stream(self._stream)
            self._stream = None
        if hasattr(cuda, "close"):  # pycuda: pop the context this backend pushed
            cuda.close()
        self.cuda = None
