"""The accuracy gate of every engine build: the new engine must answer like ONNX Runtime on the same ONNX.

TensorRT can build an engine that runs and silently answers wrongly (deformable attention
decomposed into GridSample is publicly reported to miscompile on some releases). So
`build_engine` (ds2a/engine/builder.py) runs the new engine on reference frames and compares
its class maps with ONNX Runtime on the CPU running the ONNX it was built from: pixel
agreement per frame and overall, agreement on the defect pixels, IoU per class, part verdict
flips and, where the frames are labelled, mIoU of both against the labels. An engine below the
thresholds of its precision is not installed. Where ONNX Runtime is missing, the golden class
maps the ONNX carries (ds2a/runtime/selftest.py) are the reference. Thresholds: docs/SELFTEST.md.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from ..options_check import check_fields

if TYPE_CHECKING:  # the builder imports VerifyOptions on machines without OpenCV; the gate needs it
    from ..runtime.selftest import Golden

logger = logging.getLogger(__name__)


@dataclass
class Thresholds:
    """What an engine must reach against the reference (shares in 0..1; mIoU drop in mIoU units)."""

    min_agreement: float  # pixels with the same class, over all frames
    min_frame_agreement: float  # the same, on the worst frame
    min_defect_agreement: float  # of the pixels either calls a defect, those with the same class (all frames)
    max_miou_drop: float  # labelled frames: mIoU of the reference minus mIoU of the engine


# Set above what the CPU shows between legitimate variants of the demo model (benchmarks/gate_spread.py,
# 64 labelled frames, docs/SELFTEST.md). FP16 vs FP32 ONNX: 99.95 % of pixels, worst frame 98.1 %, defect
# pixels 98.4 %, mIoU -0.23 pt (an FP32 engine runs TF32 matmuls, an FP16 one other kernels: no closer).
# The same INT8 ONNX on integer vs float kernels: 99.93 %, worst 99.2 %, defect 98.0 %, -0.04 pt; a
# separately quantised INT8 vs FP32 (an upper bound for TensorRT's own INT8 fusions): 99.56 %, worst
# 90.2 %, defect 88.1 %, -1.5 pt. A miscompiled engine (GridSample reports: a quarter of the detections
# left) loses most defect pixels and fails every line.
DEFAULT_THRESHOLDS: Dict[str, Thresholds] = {
    "fp32": Thresholds(0.995, 0.95, 0.90, 0.005),
    "fp16": Thresholds(0.995, 0.95, 0.90, 0.005),
    "int8": Thresholds(0.98, 0.85, 0.80, 0.01),
}
DEFAULT_FRAMES = 16
# A frame's part verdict: FAIL when a defect class covers this many pixels; the default rules' minimum
# area (ds2a/inspect/rules.py DEFAULT_MIN_AREA_PX), not imported so the builder needs no inspect package.
MIN_DEFECT_PX = 64.0


@dataclass
class VerifyOptions:
    """The gate's settings (`ds2a build-engine` flags map 1:1); None = the precision's default."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    data: Optional[str] = None  # --verify-data: dataset, image folder or manifest; None = the golden frames
    frames: int = DEFAULT_FRAMES
    split: str = "test"
    min_agreement: Optional[float] = None
    min_frame_agreement: Optional[float] = None
    min_defect_agreement: Optional[float] = None
    max_miou_drop: Optional[float] = None
    accept_mismatch: bool = False

    def thresholds(self, precision: str) -> Thresholds:
        base = DEFAULT_THRESHOLDS.get(precision, DEFAULT_THRESHOLDS["int8"])
        over = {k: getattr(self, k) for k in asdict(base) if getattr(self, k) is not None}
        return Thresholds(**{**asdict(base), **over})

    def to_args(self) -> List[str]:
        args: List[str] = ["--verify-data", self.data] if self.data else []
        args += ["--verify-frames", str(self.frames)] if self.frames != DEFAULT_FRAMES else []
        for name in ("min_agreement", "min_frame_agreement", "min_defect_agreement", "max_miou_drop"):
            if getattr(self, name) is not None:
                args += ["--" + name.replace("_", "-"), f"{getattr(self, name):g}"]
        return args


