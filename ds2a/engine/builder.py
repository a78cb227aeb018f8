"""ONNX -> TensorRT engine, version-aware, with the precision taken from the ONNX itself.

The ONNX carries the precision (Q/DQ nodes = INT8, float16 tensors = FP16), so this module
is a thin compiler step: pick the network/builder flags the running TensorRT release has
(`ds2a.trt.detect_features`), parse, build, and write the engine plus its `model.engine.json`
sidecar. `plan_precision` is a pure function so every release's branch is testable without
TensorRT.
"""
from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ..errors import UserError
from ..meta import ModelMeta, file_sha256
from ..options_check import check_fields
from ..outputs import atomic_write, check_outputs
from ..runtime.io_layout import read_io_layout
from ..trt import platform
from ..trt.features import TrtFeatures, detect_features, import_tensorrt
from ..trt.sidecar import EngineRecord, sidecar_path, write_sidecar
from ..trt.versions import version_text
from .verify import VerifyOptions

logger = logging.getLogger(__name__)
HW_COMPAT = ("none", "ampere+", "same-cc")
# Layers kept in FP32 when a weakly typed network may use FP16 (overflow-prone sums of squares/exps).
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE")
INT8_FIX = "ds2a calibrate {onnx} --data DATA_DIR --precision int8 --out {stem}.int8.onnx"
FP16_FIX = "ds2a calibrate {onnx} --data DATA_DIR --precision fp16 --out {stem}.fp16.onnx"
CPU_QUANT_OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul"}


