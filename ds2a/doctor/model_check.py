"""Will this model load here? An engine's sidecar against this machine; an ONNX through ONNX Runtime.

The check reuses the runtime's own sidecar verification, so `ds2a doctor --model` and
`ds2a inspect --model` refuse the same engines with the same rebuild command.
"""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

from ..errors import UserError

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def _sidecar_module() -> Any:
    from ..trt import sidecar  # noqa: PLC0415

    return sidecar


def _stem(path: str) -> str:
    return os.path.splitext(path)[0]


def check_model(path: str, tensorrt: Dict[str, Any], devices: List[Dict[str, Any]], device: int = 0) -> Dict[str, Any]:
    """{"loads": bool, "reason": ..., "fix": command or None} for `path` on GPU `device` of this machine."""
    if not os.path.isfile(path):
        raise UserError(f"--model {path} does not exist; give the .onnx or .engine you want to run here")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in ENGINE_SUFFIXES:
        return _check_engine(path, tensorrt, devices, device)
    if suffix == ".onnx":
        return _check_onnx(path, tensorrt, devices)
    if suffix in (".pt", ".pth"):
        return {"kind": "pytorch", "loads": False, "reason": "a PyTorch checkpoint; the device runs ONNX or engines",
                "fix": f"ds2a export {path} --out {_stem(path)}.onnx"}
    raise UserError(f"--model {path}: unknown model type '{suffix}'; give a .onnx or .engine file")


def _check_onnx(path: str, tensorrt: Dict[str, Any], devices: List[Dict[str, Any]]) -> Dict[str, Any]:
    result: Dict[str, Any] = {"kind": "onnx"}
    fix = "export it again with `ds2a export CHECKPOINT.pt --out MODEL.onnx`"
    try:
        from ..runtime import open_model  # noqa: PLC0415

        with open_model(path, backend="onnxruntime", device="cpu") as model:  # the self-test at open, too
            selftest = model.selftest
    except UserError as exc:  # a refusal (self-test failed, metadata unreadable) says why itself
        return {**result, "loads": False, "reason": str(exc), "fix": fix}
    except Exception as exc:
        return {**result, "loads": False, "reason": f"ONNX Runtime cannot load it: {type(exc).__name__}: {exc}",
                "fix": fix}
    result["selftest"] = selftest.to_dict() if selftest else None
    result.update(loads=True, reason="ONNX Runtime (CPU) loads it: ds2a inspect --model " + path
                  + (f"; {selftest.line()}" if selftest else ""))
    if tensorrt.get("importable") and devices:
        result["fix"] = f"ds2a build-engine {path} --out {_stem(path)}.engine"
        result["reason"] += f"; for the GPU build an engine here: {result['fix']}"
    return result


def _check_engine(path: str, tensorrt: Dict[str, Any], devices: List[Dict[str, Any]], index: int) -> Dict[str, Any]:
    sidecar = _sidecar_module()
    result: Dict[str, Any] = {"kind": "tensorrt"}
    try:
        record = sidecar.read_sidecar(path)
    except UserError as exc:
        return {**result, "loads": False, "reason": str(exc), "fix": f"ds2a build-engine MODEL.onnx --out {path}"}
    fix = sidecar.rebuild_command(record, path) if record else f"ds2a build-engine MODEL.onnx --out {path}"
    if record:
        result["built_for"] = {k: record.get(k) for k in ("tensorrt_version", "gpu_name", "compute_capability",
                                                          "precision", "board", "sm_count")}
        result["accuracy_gate"] = gate_summary(record.get("verification"))
    if not tensorrt.get("importable") or not devices:
        missing = "TensorRT" if not tensorrt.get("importable") else "CUDA GPU"
        onnx = (record or {}).get("onnx_path") or f"{_stem(path)}.onnx"
        return {**result, "loads": False, "fix": fix,
                "reason": f"this machine has no {missing}, so no engine loads here; run the ONNX on ONNX Runtime "
                          f"(ds2a inspect --model {onnx}) or build the engine on the device: {fix}"}
    if record is None:
        return {**result, "loads": None, "fix": fix,
                "reason": f"no sidecar {path}.json: TensorRT version and GPU cannot be checked before loading"}
    gpu = next((d for d in devices if int(d["index"]) == int(index)), None)
    if gpu is None:
        have = ", ".join(str(d["index"]) for d in devices)
        return {**result, "loads": False, "fix": None,
                "reason": f"GPU {index} does not exist here (CUDA lists GPU {have}); pick one with --device"}
    device = SimpleNamespace(sm_count=gpu.get("sm_count"), total_memory=gpu.get("total_memory") or 0)
    cc = [int(v) for v in str(gpu["compute_capability"]).split(".")]
    try:
        notes: Optional[List[str]] = _verify(sidecar, record, path, tensorrt["version"], gpu["name"], cc, device)
    except UserError as exc:
        return {**result, "loads": False, "reason": str(exc), "fix": fix}
    return {**result, "loads": True, "reason": "built for this TensorRT and GPU" + (f" ({'; '.join(notes)})" if notes
                                                                                    else ""), "fix": None}


def _verify(sidecar: Any, record: Dict[str, Any], path: str, version: str, name: str, cc: List[int],
            device: Any) -> List[str]:
    """The runtime's own check (same refusals as `ds2a inspect`); its notes are returned, not logged."""
    return list(sidecar.verify_sidecar(record, path, version, name, cc, device=device))


def gate_summary(gate: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The build's accuracy gate (ds2a/engine/verify.py) from the sidecar, with one line for the report."""
    if not gate:
        return {"status": "none", "line": "none recorded (built before the accuracy gate existed): rebuild it with "
                                          "`ds2a build-engine` to check it against ONNX Runtime"}
    status = "passed" if gate.get("passed") else ("accepted mismatch" if gate.get("accepted_mismatch") else "failed")
    miou = gate.get("miou_delta")
    line = (f"{status} on {gate.get('date')}: {gate.get('frames')} frames ({gate.get('frames_source')}) vs "
            f"{gate.get('reference')}: {100 * float(gate.get('agreement', 0)):.3f} % of pixels and "
            f"{100 * float(gate.get('defect_agreement', 0)):.2f} % of defect pixels agree"
            + (f", mIoU delta {100 * float(miou):+.2f} pt" if miou is not None else "")
            + f"; TensorRT {gate.get('tensorrt_version')}, ONNX Runtime {gate.get('onnxruntime_version') or 'absent'}")
    keys = ("passed", "accepted_mismatch", "frames", "frames_source", "reference", "agreement", "defect_agreement",
            "miou_delta", "failures", "tensorrt_version", "onnxruntime_version", "date")
    return {"status": status, "line": line, **{k: gate.get(k) for k in keys}}
