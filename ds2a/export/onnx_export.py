"""DS2AFormer -> cleaned ONNX with our metadata (opset 17, legacy TorchScript exporter).

The TorchScript exporter (dynamo=False) is used on purpose: for this model it gives a static,
fully foldable graph (GridSample, LayerNormalization and MatMul as single nodes) that onnxslim
shrinks further; the dynamo exporter's graph needs more clean-up and is not what TensorRT 8.5
users can parse.
"""
from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import UserError
from ..meta import INPUT_NAME, OUTPUT_CLASS_MAP, OUTPUT_LOGITS, ModelMeta
from ..options_check import check_fields
from ..outputs import atomic_path
from .metadata import write_meta

logger = logging.getLogger(__name__)

OPSET = 17  # native LayerNormalization; the newest opset TensorRT 8.5/8.6 parse
OUTPUT_CHOICES = ("classmap", "logits", "both")


@dataclass
class ExportOptions:
    """Everything `ds2a export` can be asked for (CLI flags map 1:1)."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    size: Optional[Tuple[int, int]] = None  # (H, W); None = the size the checkpoint was trained at
    force_size: bool = False  # allow a size other than the trained one (accuracy there is untested)
    batch: Optional[int] = 1  # None = dynamic batch
    outputs: str = "classmap"
    uint8_input: bool = True
    trt: Optional[str] = None  # oldest TensorRT to support: "8.5" decomposes LayerNormalization
    opset: int = OPSET
    # how deformable attention is written: grid-sample, gather or trt-plugin (docs/DEFORM_ATTN.md);
    # None = ds2a.trt.deform_attn.default_variant(trt)
    deform_attn: Optional[str] = None
    compact_weights: bool = False  # store FP16-exact FP32 weights as FP16, losslessly (ds2a/export/storage.py)


def resolve_deform_attn(opts: ExportOptions) -> str:
    """The variant to export (the default for the target release when none was asked); UserError if unknown."""
    from ..trt.deform_attn import VARIANTS, default_variant

    variant = opts.deform_attn or default_variant(opts.trt)
    if variant not in VARIANTS:
        raise UserError(f"--deform-attn {variant} is unknown; choose one of {', '.join(VARIANTS)} "
                        "(see docs/DEFORM_ATTN.md)")
    return variant


def check_size(size: Tuple[int, int], meta_size: Tuple[int, int], force: bool) -> None:
    """Sizes must be multiples of 32; a size other than the trained one needs an explicit --force-size."""
    if size[0] % 32 or size[1] % 32:
        up = tuple(int(np.ceil(s / 32) * 32) for s in size)
        raise UserError(f"--size {size[0]}x{size[1]} is not a multiple of 32 (the backbone downsamples 32x); "
                        f"use --size {up[0]}x{up[1]}")
    if tuple(size) != tuple(meta_size) and not force:
        raise UserError(f"--size {size[0]}x{size[1]} differs from the size the checkpoint was trained at "
                        f"({meta_size[0]}x{meta_size[1]}); accuracy at another size is untested. Omit --size, "
                        f"or add --force-size to export at {size[0]}x{size[1]} anyway")


def max_opset() -> int:
    """The newest opset both the TorchScript exporter and the installed onnx package know."""
    from torch.onnx import _constants

    return min(int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)), onnx.defs.onnx_opset_version())


def check_opset(opset: int) -> None:
    """Refuse an opset the exporter cannot write before tracing (else a long exporter traceback)."""
    top = max_opset()
    if not OPSET <= opset <= top:
        raise UserError(f"--opset {opset} is outside {OPSET}..{top} (17: native LayerNormalization, the newest "
                        f"TensorRT 8.5/8.6 parse; {top}: the newest this exporter writes); use --opset 17")


def torch_export(model, meta: ModelMeta, opts: ExportOptions) -> onnx.ModelProto:
    """Trace the wrapped model (both outputs) into an in-memory ONNX model."""
    import torch

    from ..model.ms_deform_attn import deform_attn_variant
    from ..trt.deform_attn import PLUGIN_DOMAIN, plugin_version_for
    from .wrapper import FrameModel, einsum_as_matmul

    wrapper = FrameModel(model, meta.mean, meta.std, uint8_input=opts.uint8_input, outputs="both").eval()
    h, w = opts.size
    n = opts.batch or 1
    dummy = (torch.zeros((n, h, w, 3), dtype=torch.uint8) if opts.uint8_input
             else torch.zeros((n, 3, h, w), dtype=torch.float32))
    dyn = None
    if opts.batch is None:
        dyn = {INPUT_NAME: {0: "batch"}, OUTPUT_CLASS_MAP: {0: "batch"}, OUTPUT_LOGITS: {0: "batch"}}
    variant = resolve_deform_attn(opts)
    buf = io.BytesIO()
    with torch.no_grad(), einsum_as_matmul(), deform_attn_variant(variant, plugin_version_for(opts.trt)), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (dummy,), buf, opset_version=opts.opset, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_CLASS_MAP, OUTPUT_LOGITS], dynamic_axes=dyn,
                          do_constant_folding=True, dynamo=False,
                          custom_opsets={PLUGIN_DOMAIN: 1} if variant == "trt-plugin" else None)
        exported = onnx.load_from_string(buf.getvalue())
        if dyn is not None:  # only the batch is dynamic: say so, so no consumer sees unknown H, W or classes
            with deform_attn_variant(variant, plugin_version_for(opts.trt)):
                outputs = wrapper(dummy)
            pin_output_dims(exported, dict(zip([OUTPUT_CLASS_MAP, OUTPUT_LOGITS], (tuple(o.shape) for o in outputs))))
    return exported


def pin_output_dims(model: onnx.ModelProto, shapes: Dict[str, Tuple[int, ...]]) -> None:
    """Give the graph outputs their known sizes after the batch dimension (torch names them `Cast..._dim_1`)."""
    for out in model.graph.output:
        if out.name not in shapes:
            continue
        dims = out.type.tensor_type.shape.dim
        for d, size in zip(list(dims)[1:], shapes[out.name][1:]):
            d.Clear()
            d.dim_value = int(size)


def slim(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding and dead-node removal with onnxslim (keeps names of graph inputs/outputs)."""
    import onnxslim

    try:
        return onnxslim.slim(model)
    except Exception as exc:  # onnxslim is an optimisation: an unslimmed graph is still correct
        logger.warning(f"onnxslim failed ({exc}); keeping the unslimmed graph")
        return model


