"""Real TensorRT Python bindings without TensorRT: PyPI wheels loaded against stub libraries.

The `tensorrt-*-bindings` wheels hold only `tensorrt_bindings/tensorrt.so`, which links
libnvinfer/libnvinfer_plugin/libnvonnxparser (and libnvparsers for 8.x). A tiny C library
exporting the nine C entry points under those sonames lets the module import: real enums,
classes and method names of each release, nothing executable. Each release lives in its
own cache folder (DS2A_TRT_CACHE, default ~/.cache/ds2a/trt-wheels/<version>) and is only
ever imported in a subprocess, so releases never meet in one interpreter.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

HERE = Path(__file__).resolve().parent
# version -> pip requirement (8.6 is JetPack 6.0; 10.3 JetPack 6.1/6.2; 10.13 JetPack 7; newest 10.x; 11.x)
RELEASES: Dict[str, str] = {
    "8.6.1": "tensorrt-bindings==8.6.1",
    "10.3.0": "tensorrt-cu12-bindings==10.3.0",
    "10.13.3.9": "tensorrt-cu12-bindings==10.13.3.9",
    "10.16.1.11": "tensorrt-cu12-bindings==10.16.1.11",
    "11.4.0.106": "tensorrt-cu12-bindings==11.4.0.106",
}
STUB_NAMES = ("nvinfer", "nvinfer_plugin", "nvonnxparser", "nvparsers")
SHIM = "from tensorrt_bindings import *  # noqa: F401,F403\nfrom tensorrt_bindings import __version__  # noqa: F401\n"
_failures: Dict[str, str] = {}


def cache_root() -> Path:
    return Path(os.environ.get("DS2A_TRT_CACHE") or Path.home() / ".cache" / "ds2a" / "trt-wheels")


def _major(version: str) -> str:
    return version.split(".")[0]


def stub_libs(major: str) -> Path:
    """Build (once) lib*.so.<major> from stub.c with gcc; returns the folder for LD_LIBRARY_PATH."""
    out = cache_root() / "stubs" / f"lib{major}"
    if all((out / f"lib{n}.so.{major}").is_file() for n in STUB_NAMES):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    for name in STUB_NAMES:
        so = f"lib{name}.so.{major}"
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp / so), f"-Wl,-soname,{so}", str(HERE / "stub.c")],
                       check=True, capture_output=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another test process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def obtain(version: str) -> Tuple[Optional[Path], str]:
    """(site folder holding `tensorrt`, "") or (None, why it could not be had)."""
    site = cache_root() / version / "site"
    if (site / "tensorrt" / "__init__.py").is_file():
        return site, ""
    if version in _failures:
        return None, _failures[version]
    work = Path(tempfile.mkdtemp(dir=_ensure(cache_root())))
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "-q", RELEASES[version], "-d", str(work / "dl")],
                              capture_output=True, text=True, timeout=300)
        wheels = list((work / "dl").glob("*.whl")) if proc.returncode == 0 else []
        if not wheels:
            last = ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1]
            _failures[version] = f"cannot download {RELEASES[version]} ({last[:200]})"
            return None, _failures[version]
        with zipfile.ZipFile(wheels[0]) as zf:
            zf.extractall(work / "site")
        (work / "site" / "tensorrt").mkdir()
        (work / "site" / "tensorrt" / "__init__.py").write_text(SHIM)
        _ensure(site.parent)
        if not site.exists():
            os.replace(work / "site", site)
        return site, ""
    except (OSError, subprocess.SubprocessError, zipfile.BadZipFile) as exc:
        if (site / "tensorrt" / "__init__.py").is_file():  # another test process finished first
            return site, ""
        _failures[version] = f"cannot obtain {RELEASES[version]}: {exc}"
        return None, _failures[version]
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def env_for(version: str, site: Path) -> Dict[str, str]:
    env = dict(os.environ)
    libs = str(stub_libs(_major(version)))
    env["LD_LIBRARY_PATH"] = libs + (os.pathsep + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(HERE.parent.parent)])
    return env


def run_with_real_trt(version: str, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Python `code` in a subprocess where `import tensorrt` is that real release (stub libs)."""
    site, why = obtain(version)
    if site is None:
        raise RuntimeError(why)
    return subprocess.run([sys.executable, "-c", code], env=env_for(version, site), capture_output=True,
                          text=True, timeout=timeout)


def surface(version: str) -> Tuple[Optional[dict], str]:
    """The release's public names (module, classes, enum members with values), cached as JSON."""
    path = cache_root() / version / "surface.json"
    if path.is_file():
        return json.loads(path.read_text()), ""
    site, why = obtain(version)
    if site is None:
        return None, why
    proc = subprocess.run([sys.executable, str(HERE / "dump_surface.py")], env=env_for(version, site),
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return None, f"tensorrt {version} did not import against the stub libraries: {proc.stderr[-500:]}"
    data = json.loads(proc.stdout)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
    return data, ""
