"""The `ds2a doctor` report: every probe's findings, the verdict (an exit code and one sentence), as text.

The exit codes are stated in ds2a/cli/doctor.py's help; scripts branch on them.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from ..opencv import opencv_info
from . import probe
from .model_check import check_model

OK, NO_GPU, USAGE, MODEL_WONT_LOAD, SMOKE_FAILED = 0, 1, 2, 3, 4


def collect(model: Optional[str] = None, device: int = 0) -> Dict[str, Any]:
    """Every probe's findings plus the verdict (see the module docstring for the exit codes);
    `model` is checked against GPU `device` (`--device`)."""
    cuda, pycuda, trt = probe.cuda_python_info(), probe.pycuda_info(), probe.tensorrt_info()
    report: Dict[str, Any] = {
        "platform": probe.platform_info(), "python": probe.python_info(), "tensorrt": trt,
        "cuda_python": cuda, "pycuda": pycuda, "gpus": probe.gpus(cuda, pycuda),
        "onnxruntime": probe.onnxruntime_info(), "opencv": opencv_info(), "cameras": probe.cameras(),
        "environment": probe.env_summary(),
    }
    if model:
        report["model"] = {"path": model, "device": device, **check_model(model, trt, report["gpus"], device)}
    report.update(verdict(report))
    return report


def verdict(report: Dict[str, Any]) -> Dict[str, Any]:
    """The exit code and one plain sentence for it."""
    trt, cuda, pycuda = report["tensorrt"], report["cuda_python"], report["pycuda"]
    gpu_ready = bool(trt.get("importable")) and probe.cuda_layer_ready(cuda, pycuda)
    report_why: Optional[str] = None
    if gpu_ready:
        code, text = OK, "TensorRT and a CUDA GPU are usable here"
    else:
        why = cuda.get("error") or pycuda.get("error") or "no CUDA layer (cuda-python or pycuda) is installed"
        if cuda.get("no_driver") or (not cuda.get("installed") and not pycuda.get("installed")):
            lead = "No NVIDIA GPU or driver is usable here"
        elif not probe.cuda_layer_ready(cuda, pycuda):
            lead = "No CUDA GPU is usable here"
        else:
            lead = "TensorRT is not importable here"
            why = trt.get("error", "")
        code = NO_GPU
        text = f"{lead}: .onnx models run on ONNX Runtime (CPU); engines need a GPU with TensorRT"
        report_why = why
    model = report.get("model")
    if model and model.get("loads") is False:
        code, text = MODEL_WONT_LOAD, f"{model['path']} will not load here (see model above)"
    return {"exit_code": code, "summary": text, "reason": None if code == OK else report_why}


def _yes(value: Any) -> str:
    return {True: "yes", False: "NO", None: "unknown"}.get(value, str(value))


def render(report: Dict[str, Any]) -> str:
    """The report as aligned `name: value` lines for a person."""
    p, py, trt, cuda, pyc = (report[k] for k in ("platform", "python", "tensorrt", "cuda_python", "pycuda"))
    lines: List[str] = []

    def row(name: str, value: str) -> None:
        lines.append(f"{name:<14}{value}")

    jetson = f", Jetson L4T {p['l4t']} (JetPack {p['jetpack'] or '?'})" if p["l4t"] else ""
    row("platform", f"{p['system']}{jetson}" + (f", board: {p['board']}" if p["board"] else ""))
    row("python", f"{py['version']} ({py['executable']})" + ("" if py["supported"] else " - ds2a needs 3.8+"))
    row("tensorrt", trt["version"] if trt.get("importable") else f"not importable: {trt['error']}; {trt['fix']}")
    if cuda.get("installed"):
        fits = "" if cuda.get("fits_driver") or not cuda.get("driver_cuda") else " - too new for this driver"
        row("cuda-python", f"{cuda.get('version')} (CUDA runtime {cuda.get('runtime_cuda')}){fits}")
        row("cuda driver", f"CUDA {cuda['driver_cuda']}" if cuda.get("driver_cuda") else "no NVIDIA driver")
        if cuda.get("error"):
            row("", cuda["error"])
        if cuda.get("fix"):
            row("", f"fix: {cuda['fix']}")
    else:
        row("cuda-python", f"not installed; {cuda['fix']}")
    if pyc.get("installed"):
        row("pycuda", f"{pyc.get('version')} built for CUDA {pyc.get('built_for_cuda')}; driver CUDA "
            f"{pyc.get('driver_cuda') or 'none'}" + ("" if pyc.get("fits_driver") else " - does not fit the driver")
            + (f" ({pyc['error']})" if pyc.get("error") else ""))
    else:
        row("pycuda", "not installed (only needed where cuda-python is not, e.g. JetPack 5)")
    for gpu in report["gpus"]:
        mem = f"{gpu['total_memory'] / 2**30:.1f} GiB" if gpu.get("total_memory") else "? GiB"
        row(f"gpu {gpu['index']}", f"{gpu['name']}, compute capability {gpu['compute_capability']}, "
            f"{gpu.get('sm_count') or '?'} SMs, {mem}")
    if not report["gpus"]:
        row("gpu", "none")
    ort = report["onnxruntime"]
    row("onnxruntime", f"{ort['version']}, providers {', '.join(ort['providers'])}" if ort.get("installed")
        else f"not installed; {ort['fix']}")
    cv = report["opencv"]
    if cv.get("installed"):
        wheels = f"; pip wheels: {', '.join(cv['pip_wheels'])}" if cv.get("pip_wheels") else ""
        row("opencv", f"{cv['version']} ({cv['file']}), GStreamer: {_yes(cv['gstreamer'])}{wheels}")
        if p["jetson"] and not cv["gstreamer"]:
            row("", "csi:// needs GStreamer: pip uninstall the wheels above and `sudo apt install python3-opencv`")
    else:
        row("opencv", f"not importable; {cv['fix']}")
    row("cameras", ", ".join(report["cameras"]) or "none found (/dev/video*)")
    model = report.get("model")
    if model:
        row("model", f"{model['path']}: loads here: {_yes(model['loads'])}; {model['reason']}")
        if model.get("accuracy_gate"):
            row("", f"accuracy gate: {model['accuracy_gate']['line']}")
        if model.get("fix") and model.get("loads") is not True:
            row("", f"fix: {model['fix']}")
    for part in report.get("smoke", []):
        row("smoke", f"{part['name']}: {part['status']} - {part['detail']}")
    lines.append("")
    lines.append(f"{report['summary']} (exit {report['exit_code']})")
    return "\n".join(lines)


def add_smoke(report: Dict[str, Any], device: int = 0) -> None:
    """Run the hardware checks (TensorRT + GPU) into `report`; a failed one sets exit code SMOKE_FAILED."""
    from .smoke import run_smoke

    report["smoke"] = run_smoke(report, device=device)
    if any(part["status"] == "failed" for part in report["smoke"]):
        report["exit_code"] = SMOKE_FAILED
        report["summary"] += "; a hardware check FAILED"
