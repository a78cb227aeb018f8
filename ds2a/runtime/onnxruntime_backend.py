"""ONNX Runtime backend: runs our exported ONNX (uint8 NHWC frames in, class map out) on CPU or GPU.

CPU by default; CUDA / TensorRT execution providers when asked for and installed. The
input buffer is allocated once and bound to the session, so the hot path only copies the
frame in and the small class map out.
"""
from __future__ import annotations

import logging
import os
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import onnxruntime as ort

from ..errors import UserError
from ..meta import ONNX_META_KEY, OUTPUT_CLASS_MAP, OUTPUT_LOGITS, ModelMeta
from ..preprocess import normalize
from .base import Frames, InferResult, Segmenter, fit_batch, make_results
from .io_layout import read_io_layout

logger = logging.getLogger(__name__)

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}
FIX = "export it with `ds2a export CHECKPOINT.pt --out MODEL.onnx`"


def resolve_providers(device: Union[str, Sequence[str]] = "cpu") -> List[str]:
    """'cpu' | 'cuda' | 'tensorrt' | 'auto' | explicit provider list -> ORT provider names.

    'auto' takes the fastest installed (TensorRT, CUDA, then CPU); a named device that this
    onnxruntime build lacks is an error that lists what is available.
    """
    available = ort.get_available_providers()
    if isinstance(device, str):
        key = device.lower()
        if key == "auto":
            return [p for p in (PROVIDERS["tensorrt"], PROVIDERS["cuda"]) if p in available] + [PROVIDERS["cpu"]]
        if key not in PROVIDERS:
            raise UserError(f"unknown ONNX Runtime device '{device}'; valid: auto, {', '.join(PROVIDERS)}")
        wanted = [PROVIDERS[key]]
    else:
        wanted = list(device)
    missing = [p for p in wanted if p not in available]
    if missing:
        raise UserError(
            f"ONNX Runtime here lacks {', '.join(missing)} (available: {', '.join(available)}); "
            "install onnxruntime-gpu for CUDA/TensorRT or use device='cpu'"
        )
    if PROVIDERS["cpu"] not in wanted:
        wanted.append(PROVIDERS["cpu"])  # fallback for nodes the GPU provider does not take
    return wanted


