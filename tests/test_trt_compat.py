"""TensorRT parser compatibility: each rule on a tiny hand-built graph (torch-free, fast)."""
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ds2a.errors import UserError
from ds2a.export.onnx_export import decompose_layernorm
from ds2a.trt.compat import blockers, check_model, check_versions, format_report
from ds2a.trt.versions import parse_version, target_version

F, U8, I64 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT64


def graph_model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def layernorm_model():
    x = helper.make_tensor_value_info("x", F, [2, 5, 8])
    y = helper.make_tensor_value_info("y", F, [2, 5, 8])
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "s"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b")]
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], name="ln0", axis=-1, epsilon=1e-5)
    return graph_model([node], [x], [y], inits)


def blocked_versions(model, versions=("8.5", "8.6", "10", "11")):
    return [v for v, f in check_versions(model, versions).items() if blockers(f)]


def test_layernorm_blocks_only_trt85_and_names_node_and_fix():
    model = layernorm_model()
    assert blocked_versions(model) == ["8.5"]
    report = format_report(check_versions(model, ["8.5"]))
    assert "ln0" in report and "--trt 8.5" in report and "NOT parseable" in report


def test_decomposed_layernorm_is_parseable_by_85_and_numerically_equal():
    model = layernorm_model()
    x = np.random.default_rng(1).normal(size=(2, 5, 8)).astype(np.float32) * 3
    ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert decompose_layernorm(model) == 1
    assert blocked_versions(model) == []
    got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() < 1e-5


def test_5d_gridsample_blocks_until_trt_11_2():
    x = helper.make_tensor_value_info("x", F, [1, 2, 4, 4, 4])
    grid = helper.make_tensor_value_info("grid", F, [1, 3, 3, 3, 3])
    y = helper.make_tensor_value_info("y", F, [1, 2, 3, 3, 3])
    model = graph_model([helper.make_node("GridSample", ["x", "grid"], ["y"], name="gs")], [x, grid], [y], opset=20)
    model.opset_import[0].version = 17  # attribute check only; opset rule tested separately
    assert "10" in blocked_versions(model)
    assert not blockers(check_model(model, "11.2"))


def test_cubic_resize_blocks_every_version():
    x = helper.make_tensor_value_info("x", F, [1, 1, 4, 4])
    y = helper.make_tensor_value_info("y", F, [1, 1, 8, 8])
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", mode="cubic")
    assert blocked_versions(graph_model([node], [x], [y], [scales])) == ["8.5", "8.6", "10", "11"]


def test_int64_to_uint8_cast_blocks_before_trt10_but_float_detour_does_not():
    x = helper.make_tensor_value_info("x", F, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("y", U8, [1, 4, 4])
    direct = [helper.make_node("ArgMax", ["x"], ["a"], axis=1, keepdims=0, name="am"),
              helper.make_node("Cast", ["a"], ["y"], to=U8, name="to_u8")]
    assert blocked_versions(graph_model(direct, [x], [y])) == ["8.5", "8.6"]
    detour = [direct[0], helper.make_node("Cast", ["a"], ["af"], to=F, name="to_f"),
              helper.make_node("Cast", ["af"], ["y"], to=U8, name="to_u8")]
    assert blocked_versions(graph_model(detour, [x], [y])) == []


def test_uint8_tensor_used_by_compute_op_blocks():
    x = helper.make_tensor_value_info("x", U8, [1, 4])
    y = helper.make_tensor_value_info("y", U8, [1, 4])
    node = helper.make_node("Add", ["x", "x"], ["y"], name="add_u8")
    assert blocked_versions(graph_model([node], [x], [y])) == ["8.5", "8.6", "10", "11"]


def test_opset_newer_than_parser_blocks_trt8():
    model = layernorm_model()
    model.opset_import[0].version = 18
    findings = check_model(model, "8.6")
    assert any(f.op_type == "opset" and f.severity == "blocker" for f in findings)
    assert not any(f.op_type == "opset" for f in check_model(model, "11"))


def test_asymmetric_qdq_blocks():
    x = helper.make_tensor_value_info("x", F, [4])
    y = helper.make_tensor_value_info("y", F, [4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(3, np.uint8), "zp")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq")]
    findings = blockers(check_model(graph_model(nodes, [x], [y], inits), "10"))
    assert {f.node for f in findings} == {"q", "dq"}
    assert any("zero point" in f.reason for f in findings)


def test_einsum_with_ellipsis_blocks_trt8_only():
    a = helper.make_tensor_value_info("a", F, [2, 3, 4])
    b = helper.make_tensor_value_info("b", F, [2, 4, 5])
    y = helper.make_tensor_value_info("y", F, [2, 3, 5])
    node = helper.make_node("Einsum", ["a", "b"], ["y"], name="es", equation="...ij,...jk->...ik")
    assert blocked_versions(graph_model([node], [a, b], [y], opset=17)) == ["8.5", "8.6"]


@pytest.mark.parametrize("text", ["7.1", "9", "12", "abc"])
def test_unsupported_targets_are_refused(text):
    with pytest.raises(UserError, match="TensorRT"):
        target_version(text)


def test_version_parsing_accepts_full_versions():
    assert parse_version("8.5.2") == (8, 5) and parse_version("10.3.0") == (10, 3) and parse_version("11") == (11, 0)


def _opset_model(opset):
    model = layernorm_model()
    model.opset_import[0].version = opset
    return model


@pytest.mark.parametrize("version,readable,too_new", [("8.6", 17, 18), ("9.2", 19, 20), ("10.0", 20, 21),
                                                      ("10.5", 20, 21), ("10.6", 22, 23), ("10.15", 24, 25)])
def test_opset_limit_per_release(version, readable, too_new):
    assert not [f for f in check_model(_opset_model(readable), version) if f.op_type == "opset"]
    assert [f for f in blockers(check_model(_opset_model(too_new), version)) if f.op_type == "opset"]


def test_one_version_reader_for_every_release_the_device_may_run():
    assert parse_version("9.2.0") == (9, 2) and parse_version("v10.3") == (10, 3)
    assert parse_version("10.13.3.9") == (10, 13) and parse_version("11") == (11, 0)
    assert target_version("10.3.0") == (10, 3) and target_version("8.5") == (8, 5)
    with pytest.raises(UserError, match="cannot read TensorRT version"):
        parse_version("abc")
