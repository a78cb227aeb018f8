"""Activation ranges of every tensor in bounded memory: what FP16 conversion needs to keep overflow in fp32.

ModelOpt AutoCast's own reference run marks every tensor as a graph output and gets all of them
back for every calibration batch (ds2a_r18 at 512x512: 5.3 GiB of tensors per image); only
max |x|, min, max and the shape of each tensor are used afterwards. Here the tensors
are split, in topological order, into chunks of at most `budget_bytes`; each chunk gets its own
session over the graph prefix that produces it, every batch is run and reduced to those four
numbers, and the outputs are dropped before the next batch. Peak memory is then the weights plus
one chunk (plus ONNX Runtime's working set), whatever the model size or the number of images.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np
import onnx
from onnx import helper

DEFAULT_BUDGET_BYTES = 768 * 2**20
logger = logging.getLogger(__name__)
_NUMERIC = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16,
            onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT16, onnx.TensorProto.UINT16,
            onnx.TensorProto.INT32, onnx.TensorProto.UINT32, onnx.TensorProto.INT64, onnx.TensorProto.UINT64}


def tensor_bytes(vi: onnx.ValueInfoProto) -> Tuple[int, bool]:
    """(bytes, known): byte size of a statically shaped tensor; (0, False) when any dimension is symbolic."""
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return 0, False
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
    if any(d < 0 for d in dims):
        return 0, False
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
    return int(np.prod(dims, dtype=np.int64)) * itemsize, True


def plan_chunks(model: onnx.ModelProto, budget_bytes: int) -> List[Tuple[int, List[onnx.ValueInfoProto]]]:
    """Split the numeric node outputs into topological chunks: [(index of last node, [value infos])].

    A tensor of unknown size counts as the largest known one, so a chunk never silently exceeds the
    budget by much; a single tensor larger than the budget gets a chunk of its own.
    """
    infos = {vi.name: vi for vi in list(model.graph.value_info) + list(model.graph.output)}
    sizes = [tensor_bytes(vi) for vi in infos.values()]
    largest = max([b for b, known in sizes if known] or [budget_bytes])
    where: Dict[str, int] = {}
    chunks: List[List[onnx.ValueInfoProto]] = [[]]
    used = 0
    for idx, node in enumerate(model.graph.node):
        for name in node.output:
            vi = infos.get(name)
            if not name or vi is None or vi.type.tensor_type.elem_type not in _NUMERIC:
                continue
            size, known = tensor_bytes(vi)
            size = size if known else largest
            if chunks[-1] and used + size > budget_bytes:
                chunks.append([])
                used = 0
            chunks[-1].append(vi)
            where[name] = idx
            used += size
    # each chunk's session runs the graph up to the last node producing one of its tensors
    return [(max(where[vi.name] for vi in vis), vis) for vis in chunks if vis]


def _prefix_model(model: onnx.ModelProto, end: int, outputs: Sequence[onnx.ValueInfoProto]) -> bytes:
    """Serialized model of nodes[:end+1] whose outputs are `outputs` (unused initializers dropped)."""
    nodes = list(model.graph.node[: end + 1])
    used = {i for n in nodes for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    graph = helper.make_graph(nodes, model.graph.name, list(model.graph.input), list(outputs), inits)
    prefix = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    return prefix.SerializeToString()


def _stats(arr: np.ndarray) -> Tuple[float, float, float]:
    if arr.size == 0:
        return 0.0, 0.0, 0.0
    a = arr.astype(np.float64, copy=False) if arr.dtype == np.bool_ else arr
    lo, hi = float(np.min(a)), float(np.max(a))
    return max(abs(lo), abs(hi)), lo, hi


def collect_ranges(model: onnx.ModelProto, batches: Callable[[], Iterable[Dict[str, np.ndarray]]],
                   budget_bytes: int = DEFAULT_BUDGET_BYTES, providers: Sequence[str] = ("CPUExecutionProvider",)
                   ) -> "OrderedDict[str, Tuple[float, float, float, Tuple[int, ...]]]":
    """name -> (absmax, min, max, shape) over all batches for every graph input and numeric node output.

    `batches` is called once per chunk and must yield the same batches each time (it may load them
    lazily, e.g. from files, so they are never all in memory).
    """
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_cpu_mem_arena = False  # give each chunk's memory back before the next session
    so.log_severity_level = 3
    result: "OrderedDict[str, Tuple[float, float, float, Tuple[int, ...]]]" = OrderedDict()

    def merge(name: str, arr: np.ndarray) -> None:
        absmax, lo, hi = _stats(np.asarray(arr))
        if name in result:
            a0, l0, h0, shape = result[name]
            result[name] = (max(a0, absmax), min(l0, lo), max(h0, hi), shape)
        else:
            result[name] = (absmax, lo, hi, tuple(np.shape(arr)))

    t0 = time.perf_counter()
    n_batches = 0
    for batch in batches():
        n_batches += 1
        for name, arr in batch.items():
            merge(name, arr)
    chunks = plan_chunks(model, budget_bytes)
    for end, outputs in chunks:
        sess = ort.InferenceSession(_prefix_model(model, end, outputs), so, providers=list(providers))
        names = [o.name for o in outputs]
        for batch in batches():
            values = sess.run(names, dict(batch))
            for name, arr in zip(names, values):
                merge(name, arr)
            del values
        del sess
    logger.info(f"fp16 reference ranges: {len(result)} tensors, {n_batches} batch(es), {len(chunks)} chunk(s) of "
                f"<= {budget_bytes / 2**20:.0f} MiB, {time.perf_counter() - t0:.0f} s")
    return result


def autocast_reference_runner(budget_bytes: int = DEFAULT_BUDGET_BYTES) -> Any:
    """A drop-in for ModelOpt AutoCast's ReferenceRunner whose `run` streams (see module docstring)."""
    import os

    from modelopt.onnx.autocast.referencerunner import TensorStats

    class StreamingReferenceRunner:
        def __init__(self, model: onnx.ModelProto, providers: Any = ("cpu",), trt_plugins: Any = ()) -> None:
            self.model = model

        def run(self, inputs: Any = None) -> "OrderedDict[str, Any]":
            if not (isinstance(inputs, str) and os.path.isdir(inputs)):
                raise ValueError("the streaming reference runner reads a directory of .npz batches")
            files = sorted(os.path.join(inputs, f) for f in os.listdir(inputs) if f.endswith(".npz"))

            def batches() -> Iterable[Dict[str, np.ndarray]]:
                for f in files:
                    with np.load(f) as z:
                        yield {k: z[k] for k in z.files}

            stats = collect_ranges(self.model, batches, budget_bytes)
            return OrderedDict((k, TensorStats(absmax=a, min_val=lo, max_val=hi, shape=s))
                               for k, (a, lo, hi, s) in stats.items())

    return StreamingReferenceRunner
