"""Host one ds2a model on a real Triton Inference Server through NVIDIA's PyTriton.

PyTriton runs the bundled `tritonserver` binary (HTTP, gRPC, Prometheus metrics, dynamic
batching) and hands each batch Triton forms to a Python function in this process; that function
runs our own runtime (`open_model`: ONNX Runtime, TensorRT or PyTorch), one loaded copy per
Triton model instance. The model's metadata rides along as model-config parameters
(ds2a/runtime/triton_protocol.py), so a station needs no model file.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import socket
import sysconfig
import threading
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..errors import UserError
from ..meta import file_sha256, guess_precision
from ..options_check import check_fields
from ..runtime import Segmenter
from ..runtime import triton_protocol as protocol

DYNAMIC_MAX_BATCH = 8
logger = logging.getLogger(__name__)
MISSING = "ds2a serve needs NVIDIA PyTriton: pip install 'ds2a-edge[serve]' (x86_64 or aarch64 Linux, glibc 2.35+)"


@dataclass
class ServeOptions:
    """What `ds2a serve` was asked for (the CLI options, one field each)."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    name: str = "ds2a"
    host: str = "0.0.0.0"
    http_port: int = protocol.HTTP_PORT
    grpc_port: int = protocol.GRPC_PORT
    metrics_port: int = protocol.METRICS_PORT
    max_batch: Optional[int] = None  # None: the model's fixed batch, or 8 when its batch is dynamic
    max_queue_delay_us: int = 2000
    instances: int = 1
    threads: int = 0  # intra-op threads per instance (ONNX Runtime / PyTorch); 0 = backend default
    device: Optional[str] = None
    backend: Optional[str] = None
    verbose: bool = False


def libpython_first() -> None:
    """Put this interpreter's own libpython first on LD_LIBRARY_PATH for the processes PyTriton spawns.

    Triton's Python-backend stub links libpython dynamically; with a pyenv (or any non-system)
    interpreter it would otherwise load the system's libpython of another patch release and the
    model fails to initialise. PyTriton copies os.environ when it starts the server, so setting it
    here, before the start, is enough.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if not libdir or not os.path.isdir(libdir):
        return
    parts = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p and p != libdir]
    os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + parts)


def check_ports(host: str, ports: Dict[str, int]) -> None:
    """Refuse a port that is out of range, given twice, or already in use, before anything starts."""
    seen: Dict[int, str] = {}
    for option, port in ports.items():
        if not 1 <= port <= 65535:
            raise UserError(f"{option} {port} is not a TCP port; give 1-65535")
        if port in seen:
            raise UserError(f"{option} {port} is also {seen[port]}; give each endpoint its own port")
        seen[port] = option
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # like Triton: TIME_WAIT is no conflict
            try:
                s.bind((host, port))
            except OSError as exc:
                raise UserError(f"{option} {port}: cannot listen on {host}:{port} ({exc.strerror}); another "
                                f"server uses it: stop it or pick a free port with {option}") from None


def reap_leftovers(workspace: str) -> None:
    """What a crashed tritonserver leaves: its Python-backend stubs (orphaned, they keep running), our
    shared-memory segments and PyTriton's workspace (~20 MB). A clean stop leaves nothing to find."""
    if workspace and os.path.isdir("/proc"):
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if workspace.encode() in fh.read() and int(pid) != os.getpid():
                        os.kill(int(pid), signal.SIGKILL)  # a process started from this server's own workspace
            except (OSError, ValueError):
                continue
        shutil.rmtree(workspace, ignore_errors=True)
    for segment in glob.glob(f"/dev/shm/pytrtion{os.getpid()}-*"):  # PyTriton names them after our pid
        try:
            os.unlink(segment)
        except OSError:
            pass