@dataclass
class BuildOptions:
    """Everything `ds2a build-engine` can be asked for (CLI flags map 1:1)."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    workspace_gib: Optional[float] = None
    timing_cache: Optional[str] = None
    dla_core: Optional[int] = None
    gpu_fallback: bool = False
    batch: Optional[Tuple[int, int, int]] = None  # (min, opt, max) for a dynamic batch dimension
    fp16: bool = False
    int8: bool = False
    calib_cache: Optional[str] = None  # legacy implicit INT8 (TensorRT 8.5-10.x) from a calibration cache
    version_compatible: bool = False
    hardware_compat: str = "none"
    optimization_level: Optional[int] = None
    verbose: bool = False
    device: int = 0
    verify: VerifyOptions = field(default_factory=VerifyOptions)  # the accuracy gate (ds2a/engine/verify.py)

    def to_args(self) -> List[str]:
        """The CLI flags that reproduce these options (for the sidecar's rebuild command)."""
        args: List[str] = []
        if self.workspace_gib is not None:
            args += ["--workspace", f"{self.workspace_gib:g}"]
        if self.timing_cache:
            args += ["--timing-cache", self.timing_cache]
        if self.dla_core is not None:
            args += ["--dla-core", str(self.dla_core)] + (["--gpu-fallback"] if self.gpu_fallback else [])
        if self.batch:
            args += ["--batch", ":".join(str(b) for b in self.batch)]
        args += ["--fp16"] if self.fp16 else []
        args += ["--int8"] if self.int8 else []
        args += ["--calib-cache", self.calib_cache] if self.calib_cache else []
        args += ["--version-compatible"] if self.version_compatible else []
        if self.hardware_compat != "none":
            args += ["--hardware-compat", self.hardware_compat]
        if self.optimization_level is not None:
            args += ["--builder-optimization-level", str(self.optimization_level)]
        return args + self.verify.to_args()


def parse_batch(text: str) -> Tuple[int, int, int]:
    """'1:4:8' -> (1, 4, 8); '4' -> (4, 4, 4). UserError unless 1 <= min <= opt <= max."""
    try:
        vals = [int(v) for v in str(text).split(":")]
    except ValueError:
        vals = []
    if len(vals) == 1:
        vals = vals * 3
    if len(vals) != 3 or not 1 <= vals[0] <= vals[1] <= vals[2]:
        raise UserError(f"--batch '{text}' must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX (example: 1:4:8)")
    return vals[0], vals[1], vals[2]


@dataclass
class TensorSpec:
    name: str
    shape: List[Any]  # ints, or a string for a symbolic dimension
    dtype: str


@dataclass
class OnnxInfo:
    """What the builder needs from the ONNX before TensorRT sees it."""

    path: str
    sha256: str
    precision: str  # "int8" (Q/DQ), "fp16" (float16 tensors) or "fp32"
    has_qdq: bool
    has_fp16: bool
    meta: Optional[ModelMeta]
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    node_names: List[str] = field(default_factory=list)
    node_ops: List[str] = field(default_factory=list)
    fp32_tensors: List[str] = field(default_factory=list)  # outputs of a decomposed LayerNorm's arithmetic
    expanded: Optional[bytes] = None  # the graph TensorRT parses when the file stores weights compactly

    @property
    def dynamic_batch(self) -> bool:
        return any(not isinstance(t.shape[0], int) or t.shape[0] <= 0 for t in self.inputs if t.shape)


def _stem(path: str) -> str:
    base = os.path.splitext(path)[0]
    for suffix in (".fp32", ".fp16", ".int8"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


def inspect_onnx(path: str) -> OnnxInfo:
    """Read precision, metadata and I/O from the ONNX (weights left on disk)."""
    import onnx
    from onnx import TensorProto

    from ..export.metadata import read_meta

    if not os.path.isfile(path):
        raise UserError(f"ONNX file {path} does not exist; export one with `ds2a export CHECKPOINT.pt --out {path}`")
    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:  # protobuf DecodeError and friends
        raise UserError(f"{path} is not a readable ONNX model ({type(exc).__name__}): the file is truncated "
                        f"or corrupt; export it again with `ds2a export CHECKPOINT.pt --out {path}`") from None
    from ..export.storage import expand, is_compact

    expanded = None
    if is_compact(model):  # TensorRT parses exactly the FP32 graph that was exported (ds2a/export/storage.py)
        model = expand(model)
        expanded = model.SerializeToString()
    g = model.graph
    if not g.node or not g.input or not g.output:
        raise UserError(f"{path} holds no ONNX graph (empty or truncated file); export it again with "
                        f"`ds2a export CHECKPOINT.pt --out {path}`")
    ops = {n.op_type for n in g.node}
    cpu_ops = sorted(ops & CPU_QUANT_OPS)
    if cpu_ops:
        raise UserError(f"{path} is a CPU-oriented INT8 ONNX ({', '.join(cpu_ops)}) that TensorRT cannot build; "
                        f"make the TensorRT (Q/DQ) one from the FP32 export: "
                        f"{INT8_FIX.format(onnx=_stem(path) + '.onnx', stem=_stem(path))} --target tensorrt")
    half = TensorProto.FLOAT16
    typed = list(g.value_info) + list(g.input) + list(g.output)
    has_fp16 = (any(t.data_type == half for t in g.initializer)
                or any(vi.type.tensor_type.elem_type == half for vi in typed)
                or any(n.op_type == "Cast" and any(a.name == "to" and a.i == half for a in n.attribute)
                       for n in g.node))
    has_qdq = bool(ops & {"QuantizeLinear", "DequantizeLinear"})
    init_names = {t.name for t in g.initializer}

    def spec(vi: Any) -> TensorSpec:
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        return TensorSpec(vi.name, dims, TensorProto.DataType.Name(tt.elem_type).lower())

    inputs = [spec(vi) for vi in g.input if vi.name not in init_names]
    outputs = [spec(vi) for vi in g.output]
    _check_convention(path, inputs, outputs)
    return OnnxInfo(
        path=path, sha256=file_sha256(path),
        precision="int8" if has_qdq else ("fp16" if has_fp16 else "fp32"),
        has_qdq=has_qdq, has_fp16=has_fp16, meta=read_meta(model, path, required=False),
        inputs=inputs, outputs=outputs,
        node_names=[n.name or f"{n.op_type}_{i}" for i, n in enumerate(g.node)],
        node_ops=[n.op_type for n in g.node],
        fp32_tensors=decomposed_layernorm_tensors(g.node),
        expanded=expanded,
    )


def decomposed_layernorm_tensors(nodes: Any) -> List[str]:
    """Outputs of the Pow/Mul (square), variance Add, Sqrt and Div of each LayerNorm written out as ops.

    Without a LayerNormalization op (TensorRT 8.5, `ds2a export --trt 8.5`) a norm is
    ReduceMean -> Sub -> Pow|Mul -> ReduceMean -> Add -> Sqrt -> Div; in FP16 the square overflows
    and the root/division lose the small variances, so these stay FP32 like the reductions.
    """
    producer = {out: n for n in nodes for out in n.output}
    consumers: Dict[str, List[Any]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    pinned: List[str] = []
    for sqrt in (n for n in nodes if n.op_type == "Sqrt"):
        add = producer.get(sqrt.input[0])
        var = producer.get(add.input[0]) if add is not None and add.op_type == "Add" else None
        if var is None or var.op_type != "ReduceMean":
            continue
        square = producer.get(var.input[0])
        is_square = square is not None and (square.op_type == "Pow" or (
            square.op_type == "Mul" and len(square.input) == 2 and square.input[0] == square.input[1]))
        if not is_square:
            continue
        divs = [c for c in consumers.get(sqrt.output[0], []) if c.op_type == "Div"]
        for node in [square, add, sqrt] + divs:
            pinned += [o for o in node.output if o and o not in pinned]
    return pinned


def _check_convention(path: str, inputs: List[TensorSpec], outputs: List[TensorSpec]) -> None:
    """Our runtimes feed one image tensor and read class_map/logits (ds2a/runtime/io_layout.py)."""
    read_io_layout(path, [(t.name, t.dtype, t.shape) for t in inputs], [(t.name, t.dtype, t.shape) for t in outputs],
                   f"export it with `ds2a export CHECKPOINT.pt --out {path}`")


@dataclass
class PrecisionPlan:
    """How a release builds a graph: network typing, builder flags, FP32 pinning, and notes."""

    precision: str
    strongly_typed: bool
    explicit_batch: bool
    flags: List[str]
    pin_fp32: bool
    notes: List[str]
    calibrator: bool = False  # implicit INT8 through a cache-only calibrator


def plan_precision(info: OnnxInfo, opts: BuildOptions, f: TrtFeatures) -> PrecisionPlan:
    """Decide typing and flags from the ONNX precision, the request and the release's features."""
    onnx, stem = info.path, _stem(info.path)
    notes: List[str] = []
    if opts.calib_cache:
        return _plan_implicit_int8(info, opts, f)
    if opts.int8 and not info.has_qdq:
        raise UserError(f"--int8 needs an INT8 ONNX with Q/DQ nodes, and {onnx} has none (ds2a quantizes "
                        f"explicitly, calibrated on the CPU); make it with `{INT8_FIX.format(onnx=onnx, stem=stem)}` "
                        f"and build {stem}.int8.onnx (TensorRT 8.5-10.x also take --calib-cache FILE)")
    want_fp16 = opts.fp16 and not info.has_fp16
    if f.strongly_typed_only:
        if want_fp16:
            ver = ".".join(str(v) for v in f.version)
            raise UserError(f"TensorRT {ver} removed the FP16 builder flag (networks are strongly typed: the "
                            f"ONNX types decide the precision); make an FP16 ONNX with "
                            f"`{FP16_FIX.format(onnx=onnx, stem=stem)}` and build {stem}.fp16.onnx")
        if opts.fp16 or opts.int8:
            notes.append("--fp16/--int8 ignored: the ONNX already carries that precision")
        return PrecisionPlan(info.precision, True, False, [], False, notes)
    if f.strongly_typed and not want_fp16:
        # The ONNX types (and Q/DQ) say everything: build exactly what was calibrated on the CPU.
        return PrecisionPlan(info.precision, True, False, [], False, notes)
    flags: List[str] = []
    if info.has_qdq:
        flags.append("INT8")
    fp16 = opts.fp16 or info.has_fp16
    if fp16:
        flags += ["FP16", "OBEY_PRECISION_CONSTRAINTS"]
        notes.append(f"weakly typed FP16: {', '.join(FP32_LAYER_TYPES).lower()} layers pinned to FP32")
    precision = "int8" if info.has_qdq else ("fp16" if fp16 else "fp32")
    return PrecisionPlan(precision, False, f.explicit_batch_flag, flags, fp16, notes)


def _plan_implicit_int8(info: OnnxInfo, opts: BuildOptions, f: TrtFeatures) -> PrecisionPlan:
    """Legacy INT8 for TensorRT 8.5-10.x: an FP32 ONNX plus a TensorRT calibration cache."""
    fix = INT8_FIX.format(onnx=info.path, stem=_stem(info.path))
    ver = ".".join(str(v) for v in f.version)
    if not f.int8_calibrator:
        raise UserError(f"--calib-cache needs TensorRT 8.5-10.x; TensorRT {ver} removed INT8 calibrators: "
                        f"make a Q/DQ ONNX with `{fix}` and build that")
    if info.has_qdq:
        raise UserError(f"{info.path} already has Q/DQ nodes (explicit INT8); drop --calib-cache")
    read_calibration_cache(opts.calib_cache)  # refuse a missing or foreign file before parsing
    flags = ["INT8"] + (["FP16", "OBEY_PRECISION_CONSTRAINTS"] if opts.fp16 or info.has_fp16 else [])
    notes = [f"implicit INT8 from calibration cache {opts.calib_cache} (legacy; explicit Q/DQ from "
             f"`ds2a calibrate` is preferred)"]
    return PrecisionPlan("int8", False, f.explicit_batch_flag, flags, "FP16" in flags, notes, calibrator=True)


def read_calibration_cache(path: Optional[str]) -> bytes:
    """A TensorRT calibration cache ("TRT-<ver>-<Algo>Calibration..." header, `tensor: hex` lines)."""
    if not path or not os.path.isfile(path):
        raise UserError(f"calibration cache {path} does not exist: pass a TensorRT calibration cache (from an "
                        "earlier TensorRT/ModelOpt calibration), or build the Q/DQ ONNX from `ds2a calibrate "
                        "MODEL.onnx --data DATA_DIR --precision int8` instead")
    with open(path, "rb") as f:
        data = f.read()
    header = data.split(b"\n", 1)[0]
    if not (header.startswith(b"TRT-") and b"Calibration" in header):
        raise UserError(f"{path} is not a TensorRT calibration cache (first line {header[:40]!r}, expected "
                        "e.g. 'TRT-8501-EntropyCalibration2')")
    return data


def _cache_calibrator(trt: Any, data: bytes) -> Any:
    """An entropy calibrator that never sees images: TensorRT reads every scale from the cache."""

    class CacheCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: List[str]) -> None:
            return None  # no images: a complete cache is required

        def read_calibration_cache(self) -> bytes:
            return data

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return CacheCalibrator()


def check_options(opts: BuildOptions, f: TrtFeatures, version: str, jetson: bool = False) -> None:
    """Refuse options the running release or device lacks, naming the release that has them."""
    if opts.hardware_compat not in HW_COMPAT:
        raise UserError(f"--hardware-compat '{opts.hardware_compat}' is not one of {', '.join(HW_COMPAT)}")
    if opts.hardware_compat != "none" and (jetson or opts.dla_core is not None):
        where = "with --dla-core" if opts.dla_core is not None else "on a Jetson"
        raise UserError(f"--hardware-compat {opts.hardware_compat} is for discrete GPUs, not for engines built "
                        f"{where} (a Jetson or DLA engine only runs on the module that built it): "
                        "drop --hardware-compat and build the engine on each device")
    if opts.hardware_compat == "ampere+" and not f.hardware_compat:
        raise UserError(f"--hardware-compat ampere+ needs TensorRT 8.6 or newer; this is {version}")
    if opts.hardware_compat == "same-cc" and not f.same_compute_capability:
        raise UserError(f"--hardware-compat same-cc needs TensorRT 10.9 or newer; this is {version} "
                        "(use ampere+ or build on each device)")
    if opts.version_compatible and not f.version_compatible:
        raise UserError(f"--version-compatible needs TensorRT 8.6 or newer; this is {version}")
    if opts.optimization_level is not None:
        if not f.builder_optimization_level:
            raise UserError(f"--builder-optimization-level needs TensorRT 8.6 or newer; this is {version}")
        if not 0 <= opts.optimization_level <= 5:
            raise UserError(f"--builder-optimization-level {opts.optimization_level} must be 0..5 "
                            "(3 is TensorRT's default)")
    if opts.workspace_gib is not None and opts.workspace_gib <= 0:
        raise UserError(f"--workspace {opts.workspace_gib:g} must be a positive number of GiB (example: 2)")
    if opts.gpu_fallback and opts.dla_core is None:
        raise UserError("--gpu-fallback only applies with --dla-core N")
    if opts.dla_core is not None and opts.dla_core < 0:
        raise UserError(f"--dla-core {opts.dla_core} must be 0 or 1 (Jetson AGX/NX have DLA cores 0 and 1)")


def check_dla(opts: BuildOptions, plan: PrecisionPlan, feats: Optional[TrtFeatures] = None,
              has_qdq: bool = False) -> None:
    """DLA runs FP16/INT8 layers only: refuse, before the minutes-long build, a plan DLA cannot run alone.

    TensorRT 8.x's DLA takes no explicitly quantized (Q/DQ) network at all (TensorRT 8 developer
    guide, "Working with DLA": DLA does not support explicit quantization): with --gpu-fallback
    every layer would silently run on the GPU, without it the build fails after minutes.
    """
    if opts.dla_core is None:
        return
    if has_qdq and feats is not None and feats.version < (10, 0):
        ver = ".".join(str(v) for v in feats.version)
        raise UserError(f"--dla-core {opts.dla_core}: DLA in TensorRT {ver} does not run explicitly quantized "
                        "(Q/DQ) INT8 networks, and this ONNX is one (with --gpu-fallback every layer would run on "
                        "the GPU); put the FP16 ONNX on DLA (`ds2a calibrate ... --precision fp16`), or the FP32 "
                        "ONNX with --int8 --calib-cache CACHE (implicit INT8, which DLA runs), or drop --dla-core "
                        "to run this INT8 engine on the GPU")
    if opts.gpu_fallback:
        return
    fix = f"add --gpu-fallback (those layers then run on the GPU) or drop --dla-core {opts.dla_core}"
    if plan.precision == "fp32":
        raise UserError(f"DLA runs FP16/INT8 only and this is an FP32 build: add --fp16, build the INT8 ONNX, or {fix}")
    if plan.pin_fp32:
        raise UserError(f"--dla-core {opts.dla_core} with {plan.precision.upper()} keeps "
                        f"{', '.join(FP32_LAYER_TYPES).lower()} layers in FP32, which DLA cannot run: {fix}")


def _run_compat_check(info: OnnxInfo, version: Tuple[int, int]) -> None:
    """The graph check of `ds2a export --check-trt` (ds2a.trt.compat) runs before TensorRT parses."""
    import onnx

    from ..trt import compat

    model = onnx.load_from_string(info.expanded) if info.expanded is not None else \
        onnx.load(info.path, load_external_data=False)
    findings = compat.check_model(model, version_text(version))
    blocking = compat.blockers(findings)
    for finding in findings:
        if finding.severity != "blocker":
            logger.warning(f"  warning: {finding.line()}")
    if blocking:
        lines = "\n  ".join(fd.line() for fd in blocking)
        raise UserError(f"{info.path} cannot be parsed by TensorRT {version[0]}.{version[1]}:\n  {lines}")


def _parser_errors(parser: Any, info: OnnxInfo) -> str:
    lines = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        node = int(err.node())
        where = (f"node {node} '{info.node_names[node]}' ({info.node_ops[node]})"
                 if 0 <= node < len(info.node_names) else "model")
        lines.append(f"{where}: {err.desc()}")
    return "\n  ".join(lines) or "no details (rerun with --verbose)"


def _pin_fp32(trt: Any, network: Any, tensors: List[str]) -> int:
    """Keep overflow-prone layers in FP32 in a weakly typed FP16 network; returns how many.

    Pinned: norm/softmax/reduce layers by type, and the layers producing `tensors` (the
    arithmetic of a LayerNorm written out as ops, found in the ONNX by name).
    """
    pinned = 0
    wanted = {getattr(trt.LayerType, name) for name in FP32_LAYER_TYPES if name in trt.LayerType.__members__}
    names = set(tensors)
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type not in wanted and not any(layer.get_output(j).name in names for j in range(layer.num_outputs)):
            continue
        layer.precision = trt.DataType.FLOAT
        for j in range(layer.num_outputs):
            if layer.get_output(j).dtype == trt.DataType.FLOAT:
                layer.set_output_type(j, trt.DataType.FLOAT)
        pinned += 1
    return pinned


def _add_profile(trt: Any, builder: Any, network: Any, config: Any, opts: BuildOptions,
                 path: str) -> Optional[List[int]]:
    """One optimization profile covering --batch for inputs with a dynamic batch dimension."""
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if not dynamic:
        if opts.batch:
            fixed = tuple(network.get_input(0).shape)[0]
            raise UserError(f"--batch {':'.join(map(str, opts.batch))} needs an ONNX with a dynamic batch "
                            f"dimension, but {path} is fixed at batch {fixed}; export it with a dynamic batch "
                            f"(`ds2a export ... --dynamic-batch`) or drop --batch")
        return None
    lo, opt, hi = opts.batch or (1, 1, 1)
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        dims = list(tensor.shape)
        if -1 in dims[1:]:
            raise UserError(f"{path} input '{tensor.name}' has dynamic dimensions {dims} besides the batch; "
                            f"export it at a fixed size (`ds2a export ... --size HxW`)")
        profile.set_shape(tensor.name, [lo] + dims[1:], [opt] + dims[1:], [hi] + dims[1:])
    config.add_optimization_profile(profile)
    return [lo, opt, hi]


def _load_timing_cache(config: Any, path: Optional[str]) -> Any:
    """Attach the cache from `path`; one from another GPU/release or a corrupt file is set aside for a fresh one."""
    data = b""
    if path and os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception:  # some releases raise on a blob they cannot read
            cache = None
        if cache is not None and config.set_timing_cache(cache, False):
            logger.info(f"timing cache: reusing {path} ({len(data)} bytes)")
            return cache
        logger.warning(f"warning: timing cache {path} was measured on another GPU or TensorRT release, or is corrupt; "
                       "starting a fresh one (it replaces the file after the build)")
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, False):
        logger.warning("warning: TensorRT refused a fresh timing cache; building without one")
        return None
    return cache


def _save_timing_cache(cache: Optional[bytes], path: str) -> None:
    """Write the build's timing cache (serialized); a failure costs the next build time, never the engine."""
    if cache is None:
        logger.warning(f"warning: TensorRT kept no timing cache; {path} not written")
        return
    try:
        _write_atomic(path, cache, "timing cache")
    except (OSError, UserError) as exc:
        logger.warning(f"warning: timing cache {path} not written ({exc})")
        return
    logger.info(f"timing cache: saved {path} ({os.path.getsize(path)} bytes)")


def _set_dla(trt: Any, builder: Any, config: Any, opts: BuildOptions, plan: PrecisionPlan) -> None:
    cores = int(builder.num_DLA_cores)
    if opts.dla_core >= cores:  # type: ignore[operator]
        raise UserError(f"--dla-core {opts.dla_core}: this device has {cores} DLA core(s)"
                        + (" (DLA exists on Jetson AGX Orin/Xavier and Orin NX)" if cores == 0 else ""))
    if plan.precision == "fp32":
        logger.warning("warning: an FP32 network cannot run on DLA; every layer will fall back to the GPU")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = int(opts.dla_core)  # type: ignore[arg-type]
    if opts.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    logger.info(f"DLA core {opts.dla_core}" + (" with GPU fallback" if opts.gpu_fallback else ""))


def _progress_monitor(trt: Any) -> Any:
    """An IProgressMonitor (TensorRT 10+) printing the top build phases."""

    class Progress(trt.IProgressMonitor):  # type: ignore[name-defined, misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.depth: Dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: Optional[str], num_steps: int) -> None:
            depth = self.depth.get(parent_phase, -1) + 1 if parent_phase else 0
            self.depth[phase_name] = depth
            if depth <= 1:
                logger.info(f"  {'  ' * depth}{phase_name} ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # returning False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            self.depth.pop(phase_name, None)

    return Progress()


def _tensor_record(trt: Any, tensor: Any) -> Dict[str, Any]:
    return {"name": tensor.name, "shape": [int(d) for d in tuple(tensor.shape)],
            "dtype": str(tensor.dtype).split(".")[-1].lower()}


@dataclass
class BuildReport:
    engine_path: str
    sidecar_path: str
    precision: str
    tensorrt_version: str
    build_seconds: float
    engine_bytes: int
    notes: List[str]
    verification: Optional[Dict[str, Any]] = None  # the accuracy gate's report (ds2a/engine/verify.py)


def _configure(trt: Any, builder: Any, network: Any, opts: BuildOptions, plan: PrecisionPlan,
               feats: TrtFeatures, info: OnnxInfo) -> Tuple[Any, Optional[List[int]], List[Any]]:
    """Builder config from the plan and options: (config, batch profile, objects to keep alive)."""
    path, info_tensors = info.path, info.fp32_tensors
    config = builder.create_builder_config()
    for name in plan.flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.pin_fp32:
        logger.info(f"pinned {_pin_fp32(trt, network, info_tensors)} layers to FP32")
    keep: List[Any] = []
    if plan.calibrator:
        keep.append(_cache_calibrator(trt, read_calibration_cache(opts.calib_cache)))
        config.int8_calibrator = keep[-1]
    if opts.workspace_gib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * (1 << 30)))
    profile = _add_profile(trt, builder, network, config, opts, path)
    # TensorRT needs the calibrator, timing cache and progress monitor alive until the build ends.
    if opts.timing_cache:
        keep.append(_load_timing_cache(config, opts.timing_cache))  # may be None: built without one
    if opts.dla_core is not None:
        _set_dla(trt, builder, config, opts, plan)
    if opts.hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif opts.hardware_compat == "same-cc":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if opts.optimization_level is not None:
        config.builder_optimization_level = int(opts.optimization_level)
    if opts.verbose:
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    if feats.progress_monitor:
        keep.append(_progress_monitor(trt))
        config.progress_monitor = keep[-1]
    return config, profile, keep


