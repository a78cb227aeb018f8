"""Give every quantized consumer its own Q->DQ pair, so ONNX Runtime CPU runs it as an integer kernel.

ORT's quantizer puts one Q->DQ pair on a tensor and lets all consumers share the DQ. On x86 ORT
turns symmetric int8 activations into uint8 (its fast CPU path) only for a Q with a single DQ
consumer, and fuses DQ->Conv->Q into QLinearConv only when that DQ feeds nothing else. A tensor
used by a residual Add (kept float) and a Conv, or by two Convs (a ResNet block's conv1 and its
downsample), therefore left its Convs in float, with a DequantizeLinear of their weights on every
run: 17 of the demo model's 37 convolutions (profile in benchmarks/results/int8_ort_cpu.md).

Here, for each shared activation DQ:
- consumers that are not quantized read the float tensor itself (no Q/DQ round trip at all);
- the first quantized consumer keeps the pair; each further one gets its own Q->DQ whose scale is
  the next float32 above the previous one (1 ulp: the same quantization in practice), because ORT's
  common-subexpression pass would merge byte-identical Q nodes back into one.
Zero points stay 0 and int8, so the model stays symmetric signed INT8.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _consumers(graph: onnx.GraphProto) -> Dict[str, List[onnx.NodeProto]]:
    users: Dict[str, List[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    return users


def _rewire(node: onnx.NodeProto, old: str, new: str) -> None:
    for k, name in enumerate(node.input):
        if name == old:
            node.input[k] = new


def separate_qdq_pairs(model: onnx.ModelProto, quantized_ops: Iterable[str]) -> Tuple[int, int]:
    """Rewrite `model` in place (see module docstring); returns (float consumers rewired, pairs added)."""
    qops = set(quantized_ops)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    users = _consumers(graph)
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    rewired = added = 0
    inserts: List[Tuple[onnx.NodeProto, List[onnx.NodeProto]]] = []
    for dq in list(graph.node):
        if dq.op_type != "DequantizeLinear" or dq.output[0] in outputs:
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or q.input[1] not in inits:
            continue
        readers = users.get(dq.output[0], [])
        if len(readers) < 2:
            continue
        for node in readers:
            if node.op_type not in qops:
                _rewire(node, dq.output[0], q.input[0])
                rewired += 1
        scale = numpy_helper.to_array(inits[q.input[1]]).astype(np.float32)
        new_nodes: List[onnx.NodeProto] = []
        for j, node in enumerate([n for n in readers if n.op_type in qops][1:], 1):
            scale = np.nextafter(scale, np.float32(np.inf)).astype(np.float32)
            s_name, q_out, dq_out = f"{q.input[1]}_pair{j}", f"{q.output[0]}_pair{j}", f"{dq.output[0]}_pair{j}"
            graph.initializer.append(numpy_helper.from_array(scale, s_name))
            new_q = helper.make_node("QuantizeLinear", [q.input[0], s_name, *q.input[2:]], [q_out],
                                     name=f"{q.name}_pair{j}")
            new_q.attribute.extend(q.attribute)
            new_dq = helper.make_node("DequantizeLinear", [q_out, s_name, *dq.input[2:]], [dq_out],
                                      name=f"{dq.name}_pair{j}")
            new_dq.attribute.extend(dq.attribute)
            new_nodes += [new_q, new_dq]
            _rewire(node, dq.output[0], dq_out)
            added += 1
        if new_nodes:
            inserts.append((dq, new_nodes))
    for dq, new_nodes in inserts:  # right after the shared DQ: the graph stays topologically sorted
        at = list(graph.node).index(dq) + 1
        for k, node in enumerate(new_nodes):
            graph.node.insert(at + k, node)
    return rewired, added
