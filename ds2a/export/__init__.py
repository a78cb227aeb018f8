"""Checkpoint -> ONNX (uint8 frames in, class map out), its metadata, parity check and TensorRT check.

Importing this package does not import torch; only `export_onnx` (ds2a.export.onnx_export) needs it.
"""
from ..meta import file_sha256
from .metadata import load_onnx, read_meta, write_meta

__all__ = ["file_sha256", "load_onnx", "read_meta", "write_meta"]
