"""Deformable attention for TensorRT: the three export variants, their verdict per release, the plugin.

Torch-free (numpy + onnx): `ds2a export` chooses a variant here, `ds2a export --check-trt` and the
engine builder read the verdicts through ds2a/trt/compat.py, and the CPU reference of NVIDIA's
plugin lets ONNX Runtime run (and a test check) a graph that carries the plugin node.
docs/DEFORM_ATTN.md has the evidence behind every verdict and default.

NVIDIA's `MultiscaleDeformableAttnPlugin_TRT` (TensorRT repository, plugin/multiscaleDeformableAttnPlugin:
README.md, multiscaleDeformableAttnPlugin.cpp, multiscaleDeformableIm2ColCuda.cuh):
- 5 inputs in this order: value (N, S, M, D), spatial_shapes (L, 2) INT32 as (h, w),
  level_start_index (L,) INT32, sampling_locations (N, Lq, M, L, P, 2) as (x, y) in [0, 1],
  attention_weights (N, Lq, M, L, P); one output (N, Lq, M, D) of value's type.
- value, locations, weights and the output share one type, FP32 or FP16 (supportsFormatCombination);
  linear format only. No plugin fields (attributes).
- Kernel: h = loc_y * H - 0.5, w = loc_x * W - 0.5 (align_corners=False), sample skipped unless
  -1 < h < H and -1 < w < W, each bilinear corner outside the map reads 0 (zero padding).
- Version "1" (IPluginV2DynamicExt) is registered by libnvinfer_plugin from TensorRT 8.4.1
  (CHANGELOG 8.4.1 "Added Multiscale deformable attention plugin"; api/InferPlugin.cpp of 8.4.1,
  8.5.x, 8.6, 10.x, 11.x); version "2" (IPluginV3, same I/O) from 10.11 (CHANGELOG 10.11.0), where
  version 1 became deprecated (still registered in 11.1).
- The ONNX parser (onnx/onnx-tensorrt ModelImporter.cpp, FallbackPluginImporter) looks an op it has
  no importer for up in the plugin registry by op_type, attribute `plugin_version` (default "1")
  and `plugin_namespace` (default ""); the node's domain is not read. The registry holds these
  plugins only after `trt.init_libnvinfer_plugins(logger, "")` (builder and runtime call it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .versions import Version, parse_version

VARIANTS = ("grid-sample", "gather", "trt-plugin")
PLUGIN_OP = "MultiscaleDeformableAttnPlugin_TRT"
PLUGIN_DOMAIN = "trt"
PLUGIN_INPUTS = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")
PLUGIN_RANKS = (4, 2, 1, 6, 5)
PLUGIN_SINCE: Dict[str, Version] = {"1": (8, 4), "2": (10, 11)}  # plugin_version -> first release shipping it
SAMPLER_SCOPE = "/sampler/"  # ONNX node names of the sampling (MSDeformAttn.sampler in ds2a/model)

# Public reports the verdicts rest on (docs/DEFORM_ATTN.md quotes them).
DETR_REPORT = "a public TensorRT bug report, docs/DEFORM_ATTN.md"  # GridSample MSDA wrong on 10.14, 11.1
OPSET20_REPORT = "a public TensorRT bug report, docs/DEFORM_ATTN.md"  # GridSample at opset 20 wrong on 10.13 (opset 18 right)
PARSER_FIX = "the onnx-tensorrt parser fix"  # cause of the opset-20 report: opset-20 mode 'linear' not matched, falls back to nearest
GRIDSAMPLE_BAD_FROM: Version = (10, 14)
GRIDSAMPLE_OPSET_BAD = 20  # GridSample-20 renamed 'bilinear' to 'linear'
FIX_VARIANT = "re-export with `ds2a export ... --deform-attn gather` (or trt-plugin)"


@dataclass(frozen=True)
class Verdict:
    """Whether one variant is safe on one TensorRT release: ok, risk (parses, reported wrong) or blocked."""

    variant: str
    version: str
    status: str
    reason: str

    def line(self) -> str:
        return f"TensorRT {self.version}: --deform-attn {self.variant}: {self.status.upper()} ({self.reason})"


def plugin_version_for(target: Optional[str]) -> str:
    """plugin_version to write: "2" where every release of the target line has it (11.x), else "1"."""
    if target is None:
        return "1"
    return "2" if parse_version(target) >= (11, 0) else "1"


def verdict(variant: str, version: str, opset: int = 17) -> Verdict:
    """The op-compatibility verdict of `variant` on TensorRT `version` (any release from 8.5 on)."""
    v = parse_version(version)
    vs = f"{v[0]}.{v[1]}"
    if variant == "grid-sample":
        if opset >= GRIDSAMPLE_OPSET_BAD:
            return Verdict(variant, vs, "blocked", f"GridSample-{GRIDSAMPLE_OPSET_BAD} mode 'linear' is imported as "
                           f"nearest ({OPSET20_REPORT}, {PARSER_FIX}); export at opset 17")
        if v >= GRIDSAMPLE_BAD_FROM:
            return Verdict(variant, vs, "risk", f"GridSample-decomposed deformable attention is reported silently "
                           f"wrong on TensorRT 10.14 and 11.1 ({DETR_REPORT})")
        return Verdict(variant, vs, "ok", "native GridSample layer (parsed since 8.5)")
    if variant == "gather":
        return Verdict(variant, vs, "ok", "Gather/Floor/Mul/Add/Equal/Min/Max/MatMul only, parsed since 8.5")
    if variant == "trt-plugin":
        pv = plugin_version_for(vs)
        return Verdict(variant, vs, "ok", f"{PLUGIN_OP} v{pv} ships in libnvinfer_plugin since "
                       f"{PLUGIN_SINCE[pv][0]}.{PLUGIN_SINCE[pv][1]}; TensorRT-only (no ONNX Runtime kernel)")
    raise ValueError(f"unknown deformable attention variant '{variant}'")


def default_variant(target: Optional[str]) -> str:
    """The variant `ds2a export` writes without --deform-attn (evidence: docs/DEFORM_ATTN.md).

    gather everywhere: correct on every release and in every runtime (ONNX Runtime, Triton, TensorRT),
    no plugin library to ship, and its CPU cost is measured in benchmarks/results/deform_attn.md.
    """
    del target  # one answer for every target today; kept so the choice stays per release
    return "gather"


# ---------------------------------------------------------------------------------------------
# The plugin node: interface check and CPU reference


def plugin_nodes(model: onnx.ModelProto) -> List[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == PLUGIN_OP]


def _attr(node: onnx.NodeProto, name: str) -> Optional[str]:
    for a in node.attribute:
        if a.name == name:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else str(v)
    return None


def _shape(types: Dict[str, onnx.TypeProto], name: str) -> Optional[List[Optional[int]]]:
    t = types.get(name)
    if t is None or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.tensor_type.shape.dim]


def _const(model: onnx.ModelProto, name: str) -> Optional[np.ndarray]:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
    return None


def _types(model: onnx.ModelProto, infer: bool = True) -> Dict[str, onnx.TypeProto]:
    if infer:
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # a custom op may stop inference; the exporter's value_info still helps
            pass
    g = model.graph
    out = {vi.name: vi.type for vi in list(g.input) + list(g.output) + list(g.value_info)}
    for t in g.initializer:
        out[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = helper.make_tensor_type_proto(a.t.data_type, list(a.t.dims))
    return out


def interface_problems(model: onnx.ModelProto, node: onnx.NodeProto, version: Optional[str] = None,
                       inferred: bool = False) -> List[str]:
    """What in `node` breaks the plugin's documented interface (empty: TensorRT can import it).

    `inferred`: `model` already went through ONNX shape inference (ds2a/trt/compat.py's does).
    """
    problems: List[str] = []
    if len(node.input) != 5 or len(node.output) != 1:
        return [f"needs 5 inputs and 1 output ({', '.join(PLUGIN_INPUTS)}), has {len(node.input)} and {len(node.output)}"]
    pv = _attr(node, "plugin_version") or "1"
    if pv not in PLUGIN_SINCE:
        problems.append(f"plugin_version '{pv}' does not exist (1 or 2)")
    elif version is not None and parse_version(version) < PLUGIN_SINCE[pv]:
        since = PLUGIN_SINCE[pv]
        problems.append(f"plugin_version {pv} ships only from TensorRT {since[0]}.{since[1]}")
    if (_attr(node, "plugin_namespace") or "") != "":
        problems.append("plugin_namespace must be empty (libnvinfer_plugin registers in the default namespace)")
    types = _types(model, infer=not inferred)
    elem = {name: (types[name].tensor_type.elem_type if name in types else None) for name in node.input}
    for i, (name, role, rank) in enumerate(zip(node.input, PLUGIN_INPUTS, PLUGIN_RANKS)):
        shape = _shape(types, name)
        if shape is not None and len(shape) != rank:
            problems.append(f"{role} has rank {len(shape)}, the plugin needs {rank}")
        want = {TensorProto.INT32} if i in (1, 2) else {TensorProto.FLOAT, TensorProto.FLOAT16}
        if elem[name] is not None and elem[name] not in want:
            problems.append(f"{role} is {TensorProto.DataType.Name(elem[name])}, the plugin needs "
                            f"{'INT32' if i in (1, 2) else 'FLOAT or FLOAT16'}")
    floats = {elem[node.input[i]] for i in (0, 3, 4)} - {None}
    if len(floats) > 1:
        problems.append("value, sampling_locations and attention_weights must share one type")
    shapes = [_shape(types, n) for n in node.input]
    if all(s is not None and len(s) == r for s, r in zip(shapes, PLUGIN_RANKS)):
        v, ss, st, loc, w = shapes  # type: ignore[misc]
        checks = [(v[2], loc[2], "heads of value and sampling_locations"), (v[2], w[2], "heads of value and weights"),
                  (ss[0], st[0], "levels of spatial_shapes and level_start_index"),
                  (ss[0], loc[3], "levels of spatial_shapes and sampling_locations"), (ss[0], w[3], "levels of weights"),
                  (loc[4], w[4], "points of sampling_locations and weights"), (loc[1], w[1], "queries"),
                  (loc[5], 2, "last dim of sampling_locations (x, y)"), (ss[1], 2, "last dim of spatial_shapes (h, w)")]
        problems += [f"{what} differ ({a} vs {b})" for a, b, what in checks if a is not None and b is not None and a != b]
    spatial, starts = _const(model, node.input[1]), _const(model, node.input[2])
    if spatial is None or starts is None:
        problems.append("spatial_shapes and level_start_index must be constants")
    else:
        area = spatial.astype(np.int64).prod(1)
        if not np.array_equal(starts, np.concatenate([[0], np.cumsum(area)[:-1]])):
            problems.append(f"level_start_index {starts.tolist()} is not the running sum of h*w {area.tolist()}")
        if shapes[0] is not None and shapes[0][1] is not None and shapes[0][1] != int(area.sum()):
            problems.append(f"value has {shapes[0][1]} positions, the levels {int(area.sum())}")
    return problems


def reference(value: np.ndarray, spatial_shapes: np.ndarray, level_start_index: np.ndarray,
              sampling_locations: np.ndarray, attention_weights: np.ndarray) -> np.ndarray:
    """The plugin's forward on the CPU (ms_deformable_im2col_gpu_kernel, written over arrays): (N, Lq, M, D)."""
    n, _, m, d = value.shape
    _, q, _, levels, points, _ = sampling_locations.shape
    out = np.zeros((n, q, m, d), dtype=np.float64)
    ni = np.arange(n).reshape(n, 1, 1, 1)
    mi = np.arange(m).reshape(1, 1, m, 1)
    for lvl in range(levels):
        h, w = (int(s) for s in spatial_shapes[lvl])
        start = int(level_start_index[lvl])
        v = value[:, start:start + h * w].reshape(n, h, w, m, d).astype(np.float64)
        him = sampling_locations[:, :, :, lvl, :, 1].astype(np.float64) * h - 0.5  # (N, Q, M, P)
        wim = sampling_locations[:, :, :, lvl, :, 0].astype(np.float64) * w - 0.5
        live = (him > -1) & (wim > -1) & (him < h) & (wim < w)
        h0, w0 = np.floor(him), np.floor(wim)
        lh, lw = him - h0, wim - w0
        acc = np.zeros((n, q, m, points, d))
        for dy, dx, wt in ((0, 0, (1 - lh) * (1 - lw)), (0, 1, (1 - lh) * lw), (1, 0, lh * (1 - lw)), (1, 1, lh * lw)):
            yy, xx = (h0 + dy).astype(np.int64), (w0 + dx).astype(np.int64)
            ok = live & (yy >= 0) & (yy <= h - 1) & (xx >= 0) & (xx <= w - 1)
            picked = v[ni, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1), mi]  # (N, Q, M, P, D)
            acc += (wt * ok)[..., None] * picked
        out += (acc * attention_weights[:, :, :, lvl, :, None].astype(np.float64)).sum(3)
    return out.astype(value.dtype)


