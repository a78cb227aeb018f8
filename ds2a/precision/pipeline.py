"""The calibration stage as one call: FP32 ONNX -> INT8 (Q/DQ) or FP16 ONNX, with the default policy.

`ds2a calibrate` (ds2a/cli/calibrate.py) only maps its flags onto `CalibrationOptions` and prints
the `CalibrationResult`. The defaults live here: the range method per target, the exclusions
measured in benchmarks/results/precision_exclusions.md, the cache next to the output. `out`
appears only once complete (ds2a/outputs.py), and SIGTERM/SIGHUP unwind so a ModelOpt worker
and the temp file are removed. Torch-free; ModelOpt is imported only inside its worker process.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UserError
from ..options_check import check_fields
from ..outputs import atomic_path, check_outputs

PathLike = Union[str, Path]
logger = logging.getLogger(__name__)

# Measured on the demo model: ModelOpt with entropy lost 8.8 mIoU points, with minmax 0.2;
# ORT quantize_static with entropy lost 0.7.
DEFAULT_METHOD = {"tensorrt": "minmax", "onnxruntime": "entropy"}
GOLDEN_CANDIDATES = 12  # calibration frames run to pick the golden ones


@dataclass
class CalibrationOptions:
    """Everything `ds2a calibrate` can be asked for (CLI flags map 1:1)."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    data: str  # dataset root (M-BSD layout), image folder or manifest file
    precision: str  # "int8" or "fp16"
    target: str = "tensorrt"  # INT8 Q/DQ placement: "tensorrt" (ModelOpt) or "onnxruntime"
    num_images: int = 64
    min_images: Optional[int] = None  # fail below this many readable images (default min(8, num_images))
    method: Optional[str] = None  # "entropy", "minmax", "percentile"; None = DEFAULT_METHOD[target]
    exclude: Optional[Sequence[str]] = None  # op types or node-name regexes kept float; None = the defaults
    split: str = "train"
    seed: int = 0
    cache: Optional[str] = None  # calibration cache; None = OUT with .calib.json
    use_cache: bool = True  # False: neither read nor write a cache
    recalibrate: bool = False  # ignore and overwrite an existing cache
    compact_weights: bool = False  # store FP16-exact FP32 weights as FP16, losslessly (ds2a/export/storage.py)


@dataclass
class CalibrationResult:
    """The converted file and what calibration saw (the lines `ds2a calibrate` prints)."""

    path: Path
    size_bytes: int
    precision: str
    target: Optional[str]  # the INT8 placement; None for FP16
    method: str
    images: List[str]
    skipped: List[Tuple[str, str]]  # (image, why it was unreadable)
    class_counts: Dict[int, int]  # images containing each class id
    exclude_ops: List[str]
    exclude_nodes: List[str]
    cache: Optional[Path]
    cache_reused: bool
    agreement: float  # share of calibration pixels whose class equals the FP32 model's
    seconds: float
    golden_frames: int = 0  # frames stored for the self-test at every start (ds2a/runtime/selftest.py)

    def summary(self) -> str:
        return (f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, {self.precision}"
                f"{', ' + self.target if self.target else ''}) in {self.seconds:.1f} s"
                f"{' (calibration cache reused)' if self.cache_reused else ''}; class maps agree with FP32 on "
                f"{100 * self.agreement:.2f}% of calibration pixels; {self.golden_frames} golden frames stored "
                f"for the self-test")


def default_cache_path(out: PathLike) -> Path:
    """`model.int8.onnx` -> `model.int8.calib.json`."""
    return Path(out).with_suffix(".calib.json")


def calibration_set_lines(calib, data: str, seed: int) -> List[str]:
    """What was chosen: count, skipped files (first five) and images per class."""
    lines = [f"calibration: {len(calib.names)} images from {data} (seed {seed}); "
             f"{len(calib.skipped)} unreadable skipped; images per class: {calib.class_counts or 'n/a (no masks)'}"]
    return lines + [f"  skipped {name}: {why}" for name, why in calib.skipped[:5]]


def calibrate(model: PathLike, out: PathLike, options: CalibrationOptions) -> CalibrationResult:
    """Convert the FP32 ONNX `model` to `options.precision` at `out`; UserError on what the caller can fix.

    The calibration-set lines are logged before the (minutes-long) conversion starts.
    """
    from .isolated import signals_unwind

    if options.precision not in ("int8", "fp16"):
        raise UserError(f"--precision {options.precision} is unknown; choose int8 or fp16")
    if options.target not in DEFAULT_METHOD:
        raise UserError(f"--target {options.target} is unknown; choose tensorrt or onnxruntime")
    final = Path(out)
    cache = None if not options.use_cache else Path(options.cache or default_cache_path(final))
    check_outputs([("--out", str(final)), ("--cache", None if cache is None else str(cache))],
                  [("MODEL", str(model)), ("--data", options.data)])
    # SIGTERM unwinds (stopping any ModelOpt worker) so temp files and the partial `out` are removed
    with signals_unwind(), atomic_path(final, label="--out") as tmp:  # `out` appears only once complete
        return _convert(str(model), final, Path(tmp), options, cache)


