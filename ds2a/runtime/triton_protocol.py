"""What a ds2a model looks like on Triton: tensor names, types and the metadata parameters.

Shared by the server (`ds2a serve`, `ds2a export-triton`) and the station backend
(ds2a/runtime/triton_backend.py); it lives in the runtime, below the server, so both import it
and the runtime never imports the server.
Pure Python: no PyTriton, no tritonclient, no torch.
"""
from __future__ import annotations

from typing import Dict

from ..meta import INPUT_NAME, OUTPUT_CLASS_MAP, OUTPUT_LOGITS

INPUT = INPUT_NAME  # uint8 (N, H, W, 3) BGR frames at the model size
CLASS_MAP = OUTPUT_CLASS_MAP  # uint8 (N, H, W) class ids
LOGITS = OUTPUT_LOGITS  # float32 (N, K, H, W), when the model has them
META_PARAM = "ds2a_meta"  # ModelMeta JSON, in the model config's parameters
SOURCE_PARAM = "ds2a_source"  # file name of the served artefact
SHA_PARAM = "ds2a_source_sha256"  # sha256 of the served artefact
PRECISION_PARAM = "ds2a_precision"  # fp32 / fp16 / int8
GRPC_PORT, HTTP_PORT, METRICS_PORT = 8001, 8000, 8002
SCHEMES: Dict[str, str] = {"triton": "grpc", "triton+grpc": "grpc", "triton+http": "http"}

