"""The benchmark matrix behind benchmarks/results/: every backend and precision of a model at a size.

For each (model, size) group: a checkpoint (the demo model when given, else random weights
for latency and parity only), `export_onnx` to ONNX, calibration to FP16 and to INT8
in both Q/DQ placements, TensorRT engines (`build_engine`) where TensorRT and a GPU exist; then
every file is timed with the same `bench_model()` and scored (mIoU on the synthetic test split for
the trained demo model, class-map parity with PyTorch otherwise). A step that cannot run
becomes a row saying why. The steps are library calls in this process (`run_step`); a step
that kills the process (out of memory) leaves a `.failed` marker, so a re-run skips it.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..options_check import check_fields
from .report import add_speedups, make_report, write_all
from .runner import BenchOptions, bench_model

# (precision label, (calibration precision, INT8 placement) or None for the plain export)
ORT_VARIANTS: List[Tuple[str, Optional[Tuple[str, str]]]] = [
    ("fp32", None),
    ("fp16", ("fp16", "tensorrt")),
    ("int8-ort", ("int8", "onnxruntime")),
    ("int8-trt", ("int8", "tensorrt")),
]
TRT_VARIANTS = [("fp32", "fp32"), ("fp16", "fp16"), ("int8", "int8-trt")]  # engine precision <- ONNX used

logger = logging.getLogger(__name__)


@dataclass
class MatrixOptions:
    """What benchmarks/run_matrix.py asks for (its flags map 1:1)."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    models: List[str] = field(default_factory=lambda: ["ds2a_tiny", "ds2a_r18"])
    sizes: List[Tuple[int, int]] = field(default_factory=lambda: [(256, 256), (512, 512)])
    work: str = "ds2a_bench_work"  # exported / calibrated files, cached between runs
    demo: Optional[str] = None  # trained checkpoint, used for its arch (mIoU rows)
    data: Optional[str] = None  # synthetic dataset: mIoU of the demo model and parity frames
    calib_data: Optional[str] = None  # calibration images (default: data)
    calib_images: int = 16
    parity_frames: int = 2
    rebuild: bool = False  # export and calibrate again even when files exist
    tensorrt: bool = False  # also build and time TensorRT engines
    gpu_torch: bool = False  # run the PyTorch rows on CUDA when available
    notes: List[str] = field(default_factory=list)
    command: str = ""  # the command line, stored in the report
    bench: BenchOptions = field(default_factory=BenchOptions)  # timing of every row (limit: mIoU images)


def run_step(name: str, call: Callable[[], Any]) -> Optional[str]:
    """Run one pipeline step (what `ds2a NAME` does) in this process; None when it worked, else why not.

    Any exception becomes the reason, so one broken step skips its rows instead of ending the matrix.
    """
    logger.info(f"  ds2a {name} ...")
    t0 = time.perf_counter()
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the reason goes into the report row
        logger.info(f"    ({time.perf_counter() - t0:.0f} s, failed)")
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        return f"`ds2a {name}` failed: " + (lines[-1][:240] if lines else type(exc).__name__)
    logger.info(f"    ({time.perf_counter() - t0:.0f} s)")
    return None


def cached_step(out: str, name: str, call: Callable[[], Any], rebuild: bool) -> Optional[str]:
    """`run_step` for a step whose output is cached in `out`: a failure (or a process that died
    during the step, e.g. out of memory) is remembered in OUT.failed and not repeated without rebuild."""
    marker = out + ".failed"
    if not rebuild and os.path.isfile(out):
        return None
    if not rebuild and os.path.isfile(marker):  # do not repeat a failure (OOM) on re-runs
        with open(marker) as f:
            return f.read().strip() + " (earlier run; --rebuild retries)"
    with open(marker, "w") as f:  # stays if the process dies during the step
        f.write(f"`ds2a {name}` did not finish: the process died (out of memory on this machine?)")
    try:
        err = run_step(name, call)
    except BaseException:  # Ctrl-C / SIGTERM: stopped, not failed; the next run tries again
        os.remove(marker)
        raise
    if err:
        with open(marker, "w") as f:
            f.write(err)
    else:
        os.remove(marker)
    return err