def load_instances(path: str, opts: ServeOptions) -> List[Segmenter]:
    """One loaded, warmed-up and output-checked model per Triton instance (a model that fails is refused)."""
    from ..runtime import backend_for, open_model
    from ..runtime.options import options_from_args

    backend = backend_for(path, opts.backend)
    if backend == "triton":
        raise UserError(f"{path} is a Triton URL; `ds2a serve` hosts a model file (.onnx, .engine, .pt)")
    flags = SimpleNamespace(threads=opts.threads or None, device=opts.device)  # 0 threads: the backend's default
    options = options_from_args(flags, backend, path)  # ds2a/runtime/options.py: what each backend takes
    models: List[Segmenter] = []
    try:
        for _ in range(opts.instances):
            model = open_model(path, backend=backend, **options)
            models.append(model)
            model.warmup(1)
    except BaseException:
        for m in models:
            m.close()
        raise
    return models


def model_parameters(path: str, model: Segmenter) -> Dict[str, str]:
    """The model-config parameters a station reads: metadata JSON, source file, its sha256, precision."""

    return {protocol.META_PARAM: model.meta.to_json(), protocol.SOURCE_PARAM: os.path.basename(path),
            protocol.SHA_PARAM: file_sha256(path), protocol.PRECISION_PARAM: guess_precision(path, model.meta),
            "ds2a_backend": model.backend}


def infer_function(model: Segmenter) -> Callable[..., Dict[str, np.ndarray]]:
    """The batch function Triton calls for one instance: uint8 (N,H,W,3) frames -> uint8 (N,H,W) class maps."""
    from pytriton.decorators import batch

    @batch
    def infer(**inputs: np.ndarray) -> Dict[str, np.ndarray]:
        results = model.infer_batch(inputs[protocol.INPUT])
        return {protocol.CLASS_MAP: np.stack([r.class_map for r in results])}

    return infer


def check_numpy() -> None:
    """PyTriton's Python-backend stub is built against NumPy 1: under NumPy 2 every output it returns is empty.

    PyTriton says so in its requirements (numpy<2); refuse to serve empty class maps."""
    try:
        from importlib.metadata import requires

        wants_numpy1 = any(r.replace(" ", "").startswith("numpy") and "<2" in r for r in requires("nvidia-pytriton") or [])
    except Exception:  # noqa: BLE001 - no metadata: nothing to check against
        return
    if wants_numpy1 and int(np.__version__.split(".")[0]) >= 2:
        raise UserError(f"PyTriton needs NumPy 1 (its Python-backend stub returns empty outputs under NumPy "
                        f"{np.__version__}); install the serve extra, which resolves it: pip install -e '.[serve]' "
                        "(or pip install 'numpy<2')")


