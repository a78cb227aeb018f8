"""TensorRT engine building (on the device): version-aware ONNX -> engine + `model.engine.json` sidecar.

Torch-free; `tensorrt` itself is imported only when a build starts.
"""
from .builder import BuildOptions, BuildReport, build_engine, parse_batch, plan_precision
from .sidecar import read_sidecar, rebuild_command, sidecar_path, verify_sidecar
from .versions import TrtFeatures, features_for

__all__ = ["BuildOptions", "BuildReport", "build_engine", "parse_batch", "plan_precision", "read_sidecar",
           "rebuild_command", "sidecar_path", "verify_sidecar", "TrtFeatures", "features_for"]