# ---------------------------------------------------------------------------------------------
# CPU twin: the plugin node written out in standard ONNX ops, so ONNX Runtime runs the graph


def _expansion(model: onnx.ModelProto, node: onnx.NodeProto, k: int) -> Tuple[List[onnx.NodeProto], List[onnx.TensorProto]]:
    """Standard-op nodes computing `reference` for one plugin node (batch may be dynamic)."""
    spatial, starts = _const(model, node.input[1]), _const(model, node.input[2])
    if spatial is None or starts is None:
        raise ValueError(f"plugin node '{node.name}': spatial_shapes and level_start_index must be constants")
    p = f"{node.name or node.output[0]}__cpu{k}/"
    levels = spatial.shape[0]
    col = (levels, 1, 1)  # broadcasts against (N, M, Q, L, P, 4)
    consts = {
        "W": spatial[:, 1].astype(np.float32).reshape(col), "H": spatial[:, 0].astype(np.float32).reshape(col),
        "Wm1": (spatial[:, 1] - 1).astype(np.float32).reshape(col),
        "Hm1": (spatial[:, 0] - 1).astype(np.float32).reshape(col),
        "S": starts.astype(np.float32).reshape(col), "half": np.array(0.5, np.float32),
        "one": np.array(1.0, np.float32), "zero": np.array(0.0, np.float32),
        "dx": np.array([0, 1, 0, 1], np.float32), "dy": np.array([0, 0, 1, 1], np.float32),
        "ix": np.array(0, np.int64), "iy": np.array(1, np.int64), "ax_last": np.array([-1], np.int64),
        "ax3": np.array([3], np.int64), "shape_idx": np.array([0, 0, -1, 1], np.int64),
        "shape_w": np.array([0, 0, 0, -1], np.int64), "minus1": np.array([-1], np.int64),
    }
    inits = [numpy_helper.from_array(v, p + k_) for k_, v in consts.items()]
    c = {k_: p + k_ for k_ in consts}
    value, _, _, loc, attn = node.input
    nodes: List[onnx.NodeProto] = []

    def op(kind: str, inputs: Sequence[str], name: str, **attrs) -> str:
        nodes.append(helper.make_node(kind, list(inputs), [p + name], name=p + name, **attrs))
        return p + name

    vt = op("Transpose", [value], "vt", perm=[0, 2, 1, 3])  # (N, M, S, D)
    lt = op("Transpose", [loc], "lt", perm=[0, 2, 1, 3, 4, 5])  # (N, M, Q, L, P, 2)
    at = op("Transpose", [attn], "at", perm=[0, 2, 1, 3, 4])  # (N, M, Q, L, P)
    x = op("Unsqueeze", [op("Gather", [lt, c["ix"]], "x", axis=5), c["ax_last"]], "x1")  # (N, M, Q, L, P, 1)
    y = op("Unsqueeze", [op("Gather", [lt, c["iy"]], "y", axis=5), c["ax_last"]], "y1")
    px = op("Sub", [op("Mul", [x, c["W"]], "xw"), c["half"]], "px")
    py = op("Sub", [op("Mul", [y, c["H"]], "yh"), c["half"]], "py")
    xs = op("Add", [op("Floor", [px], "x0"), c["dx"]], "xs")  # (N, M, Q, L, P, 4)
    ys = op("Add", [op("Floor", [py], "y0"), c["dy"]], "ys")
    wx = op("Sub", [c["one"], op("Abs", [op("Sub", [px, xs], "ddx")], "adx")], "wx")
    wy = op("Sub", [c["one"], op("Abs", [op("Sub", [py, ys], "ddy")], "ady")], "wy")
    xc = op("Max", [op("Min", [xs, c["Wm1"]], "xmin"), c["zero"]], "xc")
    yc = op("Max", [op("Min", [ys, c["Hm1"]], "ymin"), c["zero"]], "yc")
    inside = op("Cast", [op("And", [op("Equal", [xs, xc], "inx"), op("Equal", [ys, yc], "iny")], "in")], "inf",
                to=TensorProto.FLOAT)
    wgt = op("Mul", [op("Mul", [op("Mul", [wx, wy], "wxy"), inside], "wxyi"),
                     op("Unsqueeze", [at, c["ax_last"]], "at1")], "wgt")
    pos = op("Add", [op("Add", [op("Mul", [yc, c["W"]], "row"), xc], "rc"), c["S"]], "pos")
    idx = op("Reshape", [op("Cast", [pos], "posi", to=TensorProto.INT64), c["shape_idx"]], "idx")  # (N, M, K, 1)
    picked = op("GatherND", [vt, idx], "picked", batch_dims=2)  # (N, M, Q*L*P*4, D)
    w4 = op("Reshape", [wgt, c["shape_w"]], "w4")  # (N, M, Q, L*P*4)
    w5 = op("Unsqueeze", [w4, c["ax3"]], "w5")  # (N, M, Q, 1, L*P*4)
    nmq = op("Shape", [w4], "nmq", start=0, end=3)
    dim = op("Shape", [vt], "d", start=3, end=4)
    g5 = op("Reshape", [picked, op("Concat", [nmq, c["minus1"], dim], "gshape", axis=0)], "g5")  # (N, M, Q, K, D)
    summed = op("Squeeze", [op("MatMul", [w5, g5], "mm"), c["ax3"]], "sum")  # (N, M, Q, D)
    nodes.append(helper.make_node("Transpose", [summed], [node.output[0]], name=p + "out", perm=[0, 2, 1, 3]))
    return nodes, inits


