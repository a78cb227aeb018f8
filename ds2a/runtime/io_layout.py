"""The model I/O convention, checked in one place for ONNX Runtime, TensorRT and the engine builder.

A ds2a model takes one image input, either uint8 (N,H,W,3) BGR frames or float32/float16
(N,3,H,W) normalised RGB, and gives an output 'class_map' uint8 (N,H,W) and/or 'logits'
float (N,K,H,W). Each caller lists its tensors as (name, dtype, shape) tuples in its own
terms (ONNX Runtime 'tensor(float)', TensorRT numpy types, ONNX 'float'; -1, None or a name
for a dynamic dimension) and gets back the same `IOLayout` or the same refusal. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from ..meta import INPUT_NAME, OUTPUT_CLASS_MAP, OUTPUT_LOGITS, ModelMeta

Tensor = Tuple[str, Any, Sequence[Any]]  # (name, dtype, shape)

FLOAT_INPUTS = ("float32", "float16")
EXPECTED = (f"one input '{INPUT_NAME}' uint8 (N,H,W,3) BGR (or float32/float16 (N,3,H,W) normalised RGB) "
            f"and an output '{OUTPUT_CLASS_MAP}' uint8 (N,H,W) and/or '{OUTPUT_LOGITS}' float32 (N,K,H,W)")
SHAPE_FIX = "export the model with `ds2a export CHECKPOINT.pt --out MODEL.onnx` (and build engines from that)"
_NAMED_TYPES = {"float": "float32", "double": "float64", "half": "float16"}


def dtype_name(dtype: Any) -> str:
    """'tensor(float)' (ONNX Runtime), 'float' (ONNX), a numpy dtype or type (TensorRT) -> numpy's name."""
    text = str(dtype)
    if text.startswith("tensor(") and text.endswith(")"):
        text = text[len("tensor("):-1]
    if text in _NAMED_TYPES:
        return _NAMED_TYPES[text]
    try:
        return np.dtype(dtype if not isinstance(dtype, str) else text).name
    except TypeError:
        return text


def known_dim(dim: Any) -> Optional[int]:
    """A static dimension, or None for a dynamic one (ONNX: str/None/0; TensorRT: -1)."""
    return int(dim) if isinstance(dim, (int, np.integer)) and not isinstance(dim, bool) and dim > 0 else None


@dataclass(frozen=True)
class IOLayout:
    """What a model's I/O says: how to feed it and which outputs to fetch."""

    input_name: str
    input_dtype: str  # uint8, float32 or float16
    float_input: bool  # True: float (N,3,H,W) normalised RGB; False: uint8 (N,H,W,3) BGR frames
    hw: Tuple[Optional[int], Optional[int]]  # None for a dynamic side
    batch: Optional[int]  # the fixed batch, None when dynamic
    class_map: Optional[str]  # OUTPUT_CLASS_MAP when the model has it
    logits: Optional[str]  # OUTPUT_LOGITS when the model has it
    outputs: Dict[str, Tuple[str, Tuple[Any, ...]]] = field(default_factory=dict)  # name -> (dtype, shape)

    @property
    def static_hw(self) -> Optional[Tuple[int, int]]:
        """(H, W) when both sides are fixed in the graph."""
        h, w = self.hw
        return (h, w) if h is not None and w is not None else None

    @property
    def num_classes(self) -> Optional[int]:
        """K from a static logits shape, else None."""
        if self.logits is None:
            return None
        shape = self.outputs[self.logits][1]
        return known_dim(shape[1]) if len(shape) > 1 else None

    def check_outputs(self, path: str, meta: ModelMeta, input_hw: Optional[Tuple[int, int]] = None) -> None:
        """check_output_spec on this layout's outputs against the metadata."""
        specs = self.outputs
        check_output_spec(path, meta, input_hw or self.static_hw or tuple(meta.input_size),  # type: ignore[arg-type]
                          specs.get(self.class_map) if self.class_map else None,
                          specs.get(self.logits) if self.logits else None)


def _describe(tensors: Sequence[Tensor]) -> str:
    return ", ".join(f"{name} {dtype_name(dtype)} {list(shape)}" for name, dtype, shape in tensors)


