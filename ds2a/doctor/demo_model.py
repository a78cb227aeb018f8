"""The committed demo model on this GPU: the `ds2a doctor --smoke` part that runs the real model, not a toy.

For each committed, TensorRT-ready ONNX of the demo model (ds2a/assets/demo: FP32, FP16 and
TensorRT-placement INT8; `MAKE` makes them again) it builds a batch-1 and a dynamic-batch engine with
`build_engine` (so each passes the accuracy gate, here on labelled demo frames), opens it through
`open_model` (so each passes its self-test), and times it on a worker thread as the inspection loop
runs it: median and p99 latency with CUDA graphs, the H2D / compute / D2H split from plain runs. mIoU is the
gate's, engine against the labels next to ONNX Runtime's. No torch and no ModelOpt are needed.
The results are written as JSON and markdown ready for benchmarks/results/.
"""
from __future__ import annotations

import json
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

DEMO_DIR = Path(__file__).resolve().parents[1] / "assets" / "demo"
# (label, file) in the order they are built; files that are not committed are left out. The committed
# ds2a_tiny_synth.int8.onnx has ONNX Runtime's placement (INT32 biases), which TensorRT cannot parse.
VARIANTS: Tuple[Tuple[str, str], ...] = (
    ("FP32", "ds2a_tiny_synth.fp32.onnx"),
    ("FP16", "ds2a_tiny_synth.fp16.onnx"),
    ("INT8 (TensorRT placement)", "ds2a_tiny_synth.int8trt.onnx"),
)
MAKE = ("python -m ds2a export ds2a/assets/demo/ds2a_tiny_synth.pt --dynamic-batch --trt 8.5 --compact-weights "
        "--out ds2a/assets/demo/ds2a_tiny_synth.fp32.onnx; python -m ds2a calibrate "
        "ds2a/assets/demo/ds2a_tiny_synth.fp32.onnx --data DATA --precision fp16 "
        "--out ds2a/assets/demo/ds2a_tiny_synth.fp16.onnx; python -m ds2a calibrate "
        "ds2a/assets/demo/ds2a_tiny_synth.fp32.onnx --data DATA --precision int8 --target tensorrt "
        "--compact-weights --out ds2a/assets/demo/ds2a_tiny_synth.int8trt.onnx (ds2a/assets/demo/MODEL_CARD.md)")
RESULT_NAME = "demo_model_gpu"


def demo_variants(directory: Path = DEMO_DIR) -> List[Tuple[str, str]]:
    """The committed demo ONNX files that exist: [(label, path)]."""
    return [(label, str(directory / name)) for label, name in VARIANTS if (directory / name).is_file()]


def labelled_frames(workdir: str, count: int, size: Tuple[int, int], seed: int = 7) -> str:
    """`count` labelled demo cells (ds2a/data/synth.py, M-BSD layout, test split) the gate scores mIoU on."""
    from ..data.synth import write_dataset

    root = os.path.join(workdir, "demo_frames")
    if not os.path.isdir(root):
        write_dataset(root, 0, count, size, seed=seed)
    return root


DYNAMIC_BATCH = (1, 2, 4)  # the dynamic-batch engine's profile; timed at its largest batch


def _timed_on_thread(model: Any, iterations: int, batch: int = 1) -> Dict[str, Any]:
    """bench's measurement, run on another thread than the one that opened the model (as inspect does)."""
    from ..bench.latency import measure

    out: Dict[str, Any] = {}

    def work() -> None:
        try:
            out["m"] = measure(model, batch=batch, warmup_s=0.5, iterations=iterations)
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            out["error"] = exc

    thread = threading.Thread(target=work, name="ds2a-demo-model-loop")
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    m = out["m"]
    stages = m.stages()
    return {"median_ms": m.latency["median"], "p99_ms": m.latency["p99"], "iterations": len(m.samples_ms),
            **{f"{k}_median": v["median"] for k, v in stages.items() if k in ("h2d_ms", "compute_ms", "d2h_ms",
                                                                              "gpu_ms")}}


def cuda_layers(device: int) -> List[Tuple[str, Any]]:
    """Every CUDA layer this machine has (cuda-python, pycuda): each engine runs through each of them."""
    import importlib.util

    from ..runtime.cuda_buffers import load_cudart, open_cuda

    names = (["cuda-python"] if load_cudart() is not None else []) + \
        (["pycuda"] if importlib.util.find_spec("pycuda") is not None else [])
    return [(name, open_cuda(device, prefer=name)) for name in names]


