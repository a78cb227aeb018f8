"""Tiny ONNX graphs in our convention (uint8 NHWC "images" -> "class_map" uint8 [+ "logits"]).

Each one carries the ops the builder cares about (LayerNormalization, Softmax, a reduction)
and, as asked, Q/DQ nodes (INT8), float16 casts (FP16) or a dynamic batch, so precision
detection and FP32 pinning can be tested without a real network. ONNX Runtime runs them and gives
the fake engine's answer (class = blue // 64, tests/trt_stubs/fake_trt.py), so the build's accuracy
gate (ds2a/engine/verify.py) passes an honest fake build.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ds2a.meta import ModelMeta

CLASSES = ["background", "damage", "smudge", "dust"]


def make_onnx(path: Union[str, Path], precision: str = "fp32", batch: Union[int, str] = 1, size: int = 8,
              logits: bool = True, meta: bool = True, layernorm: bool = True) -> str:
    """Write a small model; precision 'fp32' | 'fp16' (float16 casts) | 'int8' (Q/DQ on the input)."""
    k = len(CLASSES)
    nodes = [
        helper.make_node("Cast", ["images"], ["x_f"], to=TensorProto.FLOAT, name="cast_in"),
        helper.make_node("Transpose", ["x_f"], ["x_t"], perm=[0, 3, 1, 2], name="to_nchw"),
    ]
    src = "x_t"
    if precision == "int8":
        nodes += [helper.make_node("QuantizeLinear", [src, "q_scale", "q_zero"], ["x_q"], name="quant"),
                  helper.make_node("DequantizeLinear", ["x_q", "q_scale", "q_zero"], ["x_dq"], name="dequant")]
        src = "x_dq"
    if precision == "fp16":
        nodes += [helper.make_node("Cast", [src], ["x_h"], to=TensorProto.FLOAT16, name="to_half"),
                  helper.make_node("Cast", ["x_h"], ["x_back"], to=TensorProto.FLOAT, name="to_float")]
        src = "x_back"
    nodes += [
        helper.make_node("Conv", [src, "w", "b"], ["feat"], name="head"),
        helper.make_node("Transpose", ["feat"], ["feat_t"], perm=[0, 2, 3, 1], name="to_nhwc"),
        helper.make_node("LayerNormalization", ["feat_t", "ln_g", "ln_b"], ["normed"], axis=-1, name="norm")
        if layernorm else helper.make_node("Identity", ["feat_t"], ["normed"], name="no_norm"),
        helper.make_node("Transpose", ["normed"], ["normed_t"], perm=[0, 3, 1, 2], name="to_nchw2"),
        helper.make_node("Softmax", ["normed_t"], ["soft"], axis=1, name="softmax"),
        helper.make_node("ReduceMean", ["soft"], ["unused_mean"], keepdims=1, name="reduce"),
        # the answer the fake engine gives (fake_trt.py: class = blue // 64), so ONNX Runtime agrees with it
        helper.make_node("Slice", ["x_f", "blue_start", "blue_end", "blue_axis"], ["blue"], name="blue"),
        helper.make_node("Div", ["blue", "step"], ["blue_steps"], name="blue_div"),
        helper.make_node("Floor", ["blue_steps"], ["blue_cls"], name="blue_floor"),
        helper.make_node("Transpose", ["blue_cls"], ["blue_nchw"], perm=[0, 3, 1, 2], name="blue_nchw"),
        helper.make_node("Equal", ["blue_nchw", "class_ids"], ["onehot"], name="onehot"),
        helper.make_node("Cast", ["onehot"], ["logits"], to=TensorProto.FLOAT, name="onehot_float"),
        helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["idx"], ["idx_f"], to=TensorProto.FLOAT, name="idx_float"),
        helper.make_node("Cast", ["idx_f"], ["class_map"], to=TensorProto.UINT8, name="cast_out"),
    ]
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(k, 3, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(np.zeros(k, np.float32), "b")]
    inits += [numpy_helper.from_array(np.array([0], np.int64), "blue_start"),
              numpy_helper.from_array(np.array([1], np.int64), "blue_end"),
              numpy_helper.from_array(np.array([3], np.int64), "blue_axis"),
              numpy_helper.from_array(np.array(64.0, np.float32), "step"),
              numpy_helper.from_array(np.arange(k, dtype=np.float32).reshape(1, k, 1, 1), "class_ids")]
    if layernorm:
        inits += [numpy_helper.from_array(np.ones(k, np.float32), "ln_g"),
                  numpy_helper.from_array(np.zeros(k, np.float32), "ln_b")]
    if precision == "int8":
        inits += [numpy_helper.from_array(np.array(1.0, np.float32), "q_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "q_zero")]
    outputs = [helper.make_tensor_value_info("class_map", TensorProto.UINT8, [batch, size, size])]
    if logits:
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k, size, size]))
    else:
        nodes.append(helper.make_node("Identity", ["unused_mean"], ["mean_out"], name="keep"))
        outputs.append(helper.make_tensor_value_info("mean_out", TensorProto.FLOAT, [batch, 1, size, size]))
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                                                           [batch, size, size, 3])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if meta:
        entry = model.metadata_props.add()
        entry.key, entry.value = "ds2a", ModelMeta(arch="ds2a_tiny", classes=CLASSES, input_size=(size, size)).to_json()
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)
