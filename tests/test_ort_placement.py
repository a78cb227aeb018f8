"""INT8 for ONNX Runtime CPU: a tensor shared by two convolutions and a float Add still gets integer convs."""
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ds2a.cli import main
from ds2a.export.metadata import write_meta
from ds2a.meta import ModelMeta
from ds2a.precision.int8 import zero_points_symmetric
from ds2a.precision.ort_placement import separate_qdq_pairs

H = W = 32


def block_model():
    """A ResNet-like block: stem conv -> relu -> {conv1 -> relu -> conv2, downsample conv, identity} -> Add."""
    rng = np.random.default_rng(1)

    def w(name, cout, cin, k=3):
        return [numpy_helper.from_array(rng.normal(0, 0.2, (cout, cin, k, k)).astype(np.float32), name),
                numpy_helper.from_array(rng.normal(0, 0.05, cout).astype(np.float32), name + "_b")]

    inits = [numpy_helper.from_array(np.full((1, 3, 1, 1), 1 / 58.0, np.float32), "scale"),
             numpy_helper.from_array(np.full((1, 3, 1, 1), -2.0, np.float32), "shift"),
             *w("ws", 8, 3), *w("w1", 8, 8), *w("w2", 8, 8), *w("wd", 8, 8, 1), *w("wc", 4, 8, 1)]
    conv = lambda x, wn, y, k=3: helper.make_node("Conv", [x, wn, wn + "_b"], [y], pads=[k // 2] * 4, name=y)  # noqa: E731
    nodes = [
        helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT, name="cast_in"),
        helper.make_node("Transpose", ["xf"], ["xt"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Mul", ["xt", "scale"], ["xs"], name="norm_mul"),
        helper.make_node("Add", ["xs", "shift"], ["xn"], name="norm_add"),
        conv("xn", "ws", "stem"), helper.make_node("Relu", ["stem"], ["s"], name="stem_relu"),
        conv("s", "w1", "c1"), helper.make_node("Relu", ["c1"], ["r1"], name="relu1"), conv("r1", "w2", "c2"),
        conv("s", "wd", "down", 1),
        helper.make_node("Add", ["c2", "down"], ["a1"], name="add_down"),
        helper.make_node("Add", ["a1", "s"], ["a2"], name="add_identity"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"), conv("r2", "wc", "logits", 1),
        helper.make_node("ArgMax", ["logits"], ["am"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["am"], ["class_map"], to=TensorProto.UINT8, name="cast_u8"),
    ]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, H, W, 3])],
                              [helper.make_tensor_value_info("class_map", TensorProto.UINT8, [1, H, W])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    write_meta(model, ModelMeta(arch="toy", input_size=(H, W)))
    return model


def ort_ops(path, tmp_path):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node)


@pytest.fixture(scope="module")
def int8(tmp_path_factory):
    root = tmp_path_factory.mktemp("place")
    onnx.save(block_model(), str(root / "block.onnx"))
    assert main(["synth", str(root / "ds"), "--train", "8", "--test", "1", "--size", "48x48", "--seed", "0"]) == 0
    out = root / "block.int8.onnx"
    assert main(["calibrate", str(root / "block.onnx"), "--data", str(root / "ds"), "--num-images", "8",
                 "--precision", "int8", "--target", "onnxruntime", "--method", "minmax", "--no-cache",
                 "--out", str(out)]) == 0
    return root, out


def test_every_quantized_conv_runs_as_an_integer_kernel_on_ort_cpu(int8, tmp_path):
    root, out = int8
    ops = ort_ops(out, tmp_path)
    # the classifier (last compute layer) stays float by default; the other four convs are integer
    assert ops["QLinearConv"] == 4 and ops["Conv"] + ops["FusedConv"] == 1, ops
    model = onnx.load(str(out))
    assert zero_points_symmetric(model)
    users = Counter(i for n in model.graph.node for i in n.input)
    for n in model.graph.node:  # every activation DQ feeds exactly one node
        if n.op_type == "DequantizeLinear" and not n.input[0].endswith("_quantized"):
            assert users[n.output[0]] == 1, n.name


def test_int8_still_agrees_with_fp32(int8):
    root, out = int8
    x = np.random.default_rng(3).integers(0, 256, (1, H, W, 3), dtype=np.uint8)
    ref = ort.InferenceSession(str(root / "block.onnx")).run(["class_map"], {"images": x})[0]
    got = ort.InferenceSession(str(out)).run(["class_map"], {"images": x})[0]
    assert (ref == got).mean() > 0.9


def test_shared_dq_is_split_and_float_readers_bypass_it():
    """Unit view: one Q->DQ read by two convs and an Add becomes two pairs; the Add reads the float tensor."""
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("Conv", ["xd", "w"], ["a"], name="conv_a"),
             helper.make_node("Conv", ["xd", "w"], ["b"], name="conv_b"),
             helper.make_node("Add", ["xd", "a"], ["c"], name="add")]
    w = numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 1, 2, 2])  # noqa: E731
    model = helper.make_model(helper.make_graph(nodes, "g", [vi("x")], [vi("b"), vi("c")], [s, z, w]),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert separate_qdq_pairs(model, ["Conv"]) == (1, 1)
    by_name = {n.name: n for n in model.graph.node}
    assert by_name["add"].input[0] == "x"
    assert by_name["conv_a"].input[0] == "xd" and by_name["conv_b"].input[0] != "xd"
    new_scale = [t for t in model.graph.initializer if t.name == by_name["q_pair1"].input[1]][0]
    assert 0 < numpy_helper.to_array(new_scale) - np.float32(0.1) < 1e-7  # same quantization, distinct bytes
    onnx.checker.check_model(model)
    x = np.random.default_rng(0).normal(0, 1, (1, 1, 2, 2)).astype(np.float32)
    b, c = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    assert np.allclose(c, x + np.round(x / 0.1).clip(-128, 127) * 0.1, atol=1e-6)
