"""TensorRT 8.5's surface, derived from 8.6's: 8.5 has no bindings wheel on PyPI.

Only what 8.6 added and ds2a's feature probes look at is taken away, each from the 8.6.0 EA
release notes: version compatibility (BuilderFlag.VERSION_COMPATIBLE/EXCLUDE_LEAN_RUNTIME,
Runtime.engine_host_code_allowed), hardware compatibility levels, builder optimization
levels, INormalizationLayer (LayerType.NORMALIZATION) and the ONNX parser flags
(OnnxParserFlag, OnnxParser.set_flag ...).
"""
from __future__ import annotations

import copy
from typing import Any, Dict

ADDED_IN_8_6 = {
    "module": ("HardwareCompatibilityLevel", "OnnxParserFlag", "INormalizationLayer"),
    "enums": {"BuilderFlag": ("VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME"), "LayerType": ("NORMALIZATION",)},
    "classes": {
        "IBuilderConfig": ("builder_optimization_level", "hardware_compatibility_level"),
        "Runtime": ("engine_host_code_allowed",),
        "OnnxParser": ("set_flag", "get_flag", "clear_flag", "flags"),
        "INetworkDefinition": ("add_normalization",),
    },
}


def surface_8_5(surface_8_6: Dict[str, Any], version: str = "8.5.2") -> Dict[str, Any]:
    """8.6's public names minus what 8.6 added (see ADDED_IN_8_6)."""
    s = copy.deepcopy(surface_8_6)
    s["version"] = version
    s["module"] = [n for n in s["module"] if n not in ADDED_IN_8_6["module"]]
    for name in ADDED_IN_8_6["module"]:
        s["enums"].pop(name, None)
        s["classes"].pop(name, None)
    for enum, members in ADDED_IN_8_6["enums"].items():
        s["enums"][enum] = {k: v for k, v in s["enums"][enum].items() if k not in members}
    for cls, attrs in ADDED_IN_8_6["classes"].items():
        s["classes"][cls] = [a for a in s["classes"][cls] if a not in attrs]
    return s