def tensorrt_missing() -> Optional[str]:
    """Why TensorRT rows cannot run here, or None when they can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "TensorRT not installed on this machine"
    from .machine import gpu_info

    return None if gpu_info() else "no NVIDIA GPU on this machine"


def make_checkpoint(name: str, size: Tuple[int, int], demo: Optional[str], work: str) -> Tuple[str, bool]:
    """(checkpoint path, trained?) — the demo checkpoint for its arch, else random weights at `size`."""
    if demo and os.path.isfile(demo):
        from ..model import load_model

        if load_model(demo).meta.arch == name:
            return demo, True
    path = os.path.join(work, f"{name}_random_{size[0]}x{size[1]}.pt")
    if not os.path.isfile(path):
        import torch

        from ..model import build_model, save_checkpoint

        torch.manual_seed(0)
        logger.info(f"  random-weight {name} at {size[0]}x{size[1]} -> {path}")
        save_checkpoint(path, build_model(name, input_size=size))
    return path, False


def export_step(ckpt: str, out: str, size: Tuple[int, int], trained_size: bool) -> None:
    """The FP32 ONNX, with logits too (for the parity check)."""
    from ..export import ExportOptions, export_onnx

    options = ExportOptions(outputs="both")
    if not trained_size:
        options = ExportOptions(outputs="both", size=size, force_size=True)
    export_onnx(ckpt, out, options)


def make_onnx_files(ckpt: str, tag: str, size: Tuple[int, int], trained_size: bool, data: Optional[str],
                    opts: MatrixOptions) -> Dict[str, Tuple[Optional[str], Optional[str]]]:
    """precision label -> (onnx path, None) or (None, reason it could not be made)."""
    from ..precision import CalibrationOptions, calibrate

    files: Dict[str, Tuple[Optional[str], Optional[str]]] = {}
    fp32 = os.path.join(opts.work, f"{tag}.onnx")
    if not os.path.isfile(fp32) or opts.rebuild:
        err = run_step("export", lambda: export_step(ckpt, fp32, size, trained_size))
        if err:
            return {label: (None, err) for label, _ in ORT_VARIANTS}
    files["fp32"] = (fp32, None)
    for label, calib in ORT_VARIANTS[1:]:
        out = os.path.join(opts.work, f"{tag}.{label}.onnx")
        if calib is None:
            continue
        cached = not opts.rebuild and (os.path.isfile(out) or os.path.isfile(out + ".failed"))
        if not data and label != "fp16" and not cached:
            files[label] = (None, "no calibration data (--data)")
            continue
        options = CalibrationOptions(data=data or "", precision=calib[0], target=calib[1],
                                     num_images=opts.calib_images, recalibrate=opts.rebuild and label != "fp16")
        err = cached_step(out, "calibrate", functools.partial(calibrate, fp32, out, options), opts.rebuild)
        files[label] = (None, err) if err else (out, None)
    return files


def reference_frames(data: Optional[str], size: Tuple[int, int], count: int) -> np.ndarray:
    """Frames for parity: test-split images when a dataset is given, else seeded noise."""
    from ..preprocess import resize_frame

    if data:
        from ..data import open_dataset

        ds = open_dataset(data, split="test")
        return np.stack([resize_frame(ds[i].image, size) for i in range(min(count, len(ds)))])
    return np.random.default_rng(0).integers(0, 256, (count, *size, 3), dtype=np.uint8)


def predict_with_logits(model: Any, row: Dict[str, Any], frames: np.ndarray, size: Tuple[int, int],
                        opts: MatrixOptions) -> List[Any]:
    """The model's results on `frames`, with logits when the backend can return them.

    The timed model is opened without logits (the hot path fetches only the class map), so
    ONNX Runtime and PyTorch rows are reopened with return_logits for this check.
    """
    if row["backend"] not in ("onnxruntime", "pytorch"):
        return model.infer_batch(frames)
    from ..runtime import open_model

    options: Dict[str, Any] = {"return_logits": True}
    if row["backend"] == "pytorch":
        options.update(device="auto" if opts.gpu_torch else "cpu", input_size=size)
    with open_model(row["model"], backend=row["backend"], **options) as m:
        return m.infer_batch(frames)


def build_engine_step(onnx_path: str, engine: str, fp16: bool) -> None:
    from ..engine import BuildOptions, build_engine

    build_engine(onnx_path, engine, BuildOptions(fp16=fp16))


def run_group(name: str, size: Tuple[int, int], opts: MatrixOptions) -> List[Dict[str, Any]]:
    """All rows of one (model, size): PyTorch, ORT FP32/FP16/INT8 x2, TensorRT where possible."""
    tag = f"{name}_{size[0]}x{size[1]}"
    logger.info(f"== {tag}")
    ckpt, trained = make_checkpoint(name, size, opts.demo, opts.work)
    from ..model import load_model

    trained_size = tuple(load_model(ckpt).meta.input_size) == tuple(size)
    label = f"{name} (demo)" if trained else f"{name} (random)"
    base = {"label": label, "input_size": list(size), "group": tag, "backend": None}
    frames = reference_frames(opts.data, size, opts.parity_frames)
    reference: Dict[str, np.ndarray] = {}

    def parity(model: Any, row: Dict[str, Any]) -> None:
        """Class-map agreement (and logits error when available) with the group's first row (PyTorch)."""
        results = predict_with_logits(model, row, frames, size, opts)
        maps = np.stack([r.class_map for r in results])
        logits = np.stack([r.logits for r in results]) if all(r.logits is not None for r in results) else None
        if "maps" not in reference:
            reference.update(maps=maps, logits=logits, by=f"{row['backend']} {row['precision']}")
        row["parity"] = float((maps == reference["maps"]).mean())
        row["parity_reference"] = reference["by"]
        row["reference_classes_seen"] = int(len(np.unique(reference["maps"])))
        if logits is not None and reference.get("logits") is not None:
            ref = reference["logits"]
            row["logits_rel_err"] = float(np.abs(logits - ref).max() / max(float(np.abs(ref).max()), 1e-12))

    def bench(path: str, backend: str, precision: str, **extra: Any) -> Dict[str, Any]:
        row_opts = dataclasses.replace(opts.bench, backend=backend, data=opts.data if trained else None)
        if backend == "pytorch":
            row_opts = dataclasses.replace(row_opts, device="auto" if opts.gpu_torch else "cpu", size=size)
        elif backend == "tensorrt":
            row_opts = dataclasses.replace(row_opts, threads=0)  # CPU threads mean nothing to an engine
        try:
            row = bench_model(path, row_opts, after=parity)
        except Exception as exc:  # one broken row must not lose the matrix
            return {**base, "backend": backend, "precision": precision, "skipped": f"{type(exc).__name__}: {exc}"[:240]}
        row.update({**base, "backend": backend, "precision": precision, **extra})
        return row

    rows = [bench(ckpt, "pytorch", "fp32", **({} if trained_size else {"note": f"run at {size[0]}x{size[1]}"}))]
    if not trained_size:
        rows[0]["size_mb"] = round(os.path.getsize(ckpt) / 2**20, 2)
    files = make_onnx_files(ckpt, tag, size, trained_size, opts.data if opts.calib_data is None else opts.calib_data,
                            opts)
    for precision, (path, reason) in files.items():
        rows.append(bench(path, "onnxruntime", precision) if path
                    else {**base, "backend": "onnxruntime", "precision": precision, "skipped": reason})
    trt_reason = tensorrt_missing() or (None if opts.tensorrt else "TensorRT rows not requested (--tensorrt)")
    for precision, source in TRT_VARIANTS:
        onnx_path, reason = files.get(source, (None, "no ONNX"))
        if trt_reason or not onnx_path:
            rows.append({**base, "backend": "tensorrt", "precision": precision, "skipped": trt_reason or reason})
            continue
        engine = os.path.join(opts.work, f"{tag}.{precision}.engine")
        err = None if os.path.isfile(engine) and not opts.rebuild else run_step(
            "build-engine", functools.partial(build_engine_step, onnx_path, engine, precision == "fp16"))
        rows.append({**base, "backend": "tensorrt", "precision": precision, "skipped": err} if err
                    else bench(engine, "tensorrt", precision))
    return rows