def _parse(trt: Any, builder: Any, trt_logger: Any, plan: PrecisionPlan, info: OnnxInfo, version: str,
           native_instancenorm: bool) -> Tuple[Any, Any]:
    """(network, parser): a network with the plan's creation flags, filled by the ONNX parser.

    `native_instancenorm`: a version- or hardware-compatible plan cannot carry the InstanceNormalization
    plugin, so the parser must import that op natively (8.6 defaults to the plugin, 10.0+ to native).
    """
    net_flags = 0
    if plan.explicit_batch:
        net_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if plan.strongly_typed:
        net_flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(net_flags)
    parser = trt.OnnxParser(network, trt_logger)
    if native_instancenorm:
        parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if info.expanded is not None:
        data = info.expanded
    else:
        with open(info.path, "rb") as f:
            data = f.read()
    parsed = parser.parse(data, os.path.abspath(info.path))
    if not parsed:
        raise UserError(f"TensorRT {version} could not parse {info.path}:\n  {_parser_errors(parser, info)}")
    return network, parser


def _write_atomic(path: str, data: Any, label: str) -> None:
    with atomic_write(path, "wb", label=label) as f:
        f.write(data)


@contextmanager
def _build_device(index: int, device: Any, cuda_api: Any) -> Iterator[Any]:
    """GPU `index` current on this thread for the whole build; yields its DeviceInfo.

    TensorRT builds on the thread's current CUDA context, so the device is selected first, for
    both CUDA layers, as trtexec does (samples/common/sampleDevice.h, setCudaDevice); without it
    a pycuda-only machine builds on GPU 0 whatever --device says. A given `device` without a
    `cuda_api` (tests) opens nothing.
    """
    if device is not None and cuda_api is None:
        yield device
        return
    from ..runtime.cuda_buffers import open_cuda  # the GPU memory layer, not the TensorRT backend

    api = cuda_api or open_cuda(index)
    try:
        with api.activate():
            yield device if device is not None else api.device_info()
    finally:
        close = getattr(api, "close", None)
        if close is not None:
            close()