def read_io_layout(path: str, inputs: Sequence[Tensor], outputs: Sequence[Tensor],
                   fix: str = "export it with `ds2a export CHECKPOINT.pt --out MODEL.onnx`") -> IOLayout:
    """Validate the I/O convention and return the layout; UserError naming the file and `fix` otherwise."""
    shape = tuple(inputs[0][2]) if len(inputs) == 1 else ()
    dtype = dtype_name(inputs[0][1]) if len(inputs) == 1 else ""
    if len(shape) == 4 and dtype == "uint8" and known_dim(shape[3]) == 3:
        float_input, hw = False, (shape[1], shape[2])
    elif len(shape) == 4 and dtype in FLOAT_INPUTS and known_dim(shape[1]) == 3:
        float_input, hw = True, (shape[2], shape[3])
    else:
        raise UserError(f"{path} has inputs [{_describe(inputs)}]; expected {EXPECTED}; {fix}")
    specs = {name: (dtype_name(dt), tuple(sh)) for name, dt, sh in outputs}
    class_map = OUTPUT_CLASS_MAP if OUTPUT_CLASS_MAP in specs else None
    logits = OUTPUT_LOGITS if OUTPUT_LOGITS in specs else None
    if class_map is None and logits is None:
        raise UserError(f"{path} has outputs [{_describe(outputs)}]; expected {EXPECTED}; {fix}")
    return IOLayout(input_name=str(inputs[0][0]), input_dtype=dtype, float_input=float_input,
                    hw=(known_dim(hw[0]), known_dim(hw[1])), batch=known_dim(shape[0]),
                    class_map=class_map, logits=logits, outputs=specs)


def check_output_spec(path: str, meta: ModelMeta, input_hw: Tuple[int, int],
                      class_map: Optional[Tuple[Any, Sequence[Any]]] = None,
                      logits: Optional[Tuple[Any, Sequence[Any]]] = None) -> None:
    """Refuse a model whose outputs (dtype, shape) disagree with our convention or its metadata.

    class_map: uint8 (N,H,W) or (N,1,H,W); logits: float (N,K,H,W) with K = the metadata's
    classes. A channels-last (N,H,W,K) logits output or a class count that differs from the
    metadata would otherwise be read as other classes and judged wrongly.
    """
    names = ", ".join(meta.classes)
    if meta.num_classes < 2:
        raise UserError(f"{path}: its metadata lists {meta.num_classes} class(es) ({names}); a segmentation "
                        f"model needs background and at least one defect class; {SHAPE_FIX}")
    if class_map is not None:
        dtype, shape = dtype_name(class_map[0]), tuple(class_map[1])
        if dtype != "uint8":
            raise UserError(f"{path}: output 'class_map' is {dtype}; expected uint8 class ids (N,H,W); {SHAPE_FIX}")
        if not (len(shape) == 3 or (len(shape) == 4 and known_dim(shape[1]) == 1)):
            raise UserError(f"{path}: output 'class_map' has shape {list(shape)}; expected (N,H,W) class ids, "
                            f"one per pixel; {SHAPE_FIX}")
    if logits is not None:
        dtype, shape = dtype_name(logits[0]), tuple(logits[1])
        if dtype not in ("float32", "float16"):
            raise UserError(f"{path}: output 'logits' is {dtype}; expected float32 (N,K,H,W); {SHAPE_FIX}")
        if len(shape) != 4:
            raise UserError(f"{path}: output 'logits' has shape {list(shape)}; expected (N,K,H,W); {SHAPE_FIX}")
        dims: List[Optional[int]] = [known_dim(d) for d in shape]
        hw = tuple(input_hw)
        if tuple(dims[1:3]) == hw and tuple(dims[2:4]) != hw:
            raise UserError(f"{path}: output 'logits' {list(shape)} is channels-last (N,H,W,K); ds2a reads "
                            f"classes from axis 1 (N,K,H,W); {SHAPE_FIX}")
        if dims[1] is not None and dims[1] != meta.num_classes:
            raise UserError(f"{path}: output 'logits' has {dims[1]} classes but its metadata lists "
                            f"{meta.num_classes} ({names}); the model and its metadata disagree; {SHAPE_FIX}")
