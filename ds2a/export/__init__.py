"""Checkpoint -> ONNX (uint8 frames in, class map out), its metadata, parity check and TensorRT check.

`export_onnx(checkpoint, out, ExportOptions(...))` is the whole stage (ds2a/export/pipeline.py).
Importing this package does not import torch; only running `export_onnx` needs it.
"""
from ..meta import file_sha256
from .metadata import load_onnx, read_meta, write_meta
from .onnx_export import ExportOptions
from .pipeline import ExportResult, export_onnx

__all__ = ["ExportOptions", "ExportResult", "export_onnx", "file_sha256", "load_onnx", "read_meta", "write_meta"]
