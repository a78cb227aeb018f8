"""FP32 ONNX -> INT8 (symmetric Q/DQ, calibrated on the CPU) or FP16 (mixed) ONNX. Torch-free.

Entry points: `calibrate(model, out, CalibrationOptions(...))`, the whole stage with its default
policy (ds2a/precision/pipeline.py; `ds2a calibrate` maps its flags onto it), and its parts:
`select_calibration_set` (which images), `calibrate_int8` (TensorRT placement via NVIDIA ModelOpt,
or ONNX Runtime quantize_static) and `convert_fp16` (ModelOpt AutoCast). ModelOpt is imported
only inside a worker process.
"""
from ..data.calibration import CalibrationSet, select_calibration_set
from .fp16 import convert_fp16
from .int8 import calibrate_int8
from .model_info import inspect_model, precision_of
from .pipeline import DEFAULT_METHOD, CalibrationOptions, CalibrationResult, calibrate

__all__ = ["DEFAULT_METHOD", "CalibrationOptions", "CalibrationResult", "CalibrationSet", "calibrate",
           "calibrate_int8", "convert_fp16", "inspect_model", "precision_of", "select_calibration_set"]
