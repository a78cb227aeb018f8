"""Lossless compact storage of ONNX weights, so the TensorRT-ready demo files fit the repository.

An FP32 initializer whose every value FP16 represents exactly is stored as FP16 and turned back into
FP32 by a Cast node that this module names (`ds2a_storage/<tensor>`). Every runtime reads such a file
as it is (ONNX Runtime folds the Casts when the session opens, with the exact FP32 values); the engine
builder (ds2a/engine/builder.py) calls `expand` first, so TensorRT parses exactly the FP32 graph the
export or calibration wrote: same nodes, same order, bit-identical weights. Values FP16 cannot hold
exactly (weights with batch norm folded in, computed constants) stay FP32, so nothing is rounded.
The file records `ds2a.storage` in its metadata. Torch-free and Python 3.8 compatible (it runs on
the device before a build).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

STORAGE_KEY = "ds2a.storage"
STORAGE = "fp16-exact"  # the value of STORAGE_KEY in a compacted file
CAST_PREFIX = "ds2a_storage/"  # the Cast nodes `expand` removes, and only those
STORED_SUFFIX = "__fp16_storage"
MIN_ELEMENTS = 256  # smaller tensors are not worth a node


def is_compact(model: onnx.ModelProto) -> bool:
    """True when `model` holds weights in this module's FP16 storage."""
    return any(p.key == STORAGE_KEY for p in model.metadata_props)


def compact(model: onnx.ModelProto, min_elements: int = MIN_ELEMENTS) -> Tuple[onnx.ModelProto, int]:
    """A copy of `model` with every exactly-FP16 FP32 initializer of at least `min_elements` values stored
    as FP16 behind a Cast; returns (model, bytes saved). A model already compacted is returned as it is."""
    if is_compact(model):
        return model, 0
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    graph_inputs = {vi.name for vi in g.input}
    kept, casts, saved = [], [], 0
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT or init.name in graph_inputs:
            kept.append(init)
            continue
        values = numpy_helper.to_array(init)
        half = values.astype(np.float16)
        if values.size < min_elements or not np.array_equal(half.astype(np.float32), values, equal_nan=True):
            kept.append(init)
            continue
        kept.append(numpy_helper.from_array(half, init.name + STORED_SUFFIX))
        casts.append(helper.make_node("Cast", [init.name + STORED_SUFFIX], [init.name],
                                      name=CAST_PREFIX + init.name, to=TensorProto.FLOAT))
        saved += values.nbytes - half.nbytes
    if not casts:
        return out, 0
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)  # their inputs are initializers: first is a valid topological order
    helper.set_model_props(out, {**{p.key: p.value for p in out.metadata_props}, STORAGE_KEY: STORAGE})
    return out, saved


def expand(model: onnx.ModelProto) -> onnx.ModelProto:
    """The exact inverse of `compact`: FP32 initializers again, the storage Casts and the mark removed.
    A model that is not compacted is returned unchanged."""
    if not is_compact(model):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    stored = {init.name: init for init in g.initializer if init.name.endswith(STORED_SUFFIX)}
    restored = {}
    nodes = []
    for node in g.node:
        if node.op_type == "Cast" and node.name.startswith(CAST_PREFIX) and node.input[0] in stored:
            half = numpy_helper.to_array(stored[node.input[0]])
            restored[node.input[0]] = numpy_helper.from_array(half.astype(np.float32), node.output[0])
        else:
            nodes.append(node)
    inits = [restored.get(init.name, init) for init in g.initializer]
    del g.initializer[:]
    g.initializer.extend(inits)
    del g.node[:]
    g.node.extend(nodes)
    props = {p.key: p.value for p in out.metadata_props if p.key != STORAGE_KEY}
    del out.metadata_props[:]
    helper.set_model_props(out, props)
    return out
