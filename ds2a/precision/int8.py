"""INT8 with explicit symmetric Q/DQ, calibrated on the CPU, for two consumers.

- target "tensorrt": NVIDIA ModelOpt's ONNX quantizer (Q/DQ placed where TensorRT fuses them;
  calibration through ONNX Runtime CPU; unquantized parts stay fp32 so the CPU can measure them).
  ModelOpt raises the opset to 19 (its minimum for Q/DQ); ds2a.precision.opset brings it back to
  17 where that is exact, so TensorRT 8.5/8.6 parse the result too.
- target "onnxruntime": ONNX Runtime quantize_static, QDQ format, symmetric int8 activations and
  per-channel int8 weights (what ORT's CPU kernels run as integer convolutions / matmuls); every
  quantized consumer then gets its own Q->DQ pair (ds2a/precision/ort_placement.py) so ORT really
  fuses them, and calibration batches are collected in memory-bounded steps (CALIB_BUDGET_BYTES).

TensorRT only takes symmetric (zero-point 0) signed INT8, so both targets produce that.
"""
from __future__ import annotations

import inspect
import json
import logging
import re
import struct
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import onnx

from ..data.calibration import CalibrationSet
from ..errors import UserError
from ..preprocess import normalize
from .cache import load_ranges, make_key, save_ranges
from .calib_data import FrameReader
from .isolated import run_isolated
from .model_info import OnnxModelInfo
from .opset import downgrade_to_17
from .ort_placement import separate_qdq_pairs

logger = logging.getLogger(__name__)

METHODS = ("entropy", "minmax", "percentile")
# ORT target quantizes only the compute-heavy ops (what its CPU kernels run as integers); softmax,
# normalisation, sampling, resize and the statistics' ReduceMean stay fp32 for both targets, and
# `ds2a calibrate` also keeps the last compute layer before the outputs (the final classifier
# product) fp32: measured in benchmarks/results/precision_exclusions.md.
ORT_OP_TYPES = ["Conv", "MatMul", "Gemm"]
DEFAULT_EXCLUDE_OPS = ["Softmax", "LayerNormalization", "GridSample", "ReduceMean", "Resize"]


# ORT's histogram calibrators keep every calibrated tensor of every batch until the end (the demo
# model: 63 MB per 256x256 image; ds2a_r18 at 512x512: 1.1 GB per image). Batches are therefore
# collected in steps whose tensors fit this budget (histograms merge between steps).
CALIB_BUDGET_BYTES = 2 * 2**30


def calibrated_bytes_per_batch(model: onnx.ModelProto, op_types: Sequence[str]) -> int:
    """Bytes of the float inputs/outputs of `op_types` nodes for one batch: what ORT's calibrator keeps."""
    from onnx import shape_inference

    from .ranges import tensor_bytes

    try:
        graph = shape_inference.infer_shapes(model).graph
    except (ValueError, onnx.shape_inference.InferenceError):  # e.g. a model past protobuf's 2 GB
        return CALIB_BUDGET_BYTES  # unknown: one batch per step, the safe choice
    infos = {v.name: v for v in list(graph.value_info) + list(graph.output) + list(graph.input)}
    names = {t for n in graph.node if n.op_type in op_types for t in list(n.input) + list(n.output) if t in infos}
    return sum(tensor_bytes(infos[t])[0] for t in names if infos[t].type.tensor_type.elem_type == onnx.TensorProto.FLOAT)


