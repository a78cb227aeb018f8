"""TensorRT engine building (on the device): ONNX -> engine + `model.engine.json` sidecar.

Torch-free; `tensorrt` itself is imported only when a build starts. What the builder knows
about TensorRT releases lives in `ds2a.trt`, shared with the runtime.
"""
from .builder import BuildOptions, BuildReport, build_engine, parse_batch, plan_precision

__all__ = ["BuildOptions", "BuildReport", "build_engine", "parse_batch", "plan_precision"]
