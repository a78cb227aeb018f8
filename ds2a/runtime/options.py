"""The one table of backend options: what `open_model(path, **options)` passes to each backend.

Every entry path (the CLI flags of inspect/eval/bench/serve, or Python) is checked against
this table, so an option a backend does not take is refused with the same message wherever it
comes from. Torch-free (no backend is imported here).
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ..errors import UserError
from ..meta import parse_size


@dataclass(frozen=True)
class BackendOption:
    """One keyword a backend constructor takes."""

    name: str  # the constructor keyword
    meaning: str  # one line, for help and messages
    flag: Optional[str] = None  # the shared CLI flag that sets it (add_backend_arguments); None = Python only


OPTIONS: Dict[str, Tuple[BackendOption, ...]] = {
    "onnxruntime": (
        BackendOption("device", "'cpu' (default), 'cuda', 'tensorrt', 'auto' or a provider list", "--device"),
        BackendOption("intra_op_threads", "threads inside one operator (0 = one per core)", "--threads"),
        BackendOption("inter_op_threads", "threads across operators (0 = ONNX Runtime's default)"),
        BackendOption("return_logits", "also fetch the logits output when the model has one"),
        BackendOption("optimization", "graph optimization: all (default), extended, basic, disable"),
        BackendOption("spin", "let worker threads busy-wait between runs (off: they steal the loop's cores)"),
    ),
    "tensorrt": (
        BackendOption("device", "GPU index: 0 (default), 1, 'cuda:N'", "--device"),
        BackendOption("cuda_graph", "capture the work once a batch size repeats, then replay it", "--cuda-graph"),
        BackendOption("return_logits", "also copy back the logits output"),
        BackendOption("allow_other_gpu", "same compute capability but another GPU model or Jetson module: warn "
                      "instead of refuse", "--allow-other-gpu"),
        BackendOption("trt_module", "a stand-in for the tensorrt module (tests)"),
        BackendOption("cuda_api", "a stand-in for the CUDA layer (tests)"),
    ),
    "pytorch": (
        BackendOption("device", "'auto' (CUDA when available, default), 'cpu', 'cuda', 'cuda:N'", "--device"),
        BackendOption("threads", "torch intra-op threads on the CPU (0 = torch's default)", "--threads"),
        BackendOption("input_size", "(H, W) to run at instead of the checkpoint's size; multiples of 32", "--size"),
        BackendOption("return_logits", "also return the logits"),
        BackendOption("half", "FP16 autocast on CUDA"),
    ),
    "triton": (
        BackendOption("timeout_s", "seconds per request (default 10; the URL's ?timeout= wins)"),
        BackendOption("return_logits", "also fetch the logits output when the served model has one"),
        BackendOption("retry_s", "first wait before reconnecting to a server that went away"),
        BackendOption("max_retry_s", "longest wait between reconnects"),
    ),
}

TITLES: Dict[str, str] = {"onnxruntime": "ONNX Runtime", "tensorrt": "TensorRT", "pytorch": "PyTorch",
                          "triton": "Triton"}
# what to do instead, when a flag meets a backend that lacks it
HINTS: Dict[str, str] = {
    "--cuda-graph": "drop it or use a .engine",
    "--threads": "drop it (TensorRT and served models run on the GPU)",
    "--size": "drop it: ONNX files and engines have their size built in (export it again with "
              "`ds2a export CKPT --size HxW`)",
    "--device": "drop it: the server chooses its device (`ds2a serve --device`)",
    "--allow-other-gpu": "drop it (only TensorRT engines are tied to the GPU that built them)",
}

THREAD_OPTIONS = ("intra_op_threads", "inter_op_threads", "threads")
MAX_THREADS = 1024  # far above any core count here; 100000 made ONNX Runtime try to start 100000 threads


def check_threads(value: Any, label: str) -> int:
    """A thread count from 0 to MAX_THREADS (0: the backend's default); UserError naming `label` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_THREADS:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise UserError(f"{label} {shown}: give a whole number of threads from 1 to {MAX_THREADS} "
                        f"(this machine has {os.cpu_count() or '?'} cores)")
    return int(value)


_TORCH_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def torch_device(text: str, *, allow_auto: bool = True) -> str:
    """A PyTorch device string, checked before torch sees it: cpu, cuda, cuda:N (and auto).

    ValueError names the valid forms; callers add which flag was wrong.
    """
    value = str(text).strip().lower()
    if not _TORCH_DEVICE.match(value) or (value == "auto" and not allow_auto):
        raise ValueError(f"'{text}' is not a device; use cpu, cuda or cuda:N" + (" (or auto)" if allow_auto else ""))
    return value


def option_names(backend: str) -> List[str]:
    """The keywords `backend` takes, in table order."""
    return [o.name for o in OPTIONS[backend]]


def _flag_of(name: str) -> Optional[str]:
    return next((o.flag for opts in OPTIONS.values() for o in opts if o.name == name and o.flag), None)


