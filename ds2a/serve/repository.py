"""A model repository for the stock Triton container: `NAME/config.pbtxt` + `NAME/VERSION/model.*`.

ONNX goes to the `onnxruntime_onnx` platform, a TensorRT engine to `tensorrt_plan` (its I/O and
metadata come from the `model.engine.json` sidecar `ds2a build-engine` writes, so no TensorRT is
needed here). A dynamic batch dimension becomes `max_batch_size` with dynamic batching; a fixed
batch stays in the dims (`max_batch_size: 0`). The ds2a metadata rides along as parameters
(ds2a/runtime/triton_protocol.py), which is what `triton://` stations read.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from ..errors import UserError
from ..meta import ONNX_META_KEY, ModelMeta, file_sha256, guess_precision
from ..outputs import atomic_path, atomic_write
from ..runtime import triton_protocol as protocol

ORT_TYPES = {"tensor(uint8)": "TYPE_UINT8", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16",
             "tensor(int64)": "TYPE_INT64", "tensor(int32)": "TYPE_INT32", "tensor(bool)": "TYPE_BOOL"}
TRT_TYPES = {"uint8": "TYPE_UINT8", "float": "TYPE_FP32", "float32": "TYPE_FP32", "half": "TYPE_FP16",
             "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "bool": "TYPE_BOOL"}
KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
FIX = "export it with `ds2a export CHECKPOINT.pt --out MODEL.onnx` (uint8 frames in, class map out)"


@dataclass
class TensorInfo:
    name: str
    data_type: str  # Triton's TYPE_*
    shape: List[int]  # with the batch dimension; -1 = dynamic


@dataclass
class ModelIO:
    platform: str  # onnxruntime_onnx | tensorrt_plan
    filename: str  # model.onnx | model.plan
    inputs: List[TensorInfo]
    outputs: List[TensorInfo]
    meta: ModelMeta
    batch_limit: Optional[int] = None  # an engine's optimisation-profile maximum
    params: Dict[str, str] = field(default_factory=dict)


def _dim(d: Any) -> int:
    return d if isinstance(d, int) and d > 0 else -1


def read_onnx(path: str) -> ModelIO:
    """I/O and metadata of an ONNX through ONNX Runtime (always installed)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT's own exception types
        raise UserError(f"{path} is not a loadable ONNX model ({str(exc).strip()[:200]}); {FIX}") from None

    def infos(values: Sequence[Any]) -> List[TensorInfo]:
        return [TensorInfo(v.name, ORT_TYPES.get(v.type, v.type), [_dim(d) for d in v.shape]) for v in values]

    props = sess.get_modelmeta().custom_metadata_map
    if ONNX_META_KEY not in props:
        raise UserError(f"{path} has no '{ONNX_META_KEY}' metadata (classes, palette, size): stations could not "
                        f"label its output; {FIX}")
    meta = ModelMeta.from_json(props[ONNX_META_KEY])
    return ModelIO("onnxruntime_onnx", "model.onnx", infos(sess.get_inputs()), infos(sess.get_outputs()), meta)


def read_engine(path: str) -> ModelIO:
    """I/O and metadata of a TensorRT engine from its sidecar (no TensorRT needed)."""
    from ..trt.sidecar import read_sidecar, sidecar_path

    record = read_sidecar(path)
    if record is None or not record.get("meta"):
        raise UserError(f"{path} has no {sidecar_path(path)} with ds2a metadata; build it with "
                        f"`ds2a build-engine MODEL.onnx --out {path}` so its I/O and classes are known")

    def infos(values: Sequence[Dict[str, Any]]) -> List[TensorInfo]:
        return [TensorInfo(v["name"], TRT_TYPES.get(str(v["dtype"]).lower(), str(v["dtype"])),
                           [_dim(int(d)) for d in v["shape"]]) for v in values]

    profile = record.get("batch_profile")
    io = ModelIO("tensorrt_plan", "model.plan", infos(record["inputs"]), infos(record["outputs"]),
                 ModelMeta.from_dict(record["meta"]), batch_limit=int(profile[2]) if profile else None)
    io.params["ds2a_tensorrt_version"] = str(record.get("tensorrt_version", ""))
    io.params["ds2a_gpu"] = f"{record.get('gpu_name', '')} (compute {record.get('compute_capability', '')})"
    return io


