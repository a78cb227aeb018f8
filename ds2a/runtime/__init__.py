"""Run a DS2A-Former model from any artefact: `open_model(path)` picks the backend from the file.

Backends are imported only when used, so a Jetson without torch (or without ONNX Runtime)
can still open TensorRT engines.
"""
from __future__ import annotations

import importlib
import os
from typing import Any, Dict, Optional, Tuple

from ..errors import UserError
from .base import InferResult, Segmenter
from .options import check_options

# backend name -> (module, class)
BACKENDS: Dict[str, Tuple[str, str]] = {
    "tensorrt": ("ds2a.runtime.tensorrt_backend", "TensorRTSegmenter"),
    "onnxruntime": ("ds2a.runtime.onnxruntime_backend", "OnnxRuntimeSegmenter"),
    "pytorch": ("ds2a.runtime.torch_backend", "TorchSegmenter"),
    "triton": ("ds2a.runtime.triton_backend", "TritonSegmenter"),  # a URL, not a file
}
ALIASES: Dict[str, str] = {"trt": "tensorrt", "ort": "onnxruntime", "onnx": "onnxruntime",
                           "torch": "pytorch", "pt": "pytorch"}
SUFFIXES: Dict[str, str] = {".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt",
                            ".onnx": "onnxruntime", ".pt": "pytorch", ".pth": "pytorch"}

# URL schemes served by a model server: triton:// (gRPC), triton+http:// (ds2a/runtime/triton_protocol.py)
URL_SCHEMES: Dict[str, str] = {"triton://": "triton", "triton+grpc://": "triton", "triton+http://": "triton"}

__all__ = ["open_model", "backend_for", "check_options", "Segmenter", "InferResult", "BACKENDS", "SUFFIXES",
           "ModelUnavailable"]


class ModelUnavailable(UserError):
    """A served model is away (server down, network gone): the frame was not inspected.

    The inspection loop records such frames as dropped and not inspected and carries on; the
    backend reconnects by itself. Elsewhere (eval, bench) it ends the run with this message.
    """


def _url_backend(path: str) -> Optional[str]:
    low = str(path).lower()
    return next((name for scheme, name in URL_SCHEMES.items() if low.startswith(scheme)), None)


def backend_for(path: str, backend: Optional[str] = None) -> str:
    """The backend name for a file: the one asked for, else the one its suffix implies."""
    served = _url_backend(path)
    if served:
        if backend and ALIASES.get(backend.lower(), backend.lower()) != served:
            raise UserError(f"{path} is a {served} server URL; drop --backend {backend}")
        return served
    if backend:
        name = ALIASES.get(backend.lower(), backend.lower())
        if name not in BACKENDS:
            raise UserError(
                f"unknown backend '{backend}' for {path}; valid backends: {', '.join(BACKENDS)}"
            )
        return name
    suffix = os.path.splitext(str(path))[1].lower()
    if suffix not in SUFFIXES:
        raise UserError(
            f"cannot tell which backend runs {path} (suffix '{suffix or 'none'}'); use one of "
            f"{', '.join(SUFFIXES)} or pass backend= (--backend) one of {', '.join(BACKENDS)}"
        )
    return SUFFIXES[suffix]


def open_model(path: str, backend: Optional[str] = None, *, selftest: bool = True, **options: Any) -> Segmenter:
    """Load a model file into the matching `Segmenter`; options go to the backend's constructor.

    The options each backend takes are in ds2a/runtime/options.py (OPTIONS); one it lacks is
    refused there before anything loads, None means the backend's default. The model then runs
    its golden frames (ds2a/runtime/selftest.py): one whose answers changed since it was made is
    closed and refused with SelfTestFailed; the result is `model.selftest`. `selftest=False` is
    for tools that compare the model themselves (the engine build's accuracy gate).
    """
    name = backend_for(path, backend)
    options = check_options(name, options, str(path))
    if name != "triton" and not os.path.isfile(path):
        hint = {"tensorrt": "build one with `ds2a build-engine MODEL.onnx --out MODEL.engine`",
                "onnxruntime": "export one with `ds2a export CHECKPOINT.pt --out MODEL.onnx`",
                "pytorch": "train one with `ds2a train` or use ds2a/assets/demo/ds2a_tiny_synth.pt"}[name]
        raise UserError(f"model file {path} does not exist; check the path or {hint}")
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        need = {"tensorrt": "TensorRT Python bindings and cuda-python (pip install 'ds2a-edge[trt,cu12]' "
                              "on a CUDA 12 driver, '[trt,cu13]' on CUDA 13; `ds2a doctor` says which)",
                "onnxruntime": "onnxruntime (pip install onnxruntime)",
                "pytorch": "PyTorch (pip install 'ds2a-edge[train]')",
                "triton": "tritonclient (pip install 'tritonclient[grpc,http]')"}[name]
        raise UserError(f"the {name} backend for {path} needs {need}: {exc}") from None
    model = getattr(module, class_name)(str(path), **options)
    if selftest:
        try:
            model.run_selftest()
        except BaseException:
            model.close()
            raise
    return model
