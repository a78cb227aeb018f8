"""Compact weight storage (ds2a/export/storage.py): lossless, read as it is by ONNX Runtime, expanded for TensorRT."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ds2a.doctor.demo_model import demo_variants
from ds2a.engine.builder import inspect_onnx
from ds2a.export.storage import CAST_PREFIX, STORAGE_KEY, compact, expand, is_compact
from ds2a.precision.model_info import precision_of


def _two_convs() -> onnx.ModelProto:
    """x -> Conv(w_exact) -> Conv(w_fine) + b: one weight FP16 holds exactly, one it does not."""
    rng = np.random.default_rng(0)
    w_exact = rng.standard_normal((16, 3, 3, 3)).astype(np.float16).astype(np.float32)
    w_fine = rng.standard_normal((4, 16, 3, 3)).astype(np.float32)  # 24-bit mantissas: FP16 would round them
    bias = np.array([0.5, -1.0, 2.0, 0.25], np.float32)  # exact, but too small to be worth a node
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w_exact"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Conv", ["h", "w_fine", "b"], ["y"], name="conv2", pads=[1, 1, 1, 1])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [numpy_helper.from_array(w_exact, "w_exact"), numpy_helper.from_array(w_fine, "w_fine"),
         numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    helper.set_model_props(model, {"ds2a.meta": "{}"})
    return model


def _weights(model: onnx.ModelProto) -> dict:
    return {t.name: (numpy_helper.to_array(t).dtype, numpy_helper.to_array(t).tobytes()) for t in model.graph.initializer}


def test_only_exact_and_large_weights_are_stored_as_fp16_and_expand_restores_the_graph_bit_for_bit():
    model = _two_convs()
    small, saved = compact(model)
    assert is_compact(small) and not is_compact(model)
    stored = {t.name: t.data_type for t in small.graph.initializer}
    assert stored == {"w_exact__fp16_storage": TensorProto.FLOAT16, "w_fine": TensorProto.FLOAT,
                      "b": TensorProto.FLOAT}
    assert saved == 16 * 3 * 3 * 3 * 2 and len(small.SerializeToString()) < len(model.SerializeToString())
    assert [n.name for n in small.graph.node] == [CAST_PREFIX + "w_exact", "conv1", "conv2"]
    back = expand(small)
    assert [n.SerializeToString() for n in back.graph.node] == [n.SerializeToString() for n in model.graph.node]
    assert _weights(back) == _weights(model)
    assert {p.key: p.value for p in back.metadata_props} == {"ds2a.meta": "{}"}  # the storage mark is gone
    assert compact(small) == (small, 0) and expand(model) is model  # idempotent / a no-op where nothing to do


def test_onnx_runtime_answers_the_same_for_the_compact_file():
    model = _two_convs()
    x = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    outs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
            for m in (model, compact(model)[0])]
    assert outs[0].tobytes() == outs[1].tobytes()


def test_a_compact_fp32_file_is_still_fp32_for_calibration_and_the_engine_builder():
    assert precision_of(compact(_two_convs())[0]) == "fp32"


@pytest.mark.parametrize("label, precision", [("FP32", "fp32"), ("INT8 (TensorRT placement)", "int8")])
def test_the_committed_compact_demo_files_reach_tensorrt_expanded(label, precision):
    """The builder gives TensorRT's parser the expanded graph: no storage Casts, no FP16 weights in an FP32 or
    INT8 file (its precision is read from that graph), the Q/DQ nodes as ModelOpt placed them."""
    path = dict(demo_variants())[label]
    raw = onnx.load(path)
    assert is_compact(raw)
    info = inspect_onnx(path)
    assert info.precision == precision and not info.has_fp16 and info.expanded is not None
    parsed = onnx.load_from_string(info.expanded)
    assert not any(n.name.startswith(CAST_PREFIX) for n in parsed.graph.node)
    assert not any(t.data_type == TensorProto.FLOAT16 for t in parsed.graph.initializer)
    assert STORAGE_KEY not in {p.key for p in parsed.metadata_props}
    kept = [n.op_type for n in raw.graph.node if not n.name.startswith(CAST_PREFIX)]
    assert [n.op_type for n in parsed.graph.node] == kept
    assert (precision == "int8") == ("QuantizeLinear" in kept)
