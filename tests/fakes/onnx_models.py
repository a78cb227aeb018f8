"""Tiny ONNX graphs in our convention (uint8 NHWC "images" in, "class_map" [+ "logits"] out, ModelMeta
JSON in metadata_props) whose output numpy can compute, so tests need neither torch nor a trained model.

- tiny_onnx: a 1x1 convolution (reference_logits computes the same in numpy);
- threshold_onnx: pixels darker than a threshold are class 1 (damage), like fakes/segmenter.py;
- toy_model: normalise, two convolutions, softmax, argmax: a graph to calibrate and range (precision tests).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ds2a.meta import ModelMeta
from ds2a.preprocess import normalize

CLASSES = ["background", "damage", "smudge"]


def conv_weights(k: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(k, 3)).astype(np.float32), rng.normal(size=k).astype(np.float32)


def tiny_onnx(path: Union[str, Path], size=(32, 48), batch: Union[int, str] = 1, classes: Sequence[str] = CLASSES,
              float_input: bool = False, with_logits: bool = True, with_class_map: bool = True,
              meta: Optional[ModelMeta] = None, add_meta: bool = True, seed: int = 0) -> Path:
    """Write a 1x1-conv segmenter following our ONNX convention; returns the path."""
    h, w = size
    k = len(classes)
    wt, bias = conv_weights(k, seed)
    nodes, inits = [], [numpy_helper.from_array(wt.reshape(k, 3, 1, 1), "W"), numpy_helper.from_array(bias, "B")]
    if float_input:
        inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, h, w])
        x = "images"
    else:
        inp = helper.make_tensor_value_info("images", TensorProto.UINT8, [batch, h, w, 3])
        nodes += [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
                  helper.make_node("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2])]
        x = "x"
    nodes += [helper.make_node("Conv", [x, "W", "B"], ["logits"]),
              helper.make_node("ArgMax", ["logits"], ["am"], axis=1, keepdims=0),
              helper.make_node("Cast", ["am"], ["class_map"], to=TensorProto.UINT8)]
    outputs = []
    if with_class_map:
        outputs.append(helper.make_tensor_value_info("class_map", TensorProto.UINT8, [batch, h, w]))
    if with_logits:
        outputs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, k, h, w]))
    graph = helper.make_graph(nodes, "tiny", [inp], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if add_meta:
        meta = meta or ModelMeta(arch="tiny_test", classes=list(classes), input_size=(h, w))
        helper.set_model_props(model, {"ds2a": meta.to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def reference_logits(frames_bgr: np.ndarray, classes: Sequence[str] = CLASSES, float_input: bool = False,
                     seed: int = 0) -> np.ndarray:
    """What the tiny graph computes, in numpy: (N,K,H,W)."""
    wt, bias = conv_weights(len(classes), seed)
    x = normalize(frames_bgr) if float_input else frames_bgr.astype(np.float32).transpose(0, 3, 1, 2)
    return np.einsum("kc,nchw->nkhw", wt, x) + bias[None, :, None, None]


def threshold_onnx(path: Path, size=(32, 32), threshold: float = 60.0) -> Path:
    """Our ONNX convention with a known answer: pixels darker than `threshold` are class 1 (damage)."""
    h, w = size
    nodes = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMean", ["f", "axes"], ["g"], keepdims=0),
             helper.make_node("Less", ["g", "thr"], ["b"]),
             helper.make_node("Cast", ["b"], ["class_map"], to=TensorProto.UINT8)]
    graph = helper.make_graph(
        nodes, "threshold", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, h, w, 3])],
        [helper.make_tensor_value_info("class_map", TensorProto.UINT8, [1, h, w])],
        [numpy_helper.from_array(np.array([3], np.int64), "axes"),
         numpy_helper.from_array(np.array(threshold, np.float32), "thr")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    helper.set_model_props(model, {"ds2a": ModelMeta(arch="threshold", input_size=(h, w)).to_json()})
    onnx.save(model, str(path))
    return path


TOY_SIZE = 32


def toy_model(with_meta: bool = True) -> onnx.ModelProto:
    """uint8 NHWC BGR -> normalise -> Conv/Relu/Conv -> Softmax -> ArgMax -> float -> uint8, like our export,
    at TOY_SIZE x TOY_SIZE with 4 classes: the calibration and FP16 tests' model."""
    h = w = TOY_SIZE
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((1 / np.array([58.4, 57.1, 57.4], np.float32)).reshape(1, 3, 1, 1), "scale"),
        numpy_helper.from_array((-np.array([123.7, 116.3, 103.5], np.float32) / 57.6).reshape(1, 3, 1, 1), "shift"),
        numpy_helper.from_array(rng.normal(0, 0.3, (16, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (4, 16, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Cast", ["images"], ["xf"], to=TensorProto.FLOAT, name="cast_in"),
        helper.make_node("Transpose", ["xf"], ["xt"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Mul", ["xt", "scale"], ["xs"], name="norm_mul"),
        helper.make_node("Add", ["xs", "shift"], ["xn"], name="norm_add"),
        helper.make_node("Conv", ["xn", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="classifier"),
        helper.make_node("Softmax", ["c2"], ["logits"], axis=1, name="softmax"),
        helper.make_node("ArgMax", ["logits"], ["am"], axis=1, keepdims=0, name="argmax"),
        helper.make_node("Cast", ["am"], ["amf"], to=TensorProto.FLOAT, name="cast_f"),
        helper.make_node("Cast", ["amf"], ["class_map"], to=TensorProto.UINT8, name="cast_u8"),
    ]
    graph = helper.make_graph(
        nodes, "toy", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, h, w, 3])],
        [helper.make_tensor_value_info("class_map", TensorProto.UINT8, [1, h, w]),
         helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4, h, w])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if with_meta:
        helper.set_model_props(model, {"ds2a": ModelMeta(arch="toy", input_size=(h, w)).to_json()})
    return model