def refuse(label: str, backend: str, model: str, takers: List[str], hint: str = "") -> UserError:
    """The one refusal message: '<label> only applies to X and Y models; MODEL runs on Z: <hint>'."""
    titles = [TITLES[b] for b in takers] or ["no"]
    where = titles[0] if len(titles) == 1 else f"{', '.join(titles[:-1])} and {titles[-1]}"
    what = f"{model} runs on {TITLES.get(backend, backend)}" if model else f"this is a {TITLES.get(backend, backend)} model"
    tail = hint or f"its options are {', '.join(option_names(backend))}"
    return UserError(f"{label} only applies to {where} models; {what}: {tail}")


def check_options(backend: str, options: Mapping[str, Any], model: str = "") -> Dict[str, Any]:
    """The options `backend` takes, None values dropped (= the backend's default); UserError otherwise.

    open_model calls this, so a Python caller and every CLI command get the same refusal.
    """
    if backend not in OPTIONS:
        raise UserError(f"unknown backend '{backend}' for {model}; valid backends: {', '.join(OPTIONS)}")
    given = {k: v for k, v in options.items() if v is not None}
    known = option_names(backend)
    for key in given:
        if key not in known:
            takers = [b for b in OPTIONS if key in option_names(b)]
            flag = _flag_of(key)
            same = next((o.name for o in OPTIONS[backend] if flag and o.flag == flag), None)
            hint = f"pass {same}= instead (what {flag} sets there)" if same else HINTS.get(flag or "", "")
            raise refuse(f"option '{key}'", backend, model, takers, hint)
        if key in THREAD_OPTIONS:
            check_threads(given[key], f"option {key}")
    return given


# --- the shared CLI flags ----------------------------------------------------------------------
def _whole_number(text: str) -> int:
    """--threads: a whole number up to MAX_THREADS (below 1 is refused later, naming the flag)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"'{text}' is too many threads: give 1 to {MAX_THREADS} (this machine "
                                         f"has {os.cpu_count() or '?'} cores)")
    return value


def add_backend_arguments(parser: Any, *, cuda_graph: bool = False, size: bool = False,
                          zero_threads_is_all: bool = False,
                          backend_help: str = "force a backend: onnxruntime, tensorrt, pytorch (default: from the suffix)",
                          device_help: str = "onnxruntime: cpu (default) | cuda | tensorrt | auto; "
                                             "pytorch: auto | cpu | cuda[:N]; tensorrt: GPU index",
                          threads_help: str = "CPU threads for ONNX Runtime / PyTorch (default: one per core)",
                          cuda_graph_help: str = "TensorRT: replay a captured CUDA graph",
                          size_help: str = "pytorch only: run the checkpoint at this size "
                                           "(ONNX files and engines have their size built in)") -> None:
    """--backend, --device, --threads (and --cuda-graph, --size when asked) on `parser` (or a group).

    zero_threads_is_all: `--threads 0` means one per core (bench's flag, default 0) instead of
    being refused (inspect's).
    """
    parser.add_argument("--backend", help=backend_help)
    parser.add_argument("--device", default=None, help=device_help)
    parser.add_argument("--threads", type=_whole_number, default=0 if zero_threads_is_all else None,
                        help=threads_help)
    if cuda_graph:
        parser.add_argument("--cuda-graph", action="store_true", help=cuda_graph_help)
    if size:
        parser.add_argument("--size", metavar="HxW", help=size_help)
    parser.add_argument("--allow-other-gpu", action="store_true",
                        help="TensorRT: run an engine built on another GPU model or Jetson module of the same "
                             "compute capability (logged as a warning; it may be slow or fail)")
    parser.set_defaults(zero_threads_is_all=zero_threads_is_all)


def options_from_args(args: Any, backend: str, model: str = "") -> Dict[str, Any]:
    """--device/--threads/--cuda-graph/--size on `args` -> the keywords `backend` takes.

    A flag the backend lacks is refused with check_options' message; a missing attribute
    means the command has no such flag.
    """
    if backend not in OPTIONS:
        check_options(backend, {}, model)
    flags = {o.flag: o.name for o in OPTIONS[backend] if o.flag}
    options: Dict[str, Any] = {}

    def take(flag: str, value: Any) -> None:
        if flag not in flags:
            takers = [b for b in OPTIONS if any(o.flag == flag for o in OPTIONS[b])]
            raise refuse(flag, backend, model, takers, HINTS.get(flag, ""))
        options[flags[flag]] = value

    threads = getattr(args, "threads", None)
    if threads is not None and not (threads == 0 and getattr(args, "zero_threads_is_all", False)):
        if threads < 1:
            raise UserError(f"--threads {threads}: give at least 1")
        take("--threads", int(threads))
    device = getattr(args, "device", None)
    if device:
        if backend == "pytorch":
            try:
                device = torch_device(device)
            except ValueError as exc:
                raise UserError(f"--device {exc} for a PyTorch checkpoint") from None
        take("--device", device)
    if getattr(args, "cuda_graph", False):
        take("--cuda-graph", True)
    if getattr(args, "allow_other_gpu", False):
        take("--allow-other-gpu", True)
    size = getattr(args, "size", None)
    if size:  # refused before it is parsed when the backend has its size built in
        take("--size", parse_size(str(size)) if "--size" in flags else None)
    return options
