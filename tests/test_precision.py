"""`ds2a calibrate` on a small uint8-in/uint8-out toy ONNX with our metadata (torch-free, fast)."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fakes.onnx_models import TOY_SIZE, toy_model
from onnx import TensorProto, helper, numpy_helper

from ds2a.cli import main
from ds2a.export.metadata import read_meta
from ds2a.precision.int8 import zero_points_symmetric
from ds2a.precision.model_info import precision_of
from ds2a.trt.compat import blockers, check_model

H = W = TOY_SIZE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("prec")
    onnx.save(toy_model(), str(root / "toy.onnx"))
    assert main(["synth", str(root / "ds"), "--train", "12", "--test", "2", "--size", "48x48", "--seed", "0"]) == 0
    return root


def calibrate(files, *extra):
    return main(["calibrate", str(files / "toy.onnx"), "--data", str(files / "ds"), "--num-images", "6", *extra])


def io_types(path):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [i.type for i in sess.get_inputs()] + [o.type for o in sess.get_outputs()]


def agreement(a, b, files):
    frames = np.random.default_rng(5).integers(0, 256, (1, H, W, 3), dtype=np.uint8)
    ra = ort.InferenceSession(str(a)).run(["class_map"], {"images": frames})[0]
    rb = ort.InferenceSession(str(b)).run(["class_map"], {"images": frames})[0]
    return float((ra == rb).mean())


def test_int8_onnxruntime_is_symmetric_qdq_with_io_and_meta_kept(files):
    out = files / "toy.ort.onnx"
    assert calibrate(files, "--precision", "int8", "--target", "onnxruntime", "--out", str(out)) == 0
    model = onnx.load(str(out))
    meta = read_meta(model, out)
    assert precision_of(model) == "int8" and zero_points_symmetric(model)
    dq_weights = [n.input[0] for n in model.graph.node
                  if n.op_type == "DequantizeLinear" and n.input[0].startswith("w")]
    assert dq_weights == ["w1_quantized"]  # conv1 quantized; the final classifier stays fp32 by default
    assert meta.extra["calibration"]["exclude_nodes"] == ["classifier"]
    assert io_types(out) == io_types(files / "toy.onnx")
    assert meta.extra["precision"] == "int8" and meta.extra["calibration"]["target"] == "onnxruntime"
    # int32 biases run fast on ORT CPU but are not TensorRT input: the checker says so
    assert {f.node for f in blockers(check_model(model, "10"))} == {n.name for n in model.graph.node
                                                                    if n.input[0].startswith("b")}
    assert agreement(files / "toy.onnx", out, files) > 0.9


def test_int8_tensorrt_target_uses_modelopt_and_stays_trt_compatible(files):
    pytest.importorskip("modelopt.onnx.quantization")
    out = files / "toy.trt.onnx"
    assert calibrate(files, "--precision", "int8", "--out", str(out)) == 0
    model = onnx.load(str(out))
    assert precision_of(model) == "int8" and zero_points_symmetric(model)
    assert io_types(out) == io_types(files / "toy.onnx")
    # ModelOpt lifts the opset to 19; ds2a brings it back to 17 so JetPack 5/6.0 TensorRT parses it
    assert model.opset_import[0].version == 17
    for v in ("8.5", "8.6", "10", "11"):
        assert not blockers(check_model(model, v)), v
    assert agreement(files / "toy.onnx", out, files) > 0.9


def test_fp16_keeps_io_types_and_softmax_in_fp32(files):
    pytest.importorskip("modelopt.onnx.autocast")
    out = files / "toy.fp16.onnx"
    assert calibrate(files, "--precision", "fp16", "--out", str(out)) == 0
    model = onnx.load(str(out))
    assert precision_of(model) == "fp16" and io_types(out) == io_types(files / "toy.onnx")
    assert model.opset_import[0].version == 17  # still parseable by TensorRT 8.5/8.6
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    assert types.get(softmax.input[0]) == TensorProto.FLOAT
    assert agreement(files / "toy.onnx", out, files) > 0.99


def test_calibration_cache_is_reused_and_refused_when_images_differ(files, capsys):
    out, cache = files / "c.onnx", files / "c.calib.json"
    args = ["--precision", "int8", "--target", "onnxruntime", "--out", str(out), "--cache", str(cache)]
    assert calibrate(files, *args) == 0 and cache.is_file()
    assert json.loads(cache.read_text())["key"]["num_images"] == 6
    capsys.readouterr()
    assert calibrate(files, *args) == 0
    assert "calibration cache reused" in capsys.readouterr().out
    assert calibrate(files, *args, "--seed", "3") == 2
    assert "different calibration images" in capsys.readouterr().err
    assert calibrate(files, *args, "--method", "minmax") == 2
    assert "different settings" in capsys.readouterr().err
    assert calibrate(files, *args, "--seed", "3", "--recalibrate") == 0


def test_model_without_our_metadata_is_refused(files, tmp_path, capsys):
    onnx.save(toy_model(with_meta=False), str(tmp_path / "foreign.onnx"))
    rc = main(["calibrate", str(tmp_path / "foreign.onnx"), "--data", str(files / "ds"), "--precision", "int8",
               "--out", str(tmp_path / "o.onnx")])
    assert rc == 2 and "no 'ds2a' metadata" in capsys.readouterr().err


def test_already_quantized_model_is_refused(files, capsys):
    out = files / "again.onnx"
    assert calibrate(files, "--precision", "int8", "--target", "onnxruntime", "--out", str(out), "--no-cache") == 0
    capsys.readouterr()
    rc = main(["calibrate", str(out), "--data", str(files / "ds"), "--precision", "fp16",
               "--out", str(files / "x.onnx")])
    assert rc == 2 and "already INT8" in capsys.readouterr().err


def test_exclusion_matching_nothing_is_refused(files, capsys):
    rc = calibrate(files, "--precision", "int8", "--exclude", "NoSuchOp", "--out", str(files / "x.onnx"))
    assert rc == 2 and "--exclude 'NoSuchOp' matches no op type" in capsys.readouterr().err


def test_exclusion_by_node_name_keeps_that_node_float(files):
    out = files / "excl.onnx"
    assert calibrate(files, "--precision", "int8", "--target", "onnxruntime", "--exclude", "classifier",
                     "--no-cache", "--out", str(out)) == 0
    model = onnx.load(str(out))
    classifier = next(n for n in model.graph.node if n.op_type == "Conv" and "w2" in "".join(n.input))
    assert classifier.input[1] == "w2"  # fp32 weight, no DequantizeLinear in front


def test_percentile_is_refused_for_tensorrt_target(files, capsys):
    pytest.importorskip("modelopt.onnx.quantization")
    rc = calibrate(files, "--precision", "int8", "--method", "percentile", "--out", str(files / "x.onnx"))
    assert rc == 2 and "percentile" in capsys.readouterr().err


def test_opset19_reduce_axes_go_back_to_17_exactly_or_refuse():
    from ds2a.precision.opset import downgrade_to_17

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 1])
    axes = numpy_helper.from_array(np.array([-1], np.int64), "axes")
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1, name="rm")
    m19 = helper.make_model(helper.make_graph([node], "g", [x], [y], [axes]),
                            opset_imports=[helper.make_opsetid("", 19)])
    m19.ir_version = 9
    m17 = downgrade_to_17(m19)
    assert m17.opset_import[0].version == 17 and not m17.graph.initializer
    data = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString()).run(None, {"x": data})[0]  # noqa: E731
    assert np.array_equal(run(m17), run(m19))
    m19.graph.node[0].input[1] = "x_runtime_axes"  # axes computed at run time cannot become an attribute
    assert downgrade_to_17(m19) is None


def test_precision_and_trt_check_import_without_torch():
    import subprocess
    import sys

    code = ("import sys, ds2a.cli.calibrate, ds2a.precision.int8, ds2a.precision.fp16, "
            "ds2a.precision.calib_data, ds2a.data.calibration, ds2a.trt.compat, ds2a.export.metadata; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_onnxruntime_without_calibration_caches_is_refused_with_the_fix(files, monkeypatch, capsys):
    """onnxruntime 1.19 (the newest for Python 3.8) lacks calibration_cache_path: a message, not a TypeError."""
    import onnxruntime.quantization as quantization

    def quantize_static_1_19(model_input, model_output, calibration_data_reader, quant_format=None,
                             op_types_to_quantize=None, extra_options=None):
        raise AssertionError("must not be called")

    monkeypatch.setattr(quantization, "quantize_static", quantize_static_1_19)
    assert calibrate(files, "--precision", "int8", "--target", "onnxruntime", "--out", str(files / "old.onnx")) == 2
    err = capsys.readouterr().err
    assert "needs a newer onnxruntime" in err and "Python 3.9+" in err