@dataclass
class VerifyReport:
    """What the gate measured; `to_dict` goes into the engine sidecar ("verification") and the report file."""

    passed: bool
    accepted_mismatch: bool
    reference: str  # what the engine was compared with
    frames_source: str
    frames: int
    agreement: float
    defect_agreement: float
    worst_frames: List[Dict[str, Any]]
    per_class_iou: Dict[str, Optional[float]]  # engine vs reference
    verdict_flips: Dict[str, int]  # engine FAIL where the reference PASSes (overkill) and the reverse (escapes)
    miou_engine: Optional[float]
    miou_reference: Optional[float]
    miou_delta: Optional[float]  # engine minus reference (labelled frames)
    parts_vs_labels: Optional[Dict[str, Dict[str, int]]]
    thresholds: Dict[str, float]
    failures: List[str]
    precision: str
    tensorrt_version: str
    onnxruntime_version: Optional[str]
    date: str
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        verdict = "passed" if self.passed else ("FAILED, accepted with --accept-mismatch" if self.accepted_mismatch
                                                 else "FAILED")
        miou = f", mIoU delta {100 * self.miou_delta:+.2f} pt" if self.miou_delta is not None else ""
        return (f"accuracy gate {verdict}: {self.frames} frames ({self.frames_source}) vs {self.reference}: "
                f"{100 * self.agreement:.3f} % pixels agree (worst frame "
                f"{100 * min(f['agreement'] for f in self.worst_frames):.2f} %), defect pixels "
                f"{100 * self.defect_agreement:.2f} %{miou}")


@dataclass
class Reference:
    """Frames, optional labels and the class maps the reference gave for them."""

    frames: np.ndarray
    names: List[str]
    labels: Optional[List[Optional[np.ndarray]]]
    maps: List[np.ndarray]
    reference: str
    source: str
    onnxruntime_version: Optional[str]
    golden: Optional["Golden"]  # the ONNX's golden frames (their engine maps go into the sidecar)
    notes: List[str]