def decompose_layernorm(model: onnx.ModelProto) -> int:
    """LayerNormalization -> ReduceMean/Sub/Mul/ReduceMean/Add/Sqrt/Div/Mul/Add (TensorRT 8.5 has no LN).

    Same arithmetic as the op in fp32 (ReduceMean `axes` as attribute: opset 17); returns the count.
    """
    g = model.graph
    new_nodes: List[onnx.NodeProto] = []
    count = 0
    for node in g.node:
        if node.op_type != "LayerNormalization":
            new_nodes.append(node)
            continue
        count += 1
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, eps = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
        if axis != -1:
            raise UserError(f"LayerNormalization '{node.name}' normalises axis {axis}; "
                            "only the last axis is decomposed")
        p = (node.name or node.output[0]).replace("/", "_") + "_ln"
        x, scale = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 else ""
        g.initializer.append(numpy_helper.from_array(np.array(eps, np.float32), p + "_eps"))
        new_nodes += [
            helper.make_node("ReduceMean", [x], [p + "_mean"], axes=[-1], keepdims=1),
            helper.make_node("Sub", [x, p + "_mean"], [p + "_d"]),
            helper.make_node("Mul", [p + "_d", p + "_d"], [p + "_d2"]),
            helper.make_node("ReduceMean", [p + "_d2"], [p + "_var"], axes=[-1], keepdims=1),
            helper.make_node("Add", [p + "_var", p + "_eps"], [p + "_vareps"]),
            helper.make_node("Sqrt", [p + "_vareps"], [p + "_std"]),
            helper.make_node("Div", [p + "_d", p + "_std"], [p + "_norm"]),
            helper.make_node("Mul", [p + "_norm", scale], [p + "_scaled" if bias else node.output[0]]),
        ]
        if bias:
            new_nodes.append(helper.make_node("Add", [p + "_scaled", bias], [node.output[0]]))
    del g.node[:]
    g.node.extend(new_nodes)
    return count


def keep_outputs(model: onnx.ModelProto, outputs: str) -> None:
    """Drop the graph outputs not asked for (the nodes behind them stay if still needed)."""
    wanted = {"classmap": {OUTPUT_CLASS_MAP}, "logits": {OUTPUT_LOGITS},
              "both": {OUTPUT_CLASS_MAP, OUTPUT_LOGITS}}[outputs]
    for out in list(model.graph.output):
        if out.name not in wanted:
            model.graph.output.remove(out)
    if outputs == "logits":  # the ArgMax/Cast branch is now dead
        needed = {o.name for o in model.graph.output}
        keep: List[onnx.NodeProto] = []
        for node in reversed(list(model.graph.node)):
            if any(o in needed for o in node.output):
                keep.append(node)
                needed.update(i for i in node.input if i)
        del model.graph.node[:]
        model.graph.node.extend(reversed(keep))


def build_onnx(model, meta: ModelMeta, opts: ExportOptions) -> onnx.ModelProto:
    """Export with both outputs, clean, apply TensorRT reformulations, attach metadata."""
    if opts.outputs not in OUTPUT_CHOICES:
        raise UserError(f"--outputs {opts.outputs} is unknown; choose one of {', '.join(OUTPUT_CHOICES)}")
    check_opset(opts.opset)
    if opts.size is None:
        opts = replace(opts, size=tuple(meta.input_size))
    onnx_model = slim(torch_export(model, meta, opts))
    from ..trt.deform_attn import drop_untyped_value_info

    drop_untyped_value_info(onnx_model)  # left by shape inference after the plugin node
    if opts.trt is not None:
        from ..trt.versions import target_version

        if target_version(opts.trt) < (8, 6):
            decompose_layernorm(onnx_model)
    out_meta = ModelMeta.from_dict(meta.to_dict())
    out_meta.input_size = tuple(opts.size)
    out_meta.extra = {**out_meta.extra, "precision": "fp32", "opset": opts.opset,
                      "deform_attn": resolve_deform_attn(opts),
                      "input": "uint8_nhwc_bgr" if opts.uint8_input else "float_nchw_rgb"}
    write_meta(onnx_model, out_meta)
    onnx_model.producer_name = "ds2a"
    onnx.checker.check_model(onnx_model)
    return onnx_model


def output_types_ok(model: onnx.ModelProto) -> bool:
    types = {o.name: o.type.tensor_type.elem_type for o in model.graph.output}
    return types.get(OUTPUT_CLASS_MAP, TensorProto.UINT8) == TensorProto.UINT8 and \
        types.get(OUTPUT_LOGITS, TensorProto.FLOAT) == TensorProto.FLOAT


def save(model: onnx.ModelProto, path: Path) -> None:
    """Write atomically: a failed or interrupted save never leaves half an ONNX at `path`."""
    with atomic_path(path, label="--out") as tmp:
        onnx.save(model, tmp)
