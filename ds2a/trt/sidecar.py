"""`model.engine.json`: what an engine was built from and for, written beside it and checked on load.

A TensorRT engine only runs on the TensorRT release and GPU it was built for, and it does
not carry our class names or palette. The sidecar records both, so loading can refuse a
mismatch with the exact command that rebuilds the engine, instead of TensorRT's terse
deserialisation error.
"""
from __future__ import annotations

import json
import os
import shlex
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import UserError
from ..meta import file_sha256
from .platform import board_model, sm_count
from .versions import same_release, vc_loadable, vc_runtimes

FORMAT = "ds2a-engine"
FORMAT_VERSION = 1
REQUIRED = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "inputs", "outputs")


_UNSET: Any = object()


def sidecar_path(engine_path: str) -> str:
    """`model.engine` -> `model.engine.json`."""
    return f"{engine_path}.json"


def write_sidecar(engine_path: str, record: Dict[str, Any]) -> str:
    """Write the record (plus format tag and the engine's sha256) atomically; returns the path."""
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, **record,
            "engine_sha256": file_sha256(engine_path)}
    path = sidecar_path(engine_path)
    from ..outputs import atomic_write  # the one atomic writer (ds2a/outputs.py)

    with atomic_write(path, label="engine sidecar") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def read_sidecar(engine_path: str) -> Optional[Dict[str, Any]]:
    """The sidecar record, None when there is none; UserError when it is unreadable."""
    path = sidecar_path(engine_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise UserError(f"engine metadata {path} is unreadable ({exc}); rebuild the engine with "
                        f"`ds2a build-engine MODEL.onnx --out {engine_path}`") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path} is not a ds2a engine sidecar (no \"format\": \"{FORMAT}\"); rebuild "
                        f"the engine with `ds2a build-engine MODEL.onnx --out {engine_path}`")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}; rebuild the engine with "
                        f"`ds2a build-engine MODEL.onnx --out {engine_path}`")
    return data


def rebuild_command(record: Dict[str, Any], engine_path: str) -> str:
    """The `ds2a build-engine` line that makes this engine again on the current device."""
    onnx = record.get("onnx_path") or "MODEL.onnx"
    args: List[str] = ["ds2a", "build-engine", onnx, "--out", engine_path]
    args += [str(a) for a in record.get("build_args", [])]
    return " ".join(shlex.quote(a) for a in args)


def _cc(value: Any) -> Tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    major, _, minor = str(value).partition(".")
    return int(major), int(minor or 0)


def _check_release(record: Dict[str, Any], engine_path: str, tensorrt_version: str, fix: str) -> None:
    built = str(record["tensorrt_version"])
    if record.get("version_compatible"):
        if not vc_loadable(built, tensorrt_version):
            raise UserError(f"{engine_path} is a version-compatible engine from TensorRT {built}, which TensorRT "
                            f"{tensorrt_version} cannot load (it loads in {vc_runtimes(built)}; see deploy/README.md); "
                            f"{fix}")
    elif not same_release(built, tensorrt_version):
        raise UserError(f"{engine_path} was built with TensorRT {built} but this machine runs TensorRT "
                        f"{tensorrt_version}; engines only load in the release that built them (build with "
                        f"--version-compatible for one that later releases load): {fix}")


def _module_mismatch(record: Dict[str, Any], device: Any, board: Optional[str]) -> Optional[str]:
    """How this device differs from the one that built the engine, beyond name and compute capability."""
    built_board, built_sms, built_mem = record.get("board"), record.get("sm_count"), record.get("total_memory")
    if built_board and board and built_board != board:
        return f"built on a {built_board}, this is a {board}"
    sms = sm_count(device) if device is not None else None
    if built_sms and sms and int(built_sms) != sms:
        return f"built on a GPU with {built_sms} SMs, this one has {sms}"
    mem = int(getattr(device, "total_memory", 0) or 0) if device is not None else 0
    if built_mem and mem and abs(mem - int(built_mem)) > 0.25 * max(mem, int(built_mem)):
        return f"built on a device with {int(built_mem) / 2**30:.0f} GiB, this one has {mem / 2**30:.0f} GiB"
    return None


def verify_sidecar(record: Dict[str, Any], engine_path: str, tensorrt_version: str, gpu_name: str,
                   compute_capability: Sequence[int], allow_other_gpu: bool = False,
                   check_hash: bool = True, device: Any = None, board: Any = _UNSET) -> List[str]:
    """Refuse an engine built for another TensorRT release or GPU; returns warnings for near misses.

    Version-compatible engines load where NVIDIA's matrix says (`ds2a.trt.versions.vc_loadable`);
    hardware-compatible ones ("ampere+") on any GPU of compute capability 8.0 or newer,
    "same-cc" ones on any GPU of the same compute capability. `device` (SM count, memory) and
    the board model tell Jetson modules apart, which all report the GPU name "Orin".
    """
    fix = f"rebuild it on this device: {rebuild_command(record, engine_path)}"
    notes: List[str] = []
    _check_release(record, engine_path, tensorrt_version, fix)
    built_cc, run_cc = _cc(record["compute_capability"]), (int(compute_capability[0]), int(compute_capability[1]))
    hw = record.get("hardware_compat", "none")
    cc_text = f"{run_cc[0]}.{run_cc[1]}"
    if hw == "ampere+":
        if run_cc < (8, 0):
            raise UserError(f"{engine_path} was built hardware-compatible for Ampere and newer GPUs but "
                            f"{gpu_name} has compute capability {cc_text}; {fix}")
    elif built_cc != run_cc:
        raise UserError(f"{engine_path} was built for {record['gpu_name']} (compute capability "
                        f"{built_cc[0]}.{built_cc[1]}) but this GPU is {gpu_name} ({cc_text}); {fix}")
    elif hw != "same-cc":
        other = _module_mismatch(record, device, board_model() if board is _UNSET else board)
        if record["gpu_name"] != gpu_name:
            other = f"built on {record['gpu_name']} but runs on {gpu_name}" + (f"; {other}" if other else "")
        if other:
            msg = (f"{engine_path} was {other} (same compute capability {cc_text}); TensorRT may pick slow "
                   f"kernels or fail: {fix}")
            if not allow_other_gpu:
                raise UserError(msg + " (or pass allow_other_gpu=True to run it anyway)")
            notes.append(msg)
    if check_hash and record.get("engine_sha256") and os.path.isfile(engine_path):
        if file_sha256(engine_path) != record["engine_sha256"]:
            raise UserError(f"{engine_path} does not match its sidecar {sidecar_path(engine_path)} (the "
                            f"engine file changed after the build or the sidecar belongs to another engine); {fix}")
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)
    return notes