class OnnxRuntimeSegmenter(Segmenter):
    """A Segmenter over an `onnxruntime.InferenceSession`.

    Options: device ('cpu', 'cuda', 'tensorrt', 'auto' or a provider list), intra_op_threads,
    inter_op_threads (0 = ORT default), return_logits (fetch the logits output when the
    model has one), optimization ('all' | 'extended' | 'basic' | 'disable'), spin (let ORT's
    worker threads busy-wait between runs: off by default, because in the inspection loop the
    spinning threads steal the cores that capture and output need; measured in
    benchmarks/results/inspect_e2e.md).
    """

    backend = "onnxruntime"

    def __init__(self, path: str, *, device: Union[str, Sequence[str]] = "cpu", intra_op_threads: int = 0,
                 inter_op_threads: int = 0, return_logits: bool = False, optimization: str = "all",
                 spin: bool = False) -> None:
        self.path = str(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(intra_op_threads)
        opts.inter_op_num_threads = int(inter_op_threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spin else "0")
        levels = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}
        if optimization not in levels:
            raise UserError(f"unknown ONNX Runtime optimization '{optimization}'; valid: {', '.join(levels)}")
        opts.graph_optimization_level = levels[optimization]
        opts.log_severity_level = 3
        if not os.path.isfile(self.path):
            raise UserError(f"ONNX file {self.path} does not exist; {FIX}")
        try:
            try:
                self.session = ort.InferenceSession(self.path, sess_options=opts, providers=resolve_providers(device))
            except Exception as exc:  # a TensorRT plugin node: run its CPU reference (ds2a/trt/deform_attn.py)
                from ..trt.deform_attn import PLUGIN_OP, cpu_model_bytes

                if PLUGIN_OP not in str(exc):
                    raise
                self.session = ort.InferenceSession(cpu_model_bytes(self.path), sess_options=opts,
                                                    providers=resolve_providers(device))
        except UserError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"{self.path} is not a loadable ONNX model ({first[:300]}); the file may be truncated "
                f"or corrupt: {FIX}"
            ) from None
        self.providers = self.session.get_providers()
        self._read_io()
        super().__init__(self._read_meta())
        self.layout.check_outputs(self.path, self.meta, self.input_size)
        self.return_logits = bool(return_logits) and self._logits_name is not None
        self._fetch = [n for n in (self._class_map_name, self._logits_name if (
            self.return_logits or self._class_map_name is None) else None) if n]
        self._buffer: Optional[np.ndarray] = None
        self._binding: Optional[Any] = None
        if self._batch is not None and not self._float_input:
            self._bind_input(self._batch)

    # --- loading -------------------------------------------------------------------------
    def _read_io(self) -> None:
        """Check the graph follows our I/O convention (ds2a/runtime/io_layout.py) and remember its layout."""
        layout = read_io_layout(self.path, [(i.name, i.type, i.shape) for i in self.session.get_inputs()],
                                [(o.name, o.type, o.shape) for o in self.session.get_outputs()], FIX)
        self.layout = layout
        self._float_input = layout.float_input
        self._input_name = layout.input_name
        self._input_dtype = np.dtype(layout.input_dtype)
        self._static_hw = layout.static_hw
        self._batch = layout.batch
        self._class_map_name = layout.class_map
        self._logits_name = layout.logits
        self._num_classes = layout.num_classes

    def _read_meta(self) -> ModelMeta:
        """ModelMeta from metadata_props["ds2a"]; a foreign ONNX runs with generic names and a warning."""
        props = self.session.get_modelmeta().custom_metadata_map
        if ONNX_META_KEY in props:
            try:
                meta = ModelMeta.from_json(props[ONNX_META_KEY])
            except (ValueError, TypeError) as exc:
                raise UserError(f"{self.path} has unreadable '{ONNX_META_KEY}' metadata ({exc}); {FIX}") from None
        else:
            k = self._num_classes or 4
            size = self._static_hw or (256, 256)
            logger.warning(
                f"{self.path} has no '{ONNX_META_KEY}' metadata: running it with generic class names "
                f"class_0..class_{k - 1}, ImageNet normalisation and size {size[0]}x{size[1]}; "
                f"{FIX} to carry the real classes and palette")
            meta = ModelMeta(arch="unknown", classes=[f"class_{i}" for i in range(k)], input_size=size)
        if self._static_hw and tuple(meta.input_size) != self._static_hw:
            meta.input_size = self._static_hw  # the graph's own shape wins
        return meta

    def _bind_input(self, batch: int) -> None:
        """Preallocate the uint8 input once and bind it, so every call reuses the same memory."""
        h, w = self.input_size
        self._buffer = np.zeros((batch, h, w, 3), np.uint8)
        self._binding = self.session.io_binding()
        self._binding.bind_input(self._input_name, "cpu", 0, np.uint8, list(self._buffer.shape),
                                 self._buffer.ctypes.data)
        for name in self._fetch:
            self._binding.bind_output(name, "cpu")

    # --- inference -----------------------------------------------------------------------
    @property
    def batch_size(self) -> Optional[int]:
        return self._batch

    def infer(self, frame: np.ndarray) -> InferResult:
        """One frame: written straight into the bound buffer when the model is uint8 with batch 1."""
        if self._binding is not None and self._batch == 1:
            assert self._buffer is not None
            np.copyto(self._buffer[0], self.prepare(frame))
            return self._run_bound(1)[0]
        return self.infer_batch(self.prepare(frame)[None])[0]

    def infer_batch(self, frames: Frames) -> List[InferResult]:
        batch = self.prepare_batch(frames)
        results: List[InferResult] = []
        for chunk, count in fit_batch(batch, self._batch):
            if self._binding is not None:
                assert self._buffer is not None
                np.copyto(self._buffer, chunk)
                results.extend(self._run_bound(count))
            else:
                results.extend(self._run(chunk, count))
        return results

    def _run_bound(self, count: int) -> List[InferResult]:
        self.session.run_with_iobinding(self._binding)
        outs = dict(zip(self._fetch, self._binding.copy_outputs_to_cpu()))
        return self._results(outs, count)

    def _run(self, chunk: np.ndarray, count: int) -> List[InferResult]:
        x = normalize(chunk, self.meta.mean, self.meta.std).astype(self._input_dtype, copy=False) \
            if self._float_input else chunk
        outs = dict(zip(self._fetch, self.session.run(self._fetch, {self._input_name: x})))
        return self._results(outs, count)

    def _results(self, outs: dict, count: int) -> List[InferResult]:
        return make_results(outs.get(OUTPUT_CLASS_MAP), outs.get(OUTPUT_LOGITS), count,
                            keep_logits=self.return_logits)

    def close(self) -> None:
        self._binding = None
        self._buffer = None
        self.session = None  # type: ignore[assignment]


def describe(path: str) -> Tuple[str, List[str]]:
    """(onnxruntime version, available providers) for machine info and error messages."""
    return ort.__version__, ort.get_available_providers()