def load_frames(data: str, size: Tuple[int, int], count: int, split: str
                ) -> Tuple[np.ndarray, List[str], List[Optional[np.ndarray]]]:
    """Up to `count` frames (evenly spread over the source) at the model size, with their masks where labelled."""
    import cv2

    from ..data.calibration import find_candidates
    from ..preprocess import resize_frame

    candidates, _ = find_candidates(data, split)
    step = max(1, len(candidates) // max(1, count))
    frames, names, labels = [], [], []
    for cand in candidates[::step][:count]:
        try:
            image, mask = cand.load()
        except (OSError, ValueError, UserError) as exc:
            logger.warning(f"warning: --verify-data {cand.name} skipped ({exc})")
            continue
        frames.append(resize_frame(image, size))
        names.append(cand.name)
        labels.append(None if mask is None else cv2.resize(np.asarray(mask, np.uint8), (size[1], size[0]),
                                                            interpolation=cv2.INTER_NEAREST))
    if not frames:
        raise UserError(f"--verify-data {data} gave no readable image; pass a dataset folder, an image folder or "
                        "a manifest")
    return np.stack(frames), names, labels


def reference(onnx_path: str, meta: Any, size: Tuple[int, int], options: VerifyOptions) -> Reference:
    """The frames and ONNX Runtime's class maps (or, without ONNX Runtime, the golden ones) for them.

    ONNX Runtime opens the ONNX through `open_model`, so the ONNX itself must pass its self-test
    first: an ONNX edited after export is refused here, before its engine is compared with it.
    """
    from ..runtime.selftest import golden_of

    golden = golden_of(meta, onnx_path) if meta is not None else None
    notes: List[str] = []
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is None:
        if golden is None:
            raise UserError(f"cannot check the engine built from {onnx_path}: ONNX Runtime is not installed and "
                            "the ONNX carries no golden frames; install onnxruntime (`pip install onnxruntime`, "
                            "CPU wheels exist for aarch64) or export the ONNX again with `ds2a export`")
        if options.data:
            notes.append(f"ONNX Runtime is missing: --verify-data {options.data} could not be run by the reference; "
                         "compared on the golden frames instead")
        return Reference(np.stack(golden.frames), [f"golden {i + 1}" for i in range(len(golden.frames))],
                         None, list(golden.class_maps), f"the golden class maps in {os.path.basename(onnx_path)} "
                         f"({golden.produced_by})", "golden frames", None, golden, notes)
    from ..runtime import open_model

    if options.data:
        frames, names, labels = load_frames(options.data, size, options.frames, options.split)
        source = f"--verify-data {options.data}"
    elif golden is not None:
        frames, names, labels = np.stack(golden.frames), [f"golden {i + 1}" for i in range(len(golden.frames))], None
        source = "the golden frames in the ONNX"
    else:
        from ..runtime.selftest import demo_frames

        frames = np.stack(demo_frames(size, options.frames))
        names, labels = [f"demo cell {i + 1}" for i in range(len(frames))], None
        source = "built-in demo cells (the ONNX carries no golden frames)"
    with open_model(onnx_path, backend="onnxruntime", device="cpu") as model:
        maps = [r.class_map for r in model.infer_batch(frames)]
    has_labels = labels is not None and any(m is not None for m in labels)
    return Reference(frames, names, labels if has_labels else None, maps,
                     f"ONNX Runtime {ort.__version__} CPU on {os.path.basename(onnx_path)}", source,
                     ort.__version__, golden, notes)


def _iou(a: np.ndarray, b: np.ndarray, c: int) -> Optional[float]:
    union = int(((a == c) | (b == c)).sum())
    return None if union == 0 else int(((a == c) & (b == c)).sum()) / union


def _miou(preds: Sequence[np.ndarray], labels: Sequence[Optional[np.ndarray]], k: int) -> Optional[float]:
    from ..metrics import ConfusionMatrix

    cm = ConfusionMatrix(k)
    used = 0
    for p, lab in zip(preds, labels):
        if lab is not None:
            cm.update(p, lab)
            used += 1
    return None if not used else cm.metrics().get("mIoU")


def _fails(class_map: np.ndarray, k: int, min_area: float) -> bool:
    """A part verdict from one frame: any defect class on at least the default rules' minimum area."""
    counts = np.bincount(np.asarray(class_map).ravel(), minlength=k)
    return bool((counts[1:] >= min_area).any())


def compare(engine_maps: Sequence[np.ndarray], ref: Reference, classes: Sequence[str], precision: str,
            thresholds: Thresholds) -> Tuple[Dict[str, Any], List[str]]:
    """The measured numbers (the report's fields) and the failed thresholds, in words."""
    from ..runtime.selftest import agreement, defect_agreement

    k = len(classes)
    e_all = np.stack([np.asarray(m) for m in engine_maps])
    r_all = np.stack([np.asarray(m) for m in ref.maps])
    per_frame = [agreement(e, r) for e, r in zip(e_all, r_all)]
    order = np.argsort(per_frame)[:5]
    worst = [{"frame": ref.names[i], "agreement": round(per_frame[i], 6),
              "defect_agreement": round(defect_agreement(e_all[i], r_all[i]), 6)} for i in order]
    overall = agreement(e_all, r_all)
    defects = defect_agreement(e_all, r_all)
    per_class = {name: _iou(e_all, r_all, c) for c, name in enumerate(classes)}
    flips = {"overkill": 0, "escapes": 0}
    for e, r in zip(e_all, r_all):
        fe, fr = _fails(e, k, MIN_DEFECT_PX), _fails(r, k, MIN_DEFECT_PX)
        flips["overkill"] += int(fe and not fr)
        flips["escapes"] += int(fr and not fe)
    m_e = m_r = delta = None
    parts = None
    if ref.labels is not None:
        m_e, m_r = _miou(list(e_all), ref.labels, k), _miou(list(r_all), ref.labels, k)
        delta = None if m_e is None or m_r is None else m_e - m_r
        parts = {}
        for who, maps in (("engine", e_all), ("reference", r_all)):
            counts = {"escapes": 0, "overkill": 0, "labelled": 0}
            for p, lab in zip(maps, ref.labels):
                if lab is None:
                    continue
                counts["labelled"] += 1
                truth, said = _fails(lab, k, MIN_DEFECT_PX), _fails(p, k, MIN_DEFECT_PX)
                counts["escapes"] += int(truth and not said)
                counts["overkill"] += int(said and not truth)
            parts[who] = counts
    failures = []
    t = thresholds
    if overall < t.min_agreement:
        failures.append(f"{100 * overall:.2f} % of pixels agree (needs >= {100 * t.min_agreement:.1f} % for {precision})")
    if min(per_frame) < t.min_frame_agreement:
        failures.append(f"frame {worst[0]['frame']} agrees on {100 * min(per_frame):.2f} % of pixels (needs >= "
                        f"{100 * t.min_frame_agreement:.1f} %)")
    if defects < t.min_defect_agreement:
        failures.append(f"only {100 * defects:.1f} % of the defect pixels agree (needs >= "
                        f"{100 * t.min_defect_agreement:.0f} %)")
    if delta is not None and -delta > t.max_miou_drop:
        failures.append(f"mIoU on the labelled frames drops by {-100 * delta:.2f} pt (allowed {100 * t.max_miou_drop:.2f})")
    numbers = {"frames": len(per_frame), "agreement": overall, "defect_agreement": defects, "worst_frames": worst,
               "per_class_iou": per_class, "verdict_flips": flips, "miou_engine": m_e, "miou_reference": m_r,
               "miou_delta": delta, "parts_vs_labels": parts}
    return numbers, failures


def verify_engine(engine_path: str, onnx_path: str, meta: Any, precision: str, options: VerifyOptions,
                  tensorrt_version: str, trt: Any = None, cuda_api: Any = None, device: Any = 0
                  ) -> Tuple[VerifyReport, Optional["Golden"]]:
    """Run the engine at `engine_path` (with its sidecar) against the reference; (report, the engine's golden).

    The engine's golden: its own class maps for the ONNX's golden frames (or for a few of the
    reference frames when the ONNX has none), which its self-test compares with at every start.
    """
    from ..runtime import cuda_buffers
    from ..runtime.selftest import Golden, choose_frames, make_golden
    from ..runtime.tensorrt_backend import TensorRTSegmenter

    if cuda_api is None:  # the engine closes it with itself
        cuda_api = cuda_buffers.open_cuda(int(device))
    # just built on this GPU: the sidecar's device check has nothing to say about it
    with TensorRTSegmenter(engine_path, device=device, trt_module=trt, cuda_api=cuda_api,
                           allow_other_gpu=True) as engine:
        size = engine.input_size
        ref = reference(onnx_path, meta, size, options)
        engine_maps = [r.class_map for r in engine.infer_batch(ref.frames)]
        produced = f"TensorRT {tensorrt_version} on {getattr(engine.device, 'name', 'GPU')} ({precision})"
        if ref.golden is not None:
            golden_maps = [r.class_map for r in engine.infer_batch(np.stack(ref.golden.frames))]
            golden: Optional["Golden"] = Golden(list(ref.golden.frames), golden_maps, produced, ref.golden.source)
        else:
            pick = choose_frames(list(ref.frames), engine_maps, num_classes=engine.meta.num_classes)
            golden = make_golden([ref.frames[i] for i in pick],
                                 lambda b: [r.class_map for r in engine.infer_batch(b)], produced, ref.source,
                                 engine.meta.num_classes)
        classes = list(engine.meta.classes)
    thresholds = options.thresholds(precision)
    numbers, failures = compare(engine_maps, ref, classes, precision, thresholds)
    report = VerifyReport(
        passed=not failures, accepted_mismatch=bool(failures) and options.accept_mismatch, reference=ref.reference,
        frames_source=ref.source, thresholds=asdict(thresholds), failures=failures, precision=precision,
        tensorrt_version=tensorrt_version, onnxruntime_version=ref.onnxruntime_version,
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"), notes=ref.notes, **numbers)
    return report, golden


def rejected_path(out_path: str) -> str:
    """model.int8.engine -> model.int8.rejected.engine (kept for a look, never loaded by a station)."""
    stem, ext = os.path.splitext(out_path)
    return f"{stem}.rejected{ext or '.engine'}"


def report_path(engine_path: str) -> str:
    return os.path.splitext(engine_path)[0] + ".verify.json"


def failure_message(report: VerifyReport, onnx_path: str, out_path: str, rejected: str) -> str:
    """What went wrong, where the engine and the report are, and what to try."""
    weak = sorted(((v, k) for k, v in report.per_class_iou.items() if v is not None and k != "background"))[:2]
    classes = ", ".join(f"{k} IoU {100 * v:.1f} %" for v, k in weak)
    return (f"the engine built from {onnx_path} does not answer like {report.reference}: "
            f"{'; '.join(report.failures)}{' (' + classes + ')' if classes else ''}. It was not installed at "
            f"{out_path}; it is kept as {rejected} with the report {report_path(rejected)} (worst frames, agreement "
            "per class). Likely causes: TensorRT compiling the deformable attention's GridSample wrongly (reported for "
            "TensorRT 10.13-11.1), an opset this release handles badly, or FP16/INT8 overflow in a few layers. "
            "Fixes: export with another deformable-attention variant (`ds2a export CHECKPOINT --deform-attn gather`), "
            "export at another opset (`--opset 17`), or keep the layers named above in FP32 (`ds2a calibrate ... "
            "--exclude GridSample,Softmax,LayerNormalization`); --accept-mismatch installs it anyway (recorded in "
            "its sidecar)")