def demo_model_check(workdir: str, device: int = 0, frames: int = 32, iterations: int = 200,
                     variants: Optional[Sequence[Tuple[str, str]]] = None, out_dir: Optional[str] = None,
                     trt: Any = None, cuda_api: Any = None,
                     layers: Optional[Sequence[Tuple[str, Any]]] = None) -> Dict[str, Any]:
    """Build, gate, self-test and time every committed demo variant, as a batch-1 engine and as a
    dynamic-batch engine (profile DYNAMIC_BATCH), each opened through every CUDA layer (`layers`, default
    `cuda_layers(device)`) on a worker thread with CUDA graphs; write OUT/demo_model_gpu.{json,md}.

    A variant whose build fails the gate or whose self-test fails raises (UserError), as it would on
    a station. `trt`, `cuda_api` and `layers` replace tensorrt and the CUDA layers (tests).
    """
    from ..engine.builder import BuildOptions, build_engine
    from ..engine.verify import VerifyOptions
    from ..export.metadata import load_onnx, read_meta
    from ..runtime import open_model

    chosen = list(variants) if variants is not None else demo_variants()
    if not chosen:
        raise FileNotFoundError(f"no TensorRT-ready demo ONNX in {DEMO_DIR}; make them on a workstation: {MAKE}")
    chosen_layers = list(layers) if layers is not None else \
        ([("given", cuda_api)] if cuda_api is not None else cuda_layers(device))
    os.makedirs(workdir, exist_ok=True)
    size = tuple(read_meta(load_onnx(chosen[0][1]), chosen[0][1]).input_size)
    data = labelled_frames(workdir, frames, size)  # type: ignore[arg-type]
    rows: List[Dict[str, Any]] = []
    version = gpu = ""
    for label, onnx in chosen:
        for profile in (None, DYNAMIC_BATCH):
            suffix = "" if profile is None else ".dynamic"
            engine = os.path.join(workdir, Path(onnx).stem + suffix + ".engine")
            opts = BuildOptions(device=device, batch=profile, verify=VerifyOptions(data=data, frames=frames))
            report = build_engine(onnx, engine, opts, trt=trt, cuda_api=chosen_layers[0][1])
            gate = report.verification or {}
            version = report.tensorrt_version
            batch = 1 if profile is None else profile[2]
            for layer, api in chosen_layers:
                extra = {"trt_module": trt} if trt is not None else {}
                with open_model(engine, backend="tensorrt", device=device, cuda_api=api, **extra) as model:
                    split = {k: v for k, v in _timed_on_thread(model, max(10, iterations // 4), batch).items()
                             if k.endswith("_median")}  # plain runs: the H2D / compute / D2H split
                with open_model(engine, backend="tensorrt", device=device, cuda_graph=True, cuda_api=api,
                                **extra) as model:
                    timing = {**_timed_on_thread(model, iterations, batch), **split}
                    selftest = model.selftest.to_dict() if model.selftest else {"status": "not run"}
                    gpu = getattr(getattr(model, "device", None), "name", "") or gpu
                rows.append({"variant": label, "onnx": os.path.basename(onnx), "precision": report.precision,
                             "cuda": layer, "batch": "1" if profile is None else "{}:{}:{}".format(*profile),
                             "timed_batch": batch, "build_s": round(report.build_seconds, 1),
                             "gate": "passed" if gate.get("passed") else "failed",
                             "agreement": gate.get("agreement"), "defect_agreement": gate.get("defect_agreement"),
                             "miou_engine": gate.get("miou_engine"), "miou_onnxruntime": gate.get("miou_reference"),
                             "selftest": selftest.get("status"), **timing})
    result = {"gpu": gpu, "tensorrt": version, "device": device, "frames": frames,
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": rows}
    write_results(result, out_dir or workdir)
    return result


def markdown(result: Dict[str, Any]) -> str:
    """The table for benchmarks/results/ (one row per engine)."""
    lines = [f"Demo model on {result['gpu']}, TensorRT {result['tensorrt']}, {result['date']} "
             f"(`ds2a doctor --smoke`; mIoU on {result['frames']} labelled demo cells)", "",
             "| variant | precision | CUDA layer | batch profile (timed at) | gate | pixels agree | mIoU engine "
             "| mIoU ONNX Runtime | self-test | median ms | p99 ms | H2D / compute / D2H ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def num(v: Any, fmt: str = "{:.4f}") -> str:
        return "-" if v is None else fmt.format(v)

    for r in result["rows"]:
        split = " / ".join(num(r.get(k), "{:.3f}") for k in ("h2d_ms_median", "compute_ms_median", "d2h_ms_median"))
        lines.append(f"| {r['variant']} | {r['precision']} | {r.get('cuda', '-')} | {r.get('batch', '1')} "
                     f"({r.get('timed_batch', 1)}) | {r['gate']} | {num(r['agreement'], '{:.4%}')} | "
                     f"{num(r['miou_engine'])} | {num(r['miou_onnxruntime'])} | {r['selftest']} | "
                     f"{num(r['median_ms'], '{:.2f}')} | {num(r['p99_ms'], '{:.2f}')} | {split} |")
    return "\n".join(lines) + "\n"


def write_results(result: Dict[str, Any], out_dir: str) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, RESULT_NAME + ".json"), os.path.join(out_dir, RESULT_NAME + ".md")]
    with open(paths[0], "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    with open(paths[1], "w") as f:
        f.write(markdown(result))
    return paths