class Server:
    """A running Triton hosting one ds2a model; `start()` returns once it is ready, `stop()` ends it."""

    def __init__(self, path: str, opts: ServeOptions) -> None:
        try:
            import pytriton  # noqa: F401
        except ImportError as exc:
            raise UserError(f"{MISSING} ({exc})") from None
        if opts.max_batch is not None and opts.max_batch < 1:
            raise UserError(f"--max-batch {opts.max_batch}: give at least 1")
        if opts.instances < 1:
            raise UserError(f"--instances {opts.instances}: give at least 1")
        if opts.max_queue_delay_us < 0:
            raise UserError(f"--max-queue-delay-us {opts.max_queue_delay_us}: give 0 or more")
        if not opts.name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise UserError(f"--name '{opts.name}': use letters, digits, '.', '_' and '-' only")
        self.path, self.opts = str(path), opts
        check_ports(opts.host, {"--http-port": opts.http_port, "--grpc-port": opts.grpc_port,
                                "--metrics-port": opts.metrics_port})
        self.models = load_instances(self.path, opts)
        # a fixed-batch model gains nothing from Triton's batches (they run frame by frame on one instance,
        # leaving the others idle: benchmarks/results/triton.md); then each request goes to a free instance
        self.max_batch = opts.max_batch or self.models[0].batch_size or DYNAMIC_MAX_BATCH
        self.parameters = model_parameters(self.path, self.models[0])
        self._triton: Any = None

    @property
    def meta(self) -> Any:
        return self.models[0].meta

    def start(self) -> None:
        from pytriton.exceptions import PyTritonError
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        o = self.opts
        check_numpy()
        libpython_first()
        if not o.verbose:
            logging.getLogger("pytriton").setLevel(logging.ERROR)
        config = TritonConfig(http_address=o.host, http_port=o.http_port, grpc_address=o.host,
                              grpc_port=o.grpc_port, metrics_address=o.host, metrics_port=o.metrics_port,
                              allow_cpu_metrics=True, exit_timeout_secs=5, log_verbose=1 if o.verbose else 0)
        h, w = self.models[0].input_size
        try:  # statistics (per-batch-size counts) are read-only: open them to operators; the rest stays protected
            from pytriton.triton import DEFAULT_PROTECTED_ENDPOINTS, TritonSecurityConfig

            security = TritonSecurityConfig(restricted_endpoints=[
                e for e in DEFAULT_PROTECTED_ENDPOINTS if e != "statistics"])
            triton = Triton(config=config, security_config=security)
        except (ImportError, TypeError):  # an older PyTriton without the security config
            triton = Triton(config=config)
        self._triton = triton
        try:  # PyTriton echoes Triton's whole log to stdout; it has no public switch for that
            if triton._triton_server is None:
                triton._initialize_server()
            triton._triton_server._verbose = o.verbose
        except AttributeError:
            pass
        try:
            triton.bind(
                model_name=o.name, infer_func=[infer_function(m) for m in self.models],
                inputs=[Tensor(name=protocol.INPUT, dtype=np.uint8, shape=(h, w, 3))],
                outputs=[Tensor(name=protocol.CLASS_MAP, dtype=np.uint8, shape=(h, w))],
                config=ModelConfig(max_batch_size=self.max_batch,
                                   batcher=DynamicBatcher(max_queue_delay_microseconds=o.max_queue_delay_us)),
                strict=True)
            try:  # PyTriton has no public hook for model-config parameters (setup.cfg pins its releases)
                for model in triton._model_manager.models:
                    model._get_triton_model_config().backend_parameters.update(self.parameters)
            except AttributeError as exc:
                self.stop()
                raise UserError(f"this PyTriton cannot carry the model's metadata ({exc}); install the release "
                                "setup.cfg's [serve] extra names: pip install -e '.[serve]'") from None
            triton.run()
        except PyTritonError as exc:
            self.stop()
            raise UserError(f"Triton did not start for {self.path}: {exc}; rerun with --verbose for the server log") from None

    def alive(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def stop(self) -> None:
        if self._triton is not None:
            triton, self._triton = self._triton, None
            workspace = str(getattr(getattr(triton, "_workspace", None), "path", "") or "")
            with warnings.catch_warnings():  # after a crash PyTriton warns about files the server took along
                warnings.simplefilter("ignore")
                triton.stop()
            reap_leftovers(workspace)
        for m in self.models:
            m.close()
        self.models = []

    def wait(self, stop: threading.Event, poll_s: float = 1.0) -> bool:
        """Serve until `stop` is set (True) or the server dies (False)."""
        while not stop.wait(poll_s):
            if not self.alive():
                return False
        return True


def serve_forever(path: str, opts: ServeOptions) -> int:
    """`ds2a serve`: start, say where, serve until Ctrl-C / SIGTERM, stop cleanly (exit 0; 1 if it died)."""
    stop = threading.Event()
    server = Server(path, opts)  # refusals (ports, options, a model that does not load) come before any start
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        h, w = server.models[0].input_size
        host = "HOST" if opts.host in ("0.0.0.0", "::") else opts.host
        logger.info(f"serving {path} as '{opts.name}' ({server.meta.arch} {h}x{w} "
                    f"{server.parameters[protocol.PRECISION_PARAM]}, {server.models[0].backend} x{opts.instances}, "
                    f"max batch {server.max_batch}, queue delay {opts.max_queue_delay_us} us)")
        logger.info(f"  stations: --model triton://{host}:{opts.grpc_port}/{opts.name}   "
                    f"or triton+http://{host}:{opts.http_port}/{opts.name}")
        logger.info(f"  health:   http://{host}:{opts.http_port}/v2/health/ready   "
                    f"metrics: http://{host}:{opts.metrics_port}/metrics")
        logger.info("ready (Ctrl-C or SIGTERM stops it)")
        ok = server.wait(stop)
        if not ok:
            logger.error("error: the Triton server stopped unexpectedly; rerun with --verbose for its log")
        return 0 if ok else 1
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        logger.info("stopped")