def expand_plugin_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every plugin node replaced by `reference` in standard ops (ONNX Runtime runs it).

    For checking only (export parity, the build gate's ONNX Runtime reference): TensorRT must get
    the plugin node itself. A model without plugin nodes is returned unchanged.
    """
    if not plugin_nodes(model):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    new_nodes: List[onnx.NodeProto] = []
    for k, node in enumerate(out.graph.node):
        if node.op_type != PLUGIN_OP:
            new_nodes.append(node)
            continue
        nodes, inits = _expansion(out, node, k)
        new_nodes += nodes
        out.graph.initializer.extend(inits)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    used = {i for n in new_nodes for i in n.input}
    consts = {i for n in plugin_nodes(model) for i in n.input[1:3]}
    inits = [t for t in out.graph.initializer if t.name in used or t.name not in consts]
    del out.graph.initializer[:]
    out.graph.initializer.extend(inits)
    keep = [o for o in out.opset_import if o.domain != PLUGIN_DOMAIN]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    drop_untyped_value_info(out)
    return out


def cpu_model_bytes(path: str) -> bytes:
    """The ONNX file at `path` with its plugin nodes expanded, serialized for an ONNX Runtime session."""
    return expand_plugin_nodes(onnx.load(path)).SerializeToString()


def drop_untyped_value_info(model: onnx.ModelProto) -> int:
    """Remove value_info entries without an element type (shape inference stops at a custom op and
    leaves some; ONNX Runtime refuses them as 'Invalid tensor data type 0'). Returns the count."""
    keep = [vi for vi in model.graph.value_info if vi.type.tensor_type.elem_type != TensorProto.UNDEFINED]
    dropped = len(model.graph.value_info) - len(keep)
    del model.graph.value_info[:]
    model.graph.value_info.extend(keep)
    return dropped


def sampling_nodes(model: onnx.ModelProto) -> List[str]:
    """Names of the deformable-attention sampling nodes (kept FP32 by ds2a calibrate, never quantized).

    The sampling coordinates need FP32 (an FP16 pixel coordinate at x = 64 is off by up to 1/32 px,
    which moves every bilinear weight); the plugin node and its inputs stay FP32 for the same reason.
    """
    return [n.name for n in model.graph.node if n.op_type == PLUGIN_OP or SAMPLER_SCOPE in n.name]
