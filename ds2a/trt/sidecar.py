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
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from ..errors import UserError
from ..meta import file_sha256
from .platform import board_model, host_identity, module_identity, sm_count
from .versions import same_release, vc_loadable, vc_runtimes

FORMAT = "ds2a-engine"
FORMAT_VERSION = 1
REQUIRED = ("tensorrt_version", "gpu_name", "compute_capability", "precision", "inputs", "outputs")


_UNSET: Any = object()


@dataclass
class EngineRecord:
    """What `ds2a build-engine` records about an engine: the sidecar's JSON as typed fields.

    The field names are the JSON keys (docs: ds2a/trt/sidecar.py); keys this version does not
    know are kept in `extra` so a sidecar round-trips. `record["key"]` / `record.get("key")`
    read any JSON key, for code that handles the record as the JSON it is.
    """

    tensorrt_version: str
    gpu_name: str
    compute_capability: Any  # "8.7" (builder) or [8, 7]
    precision: str
    inputs: List[Dict[str, Any]]
    outputs: List[Dict[str, Any]]
    sm_count: Optional[int] = None
    total_memory: Optional[int] = None
    board: Optional[str] = None
    module: Optional[str] = None  # Jetson module part number (device tree), e.g. "p3701-0005"
    os: Optional[str] = None  # platform.system() of the building machine, e.g. "Linux"
    cpu_arch: Optional[str] = None  # platform.machine(), e.g. "aarch64", "x86_64"
    strongly_typed: Optional[bool] = None
    builder_flags: Optional[List[str]] = None
    batch_profile: Optional[List[int]] = None  # (min, opt, max) batch of a dynamic engine
    meta: Optional[Dict[str, Any]] = None  # ModelMeta.to_dict() of the ONNX
    onnx_path: Optional[str] = None
    onnx_sha256: Optional[str] = None
    build_options: Optional[Dict[str, Any]] = None
    build_args: List[str] = field(default_factory=list)  # the flags that rebuild it (rebuild_command)
    version_compatible: bool = False
    hardware_compat: str = "none"
    dla_core: Optional[int] = None
    build_seconds: Optional[float] = None
    calibration_cache_sha256: Optional[str] = None
    built_at: Optional[str] = None
    engine_sha256: Optional[str] = None  # set by write_sidecar from the engine file
    extra: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "the sidecar", engine_path: str = "MODEL.engine"
                  ) -> "EngineRecord":
        """Validate a sidecar's JSON object (format tag, required keys); UserError naming `where` otherwise."""
        fix = f"rebuild the engine with `ds2a build-engine MODEL.onnx --out {engine_path}`"
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise UserError(f"{where} is not a ds2a engine sidecar (no \"format\": \"{FORMAT}\"); {fix}")
        missing = [k for k in REQUIRED if k not in data]
        if missing:
            raise UserError(f"{where} lacks {', '.join(missing)}; {fix}")
        return cls.from_fields(data)

    @classmethod
    def from_fields(cls, data: Mapping[str, Any]) -> "EngineRecord":
        """A record from its keys (no format tag needed: what the builder passes to write_sidecar)."""
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known and v is not None}
        extra = {k: v for k, v in data.items() if k not in known and k not in _TAGS}
        return cls(**values, extra=extra)

    @classmethod
    def from_json(cls, text: str, where: str = "the sidecar", engine_path: str = "MODEL.engine") -> "EngineRecord":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"engine metadata {where} is unreadable ({exc}); rebuild the engine with "
                            f"`ds2a build-engine MODEL.onnx --out {engine_path}`") from None
        return cls.from_dict(data, where, engine_path)

    def to_dict(self) -> Dict[str, Any]:
        """The JSON object: format tag, every field, then the unknown keys read from an older/newer file."""
        data: Dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
        data.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"})
        data.update(self.extra)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def get(self, key: str, default: Any = None) -> Any:
        value = self.to_dict().get(key)
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        data = self.to_dict()
        if key not in data:
            raise KeyError(key)
        return data[key]

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()


_TAGS = ("format", "format_version")
Record = Union[EngineRecord, Mapping[str, Any]]


def as_record(record: Record) -> EngineRecord:
    """An EngineRecord from itself or from the sidecar's keys (callers holding the JSON as a dict)."""
    return record if isinstance(record, EngineRecord) else EngineRecord.from_fields(record)


def sidecar_path(engine_path: str) -> str:
    """`model.engine` -> `model.engine.json`."""
    return f"{engine_path}.json"


def write_sidecar(engine_path: str, record: Record) -> str:
    """Write the record (plus format tag and the engine's sha256) atomically; returns the path."""
    rec = as_record(record)
    rec.engine_sha256 = file_sha256(engine_path)
    path = sidecar_path(engine_path)
    from ..outputs import atomic_write  # the one atomic writer (ds2a/outputs.py)

    with atomic_write(path, label="engine sidecar") as f:
        f.write(rec.to_json())
    return path


def read_sidecar(engine_path: str) -> Optional[EngineRecord]:
    """The sidecar record, None when there is none; UserError when it is unreadable."""
    path = sidecar_path(engine_path)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            text = f.read()
    except OSError as exc:
        raise UserError(f"engine metadata {path} is unreadable ({exc}); rebuild the engine with "
                        f"`ds2a build-engine MODEL.onnx --out {engine_path}`") from None
    return EngineRecord.from_json(text, path, engine_path)


def rebuild_command(record: Record, engine_path: str) -> str:
    """The `ds2a build-engine` line that makes this engine again on the current device."""
    record = as_record(record)
    onnx = record.onnx_path or "MODEL.onnx"
    args: List[str] = ["ds2a", "build-engine", onnx, "--out", engine_path]
    args += [str(a) for a in record.build_args or []]
    return " ".join(shlex.quote(a) for a in args)


