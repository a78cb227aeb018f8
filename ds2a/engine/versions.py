"""Which TensorRT features exist in which release: the one table the builder branches on.

TensorRT changed its builder API across the releases Jetsons and desktops ship (8.5/8.6 on
JetPack 5/6.0, 10.x on JetPack 6.1+/7 and desktops, 11.x on desktops and JetPack 7.2+).
Every version branch in `ds2a.engine` and the TensorRT backend asks `features_for(version)`
instead of comparing version numbers itself, so the branches live in one readable place.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Dict, Optional, Tuple

from ..errors import UserError

Version = Tuple[int, int]
MIN_SUPPORTED: Version = (8, 5)

# feature -> (first version that has it, first version that no longer has it or None)
FEATURE_RANGES: Dict[str, Tuple[Version, Optional[Version]]] = {
    # NetworkDefinitionCreationFlag.EXPLICIT_BATCH: needed before 10.0, ignored in 10.x, gone in 11.
    "explicit_batch_flag": ((8, 0), (10, 0)),
    # NetworkDefinitionCreationFlag.STRONGLY_TYPED: precision follows the ONNX tensor types.
    "strongly_typed": ((9, 0), None),
    # BuilderFlag FP16/INT8 and per-layer precision constraints (weakly typed networks); 11 removed them.
    "weak_typing": ((8, 0), (11, 0)),
    # IInt8EntropyCalibrator2 / IBuilderConfig.int8_calibrator (implicit INT8 from a calibration cache).
    "int8_calibrator": ((8, 0), (11, 0)),
    # IBuilderConfig.builder_optimization_level (0..5).
    "builder_optimization_level": ((8, 6), None),
    # IBuilderConfig.hardware_compatibility_level = AMPERE_PLUS.
    "hardware_compat": ((8, 6), None),
    # HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY (added in 10.9).
    "same_compute_capability": ((10, 9), None),
    # BuilderFlag.VERSION_COMPATIBLE (+ Runtime.engine_host_code_allowed when loading).
    "version_compatible": ((8, 6), None),
    # IProgressMonitor / IBuilderConfig.progress_monitor.
    "progress_monitor": ((10, 0), None),
    # LayerType.NORMALIZATION (ONNX LayerNormalization becomes one layer).
    "normalization_layer": ((8, 6), None),
}


@dataclass(frozen=True)
class TrtFeatures:
    """The feature switches of one TensorRT release (see FEATURE_RANGES for what each means)."""

    version: Version
    explicit_batch_flag: bool
    strongly_typed: bool
    weak_typing: bool
    int8_calibrator: bool
    builder_optimization_level: bool
    hardware_compat: bool
    same_compute_capability: bool
    version_compatible: bool
    progress_monitor: bool
    normalization_layer: bool

    @property
    def strongly_typed_only(self) -> bool:
        """TensorRT 11+: every network is strongly typed; FP16/INT8 come from the ONNX only."""
        return self.strongly_typed and not self.weak_typing

    def as_dict(self) -> Dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "version"}


def parse_version(text: str) -> Version:
    """'10.13.3.9' -> (10, 13). Raises UserError for something that is not a version."""
    parts = str(text).strip().split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise UserError(f"cannot read TensorRT version '{text}' (expected e.g. 10.13.3)") from None


def features_for(version: str) -> TrtFeatures:
    """The feature set of a TensorRT release; releases before 8.5 are refused with the fix."""
    ver = parse_version(version)
    if ver < MIN_SUPPORTED:
        raise UserError(
            f"TensorRT {version} is too old for ds2a (needs 8.5 or newer, for name-based I/O): "
            "upgrade JetPack to 5.1+ or install TensorRT 8.6/10.x (see deploy/README.md)"
        )
    flags = {name: lo <= ver and (hi is None or ver < hi) for name, (lo, hi) in FEATURE_RANGES.items()}
    return TrtFeatures(version=ver, **flags)


def same_release(a: str, b: str) -> bool:
    """A standard engine loads only in the release that built it (major, minor, patch and build)."""
    pa, pb = str(a).strip().split("."), str(b).strip().split(".")
    n = min(len(pa), len(pb), 4)  # a version reported without its build number still compares
    return pa[:n] == pb[:n] and len(pa[:n]) >= 3
