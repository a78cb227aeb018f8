"""Which TensorRT versions can parse an ONNX graph, node by node, and what to do where one cannot.

Torch-free (onnx only): `ds2a export --check-trt` and the engine builder (on the device, before
TensorRT parses) run the same check. Parser support cannot be asked of the `tensorrt` module, so
this is a table, from these sources:
(the ONNX parser is onnx/onnx-tensorrt; each release branch has docs/operators.md and docs/Changelog.md)
- 8.5 GA changelog: "Added ... `GridSample` and `NonZero` operations", "support for importing
  ONNX networks with `UINT8` I/O types"; 8.5 operators.md: "supports operators up to Opset 17",
  `LayerNormalization | N`, Einsum "Ellipsis and diagonal operations are not supported.
  Broadcasting between inputs is not supported", Slice/Squeeze "`axes` must be an initializer",
  Cast types FP32/FP16/INT32/INT8/BOOL, "TensorRT will attempt to cast down INT64 to INT32".
- 8.6 EA changelog: "Added support for `GroupNormalization`, `LayerNormalization`, `IsInf`".
- 9.x operators.md: "supports operators up to Opset 19"; 10.0 operators.md: "supports operators
  in the inclusive range of opset 9 to opset 20".
- 9.0 EA changelog: "Added support for INT64 data type. The ONNX parser no longer automatically
  casts INT64 to INT32"; 9.3: "native support for INT32 and INT64 types for ArgMin and ArgMax".
- 10.x operators.md (10.15): opset 9 to 24; "UINT8 is only supported as network input or output
  tensor types"; GridSample "Input must be 4D input"; Resize modes `nearest`, `linear` only,
  "Antialiasing is not supported"; LayerNormalization "Only the first output `Y` is supported";
  DequantizeLinear/QuantizeLinear "zero_point must be zero". 10.1 adds DeformConv, 10.3 tensor
  `axes` for Slice, 10.4 windows, 10.5 STFT, 10.7 dynamic axes for Squeeze/Unsqueeze,
  10.14 Attention, 10.15 RMSNormalization.
- 11.2 release notes: "Added support for the DFT operator and 5D GridSample operators".
- TensorRT 8.6 API docs, DataType.UINT8: "uint8 conversions are only supported for {float32,
  float16} ... not supported for {int8, int32, bool}" (hence ArgMax -> float -> uint8).
- TensorRT IGridSampleLayer: linear/nearest/cubic interpolation, align_corners 0/1, fill
  (zeros)/clamp (border)/reflect padding, i.e. every ONNX GridSample attribute on 4-D input.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import onnx
from onnx import TensorProto

from . import deform_attn
from .versions import JETPACK, TARGETS, Version, parse_version, version_text

SUPPORTED = TARGETS  # the TensorRT lines `ds2a export --check-trt all` checks

# Ops the parser gained after 8.5 (first version that parses them).
OP_SINCE: Dict[str, Version] = {
    "GridSample": (8, 5), "NonZero": (8, 5), "Mod": (8, 5), "Trilu": (8, 5), "RoiAlign": (8, 5),
    "MeanVarianceNormalization": (8, 5), "RandomNormal": (8, 5),
    "LayerNormalization": (8, 6), "GroupNormalization": (8, 6), "IsInf": (8, 6),
    "Hardmax": (9, 2), "DeformConv": (10, 1), "BlackmanWindow": (10, 4), "HammingWindow": (10, 4),
    "HannWindow": (10, 4), "STFT": (10, 5), "Gelu": (10, 0), "Mish": (10, 0),
    "Attention": (10, 14), "RMSNormalization": (10, 15), "RotaryEmbedding": (10, 15), "DFT": (11, 2),
}
# Ops no supported TensorRT parses (operators.md marks them N in every release we target).
NEVER = {
    "Unique", "Compress", "Det", "BitShift", "ConvInteger", "MatMulInteger", "QLinearConv",
    "QLinearMatMul", "DynamicQuantizeLinear", "StringNormalizer", "TfIdfVectorizer", "Col2Im",
    "CenterCropPad", "AffineGrid", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor",
    "ImageDecoder", "RegexFullMatch", "Multinomial", "MaxRoiPool", "MaxUnpool", "Optional",
    "OptionalGetElement", "OptionalHasElement", "SequenceAt", "SequenceConstruct", "SequenceEmpty",
    "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap", "SplitToSequence",
    "ConcatFromSequence", "NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss",
    "MatMulNBits", "QLinearAdd", "QLinearMul", "QLinearSigmoid", "QLinearConcat",
}
FIX_OP = {
    "LayerNormalization": "re-export with `ds2a export ... --trt 8.5` (LayerNormalization decomposed "
                          "into ReduceMean/Sub/Mul/Sqrt/Div, same result in fp32) or use TensorRT 8.6+ (JetPack 6)",
    "GroupNormalization": "use TensorRT 8.6+ (JetPack 6) or decompose into InstanceNormalization + Mul/Add",
    "GridSample": "use TensorRT 8.5+ (JetPack 5.1); older versions need a GridSample plugin",
}
# 8.x: "up to Opset 17"; 9.x: "up to Opset 19"; 10.0-10.5: "opset 9 to opset 20"; 10.6 "Updated ONNX
# submodule version to 1.17.0" (opset 22); 10.15 / 11.x: "opset 9 to opset 24"; 11.5 "Added support
# for ONNX opset 25".
MAX_OPSET = {(8, 5): 17, (8, 6): 17, (9, 0): 19, (10, 0): 20, (10, 6): 22, (10, 15): 24, (11, 5): 25}
RESIZE_MODES = {"nearest", "linear"}
RESIZE_COORDS = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16}


@dataclass
class Finding:
    """One node (or the model) that a TensorRT version cannot parse as-is, or parses with a caveat."""

    version: str
    node: str
    op_type: str
    severity: str  # "blocker" or "warning"
    reason: str
    fix: str

    def line(self) -> str:
        tag = "BLOCKS" if self.severity == "blocker" else "warns "
        return f"TRT {self.version}: {tag} node '{self.node}' ({self.op_type}): {self.reason}. Fix: {self.fix}"



def _max_opset(v: Version) -> int:
    best = 17
    for since, opset in MAX_OPSET.items():
        if v >= since:
            best = max(best, opset)
    return best


def _upgrade_hint(since: Version) -> str:
    name = next((jp for v, jp in sorted(JETPACK.items()) if v >= since), "a desktop TensorRT")
    return f"TensorRT {since[0]}.{since[1]}+ ({name})"


class _Graph:
    """Type and producer lookups over an ONNX graph (after shape inference when possible)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # a graph onnx cannot infer is still worth checking op by op
            pass
        g = model.graph
        self.model = model
        self.initializers = {t.name: t for t in g.initializer}
        self.constants: Set[str] = set(self.initializers)
        self.types: Dict[str, int] = {}
        self.ranks: Dict[str, int] = {}
        for vi in list(g.input) + list(g.output) + list(g.value_info):
            tt = vi.type.tensor_type
            self.types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                self.ranks[vi.name] = len(tt.shape.dim)
        for t in g.initializer:
            self.types[t.name] = t.data_type
            self.ranks[t.name] = len(t.dims)
        for n in g.node:
            if n.op_type == "Constant":
                self.constants.update(n.output)
                for a in n.attribute:
                    if a.name == "value":
                        self.types[n.output[0]] = a.t.data_type
        self.io = {vi.name for vi in list(g.input) + list(g.output)}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def init_value(self, name: str):
        from onnx import numpy_helper

        t = self.initializers.get(name)
        return None if t is None else numpy_helper.to_array(t)


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            v = onnx.helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _node_findings(node: onnx.NodeProto, g: _Graph, v: Version, vs: str) -> Iterable[Finding]:
    op, name = node.op_type, node.name or (node.output[0] if node.output else "?")

    def f(sev: str, reason: str, fix: str) -> Finding:
        return Finding(vs, name, op, sev, reason, fix)

    if op == deform_attn.PLUGIN_OP:  # NVIDIA's plugin, imported by the parser's plugin fallback
        for problem in deform_attn.interface_problems(g.model, node, vs, inferred=True):
            yield f("blocker", problem, deform_attn.FIX_VARIANT)
        yield f("warning", "needs libnvinfer_plugin loaded (ds2a build-engine and the runtime do); "
                "ONNX Runtime runs it only as ds2a's CPU reference", "none needed with ds2a; elsewhere call "
                "trt.init_libnvinfer_plugins(logger, '') before parsing and loading")
        return
    if node.domain not in ("", "ai.onnx"):
        yield f("blocker", f"custom-domain op '{node.domain}::{op}' needs a TensorRT plugin",
                "export without custom ops, or load a plugin library that implements it")
        return
    if op in NEVER:
        yield f("blocker", "no TensorRT ONNX parser supports this op",
                "re-export with standard ops (for INT8 use Q/DQ format: `ds2a calibrate --precision int8`)")
        return
    since = OP_SINCE.get(op)
    if since and v < since:
        yield f("blocker", f"parsed only from TensorRT {since[0]}.{since[1]}",
                FIX_OP.get(op, f"use {_upgrade_hint(since)}"))
        return
    if op == "LayerNormalization" and len([o for o in node.output if o]) > 1:
        yield f("blocker", "only the first output Y is supported", "drop the Mean/InvStdDev outputs")
    if op == "GridSample":
        gv = deform_attn.verdict("grid-sample", vs, g.opset)
        if gv.status != "ok":
            yield f("blocker" if gv.status == "blocked" else "warning", gv.reason, deform_attn.FIX_VARIANT)
        rank = g.ranks.get(node.input[0])
        if rank is not None and rank != 4 and v < (11, 2):
            yield f("blocker", f"{rank}-D GridSample; only 4-D before TensorRT 11.2", "use 4-D sampling")
    if op == "Resize":
        mode = _attr(node, "mode", "nearest")
        coord = _attr(node, "coordinate_transformation_mode", "half_pixel")
        if mode not in RESIZE_MODES:
            yield f("blocker", f"Resize mode '{mode}' (only nearest/linear)", "use bilinear or nearest interpolation")
        if coord not in RESIZE_COORDS:
            yield f("blocker", f"coordinate_transformation_mode '{coord}'", "use half_pixel or align_corners")
        if _attr(node, "antialias", 0):
            yield f("blocker", "antialiased Resize", "use antialias=False in F.interpolate")
        if _attr(node, "keep_aspect_ratio_policy", "stretch") != "stretch":
            yield f("blocker", "keep_aspect_ratio_policy other than stretch", "resize to explicit sizes")
    if op == "Einsum" and v < (10, 0):
        eq = str(_attr(node, "equation", ""))
        lhs = eq.split("->")[0].split(",")
        if "..." in eq or any(len(set(t.strip())) != len(t.strip()) for t in lhs):
            yield f("blocker", f"Einsum '{eq}' uses ellipsis or a diagonal", "rewrite as MatMul/Transpose/Reshape")
    if op in ("Slice", "Squeeze", "Unsqueeze") and len(node.input) > (3 if op == "Slice" else 1):
        axes = node.input[3] if op == "Slice" else node.input[1]
        need = (10, 3) if op == "Slice" else (10, 7)
        if axes and not g.is_const(axes) and v < need:
            yield f("blocker", "`axes` is computed at run time",
                    f"fold it to a constant (onnxslim) or use {_upgrade_hint(need)}")
    if op.startswith("Reduce") and len(node.input) > 1 and node.input[1] and not g.is_const(node.input[1]):
        yield f("blocker", "`axes` is computed at run time", "fold it to a constant (onnxslim)")
    if op in ("QuantizeLinear", "DequantizeLinear"):
        zp = g.init_value(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        ztype = g.types.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if zp is not None and zp.any():
            yield f("blocker", "non-zero zero point (asymmetric quantization)",
                    "quantize symmetrically (`ds2a calibrate` does)")
        if op == "DequantizeLinear" and g.types.get(node.input[0]) == TensorProto.INT32:
            yield f("blocker", "INT32 dequantization (ONNX Runtime's quantized bias)",
                    "quantize for TensorRT with `ds2a calibrate --target tensorrt` (keeps biases float)")
        if ztype == TensorProto.UINT8:
            yield f("blocker", "UINT8 quantized type", "quantize to signed INT8 (`ds2a calibrate` does)")
    if op == "Cast":
        src, dst = g.types.get(node.input[0]), _attr(node, "to")
        if v < (10, 0) and TensorProto.UINT8 in (src, dst):
            other = dst if src == TensorProto.UINT8 else src
            if other is not None and other not in FLOATS:
                yield f("blocker", "uint8 converts only to/from float32/float16 before TensorRT 10",
                        "cast through float (ds2a export does: ArgMax -> float -> uint8)")
    if op not in ("Cast", "Identity"):
        for t in node.input:
            if t and g.types.get(t) == TensorProto.UINT8:
                yield f("blocker", f"uint8 tensor '{t}' used inside the network (TensorRT allows uint8 only as I/O)",
                        "cast uint8 to float right after the input")
                break
    if v < (9, 0):
        for t in node.output:
            if t and g.types.get(t) == TensorProto.INT64 and t in g.io:
                yield f("warning", f"INT64 graph output '{t}' is bound as INT32 before TensorRT 9",
                        "bind int32 buffers, or output uint8 class maps (the default)")
        if any(t and g.types.get(t) == TensorProto.DOUBLE for t in list(node.input) + list(node.output)):
            yield f("warning", "DOUBLE tensors are cast down to FLOAT", "export in float32")


def check_model(model: onnx.ModelProto, version: str) -> List[Finding]:
    """Every finding for one TensorRT version, any release from 8.5 on (empty: the parser should accept it)."""
    v = parse_version(version)
    vs = version_text(v) if str(version).count(".") or v[0] == 8 else str(v[0])
    g = _Graph(model)
    out: List[Finding] = []
    if g.opset > _max_opset(v):
        out.append(Finding(vs, "<model>", "opset", "blocker",
                           f"opset {g.opset} is newer than this parser reads ({_max_opset(v)})",
                           "re-export with --opset 17 (ds2a export defaults to 17)"))
    for node in g.model.graph.node:
        out.extend(_node_findings(node, g, v, vs))
    if v < (9, 0) and any(g.types.get(t) == TensorProto.INT64 for t in g.types if t not in g.io):
        n64 = sum(1 for t, ty in g.types.items() if ty == TensorProto.INT64 and t not in g.io)
        out.append(Finding(vs, "<model>", "INT64", "warning",
                           f"{n64} INT64 tensors (shapes/indices) are narrowed to INT32 by the parser",
                           "nothing to do unless values exceed 2^31 (they do not for image sizes)"))
    return out


def check_versions(model: onnx.ModelProto, versions: Optional[Sequence[str]] = None) -> Dict[str, List[Finding]]:
    """Findings for each requested TensorRT line (default: all supported)."""
    return {vs: check_model(model, vs) for vs in (versions or SUPPORTED)}


def blockers(findings: Iterable[Finding]) -> List[Finding]:
    return [f for f in findings if f.severity == "blocker"]


def format_report(results: Dict[str, List[Finding]]) -> str:
    """One verdict per version, then findings grouped by (op, reason, fix) with every node named."""
    lines = []
    for vs, findings in results.items():
        nb = len(blockers(findings))
        verdict = "OK" if nb == 0 else f"NOT parseable ({nb} blocking node{'s' if nb != 1 else ''})"
        lines.append(f"TensorRT {vs}: {verdict}")
        groups: Dict[Tuple[str, str, str, str], List[str]] = {}
        for f in findings:
            groups.setdefault((f.severity, f.op_type, f.reason, f.fix), []).append(f.node)
        for (sev, op, reason, fix), nodes in groups.items():
            tag = "BLOCKED by" if sev == "blocker" else "warning:"
            lines.append(f"  {tag} {len(nodes)} {op} node{'s' if len(nodes) != 1 else ''} ({reason}): "
                         f"{', '.join(nodes)}")
            lines.append(f"    fix: {fix}")
    return "\n".join(lines)
