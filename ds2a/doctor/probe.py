"""What this machine has for ds2a, one probe per component; a probe reports and never raises.

Each probe returns a plain dict (JSON-ready) with what it found or why it found nothing, so
`ds2a doctor` prints the same facts for a person and for a script (`--json`).
"""
from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import platform
import re
import sys
from typing import Any, Callable, Dict, List, Optional

TEGRA_RELEASE = "/etc/nv_tegra_release"
BOARD_MODEL = "/proc/device-tree/model"
MIN_PYTHON = (3, 8)  # setup.cfg's python_requires (tests/test_py38.py keeps them equal)
# L4T major.minor -> JetPack (NVIDIA's release pages); the L4T line is what the device reports
JETPACK = {"35": "5.1.x", "36.2": "6.0 DP", "36.3": "6.0", "36.4": "6.1/6.2", "38": "7.x"}


def cuda_helpers() -> Any:
    """ds2a.runtime.cuda_buffers (load_cudart, explain_no_gpu), even where OpenCV is missing.

    Importing ds2a.runtime runs its package, which needs cv2; the doctor must still report the
    GPU on such a machine (and name the OpenCV fix), so it then loads that one file on its own.
    """
    try:
        from ..runtime import cuda_buffers  # noqa: PLC0415

        return cuda_buffers
    except ModuleNotFoundError as exc:
        if exc.name != "cv2":
            raise
    name = "ds2a.runtime.cuda_buffers"
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                                                     "runtime", "cuda_buffers.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def load_cudart() -> Any:
    return cuda_helpers().load_cudart()


