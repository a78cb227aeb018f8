"""Where a benchmark ran: CPU, GPU, driver, library versions, Jetson power mode and clocks.

Numbers without this are not comparable, so every bench result carries it. Torch-free:
versions come from package metadata, never from importing the libraries.
"""
from __future__ import annotations

import glob
import os
import platform
import re
import shutil
import subprocess
from importlib import metadata
from typing import Any, Dict, List, Optional

PACKAGES = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
            "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu12_libs"),
            "torch": ("torch",), "onnx": ("onnx",), "opencv": ("opencv-python-headless", "opencv-python"),
            "numpy": ("numpy",), "cuda-python": ("cuda-python",), "pycuda": ("pycuda",)}


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "r", errors="replace") as f:
            return f.read().strip().strip("\x00")
    except OSError:
        return None


def _run(cmd: List[str], timeout: float = 5.0) -> Optional[str]:
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def package_versions() -> Dict[str, Optional[str]]:
    """Installed versions of the libraries that decide the numbers (None = not installed)."""
    found: Dict[str, Optional[str]] = {}
    for key, dists in PACKAGES.items():
        found[key] = None
        for dist in dists:
            try:
                found[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def cpu_info() -> Dict[str, Any]:
    cpuinfo = _read("/proc/cpuinfo") or ""
    names = re.findall(r"^(?:model name|Hardware|Model)\s*:\s*(.+)$", cpuinfo, re.M)
    cores = {(p, c) for p, c in re.findall(r"physical id\s*:\s*(\d+)[\s\S]*?core id\s*:\s*(\d+)", cpuinfo)}
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"model": names[0] if names else (platform.processor() or platform.machine()),
            "logical_cores": os.cpu_count(), "usable_cores": usable,
            "physical_cores": len(cores) or None,
            "load_avg_1_5_15": [round(x, 2) for x in load] if load else None,
            "arch": platform.machine()}


def gpu_info() -> Dict[str, Any]:
    """GPU name/driver/CUDA from nvidia-smi (desktop) or the Jetson model file; {} when there is none."""
    out = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm",
                "--format=csv,noheader"])
    info: Dict[str, Any] = {}
    if out:
        first = [p.strip() for p in out.splitlines()[0].split(",")]
        info = dict(zip(("name", "driver", "memory", "sm_clock", "sm_clock_max"), first))
        info["count"] = len(out.splitlines())
        head = _run(["nvidia-smi"]) or ""
        m = re.search(r"CUDA Version:\s*([\d.]+)", head)
        info["cuda"] = m.group(1) if m else None
    return info


def jetson_info(warnings: List[str]) -> Dict[str, Any]:
    """Power mode and clock locking on a Jetson; warnings when they cannot be read."""
    model = _read("/proc/device-tree/model")
    release = _read("/etc/nv_tegra_release")
    if not (release or (model and "jetson" in model.lower())):
        return {}
    info: Dict[str, Any] = {"model": model, "l4t": release.splitlines()[0] if release else None}
    mode = _run(["nvpmodel", "-q"])
    if mode:
        m = re.search(r"NV Power Mode:\s*(.+)", mode)
        info["power_mode"] = m.group(1).strip() if m else mode.splitlines()[0]
    else:
        warnings.append("Jetson power mode unreadable (nvpmodel -q failed); state it with the results")
    clocks = {}
    for dev in glob.glob("/sys/class/devfreq/*"):
        lo, hi, cur = (_read(os.path.join(dev, n)) for n in ("min_freq", "max_freq", "cur_freq"))
        if lo and hi:
            clocks[os.path.basename(dev)] = {"min": lo, "max": hi, "cur": cur, "locked": lo == hi}
    if clocks:
        info["gpu_clocks"] = clocks
        if not all(c["locked"] for c in clocks.values()):
            warnings.append("Jetson clocks are not locked: run `sudo jetson_clocks` for stable numbers")
    else:
        warnings.append("Jetson clocks unreadable (/sys/class/devfreq); run `sudo jetson_clocks --show`")
    return info


def cpu_clock_state() -> Dict[str, Any]:
    gov = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    return {"governor": gov} if gov else {}


def machine_info(providers: Optional[List[str]] = None) -> Dict[str, Any]:
    """Everything that makes two latency numbers comparable, plus warnings about what is unknown."""
    warnings: List[str] = []
    info: Dict[str, Any] = {
        "hostname": platform.node(), "os": platform.platform(), "python": platform.python_version(),
        "cpu": {**cpu_info(), **cpu_clock_state()}, "gpu": gpu_info(), "packages": package_versions(),
    }
    jetson = jetson_info(warnings)
    if jetson:
        info["jetson"] = jetson
    if providers:
        info["onnxruntime_providers"] = providers
    load = info["cpu"].get("load_avg_1_5_15")
    usable = info["cpu"].get("usable_cores") or 1
    if load and load[0] > 0.5 * usable:
        warnings.append(f"machine busy: 1-min load {load[0]} on {usable} usable cores; CPU timings are noisy")
    info["warnings"] = warnings
    return info