def check_convention(path: str, io: ModelIO) -> None:
    """Stations send uint8 (N,H,W,3) BGR as 'images' and read a uint8 'class_map': refuse anything else."""
    found = ", ".join(f"{t.name} {t.data_type} {t.shape}" for t in io.inputs)
    inp = io.inputs[0] if len(io.inputs) == 1 else None
    if inp is None or inp.name != protocol.INPUT or inp.data_type != "TYPE_UINT8" or len(inp.shape) != 4 \
            or inp.shape[3] != 3 or min(inp.shape[1:3]) <= 0:
        raise UserError(f"{path} has inputs [{found}]; a served ds2a model takes one '{protocol.INPUT}' uint8 "
                        f"(N,H,W,3) at a fixed size; {FIX}")
    if not any(t.name == protocol.CLASS_MAP and t.data_type == "TYPE_UINT8" for t in io.outputs):
        got = ", ".join(f"{t.name} {t.data_type} {t.shape}" for t in io.outputs)
        raise UserError(f"{path} has outputs [{got}]; a served ds2a model gives a uint8 '{protocol.CLASS_MAP}'; {FIX}")
    io.meta.input_size = (inp.shape[1], inp.shape[2])


def _q(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def config_text(name: str, io: ModelIO, max_batch: int, max_queue_delay_us: int, instances: int, kind: str) -> str:
    """config.pbtxt for the model (Triton's ModelConfig in protobuf text format)."""
    dynamic = io.inputs[0].shape[0] == -1
    batch = min(max_batch, io.batch_limit) if dynamic and io.batch_limit else max_batch if dynamic else 0

    def tensors(key: str, values: List[TensorInfo]) -> List[str]:
        out = [f"{key} ["]
        for i, t in enumerate(values):
            dims = t.shape[1:] if batch else t.shape
            out += ["  {", f"    name: {_q(t.name)}", f"    data_type: {t.data_type}",
                    f"    dims: [ {', '.join(str(d) for d in dims)} ]", "  }" + ("," if i < len(values) - 1 else "")]
        return out + ["]"]

    lines = [f"name: {_q(name)}", f"platform: {_q(io.platform)}", f"max_batch_size: {batch}"]
    lines += tensors("input", io.inputs) + tensors("output", io.outputs)
    if batch:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {max_queue_delay_us}", "}"]
    lines += ["instance_group [", "  {", f"    count: {instances}", f"    kind: {KINDS[kind]}", "  }", "]"]
    for key, value in io.params.items():
        lines += ["parameters {", f"  key: {_q(key)}", f"  value: {{ string_value: {_q(value)} }}", "}"]
    return "\n".join(lines) + "\n"


def export_repository(model_path: str, repo: str, name: str = "ds2a", version: int = 1, max_batch: int = 8,
                      max_queue_delay_us: int = 2000, instances: int = 1, kind: str = "auto") -> str:
    """Write REPO/NAME/config.pbtxt and REPO/NAME/VERSION/model.{onnx,plan}; returns the config path."""

    if not os.path.isfile(model_path):
        raise UserError(f"model file {model_path} does not exist; check the path")
    if not name or not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UserError(f"--name '{name}': use letters, digits, '.', '_' and '-' only")
    if kind not in KINDS:
        raise UserError(f"--kind {kind}: valid kinds are {', '.join(KINDS)}")
    suffix = os.path.splitext(model_path)[1].lower()
    if suffix == ".onnx":
        io = read_onnx(model_path)
    elif suffix in (".engine", ".plan", ".trt"):
        io = read_engine(model_path)
        if kind == "cpu":
            raise UserError("--kind cpu: a TensorRT engine runs on the GPU; use --kind gpu or auto")
    else:
        raise UserError(f"{model_path}: export-triton takes a .onnx or a TensorRT .engine/.plan "
                        f"(build one with `ds2a export` / `ds2a build-engine`)")
    check_convention(model_path, io)
    io.params = {protocol.META_PARAM: io.meta.to_json(), protocol.SOURCE_PARAM: os.path.basename(model_path),
                 protocol.SHA_PARAM: file_sha256(model_path),
                 protocol.PRECISION_PARAM: guess_precision(model_path, io.meta), **io.params}
    model_dir = os.path.join(repo, name)
    version_dir = os.path.join(model_dir, str(version))
    os.makedirs(version_dir, exist_ok=True)
    with atomic_path(os.path.join(version_dir, io.filename), label="model copy") as tmp:
        shutil.copyfile(model_path, tmp)
    config = os.path.join(model_dir, "config.pbtxt")
    text = config_text(name, io, max_batch, max_queue_delay_us, instances, kind)
    with atomic_write(config, label="config.pbtxt") as f:
        f.write(text)
    return config

