"""One I/O convention check (ds2a/runtime/io_layout.py) for ONNX Runtime, TensorRT and the engine builder.

Each caller describes its tensors in its own terms (ORT 'tensor(float)' and named dims, TensorRT
numpy types and -1, ONNX 'float' and '?'); the same model must give the same layout and the same
refusal whichever way it is described.
"""
from __future__ import annotations

import numpy as np
import pytest

from ds2a.errors import UserError
from ds2a.meta import ModelMeta
from ds2a.runtime.io_layout import IOLayout, dtype_name, read_io_layout

CLASSES = ["background", "damage", "smudge"]
# one float NCHW model with a dynamic batch, described three ways: (inputs, outputs)
DESCRIBED = {
    "onnxruntime": ([("images", "tensor(float)", ["batch", 3, 32, 48])],
                    [("class_map", "tensor(uint8)", ["batch", 32, 48]), ("logits", "tensor(float)", ["batch", 3, 32, 48])]),
    "tensorrt": ([("images", np.float32, (-1, 3, 32, 48))],
                 [("class_map", np.uint8, (-1, 32, 48)), ("logits", np.float32, (-1, 3, 32, 48))]),
    "onnx": ([("images", "float", ["?", 3, 32, 48])],
             [("class_map", "uint8", ["?", 32, 48]), ("logits", "float", ["?", 3, 32, 48])]),
}


@pytest.mark.parametrize("who", sorted(DESCRIBED))
def test_every_description_gives_the_same_layout(who) -> None:
    layout = read_io_layout("m", *DESCRIBED[who])
    assert isinstance(layout, IOLayout)
    assert (layout.input_name, layout.input_dtype, layout.float_input) == ("images", "float32", True)
    assert (layout.static_hw, layout.batch, layout.num_classes) == ((32, 48), None, 3)
    assert (layout.class_map, layout.logits) == ("class_map", "logits")
    layout.check_outputs("m", ModelMeta(arch="t", classes=CLASSES, input_size=(32, 48)))


def test_uint8_frames_fixed_batch_and_float16_input() -> None:
    layout = read_io_layout("m", [("x", "tensor(uint8)", [4, 64, 64, 3])], [("class_map", "tensor(uint8)", [4, 64, 64])])
    assert (layout.float_input, layout.batch, layout.hw, layout.logits, layout.num_classes) == (False, 4, (64, 64),
                                                                                                 None, None)
    half = read_io_layout("m", [("x", np.float16, (1, 3, 8, 8))], [("logits", np.float16, (1, 2, 8, 8))])
    assert half.float_input and half.input_dtype == "float16" and half.class_map is None


@pytest.mark.parametrize("inputs", [
    [("x", "tensor(float)", [1, 8])],  # not an image
    [("x", "tensor(float)", [1, 1, 8, 8])],  # gray NCHW
    [("x", "tensor(int64)", [1, 8, 8, 3])],  # int frames
    [("a", "tensor(uint8)", [1, 8, 8, 3]), ("b", "tensor(uint8)", [1, 8, 8, 3])],  # two inputs
])
def test_off_convention_inputs_are_refused_with_one_message(inputs) -> None:
    with pytest.raises(UserError, match=r"^m\.onnx has inputs \[.*\]; expected one input 'images' uint8 \(N,H,W,3\) "
                                        r"BGR \(or float32/float16 \(N,3,H,W\) normalised RGB\).*; the fix$"):
        read_io_layout("m.onnx", inputs, [("class_map", "tensor(uint8)", [1, 8, 8])], "the fix")


def test_outputs_without_class_map_or_logits_are_refused_and_listed() -> None:
    with pytest.raises(UserError, match=r"m\.engine has outputs \[boxes float32 \[1, 100, 4\]\]; expected .*'class_map'"):
        read_io_layout("m.engine", [("images", np.uint8, (1, 8, 8, 3))], [("boxes", np.float32, (1, 100, 4))])


def test_dtype_names_agree_across_runtimes() -> None:
    assert {dtype_name(t) for t in ("tensor(float)", "float", np.float32, "float32")} == {"float32"}
    assert {dtype_name(t) for t in ("tensor(float16)", "float16", np.float16, "half")} == {"float16"}
    assert dtype_name("tensor(uint8)") == dtype_name(np.uint8) == "uint8"