@dataclass
class _Compiled:
    """What a build leaves once TensorRT's objects are gone (they go while the GPU is still current)."""

    plan: bytes
    inputs: List[Dict[str, Any]]
    outputs: List[Dict[str, Any]]
    profile: Optional[List[int]]
    timing_cache: Optional[bytes]
    seconds: float


def _compile(trt: Any, info: OnnxInfo, opts: BuildOptions, plan: PrecisionPlan, feats: TrtFeatures, version: str,
             device: Any) -> _Compiled:
    """Parse, configure and build; TensorRT's builder, network, parser and config live only in here."""
    trt_logger = trt.Logger(trt.Logger.VERBOSE if opts.verbose else trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(trt_logger, "")  # the parser finds plugin nodes (--deform-attn trt-plugin) here
    builder = trt.Builder(trt_logger)
    logger.info("parsing ONNX")
    # NvOnnxParser.h, kNATIVE_INSTANCENORM: "required when building version-compatible or hardware-compatible engines"
    native_in = (opts.version_compatible or opts.hardware_compat != "none") and feats.native_instancenorm
    network, _parser = _parse(trt, builder, trt_logger, plan, info, version, native_in)  # must outlive the build
    config, profile, _keep = _configure(trt, builder, network, opts, plan, feats, info)
    for note in plan.notes:
        logger.info(note)
    logger.info(f"building {plan.precision.upper()} engine on {device.name} (compute {device.cc_text}); this takes minutes")
    t_build = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None or memoryview(serialized).nbytes == 0:
        what = "failed to build" if serialized is None else "returned an empty engine for"
        raise UserError(f"TensorRT {version} {what} {info.path} (see its log above); nothing was written: "
                        "rerun with --verbose, or try --workspace 4 / a lower --builder-optimization-level")
    seconds = time.perf_counter() - t_build
    cache = config.get_timing_cache() if opts.timing_cache else None
    return _Compiled(bytes(memoryview(serialized)),
                     [_tensor_record(trt, network.get_input(i)) for i in range(network.num_inputs)],
                     [_tensor_record(trt, network.get_output(i)) for i in range(network.num_outputs)],
                     profile, bytes(cache.serialize()) if cache is not None else None, seconds)


def _write_engine_and_sidecar(out_path: str, serialized: Any, record: EngineRecord) -> str:
    """The engine and its sidecar land together: an engine without a sidecar is never left behind."""
    _write_atomic(out_path, serialized, "engine")
    try:
        return write_sidecar(out_path, record)
    except BaseException:
        os.remove(out_path)
        raise


def default_engine_path(onnx_path: str) -> str:
    """model.int8.onnx -> model.int8.engine (what `ds2a build-engine` writes without --out)."""
    return os.path.splitext(onnx_path)[0] + ".engine"


def build_engine(onnx_path: str, out_path: Optional[str] = None, opts: Optional[BuildOptions] = None,
                 trt: Any = None, device: Any = None, cuda_api: Any = None) -> BuildReport:
    """Build `out_path` (default: the ONNX name with .engine) and its sidecar from `onnx_path` with
    the running TensorRT release. The output paths are checked before minutes of building.

    `trt`, `device` (a cuda_buffers.DeviceInfo) and `cuda_api` (the CUDA layer that makes the GPU
    current) are injectable for tests; by default the installed tensorrt and the GPU `opts.device`
    are used. Progress goes to this module's logger.
    """
    opts = opts or BuildOptions()
    out_path = out_path or default_engine_path(onnx_path)
    check_outputs([("--out", out_path), ("--out's metadata", sidecar_path(out_path))],
                  [("ONNX", onnx_path), ("--calib-cache", opts.calib_cache)])
    t0 = time.perf_counter()
    info = inspect_onnx(onnx_path)
    trt = trt or import_tensorrt()
    version = str(trt.__version__)
    feats = detect_features(trt)
    board = platform.board_model()
    check_options(opts, feats, version, jetson=platform.is_jetson(board))
    plan = plan_precision(info, opts, feats)
    check_dla(opts, plan, feats, info.has_qdq)
    logger.info(f"checking {onnx_path} ({info.precision} graph) for TensorRT {version}")
    _run_compat_check(info, feats.version)
    with _build_device(opts.device, device, cuda_api) as device:
        built = _compile(trt, info, opts, plan, feats, version, device)
    build_s = built.seconds
    record = EngineRecord(
        tensorrt_version=version, gpu_name=device.name, compute_capability=device.cc_text,
        **platform.device_identity(device, board),
        precision=plan.precision, strongly_typed=plan.strongly_typed, builder_flags=plan.flags,
        inputs=built.inputs, outputs=built.outputs, batch_profile=built.profile, meta=info.meta.to_dict() if info.meta else None,
        onnx_path=os.path.abspath(onnx_path), onnx_sha256=info.sha256,
        build_options=asdict(opts), build_args=opts.to_args(),
        version_compatible=opts.version_compatible, hardware_compat=opts.hardware_compat,
        dla_core=opts.dla_core, build_seconds=round(build_s, 3),
        calibration_cache_sha256=file_sha256(opts.calib_cache) if plan.calibrator else None,  # type: ignore[arg-type]
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if opts.timing_cache:
        _save_timing_cache(built.timing_cache, opts.timing_cache)
    gate = _verify(out_path, built.plan, record, info, opts, trt, cuda_api)  # installs only an engine that passes
    side = _write_engine_and_sidecar(out_path, built.plan, record)
    size = os.path.getsize(out_path)
    total = time.perf_counter() - t0
    logger.info(f"wrote {out_path} ({size / 1e6:.1f} MB) and {sidecar_path(out_path)} in {total:.1f} s "
                f"(TensorRT build {build_s:.1f} s)")
    return BuildReport(out_path, side, plan.precision, version, build_s, size, plan.notes, gate)


def _verify(out_path: str, plan: bytes, record: EngineRecord, info: OnnxInfo, opts: BuildOptions, trt: Any,
            cuda_api: Any) -> Dict[str, Any]:
    """The accuracy gate (ds2a/engine/verify.py) on the new engine, written beside `out_path` meanwhile.

    Passed (or --accept-mismatch): the report and the engine's own golden class maps go into
    `record`. Failed: the engine stays as a rejected file with its report, and UserError.
    """
    from .verify import failure_message, rejected_path, report_path, verify_engine

    stem, ext = os.path.splitext(out_path)
    candidate = f"{stem}.verifying{ext or '.engine'}"
    _write_engine_and_sidecar(candidate, plan, record)
    try:
        report, golden = verify_engine(candidate, info.path, info.meta, record.precision, opts.verify,
                                       record.tensorrt_version, trt=trt, cuda_api=cuda_api, device=opts.device)
    except BaseException:
        _remove(candidate, sidecar_path(candidate))
        raise
    result = report.to_dict()
    record.extra["verification"] = result
    if golden is not None and record.meta is not None:
        record.meta = {**record.meta, "extra": {**record.meta.get("extra", {}), "golden": golden.to_dict()}}
    logger.info(report.line())
    if report.passed or report.accepted_mismatch:
        if not report.passed:
            logger.warning(f"warning: installing an engine that failed the accuracy gate (--accept-mismatch): "
                           f"{'; '.join(report.failures)}")
        _remove(candidate, sidecar_path(candidate))
        return result
    rejected = rejected_path(out_path)
    _remove(sidecar_path(candidate))
    os.replace(candidate, rejected)
    write_sidecar(rejected, record)
    with atomic_write(report_path(rejected), label="accuracy report") as f:
        f.write(json.dumps(result, indent=2, sort_keys=True) + "\n")
    raise UserError(failure_message(report, info.path, out_path, rejected))


def _remove(*paths: str) -> None:
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