def _read(path: str) -> Optional[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").replace("\x00", "").strip() or None
    except OSError:
        return None


def l4t_release(text: Optional[str]) -> Optional[str]:
    """'# R35 (release), REVISION: 4.1, GCID: ...' -> '35.4.1'."""
    match = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return f"{match.group(1)}.{match.group(2)}" if match else None


def jetpack_for(l4t: Optional[str]) -> Optional[str]:
    if not l4t:
        return None
    parts = l4t.split(".")
    return JETPACK.get(".".join(parts[:2])) or JETPACK.get(parts[0])


def platform_info(tegra_release: str = TEGRA_RELEASE, board_file: str = BOARD_MODEL) -> Dict[str, Any]:
    """OS, CPU architecture, and on a Jetson the L4T release, JetPack and board model."""
    l4t = l4t_release(_read(tegra_release))
    board = _read(board_file)
    return {"system": f"{platform.system()} {platform.machine()}", "jetson": bool(l4t) or "jetson" in (board or "").lower(),
            "l4t": l4t, "jetpack": jetpack_for(l4t), "board": board}


def python_info() -> Dict[str, Any]:
    return {"version": platform.python_version(), "executable": sys.executable,
            "supported": sys.version_info[:2] >= MIN_PYTHON}


def _dist_version(*names: str) -> Optional[str]:
    from importlib import metadata  # noqa: PLC0415

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def tensorrt_info(importer: Optional[Callable[[], Any]] = None) -> Dict[str, Any]:
    """TensorRT's version, or why `import tensorrt` fails."""
    try:
        if importer is not None:
            trt = importer()
        else:
            import tensorrt as trt  # noqa: PLC0415
    except Exception as exc:  # ImportError, or a broken install raising anything
        return {"importable": False, "error": f"{type(exc).__name__}: {exc}",
                "fix": "Jetson: `sudo apt install python3-libnvinfer` (comes with JetPack); desktop: "
                       "`pip install tensorrt` (see deploy/README.md)"}
    return {"importable": True, "version": str(getattr(trt, "__version__", "?"))}


def _ok(result: Any) -> bool:
    return int(getattr(result[0], "value", result[0])) == 0


def driver_cuda_version(lib: Any = None) -> Optional[int]:
    """The driver's CUDA version (e.g. 12060), asked from libcuda itself (cuDriverGetVersion), so it is
    known before any CUDA layer is installed; None without an NVIDIA driver."""
    try:
        lib = lib if lib is not None else ctypes.CDLL("libcuda.so.1")
        version = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
            return None
        return int(version.value) or None
    except (OSError, AttributeError):
        return None


def cuda_python_install(driver_version: Optional[int]) -> str:
    """The pip line for the cuda-python that fits a driver of `driver_version` (cuDriverGetVersion).

    cuda-bindings X.y supports CUDA X.y' of the same major only (NVIDIA's cuda-bindings support
    policy: minor version compatibility within a major), and pip's newest is 13.x: on a CUDA 12
    driver that fails with "insufficient driver". So the major is pinned to the driver's.
    """
    if not driver_version:
        return ("pip install 'ds2a-edge[cu12]' on a CUDA 12 driver, 'ds2a-edge[cu13]' on CUDA 13 (`nvidia-smi` "
                "shows the driver's CUDA)")
    major = driver_version // 1000
    if major < 12:
        return (f"the driver has CUDA {major}: pip install pycuda (what ds2a uses on JetPack 5), or "
                "pip install 'cuda-python==11.8.*'")
    return f"pip install 'cuda-python=={major}.*' (the ds2a-edge[cu{major}] extra; the driver has CUDA {major})"


def cuda_python_info(cudart: Any = None, driver_version: Optional[int] = None) -> Dict[str, Any]:
    """cuda-python: driver and runtime CUDA versions, whether they fit, the GPUs it sees, and the
    pip line that fixes a missing or mismatched one (`driver_version`: libcuda's, asked when absent)."""
    rt = cudart if cudart is not None else load_cudart()
    if rt is None:
        return {"installed": False, "fix": cuda_python_install(driver_version or driver_cuda_version())}
    info: Dict[str, Any] = {"installed": True, "version": _dist_version("cuda-python", "cuda-bindings")}
    drv, run = rt.cudaDriverGetVersion(), rt.cudaRuntimeGetVersion()
    dv = int(drv[1]) if _ok(drv) and drv[1] else 0
    rv = int(run[1]) if _ok(run) and run[1] else 0
    text = cuda_helpers()._cuda_text
    info.update(driver_cuda=text(dv) if dv else None, runtime_cuda=text(rv) if rv else None,
                fits_driver=bool(dv) and dv // 1000 >= rv // 1000, devices=[])
    if dv and not info["fits_driver"]:
        info["fix"] = f"pip uninstall cuda-python cuda-bindings, then {cuda_python_install(dv)}"
    count = rt.cudaGetDeviceCount()
    if not _ok(count):
        name = getattr(count[0], "name", str(count[0]))
        info["error"] = cuda_helpers().explain_no_gpu(name, dv, rv)
        info["no_driver"] = dv == 0
        return info
    for index in range(int(count[1])):
        prop = rt.cudaGetDeviceProperties(index)
        if not _ok(prop):
            continue
        p = prop[1]
        name = p.name.decode(errors="replace") if isinstance(p.name, bytes) else str(p.name)
        info["devices"].append({"index": index, "name": name.rstrip("\x00").strip(),
                                "compute_capability": f"{int(p.major)}.{int(p.minor)}",
                                "sm_count": int(getattr(p, "multiProcessorCount", 0) or 0) or None,
                                "total_memory": int(getattr(p, "totalGlobalMem", 0) or 0) or None})
    if not info["devices"]:
        info["error"] = cuda_helpers().explain_no_gpu("cudaErrorNoDevice", dv, rv)
    return info


def pycuda_info(driver: Any = None) -> Dict[str, Any]:
    """pycuda: the CUDA it was built for, the driver's CUDA, and whether a GPU answers."""
    if driver is None:
        try:
            import pycuda.driver as driver  # noqa: PLC0415
        except Exception as exc:
            return {"installed": False, "error": f"{type(exc).__name__}: {exc}"}
    info: Dict[str, Any] = {"installed": True, "version": _dist_version("pycuda")}
    built = tuple(driver.get_version())  # CUDA version pycuda was compiled against, e.g. (11, 4, 0)
    info["built_for_cuda"] = ".".join(str(v) for v in built[:2])
    try:
        driver.init()
        dv = int(driver.get_driver_version())
        info["driver_cuda"] = cuda_helpers()._cuda_text(dv)
        info["fits_driver"] = dv // 1000 >= int(built[0])
        info["device_count"] = int(driver.Device.count())
    except Exception as exc:  # pycuda.driver.Error and friends
        info.update(driver_cuda=None, fits_driver=False, device_count=0, error=f"{type(exc).__name__}: {exc}")
        return info
    info["devices"] = [d for d in (_pycuda_device(driver, i) for i in range(info["device_count"])) if d]
    return info


def _pycuda_device(driver: Any, index: int) -> Optional[Dict[str, Any]]:
    """One GPU as pycuda sees it, in the same form as cuda_python_info's (None when it will not answer)."""
    try:
        dev = driver.Device(index)
        attribute = getattr(driver, "device_attribute", None)
        sms = int(dev.get_attribute(attribute.MULTIPROCESSOR_COUNT)) if attribute is not None else 0
        major, minor = tuple(dev.compute_capability())[:2]
        return {"index": index, "name": str(dev.name()).strip(), "compute_capability": f"{int(major)}.{int(minor)}",
                "sm_count": sms or None, "total_memory": int(dev.total_memory()) or None}
    except Exception:  # a device pycuda cannot describe is left out, as cuda_python_info does
        return None


def onnxruntime_info() -> Dict[str, Any]:
    try:
        import onnxruntime as ort  # noqa: PLC0415
    except Exception as exc:
        return {"installed": False, "error": f"{type(exc).__name__}: {exc}", "fix": "pip install onnxruntime"}
    return {"installed": True, "version": ort.__version__, "providers": list(ort.get_available_providers())}


def cameras(pattern: str = "/dev/video*") -> List[str]:
    """V4L2 device nodes (USB cameras; CSI cameras appear as /dev/video* too once the driver is up)."""
    return sorted(glob.glob(pattern), key=lambda p: (len(p), p))


def gpus(cuda: Dict[str, Any], pycuda: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    """The GPUs the runtime can use: cuda-python's list, else pycuda's (JetPack 5 has only pycuda)."""
    return list(cuda.get("devices") or (pycuda or {}).get("devices") or [])


def cuda_layer_ready(cuda: Dict[str, Any], pycuda: Dict[str, Any]) -> bool:
    return bool(gpus(cuda)) or bool(pycuda.get("device_count"))


def env_summary() -> Dict[str, Any]:
    return {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