def calibration_stride(batches: int, per_batch: int, budget: Optional[int] = None) -> int:
    """Batches per collection step: all when they fit `budget`, else the largest divisor of `batches` that does."""
    fit = max(1, (CALIB_BUDGET_BYTES if budget is None else budget) // max(per_batch, 1))
    if fit >= batches:
        return batches
    return max(d for d in range(1, fit + 1) if batches % d == 0)


def _ort_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    return {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
            "percentile": CalibrationMethod.Percentile}[method]


def quantize_onnxruntime(info: OnnxModelInfo, calib: CalibrationSet, out: Path, method: str,
                         exclude_ops: Sequence[str], exclude_nodes: Sequence[str],
                         cache_path: Optional[Path], cache_key: Dict[str, Any], recalibrate: bool) -> bool:
    """quantize_static in QDQ format; returns True when cached ranges were reused."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    ops = [o for o in ORT_OP_TYPES if o not in exclude_ops]
    extra = {"ActivationSymmetric": True, "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise UserError(f"--target onnxruntime needs a newer onnxruntime than {onnxruntime.__version__} (its quantizer "
                        "lacks calibration caches; Python 3.8 gets at most 1.19): calibrate on a workstation with "
                        "Python 3.9+ and `pip install -U onnxruntime`, then copy the ONNX to the device")
    cached = None if (cache_path is None or recalibrate) else load_ranges(cache_path, cache_key)
    with tempfile.TemporaryDirectory(prefix="ds2a_calib_") as tmp:
        ort_cache = Path(tmp) / "ranges.json"
        if cached is not None:
            ort_cache.write_text(json.dumps(cached["ort_tensors_data"]))
        reader = FrameReader(calib, info.input_name, info.batch, info.float_input, info.meta.mean, info.meta.std)
        if cached is None:
            extra["CalibStridedMinMax"] = calibration_stride(len(reader), calibrated_bytes_per_batch(info.model, ops))
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # ORT's "consider pre-processing" advice does not apply to our exports
        try:
            quantize_static(
                str(info.path), str(out), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=ops,
                per_channel=True, reduce_range=False, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude_nodes), calibrate_method=_ort_method(method), extra_options=extra,
                calibration_cache_path=str(ort_cache),
            )
        finally:
            root.setLevel(level)
        model = onnx.load(str(out))
        separate_qdq_pairs(model, ops)  # else ORT leaves convs with shared inputs in float
        onnx.save(model, str(out))
        if cache_path is not None and cached is None:
            save_ranges(cache_path, cache_key, {"ort_tensors_data": json.loads(ort_cache.read_text())})
    return cached is not None


def _activation_scales(model: onnx.ModelProto) -> Dict[str, float]:
    """tensor name -> per-tensor scale of each activation QuantizeLinear (what a TRT calibration cache holds)."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    scales = {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and n.input[1] in inits:
            s = numpy_helper.to_array(inits[n.input[1]])
            if s.size == 1:
                scales[n.input[0]] = float(s.reshape(-1)[0])
    return scales


def _write_trt_cache(scales: Dict[str, float], path: Path) -> None:
    """TensorRT calibration-cache text (header line, then `tensor: big-endian float hex`), as ModelOpt reads it."""
    lines = ["TRT-8501-EntropyCalibration2"]
    lines += [f"{name}: {struct.pack('!f', s).hex()}" for name, s in sorted(scales.items())]
    path.write_text("\n".join(lines) + "\n")


def quantize_modelopt(info: OnnxModelInfo, calib: CalibrationSet, out: Path, method: str,
                      exclude_ops: Sequence[str], exclude_nodes: Sequence[str],
                      cache_path: Optional[Path], cache_key: Dict[str, Any], recalibrate: bool) -> bool:
    """ModelOpt int8 (TensorRT placement), calibrated on the CPU; returns True when cached scales were reused."""
    if method == "percentile":
        raise UserError("--method percentile is only available with --target onnxruntime; "
                        "ModelOpt (--target tensorrt) calibrates with entropy or minmax")
    try:
        import modelopt.onnx.quantization  # noqa: F401
    except ImportError as exc:
        raise UserError(f"--target tensorrt needs NVIDIA ModelOpt ({exc}); install it with "
                        "`pip install nvidia-modelopt onnx-graphsurgeon lief polygraphy` "
                        "(without the [onnx] extra)") from None
    cached = None if (cache_path is None or recalibrate) else load_ranges(cache_path, cache_key)
    frames = calib.frames[: info.batch] if cached is not None else calib.frames
    frames = frames[: len(frames) - len(frames) % info.batch]
    data = normalize(frames, info.meta.mean, info.meta.std) if info.float_input else np.ascontiguousarray(frames)
    shape = "x".join(str(d) for d in (info.batch, *data.shape[1:]))
    with tempfile.TemporaryDirectory(prefix="ds2a_mo_") as tmp:
        kwargs: Dict[str, Any] = {}
        if cached is not None:
            trt_cache = Path(tmp) / "calib.cache"
            _write_trt_cache(cached["act_scales"], trt_cache)
            kwargs["calibration_cache_path"] = str(trt_cache)
        # ModelOpt writes intermediates next to its input: give it a private copy
        src = Path(tmp) / "model.onnx"
        onnx.save(info.model, str(src))
        run_isolated("ds2a.precision.int8:_modelopt_quantize", str(src), str(out), {info.input_name: data},
                     f"{info.input_name}:{shape}", "entropy" if method == "entropy" else "max",
                     list(exclude_ops), [f"^{re.escape(n)}$" for n in exclude_nodes], kwargs)
    if not out.is_file():
        raise UserError(f"ModelOpt wrote no model to '{out}'; run it again and read ModelOpt's log above")
    back = downgrade_to_17(onnx.load(str(out)))
    if back is not None:
        onnx.save(back, str(out))
    else:
        logger.info(f"note: {out} stays at ModelOpt's opset 19 (uses newer ops): it needs TensorRT 10+")
    if cache_path is not None and cached is None:
        save_ranges(cache_path, cache_key, {"act_scales": _activation_scales(onnx.load(str(out)))})
    return cached is not None


def cache_settings(target: str, method: str, exclude_ops: Sequence[str],
                   exclude_nodes: Sequence[str]) -> Dict[str, Any]:
    return {"target": target, "method": method, "exclude_ops": sorted(exclude_ops),
            "exclude_nodes": sorted(exclude_nodes), "symmetric": True, "per_channel": True}


def calibrate_int8(info: OnnxModelInfo, calib: CalibrationSet, out: Path, target: str = "tensorrt",
                   method: str = "entropy", exclude_ops: Sequence[str] = (), exclude_nodes: Sequence[str] = (),
                   cache_path: Optional[Path] = None, recalibrate: bool = False, model_sha256: str = "") -> bool:
    """Write the INT8 Q/DQ model to `out`; returns whether a calibration cache was reused.

    The deformable-attention sampling nodes are never quantized (ds2a/trt/deform_attn.py sampling_nodes).
    """
    from ..trt.deform_attn import sampling_nodes

    exclude_nodes = list(exclude_nodes) + [n for n in sampling_nodes(info.model) if n not in exclude_nodes]
    if method not in METHODS:
        raise UserError(f"--method {method} is unknown; choose one of {', '.join(METHODS)}")
    key = make_key(model_sha256, calib.fingerprint(), len(calib.names),
                   cache_settings(target, method, exclude_ops, exclude_nodes))
    fn = {"tensorrt": quantize_modelopt, "onnxruntime": quantize_onnxruntime}.get(target)
    if fn is None:
        raise UserError(f"--target {target} is unknown; choose tensorrt or onnxruntime")
    return fn(info, calib, out, method, list(exclude_ops), list(exclude_nodes), cache_path, key, recalibrate)


def zero_points_symmetric(model: onnx.ModelProto) -> bool:
    """True when every Q/DQ zero point is 0 and signed (int8, or int32 for ORT's quantized biases)."""
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2]:
            t = inits.get(n.input[2])
            signed = t is not None and t.data_type in (TensorProto.INT8, TensorProto.INT32)
            if not signed or np.any(numpy_helper.to_array(t)):
                return False
    return True




def _modelopt_quantize(src: str, out: str, data: Dict[str, np.ndarray], shapes: str, method: str,
                       exclude_ops: List[str], exclude_nodes: List[str], kwargs: Dict[str, Any]) -> None:
    from modelopt.onnx.quantization import quantize

    logging.getLogger("modelopt").setLevel(logging.WARNING)
    quantize(src, quantize_mode="int8", calibration_data=data, calibration_shapes=shapes,
             calibration_method=method, calibration_eps=["cpu"], op_types_to_exclude=exclude_ops or None,
             nodes_to_exclude=exclude_nodes, high_precision_dtype="fp32", output_path=out,
             log_level="WARNING", **kwargs)
