"""What calibration needs to know about an exported ONNX: its meta, input, and current precision."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

import onnx
from onnx import TensorProto

from ..errors import UserError
from ..export.metadata import load_onnx, read_meta
from ..meta import ModelMeta

QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
             "DynamicQuantizeLinear"}


@dataclass
class OnnxModelInfo:
    path: Path
    model: onnx.ModelProto
    meta: ModelMeta
    input_name: str
    float_input: bool
    batch: int  # fixed batch, or 1 when the batch dimension is symbolic

    def op_types(self) -> List[str]:
        return sorted({n.op_type for n in self.model.graph.node})

    def node_names(self) -> List[str]:
        return [n.name for n in self.model.graph.node]


def precision_of(model: onnx.ModelProto) -> str:
    """'int8' when Q/DQ or integer ops are present, 'fp16' when float16 weights are, else 'fp32'
    (weights only stored as FP16, losslessly, are FP32: ds2a/export/storage.py)."""
    from ..export.storage import expand

    model = expand(model)
    if any(n.op_type in QUANT_OPS for n in model.graph.node):
        return "int8"
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


def inspect_model(path: str) -> OnnxModelInfo:
    """Load an exported ds2a ONNX and refuse anything calibration cannot start from. Weights in compact
    storage are expanded first: ModelOpt places Q/DQ on constant weights (ds2a/export/storage.py)."""
    from ..export.storage import expand

    model = expand(load_onnx(path))
    meta = read_meta(model, path)
    current = precision_of(model)
    if current != "fp32":
        raise UserError(f"'{path}' is already {current.upper()} (precision conversion needs the FP32 export); "
                        f"pass the FP32 ONNX written by `ds2a export`")
    from ..trt.deform_attn import PLUGIN_OP, plugin_nodes

    if plugin_nodes(model):
        raise UserError(f"'{path}' carries TensorRT plugin nodes ({PLUGIN_OP}, `--deform-attn trt-plugin`) that "
                        "ModelOpt/ONNX Runtime cannot calibrate through; calibrate a `ds2a export --deform-attn "
                        "gather` file instead (docs/DEFORM_ATTN.md)")
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise UserError(f"'{path}' has {len(inputs)} inputs; ds2a models have exactly one ('images')")
    inp = inputs[0]
    tt = inp.type.tensor_type
    float_input = tt.elem_type == TensorProto.FLOAT
    if not float_input and tt.elem_type != TensorProto.UINT8:
        raise UserError(f"'{path}' input '{inp.name}' is neither uint8 frames nor float32; "
                        "re-export with `ds2a export`")
    d0 = tt.shape.dim[0] if tt.shape.dim else None
    batch = int(d0.dim_value) if d0 is not None and d0.HasField("dim_value") and d0.dim_value > 0 else 1
    return OnnxModelInfo(Path(path), model, meta, inp.name, float_input, batch)


def resolve_exclusions(info: OnnxModelInfo, items: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Split user exclusions into op types and node names (exact or regex); each must match something."""
    op_types, nodes = [], []
    present_ops = set(info.op_types())
    names = [n for n in info.node_names() if n]
    for item in items:
        item = item.strip()
        if not item:
            continue
        if item in present_ops:
            op_types.append(item)
            continue
        try:
            rx = re.compile(item)
        except re.error:
            rx = None
        hits = [n for n in names if n == item or (rx is not None and rx.fullmatch(n))]
        if not hits:
            sample = ", ".join(sorted(present_ops)[:12])
            raise UserError(f"--exclude '{item}' matches no op type and no node name in '{info.path}'; "
                            f"op types present: {sample}...; node names look like '{names[0] if names else ''}'")
        nodes.extend(hits)
    return sorted(set(op_types)), sorted(set(nodes))


COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def final_compute_nodes(model: onnx.ModelProto, depth: int = 1) -> List[str]:
    """Names of the last `depth` layers of Conv/MatMul/Gemm before any graph output ("the final classifier").

    Walks backwards from the outputs; a path stops after its `depth`-th compute node, so depth=1
    is the layer that produces the logits, depth=2 also the layers feeding it.
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    found: List[str] = []
    seen = set()
    stack = [(o.name, 0) for o in model.graph.output]
    while stack:
        tensor, hits = stack.pop()
        node = producer.get(tensor)
        if node is None or (node.name, hits) in seen:
            continue
        seen.add((node.name, hits))
        if node.op_type in COMPUTE_OPS:
            if node.name not in found:
                found.append(node.name)
            hits += 1
            if hits >= depth:
                continue
        stack.extend((i, hits) for i in node.input if i)
    return found
