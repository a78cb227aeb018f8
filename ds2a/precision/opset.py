"""Bring a ModelOpt INT8 graph (opset 19) back to opset 17, so TensorRT 8.5/8.6 (JetPack 5/6.0) parse it.

ModelOpt raises the opset to 19 (its minimum for Q/DQ). For int8 Q/DQ nothing in 18/19 is needed:
the only changes our graphs contain are the Reduce* ops whose `axes` moved from an attribute
(<= 17) to an input (>= 18). onnx's version converter has no 19->17 adapters, so this rewrites
exactly those nodes and refuses (returns False) when anything else from opset 18/19 is present.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import onnx
from onnx import helper, numpy_helper

# ops whose axes became an input in opset 18 (ReduceSum already had it since 13)
AXES_TO_ATTR = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
# ops new in opset 18/19: their presence means the graph cannot go back to 17
NEW_OPS_18_19 = {"Col2Im", "CenterCropPad", "GroupNormalization", "Mish", "BitwiseAnd", "BitwiseOr",
                 "BitwiseXor", "BitwiseNot", "DeformConv"}
NEW_ATTRS = {"Split": {"num_outputs"}, "Resize": {"antialias", "axes", "keep_aspect_ratio_policy"},
             "Cast": {"saturate"}, "QuantizeLinear": {"saturate"}}


def _constants(model: onnx.ModelProto) -> Dict[str, np.ndarray]:
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    values[n.output[0]] = numpy_helper.to_array(a.t)
    return values


def downgrade_to_17(model: onnx.ModelProto) -> Optional[onnx.ModelProto]:
    """A copy at opset 17, or None when the graph uses opset-18/19 features this does not rewrite."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset <= 17:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    consts = _constants(m)
    for node in m.graph.node:
        attrs = {a.name for a in node.attribute}
        if node.op_type in NEW_OPS_18_19:
            return None
        if node.op_type in AXES_TO_ATTR:
            if len(node.input) > 1 and node.input[1]:
                axes = consts.get(node.input[1])
                if axes is None:
                    return None  # axes computed at run time: cannot become an attribute
                node.attribute.append(helper.make_attribute("axes", [int(v) for v in axes.reshape(-1)]))
                del node.input[1:]
            if "noop_with_empty_axes" in attrs:
                keep = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
                if any(a.name == "noop_with_empty_axes" and a.i for a in node.attribute):
                    return None
                del node.attribute[:]
                node.attribute.extend(keep)
        elif node.op_type in NEW_ATTRS and attrs & NEW_ATTRS[node.op_type]:
            return None
        elif node.op_type == "Pad" and len(node.input) > 3 and node.input[3]:
            return None
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    dead = [t for t in m.graph.initializer if t.name not in used]
    for t in dead:
        m.graph.initializer.remove(t)
    for n in [n for n in m.graph.node if n.op_type == "Constant" and n.output[0] not in used]:
        m.graph.node.remove(n)
    for o in m.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = 17
    try:
        onnx.checker.check_model(m)
    except onnx.checker.ValidationError:
        return None
    return m