def _cc(value: Any) -> Tuple[int, int]:
    if isinstance(value, (list, tuple)):
        return int(value[0]), int(value[1])
    major, _, minor = str(value).partition(".")
    return int(major), int(minor or 0)


def _check_release(record: EngineRecord, engine_path: str, tensorrt_version: str, fix: str) -> None:
    built = str(record.tensorrt_version)
    if record.version_compatible:
        if not vc_loadable(built, tensorrt_version):
            raise UserError(f"{engine_path} is a version-compatible engine from TensorRT {built}, which TensorRT "
                            f"{tensorrt_version} cannot load (it loads in {vc_runtimes(built)}; see deploy/README.md); "
                            f"{fix}")
    elif not same_release(built, tensorrt_version):
        raise UserError(f"{engine_path} was built with TensorRT {built} but this machine runs TensorRT "
                        f"{tensorrt_version}; engines only load in the release that built them (build with "
                        f"--version-compatible for one that later releases load): {fix}")


def _check_platform(record: EngineRecord, engine_path: str, host: Dict[str, str], fix: str) -> None:
    """Refuse an engine built on another OS or CPU architecture (NVIDIA: serialized engines are not portable
    across platforms), before TensorRT's generic "truncated or corrupt" failure on load."""
    built = [record.os, record.cpu_arch]
    here = [host.get("os"), host.get("cpu_arch")]
    if any(b and h and b != h for b, h in zip(built, here)):
        raise UserError(f"{engine_path} was built on {' '.join(str(b) for b in built if b)} but this machine is "
                        f"{' '.join(str(h) for h in here if h)}; an engine never moves between platforms "
                        f"(even version- or hardware-compatible ones): {fix}")


def _module_mismatch(record: EngineRecord, device: Any, board: Optional[str],
                     module: Optional[str] = None) -> Optional[str]:
    """How this device differs from the one that built the engine, beyond name and compute capability.

    Where both sides know the Jetson module's part number, that decides (the board model string
    also names the carrier board, which does not matter to an engine); else the board model does.
    """
    built_board, built_sms, built_mem = record.board, record.sm_count, record.total_memory
    if record.module and module:
        if record.module != module:
            return f"built on Jetson module {record.module} ({built_board}), this is module {module} ({board})"
    elif built_board and board and built_board != board:
        return f"built on a {built_board}, this is a {board}"
    sms = sm_count(device) if device is not None else None
    if built_sms and sms and int(built_sms) != sms:
        return f"built on a GPU with {built_sms} SMs, this one has {sms}"
    mem = int(getattr(device, "total_memory", 0) or 0) if device is not None else 0
    if built_mem and mem and abs(mem - int(built_mem)) > 0.25 * max(mem, int(built_mem)):
        return f"built on a device with {int(built_mem) / 2**30:.0f} GiB, this one has {mem / 2**30:.0f} GiB"
    return None


def verify_sidecar(record: Record, engine_path: str, tensorrt_version: str, gpu_name: str,
                   compute_capability: Sequence[int], allow_other_gpu: bool = False,
                   check_hash: bool = True, device: Any = None, board: Any = _UNSET, module: Any = _UNSET,
                   host: Any = _UNSET) -> List[str]:
    """Refuse an engine built for another TensorRT release or GPU; returns the near misses (the runtime logs them).

    Version-compatible engines load where NVIDIA's matrix says (`ds2a.trt.versions.vc_loadable`);
    hardware-compatible ones ("ampere+") on any GPU of compute capability 8.0 or newer,
    "same-cc" ones on any GPU of the same compute capability. `device` (SM count, memory) and
    the board model tell Jetson modules apart, which all report the GPU name "Orin".
    """
    record = as_record(record)
    fix = f"rebuild it on this device: {rebuild_command(record, engine_path)}"
    notes: List[str] = []
    _check_platform(record, engine_path, host_identity() if host is _UNSET else host, fix)
    _check_release(record, engine_path, tensorrt_version, fix)
    built_cc, run_cc = _cc(record.compute_capability), (int(compute_capability[0]), int(compute_capability[1]))
    hw = record.hardware_compat or "none"
    cc_text = f"{run_cc[0]}.{run_cc[1]}"
    if hw == "ampere+":
        if run_cc < (8, 0):
            raise UserError(f"{engine_path} was built hardware-compatible for Ampere and newer GPUs but "
                            f"{gpu_name} has compute capability {cc_text}; {fix}")
    elif built_cc != run_cc:
        raise UserError(f"{engine_path} was built for {record.gpu_name} (compute capability "
                        f"{built_cc[0]}.{built_cc[1]}) but this GPU is {gpu_name} ({cc_text}); {fix}")
    elif hw != "same-cc":
        other = _module_mismatch(record, device, board_model() if board is _UNSET else board,
                                 module_identity() if module is _UNSET else module)
        if record.gpu_name != gpu_name:
            other = f"built on {record.gpu_name} but runs on {gpu_name}" + (f"; {other}" if other else "")
        if other:
            msg = (f"{engine_path} was {other} (same compute capability {cc_text}); TensorRT may pick slow "
                   f"kernels or fail: {fix}")
            if not allow_other_gpu:
                raise UserError(msg + " (or run it anyway with --allow-other-gpu, allow_other_gpu=True in Python)")
            notes.append(msg)
    if check_hash and record.engine_sha256 and os.path.isfile(engine_path):
        if file_sha256(engine_path) != record.engine_sha256:
            raise UserError(f"{engine_path} does not match its sidecar {sidecar_path(engine_path)} (the "
                            f"engine file changed after the build or the sidecar belongs to another engine); {fix}")
    return notes
