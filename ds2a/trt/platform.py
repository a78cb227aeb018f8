"""Which device this is, beyond what CUDA reports: Jetson modules all call their GPU "Orin".

AGX Orin, Orin NX and Orin Nano report the same GPU name and compute capability 8.7, yet an
engine tuned for one module's SM count and memory is not the engine for another. The
board model (`/proc/device-tree/model`), the SM count and the memory size tell them apart.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

MODEL_FILE = "/proc/device-tree/model"  # e.g. "NVIDIA Jetson AGX Orin Developer Kit"
TEGRA_RELEASE = "/etc/nv_tegra_release"


def board_model() -> Optional[str]:
    """The device-tree board model (Jetson and other ARM boards), None where there is none."""
    try:
        with open(MODEL_FILE, "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    return text.replace("\x00", "").strip() or None


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
    """What the sidecar records about the GPU beyond its name and compute capability."""
    memory = int(getattr(device, "total_memory", 0) or 0)
    return {"sm_count": sm_count(device), "total_memory": memory or None, "board": board}
