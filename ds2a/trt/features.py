"""What the imported `tensorrt` can do, read off the module itself (as Polygraphy does).

TensorRT adds and removes builder API between releases (8.5/8.6 on JetPack 5/6.0, 10.x on
JetPack 6.1+/7 and desktops, 11.x on desktops). Asking the module whether a flag or method
exists keeps the branches right for releases no table lists; the builder and the TensorRT
backend branch only on a `TrtFeatures`.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict

from ..errors import UserError
from .versions import Version, parse_version, require_supported


@dataclass(frozen=True)
class TrtFeatures:
    """The feature switches of the imported release; each comment names the attribute that decides it."""

    version: Version
    explicit_batch_flag: bool  # Builder.max_batch_size: implicit batch still exists, ask for EXPLICIT_BATCH
    strongly_typed: bool  # NetworkDefinitionCreationFlag.STRONGLY_TYPED
    weak_typing: bool  # BuilderFlag.FP16 (11 removed FP16/INT8 flags and per-layer precision)
    int8_calibrator: bool  # IInt8EntropyCalibrator2
    builder_optimization_level: bool  # IBuilderConfig.builder_optimization_level
    hardware_compat: bool  # HardwareCompatibilityLevel.AMPERE_PLUS
    same_compute_capability: bool  # HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    version_compatible: bool  # BuilderFlag.VERSION_COMPATIBLE
    progress_monitor: bool  # IProgressMonitor
    normalization_layer: bool  # LayerType.NORMALIZATION (ONNX LayerNormalization is one layer)
    native_instancenorm: bool  # OnnxParserFlag.NATIVE_INSTANCENORM

    @property
    def strongly_typed_only(self) -> bool:
        """TensorRT 11+: every network is strongly typed; FP16/INT8 come from the ONNX only."""
        return self.strongly_typed and not self.weak_typing

    def as_dict(self) -> Dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "version"}


def has_member(trt: Any, enum: str, member: str) -> bool:
    """Whether `trt.<enum>.<member>` exists (pybind11 enums list theirs in __members__)."""
    return member in (getattr(getattr(trt, enum, None), "__members__", None) or {})


def has_attr(trt: Any, cls: str, attr: str) -> bool:
    """Whether `trt.<cls>` exists and has `attr` (a method or property)."""
    obj = getattr(trt, cls, None)
    return obj is not None and hasattr(obj, attr)


def detect_features(trt: Any) -> TrtFeatures:
    """The features of the imported module; releases without name-based I/O are refused with the fix."""
    version = str(trt.__version__)
    require_supported(version)
    if not has_attr(trt, "IExecutionContext", "set_tensor_address"):
        raise UserError(f"TensorRT {version} has no name-based I/O (IExecutionContext.set_tensor_address); "
                        "ds2a needs 8.5 or newer: upgrade JetPack to 5.1+ or install TensorRT 8.6/10.x")
    return TrtFeatures(
        version=parse_version(version),
        explicit_batch_flag=has_attr(trt, "Builder", "max_batch_size"),
        strongly_typed=has_member(trt, "NetworkDefinitionCreationFlag", "STRONGLY_TYPED"),
        weak_typing=has_member(trt, "BuilderFlag", "FP16"),
        int8_calibrator=hasattr(trt, "IInt8EntropyCalibrator2"),
        builder_optimization_level=has_attr(trt, "IBuilderConfig", "builder_optimization_level"),
        hardware_compat=has_member(trt, "HardwareCompatibilityLevel", "AMPERE_PLUS"),
        same_compute_capability=has_member(trt, "HardwareCompatibilityLevel", "SAME_COMPUTE_CAPABILITY"),
        version_compatible=has_member(trt, "BuilderFlag", "VERSION_COMPATIBLE"),
        progress_monitor=hasattr(trt, "IProgressMonitor"),
        normalization_layer=has_member(trt, "LayerType", "NORMALIZATION"),
        native_instancenorm=has_member(trt, "OnnxParserFlag", "NATIVE_INSTANCENORM"),
    )


def import_tensorrt() -> Any:
    """The installed `tensorrt` module, or a UserError saying where it comes from."""
    try:
        import tensorrt  # noqa: PLC0415
    except ImportError as exc:
        raise UserError(f"TensorRT's Python package is not importable ({exc}): on a Jetson it comes with "
                        "JetPack (python3-libnvinfer), on a desktop `pip install tensorrt`; "
                        "see deploy/README.md") from None
    return tensorrt