def target_notes(rows: List[Dict[str, Any]]) -> List[str]:
    """The issue's targets, stated from the measured rows."""
    def med(group: str, backend: str, precision: str) -> Optional[float]:
        for r in rows:
            if (r.get("group"), r.get("backend"), r.get("precision")) == (group, backend, precision) \
                    and r.get("latency_ms"):
                return r["latency_ms"]["median"]
        return None

    notes = []
    for group in dict.fromkeys(r["group"] for r in rows):
        pt, f32, i8 = (med(group, "pytorch", "fp32"), med(group, "onnxruntime", "fp32"),
                       med(group, "onnxruntime", "int8-ort"))
        if pt and f32:
            notes.append(f"{group}: ORT FP32 vs PyTorch eager: {pt / f32:.2f}x "
                         f"({'faster' if f32 < pt else 'NOT faster'}; medians {f32:.1f} vs {pt:.1f} ms)")
        if f32 and i8:
            notes.append(f"{group}: ORT INT8 (onnxruntime placement) vs ORT FP32: {f32 / i8:.2f}x "
                         f"({'faster' if i8 < f32 else 'NOT faster'}; medians {i8:.1f} vs {f32:.1f} ms)")
    demo = [r for r in rows if "(demo)" in str(r.get("label")) and r.get("latency_ms") and r["backend"] != "tensorrt"]
    if demo:
        best = max(demo, key=lambda r: r["latency_ms"]["throughput_fps"])
        miou = f", mIoU {100 * best['miou']:.2f}" if best.get("miou") is not None else ""
        notes.append(f"best CPU configuration for the demo model: {best['backend']} {best['precision']} at "
                     f"{best['input_size'][0]}x{best['input_size'][1]}: {best['latency_ms']['throughput_fps']:.1f} FPS "
                     f"(median {best['latency_ms']['median']:.1f} ms{miou})")
    return notes


def merge_rows(old: List[Dict[str, Any]], new: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Replace the groups measured now, keep the others (so a matrix can be re-run in parts)."""
    fresh = {r.get("group") for r in new}
    return [r for r in old if r.get("group") not in fresh] + new


def run_matrix(opts: MatrixOptions, previous: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Measure every requested (model, size) group; returns the report (merged into `previous`)."""
    os.makedirs(opts.work, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    for name in opts.models:
        for size in opts.sizes:
            rows += run_group(name, size, opts)
    if previous:
        rows = merge_rows(previous.get("rows", []), rows)
    add_speedups(rows)
    notes = list(opts.notes or [])
    report = make_report(rows, command=opts.command, title="DS2A-Former benchmark matrix", notes=notes)
    load = (report["machine"]["cpu"] or {}).get("load_avg_1_5_15")
    report["notes"] += target_notes(rows)
    if load:
        report["notes"].append(f"1-min load average when the report was written: {load[0]} "
                               f"(the machine is shared; CPU numbers are noisy when it is high)")
    return report


def write_report(report: Dict[str, Any], out_prefix: str) -> None:
    write_all(report, out_prefix + ".json", out_prefix + ".md", out_prefix + ".png")
