"""Which device this is, beyond what CUDA reports: Jetson modules all call their GPU "Orin".

AGX Orin, Orin NX and Orin Nano report the same GPU name and compute capability 8.7, yet an
engine tuned for one module's SM count and memory is not the engine for another. The
board model (`/proc/device-tree/model`), the SM count and the memory size tell them apart.
"""
from __future__ import annotations

import os
import platform
import re
from typing import Any, Dict, Optional

MODEL_FILE = "/proc/device-tree/model"  # e.g. "NVIDIA Jetson AGX Orin Developer Kit"
# NUL-separated, carrier+module first: "nvidia,p3737-0000+p3701-0005", "nvidia,p3701-0005", "nvidia,tegra234"
COMPATIBLE_FILE = "/proc/device-tree/compatible"
TEGRA_RELEASE = "/etc/nv_tegra_release"
_PART = re.compile(r"^p\d{4}-\d{4}$")  # an NVIDIA board part number: p3701-0005 = AGX Orin 64GB module


def board_model() -> Optional[str]:
    """The device-tree board model (Jetson and other ARM boards), None where there is none."""
    try:
        with open(MODEL_FILE, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    return text.replace("\x00", "").strip() or None


def module_identity() -> Optional[str]:
    """The Jetson module's part number (e.g. "p3701-0005") from the device tree, None where there is none.

    The model string names the carrier kit ("... Developer Kit", or a third-party carrier's name),
    so the same module on another carrier reads differently there; the module's part number does
    not. In a "carrier+module" entry the module is the part after "+".
    """
    try:
        with open(COMPATIBLE_FILE, "rb") as f:
            entries = [e.split(",", 1)[-1] for e in f.read().decode(errors="replace").split("\x00") if e]
    except OSError:
        return None
    for entry in entries:
        if "+" in entry and _PART.match(entry.rsplit("+", 1)[1]):
            return entry.rsplit("+", 1)[1]
    return next((e for e in entries if _PART.match(e)), None)


def host_identity() -> Dict[str, str]:
    """OS and CPU architecture: serialized engines do not move between platforms (NVIDIA's TensorRT docs)."""
    return {"os": platform.system(), "cpu_arch": platform.machine()}


def is_jetson(board: Optional[str] = None) -> bool:
    """A Jetson (integrated GPU, JetPack): the board says so, or L4T's release file exists."""
    board = board if board is not None else board_model()
    return "jetson" in (board or "").lower() or os.path.isfile(TEGRA_RELEASE)


def sm_count(device: Any) -> Optional[int]:
    """The device's multiprocessor count where the CUDA layer reports it."""
    for name in ("sm_count", "multiprocessor_count"):
        value = getattr(device, name, None)
        if value:
            return int(value)
    return None


def device_identity(device: Any, board: Optional[str]) -> Dict[str, Any]:
    """What the sidecar records about the GPU beyond its name and compute capability, and the platform."""
    memory = int(getattr(device, "total_memory", 0) or 0)
    return {"sm_count": sm_count(device), "total_memory": memory or None, "board": board,
            "module": module_identity(), **host_identity()}
