"""The export stage as one call: checkpoint -> parity-checked ONNX file, optionally TensorRT-checked.

`ds2a export` (ds2a/cli/export.py) only maps its flags onto `ExportOptions` and prints the
`ExportResult`; a Python caller gets the same checks, the same file and the same numbers.
torch is imported only when `export_onnx` runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from ..errors import UserError
from ..outputs import check_outputs
from .onnx_export import ExportOptions

if TYPE_CHECKING:  # parity needs OpenCV (ds2a/preprocess.py); the device imports ds2a.export.metadata without it
    from .parity import ParityResult

PathLike = Union[str, Path]


@dataclass
class ExportResult:
    """What was written and what was measured (the lines `ds2a export` prints)."""

    path: Path
    size_bytes: int
    options: ExportOptions  # with `size` resolved
    parity: List[ParityResult]
    trt_findings: Dict[str, Any] = field(default_factory=dict)  # TensorRT version -> ds2a.trt.compat findings
    blocked: List[str] = field(default_factory=list)  # TensorRT versions that cannot parse the file
    golden: str = ""  # the golden frames stored for the self-test (ds2a/runtime/selftest.py)

    def summary(self) -> str:
        o = self.options
        size = o.size or (0, 0)
        batch = "dynamic" if o.batch is None else o.batch
        return (f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB): input images "
                f"{'uint8' if o.uint8_input else 'float'} batch {batch} {size[0]}x{size[1]}, "
                f"outputs {o.outputs}, opset {o.opset}, deformable attention {o.deform_attn} (docs/DEFORM_ATTN.md)"
                + (f"; {self.golden}" if self.golden else ""))

    def lines(self) -> List[str]:
        """Parity lines, the summary and (when TensorRT versions were checked) their report."""
        out = [r.line() for r in self.parity] + [self.summary()]
        if self.trt_findings:
            from ..trt.compat import format_report

            out.append(format_report(self.trt_findings))
        return out

    def blocked_message(self) -> str:
        return (f"{self.path} cannot be parsed by TensorRT {', '.join(self.blocked)} as it is "
                "(see fixes above)")


def trt_versions(check_trt: Sequence[str]) -> List[str]:
    """`check_trt` with 'all' expanded to every supported TensorRT line."""
    from ..trt.compat import SUPPORTED

    return list(SUPPORTED) if "all" in check_trt else list(check_trt)


def _check_request(out: Path, options: ExportOptions, check: Sequence[str]) -> None:
    """Everything that can be refused before the checkpoint is loaded."""
    from ..trt.versions import target_version
    from .onnx_export import check_opset

    check_opset(options.opset)  # an unknown opset would fail deep in the exporter
    if options.batch is not None and options.batch < 1:
        raise UserError(f"--batch {options.batch} must be at least 1 (or use --dynamic-batch)")
    for v in list(check) + ([options.trt] if options.trt else []):
        target_version(v)
    if out.suffix.lower() != ".onnx":
        raise UserError(f"--out {out} should end in .onnx")


def export_onnx(checkpoint: PathLike, out: PathLike, options: Optional[ExportOptions] = None, *,
                data: Optional[str] = None, check_trt: Sequence[str] = ()) -> ExportResult:
    """Export `checkpoint` to `out` (written atomically, only after the parity check passed).

    `data`: images for the parity check (dataset dir, image folder or manifest); default:
    synthetic battery-cell frames. `check_trt`: TensorRT versions ('8.5', '8.6', '10', '11' or
    'all') whose parser limits the file is checked against; `ExportResult.blocked` names the
    ones it fails. UserError on anything the caller can fix.
    """
    from ..model import load_model
    from ..trt.compat import blockers, check_versions
    from .onnx_export import build_onnx, check_size, keep_outputs, resolve_deform_attn, save
    from .parity import check_parity

    options = options or ExportOptions()
    out = Path(out)
    check = trt_versions(check_trt)
    _check_request(out, options, check)
    check_outputs([("--out", str(out))], [("CHECKPOINT", str(checkpoint)), ("--data", data)])
    model = load_model(str(checkpoint))
    meta = model.meta
    size: Tuple[int, int] = tuple(options.size) if options.size else tuple(meta.input_size)  # type: ignore[assignment]
    check_size(size, tuple(meta.input_size), options.force_size)
    options = replace(options, size=size, deform_attn=resolve_deform_attn(options))
    onnx_model = build_onnx(model, meta, options)
    real = None
    if data:
        from ..data.calibration import select_calibration_set

        n = max(2, options.batch or 2)
        real = select_calibration_set(data, size, num_images=max(n, GOLDEN_CANDIDATES), num_classes=meta.num_classes,
                                      min_images=1).frames
    parity = check_parity(onnx_model, model, size, meta.mean, meta.std, options.batch,
                          real_frames=None if real is None else real[:n])
    keep_outputs(onnx_model, options.outputs)
    golden = _attach_golden(onnx_model, out, real, data, size)
    if options.compact_weights:  # lossless: every runtime reads the same FP32 values (ds2a/export/storage.py)
        from .storage import compact

        onnx_model = compact(onnx_model)[0]
    save(onnx_model, out)
    findings = check_versions(onnx_model, check) if check else {}
    blocked = [v for v, f in findings.items() if blockers(f)]
    return ExportResult(out, out.stat().st_size, options, parity, findings, blocked, golden)


GOLDEN_CANDIDATES = 12  # frames run to pick the golden ones (ds2a/runtime/selftest.py)


def _attach_golden(onnx_model: Any, out: Path, real: Any, data: Optional[str], size: Tuple[int, int]) -> str:
    """Store golden frames (from --data, else the built-in cell generator) and the ONNX's answers for them."""
    from ..runtime.selftest import demo_frames
    from .metadata import attach_drift_reference, attach_golden

    frames = list(real) if real is not None else demo_frames(size, GOLDEN_CANDIDATES)
    source = f"--data {data}" if real is not None else "ds2a/data/synth.py cells"
    golden = attach_golden(onnx_model, frames, source, out)
    drift = attach_drift_reference(onnx_model, frames, source, out)  # the same frames (ds2a/inspect/drift.py)
    return (f"golden frames: {len(golden.frames)} from {source}, class maps by {golden.produced_by}; "
            f"drift reference: {drift.frames} frames")


__all__ = ["ExportOptions", "ExportResult", "export_onnx", "trt_versions"]