def _convert(model: str, final: Path, out: Path, o: CalibrationOptions, cache: Optional[Path]) -> CalibrationResult:
    """The conversion, written to `out` (a temp file next to `final`)."""
    import onnx

    from ..data.calibration import select_calibration_set
    from ..export.metadata import attach_drift_reference_file, attach_golden_file, read_meta, write_meta
    from ..meta import file_sha256
    from .model_info import final_compute_nodes, inspect_model, precision_of, resolve_exclusions

    method = o.method or DEFAULT_METHOD[o.target]
    info = inspect_model(model)
    exclude_ops, exclude_nodes = resolve_exclusions(info, list(o.exclude or ()))
    calib = select_calibration_set(o.data, info.meta.input_size, o.num_images, o.seed, o.split,
                                   info.meta.num_classes, o.min_images)
    for line in calibration_set_lines(calib, o.data, o.seed):
        logger.info(line)
    t0 = time.perf_counter()
    reused = False
    if o.precision == "int8":
        from .int8 import DEFAULT_EXCLUDE_OPS, calibrate_int8

        if o.exclude is None:  # defaults measured in benchmarks/results/precision_exclusions.md
            present = set(info.op_types())
            exclude_ops = [op for op in DEFAULT_EXCLUDE_OPS if op in present]
            exclude_nodes = final_compute_nodes(info.model, depth=1)
        reused = calibrate_int8(info, calib, out, o.target, method, exclude_ops, exclude_nodes,
                                cache, o.recalibrate, file_sha256(model))
    else:
        from .fp16 import convert_fp16

        convert_fp16(info, calib, out, exclude_ops, exclude_nodes)
    result = onnx.load(str(out))
    meta = read_meta(info.model, model)
    target = o.target if o.precision == "int8" else None
    meta.extra = {**meta.extra, "precision": o.precision, "source_onnx_sha256": file_sha256(model),
                  "calibration": {"images": len(calib.names), "method": method, "seed": o.seed,
                                  "target": target, "exclude_ops": list(exclude_ops),
                                  "exclude_nodes": list(exclude_nodes)}}
    write_meta(result, meta)
    onnx.save(result, str(out))
    if precision_of(result) != o.precision:
        raise UserError(f"{final} came out as {precision_of(result)}, not {o.precision}: nothing was converted; "
                        f"check --exclude (it may exclude every convertible op)")
    # the converted model's own answers on a few calibration frames: its self-test (ds2a/runtime/selftest.py)
    golden = attach_golden_file(out, list(calib.frames[:GOLDEN_CANDIDATES]), f"calibration images from {o.data}")
    # drift reference statistics of all the calibration frames, as the converted model sees them (docs/DRIFT.md)
    attach_drift_reference_file(out, list(calib.frames), f"calibration images from {o.data}")
    if o.compact_weights:  # after the golden frames: the stored answers are the exact model's, checked below
        from ..export.storage import compact

        onnx.save(compact(onnx.load(str(out)))[0], str(out))
    agreement = _agreement(model, str(out), calib.frames[: max(info.batch, 4)], info)
    return CalibrationResult(
        path=final, size_bytes=out.stat().st_size, precision=o.precision, target=target, method=method,
        images=list(calib.names), skipped=list(calib.skipped), class_counts=dict(calib.class_counts or {}),
        exclude_ops=list(exclude_ops), exclude_nodes=list(exclude_nodes),
        cache=cache if o.precision == "int8" else None, cache_reused=reused, agreement=agreement,
        seconds=time.perf_counter() - t0, golden_frames=len(golden.frames))


def _agreement(fp32_path: str, new_path: str, frames: np.ndarray, info) -> float:
    """Share of pixels where the converted model's class map equals the FP32 model's (sanity, not accuracy)."""
    import onnxruntime as ort

    from ..preprocess import normalize

    maps = []
    for path in (fp32_path, new_path):
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        outs = [o.name for o in sess.get_outputs()]
        res = []
        step = info.batch
        for i in range(0, len(frames) - len(frames) % step, step):
            x = frames[i : i + step]
            x = normalize(x, info.meta.mean, info.meta.std) if info.float_input else x
            o = dict(zip(outs, sess.run(None, {name: x})))
            res.append(o["class_map"] if "class_map" in o else o["logits"].argmax(1))
        maps.append(np.concatenate(res))
    return float((maps[0] == maps[1]).mean())
