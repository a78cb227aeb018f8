"""A model whose outputs disagree with its metadata is refused when it opens or warms up, never run.

Each graph below would otherwise run and PASS parts: class ids outside the class list are
skipped, a float or rank-4 class map is cast or squeezed into nonsense, channels-last logits
are read as 64 classes, and a metadata class list shorter than the output renames classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ds2a.errors import UserError
from ds2a.inspect.quantify import quantify
from ds2a.meta import ModelMeta
from ds2a.runtime import open_model
from ds2a.runtime.base import InferResult, Segmenter, check_results
from ds2a.runtime.io_layout import check_output_spec

H = W = 64
CLASSES = ["background", "damage", "smudge", "dust"]


def _onnx(path: Path, out_name: str, out_type: int, out_shape: List[int], nodes, inits=(),
          classes: Optional[List[str]] = CLASSES) -> Path:
    """uint8 NHWC 'images' -> one output built by `nodes` from the float NCHW tensor 'x'."""
    pre = [helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT),
           helper.make_node("Transpose", ["f"], ["x"], perm=[0, 3, 1, 2])]
    graph = helper.make_graph(pre + nodes, "bad", [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                                                                 [1, H, W, 3])],
                              [helper.make_tensor_value_info(out_name, out_type, out_shape)], list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if classes is not None:
        helper.set_model_props(model, {"ds2a": ModelMeta(arch="bad", classes=classes, input_size=(H, W)).to_json()})
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _conv_logits(k: int):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(k, 3, 1, 1)).astype(np.float32), "Wt")]
    return [helper.make_node("Conv", ["x", "Wt"], ["logits"])], inits


def _constant_class_map(value: int, dtype: int = TensorProto.UINT8, rank4: bool = False):
    """class_map = value everywhere (ids computed from the image so the graph keeps its input)."""
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
             numpy_helper.from_array(np.array(value, np.float32), "v"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array([3], np.int64), "last")]
    nodes = [helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=0),
             helper.make_node("Mul", ["m", "zero"], ["z"]),
             helper.make_node("Add", ["z", "v"], ["c"]),
             helper.make_node("Cast", ["c"], ["cm" if rank4 else "class_map"], to=dtype)]
    if rank4:
        nodes.append(helper.make_node("Unsqueeze", ["cm", "last"], ["class_map"]))
    return nodes, inits


def test_class_ids_outside_the_class_list_are_refused_at_warmup(tmp_path):
    nodes, inits = _constant_class_map(7)
    model = open_model(str(_onnx(tmp_path / "ids.onnx", "class_map", TensorProto.UINT8, [1, H, W], nodes, inits)))
    with pytest.raises(UserError, match="gave class id 7 but its metadata lists 4 classes"):
        model.warmup(1)


def test_a_float_class_map_is_refused_when_the_model_opens(tmp_path):
    nodes, inits = _constant_class_map(1, TensorProto.FLOAT)
    path = _onnx(tmp_path / "float.onnx", "class_map", TensorProto.FLOAT, [1, H, W], nodes, inits)
    with pytest.raises(UserError, match="output 'class_map' is float32; expected uint8"):
        open_model(str(path))


def test_a_rank_4_class_map_is_refused_when_the_model_opens(tmp_path):
    nodes, inits = _constant_class_map(1, rank4=True)
    path = _onnx(tmp_path / "rank4.onnx", "class_map", TensorProto.UINT8, [1, H, W, 1], nodes, inits)
    with pytest.raises(UserError, match=r"output 'class_map' has shape \[1, 64, 64, 1\]"):
        open_model(str(path))


@pytest.mark.parametrize("classes", [CLASSES, None], ids=["with-metadata", "foreign"])
def test_channels_last_logits_are_refused_not_read_as_64_classes(tmp_path, classes, caplog):
    nodes, inits = _conv_logits(4)
    nodes[0].output[0] = "nchw"
    nodes.append(helper.make_node("Transpose", ["nchw"], ["logits"], perm=[0, 2, 3, 1]))
    path = _onnx(tmp_path / "nhwc.onnx", "logits", TensorProto.FLOAT, [1, H, W, 4], nodes, inits, classes)
    with pytest.raises(UserError, match="channels-last"):
        open_model(str(path))
    assert ("generic class names" in caplog.text) == (classes is None)


def test_metadata_with_fewer_classes_than_the_logits_is_refused(tmp_path):
    nodes, inits = _conv_logits(4)
    path = _onnx(tmp_path / "two.onnx", "logits", TensorProto.FLOAT, [1, 4, H, W], nodes, inits,
                 ["background", "damage"])
    with pytest.raises(UserError, match="'logits' has 4 classes but its metadata lists 2"):
        open_model(str(path))


def test_a_conforming_model_opens_and_warms_up(tmp_path):
    nodes, inits = _conv_logits(4)
    model = open_model(str(_onnx(tmp_path / "ok.onnx", "logits", TensorProto.FLOAT, [1, 4, H, W], nodes, inits)))
    model.warmup(2)
    assert model.infer(np.zeros((H, W, 3), np.uint8)).class_map.max() < 4


class _Const(Segmenter):
    """A backend that returns whatever class map it is given (dynamic shapes escape the open-time check)."""

    backend = "const"

    def __init__(self, class_map, logits=None) -> None:
        super().__init__(ModelMeta(arch="const", classes=CLASSES, input_size=(8, 8)))
        self.class_map, self.logits = class_map, logits

    def infer_batch(self, frames):
        return [InferResult(self.class_map, self.logits) for _ in self.prepare_batch(frames)]


@pytest.mark.parametrize("class_map, logits, words", [
    (np.full((8, 8), 4, np.uint8), None, "gave class id 4"),
    (np.zeros((8, 8), np.int64), None, "class map int64"),
    (np.zeros((1, 8, 8), np.uint8), None, "class map uint8 [1, 8, 8]"),
    (np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.float32), "gave logits [8, 8, 4]"),
])
def test_every_backend_is_checked_at_warmup_through_the_base_class(class_map, logits, words):
    with pytest.raises(UserError, match=words.replace("[", r"\[").replace("]", r"\]")):
        _Const(class_map, logits).warmup(1)
    _Const(np.full((8, 8), 3, np.uint8), np.zeros((4, 8, 8), np.float32)).warmup(1)


def test_output_spec_accepts_dynamic_dimensions_and_the_n1hw_class_map():
    meta = ModelMeta(arch="x", classes=CLASSES, input_size=(H, W))
    check_output_spec("m", meta, (H, W), ("tensor(uint8)", ["N", 1, "h", "w"]), ("tensor(float)", ["N", "K", "h", "w"]))
    check_output_spec("m.engine", meta, (H, W), (np.uint8, (-1, H, W)), (np.float16, (-1, 4, H, W)))
    with pytest.raises(UserError, match="1 class"):
        check_output_spec("m", ModelMeta(arch="x", classes=["background"], input_size=(H, W)), (H, W))
    check_results("m", meta, [InferResult(np.zeros((2, 2), np.uint8))])


def test_a_class_id_beyond_the_list_during_the_run_is_an_error_not_a_pass():
    cm = np.zeros((8, 8), np.uint8)
    cm[2:4, 2:4] = 9
    with pytest.raises(UserError, match="class id 9 but lists 4 classes"):
        quantify(cm, CLASSES)


@pytest.mark.parametrize("output, words", [
    ({"name": "logits", "shape": [1, 8, 8, 4], "dtype": "FLOAT"}, "channels-last"),
    ({"name": "class_map", "shape": [1, 8, 8], "dtype": "FLOAT"}, "'class_map' is float32; expected uint8"),
    ({"name": "class_map", "shape": [1, 8, 8, 2], "dtype": "UINT8"}, r"'class_map' has shape \[1, 8, 8, 2\]"),
])
def test_an_engine_is_checked_by_the_same_rules_when_it_opens(tmp_path, output, words):
    import json
    import warnings

    from trt_stubs.fake_trt import MAGIC
    from trt_stubs.helpers import NEWEST_10, fake_for

    from ds2a.runtime.tensorrt_backend import TensorRTSegmenter

    fake, cuda = fake_for(NEWEST_10)
    engine = tmp_path / "odd.engine"
    io = [{"name": "images", "shape": [1, 8, 8, 3], "dtype": "UINT8", "mode": "INPUT", "profile": []},
          {**output, "mode": "OUTPUT", "profile": []}]
    engine.write_bytes(MAGIC + json.dumps({"version": NEWEST_10, "io": io}).encode())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no sidecar: generic classes
        with pytest.raises(UserError, match=words):
            TensorRTSegmenter(str(engine), trt_module=fake, cuda_api=cuda)
