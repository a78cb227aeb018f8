"""Station backend: a model served by Triton Inference Server, reached over gRPC or HTTP.

`open_model("triton://HOST:8001/NAME")` (gRPC) or `"triton+http://HOST:8000/NAME"` gives a
`Segmenter` like any local file, built on `tritonclient` only: no torch, no ONNX Runtime, no
model file on the station (classes, palette and size come from the model-config parameters that
`ds2a serve` and `ds2a export-triton` write; ds2a/runtime/triton_protocol.py). Query options:
`?timeout=S` (per request, default 10) and `&version=N`.

A server that goes away mid-run does not end the run: calls raise `ModelUnavailable` at once
while it is away (the inspection loop records those frames as dropped, not inspected) and the
backend tries again after a backoff that doubles up to `max_retry_s`, on a fresh connection.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, urlsplit

import numpy as np

from ..errors import UserError
from ..meta import ModelMeta
from . import ModelUnavailable
from . import triton_protocol as protocol
from .base import Frames, InferResult, Segmenter, fit_batch, make_results
from .io_layout import check_output_spec

TRITON_TYPES = {"TYPE_UINT8": "uint8", "TYPE_FP32": "float32", "TYPE_FP16": "float16", "TYPE_INT64": "int64",
                "TYPE_INT32": "int32", "TYPE_BOOL": "bool", "TYPE_STRING": "bytes"}
SERVE = "serve a model with `ds2a serve MODEL.onnx` (or a repository from `ds2a export-triton`)"


def parse_url(url: str) -> Tuple[str, str, int, str, Dict[str, str]]:
    """'triton://host:8001/name?timeout=5' -> (protocol 'grpc'|'http', host, port, name, options)."""
    parts = urlsplit(url)
    kind = protocol.SCHEMES.get(parts.scheme.lower())
    example = "triton://HOST:8001/NAME (gRPC) or triton+http://HOST:8000/NAME"
    if kind is None:
        raise UserError(f"{url}: unknown scheme '{parts.scheme}'; use {example}")
    try:
        port = parts.port or (protocol.GRPC_PORT if kind == "grpc" else protocol.HTTP_PORT)
    except ValueError:
        raise UserError(f"{url}: the port is not a number in 1-65535; use {example}") from None
    name = parts.path.strip("/")
    if not parts.hostname or not name or "/" in name:
        raise UserError(f"{url}: needs a host and one model name; use {example}")
    options = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = sorted(set(options) - {"timeout", "version"})
    if unknown:
        raise UserError(f"{url}: unknown option(s) {', '.join(unknown)}; valid: timeout=SECONDS, version=N")
    return kind, parts.hostname, port, name, options


def _dims(values: Sequence[Any]) -> List[int]:
    return [int(v) for v in values]  # gRPC's JSON gives int64 dims as strings


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]


def _timed_out(exc: BaseException) -> bool:
    """A request that ran past the timeout: the server is overloaded or the network slow, not the input wrong."""
    status = getattr(exc, "status", None)
    text = f"{status() if callable(status) else ''} {exc}".lower()
    return isinstance(exc, (TimeoutError, socket.timeout)) or "deadline_exceeded" in text or "timed out" in text


class TritonSegmenter(Segmenter):
    """A Segmenter whose model runs on a Triton server (options: timeout_s, retry_s, max_retry_s, return_logits)."""

    backend = "triton"

    def __init__(self, url: str, *, timeout_s: Optional[float] = None, return_logits: bool = False,
                 retry_s: float = 0.5, max_retry_s: float = 5.0) -> None:
        self.path = self.url = url
        self.kind, host, port, self.name, opts = parse_url(url)
        self.address = f"{host}:{port}"
        try:
            self.timeout_s = float(opts.get("timeout", timeout_s if timeout_s is not None else 10.0))
        except ValueError:
            raise UserError(f"{url}: timeout={opts['timeout']} is not a number of seconds") from None
        if not self.timeout_s > 0:
            raise UserError(f"{url}: the timeout must be more than 0 seconds")
        self.version = opts.get("version", "")
        self.retry_s, self.max_retry_s = float(retry_s), float(max_retry_s)
        try:
            if self.kind == "grpc":
                import tritonclient.grpc as client_module
            else:
                import tritonclient.http as client_module
            from tritonclient.utils import InferenceServerException
        except ImportError as exc:
            raise UserError(f"{url} needs tritonclient: pip install 'tritonclient[grpc,http]' ({exc})") from None
        self._mod, self._server_error = client_module, InferenceServerException
        self._client: Any = None
        self._local = threading.local()
        self._generation = 0
        self._delay = self.retry_s
        self._away_since: Optional[float] = None
        self._retry_at = 0.0
        self.away_frames = 0  # frames refused while the server was away
        self.reconnects = 0
        config = self._first_contact()
        meta, hw = self._read_config(config)
        super().__init__(meta)
        self.meta.input_size = hw  # the served shape wins, as with a local graph
        self.return_logits = bool(return_logits) and self._has_logits

    # --- connection ------------------------------------------------------------------------
    def _connect(self) -> None:
        """A fresh connection (gRPC: one channel for all threads; HTTP: one gevent client per thread, lazily)."""
        self.close()
        self._generation += 1
        if self.kind == "grpc":
            self._client = self._mod.InferenceServerClient(url=self.address)

    def _current(self) -> Any:
        if self.kind == "grpc":
            return self._client
        local = self._local
        if getattr(local, "generation", None) != self._generation:  # gevent clients cannot cross threads
            local.client = self._mod.InferenceServerClient(url=self.address, connection_timeout=self.timeout_s,
                                                           network_timeout=self.timeout_s)
            local.generation = self._generation
        return local.client

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        return getattr(self._current(), method)(*args, **kwargs)

    def _first_contact(self) -> Dict[str, Any]:
        """Reach the server and the model; a clear refusal naming the URL when either is missing."""
        try:
            self._connect()
            live = self._call("is_server_live")
        except Exception as exc:  # noqa: BLE001 - gRPC and HTTP clients raise different types
            raise UserError(f"cannot reach the Triton server at {self.url} ({_reason(exc)}); start one there "
                            f"(`ds2a serve MODEL`) or check host, port, protocol (triton:// is gRPC, "
                            f"triton+http:// is HTTP) and the firewall") from None
        if not live:
            raise UserError(f"the Triton server at {self.url} is not live; check its log")
        try:
            ready = self._call("is_model_ready", self.name, self.version)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{self.url}: cannot ask for model '{self.name}' ({_reason(exc)})") from None
        if not ready:
            names = self._model_names()  # a `ds2a serve` (PyTriton) server does not list them
            there = f"models there: {', '.join(names)}" if names else \
                "check the name given to `ds2a serve --name` (default ds2a) or the repository folder name"
            raise UserError(f"{self.url}: the server has no ready model '{self.name}'"
                            f"{' version ' + self.version if self.version else ''}; {there}")
        try:
            if self.kind == "grpc":
                return dict(self._call("get_model_config", self.name, self.version, as_json=True).get("config", {}))
            return dict(self._call("get_model_config", self.name, self.version))
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"{self.url}: cannot read the config of model '{self.name}' ({_reason(exc)})") from None

    def _model_names(self) -> List[str]:
        try:
            if self.kind == "grpc":
                index = self._call("get_model_repository_index", as_json=True).get("models", [])
            else:
                index = self._call("get_model_repository_index")
            return sorted({str(m.get("name")) for m in index if m.get("state", "READY") == "READY"})
        except Exception:  # noqa: BLE001 - only for the message
            return []

    # --- model convention --------------------------------------------------------------------
    def _read_config(self, config: Dict[str, Any]) -> Tuple[ModelMeta, Tuple[int, int]]:
        """ModelMeta from the parameters; refuse a model that is not ds2a or breaks the I/O convention."""
        where = f"{self.url}: model '{self.name}'"
        params = config.get("parameters") or {}
        raw = (params.get(protocol.META_PARAM) or {}).get("string_value")
        if not raw:
            raise UserError(f"{where} is not a ds2a model (its config has no '{protocol.META_PARAM}' parameter "
                            f"with the classes and palette); {SERVE}")
        try:
            meta = ModelMeta.from_json(raw)
        except (ValueError, TypeError) as exc:
            raise UserError(f"{where} has an unreadable '{protocol.META_PARAM}' parameter ({exc}); {SERVE}") from None
        self.server_info = {k: (params.get(k) or {}).get("string_value", "") for k in
                            (protocol.SOURCE_PARAM, protocol.SHA_PARAM, protocol.PRECISION_PARAM)}
        self._max_batch = int(config.get("max_batch_size", 0) or 0)
        inputs, outputs = config.get("input", []), {o.get("name"): o for o in config.get("output", [])}
        expected = (f"one input '{protocol.INPUT}' TYPE_UINT8 [H,W,3] (BGR frames) and an output "
                    f"'{protocol.CLASS_MAP}' TYPE_UINT8 [H,W]")
        found = ", ".join(f"{i.get('name')} {i.get('data_type')} {_dims(i.get('dims', []))}" for i in inputs)
        dims = _dims(inputs[0].get("dims", [])) if len(inputs) == 1 else []
        if self._max_batch == 0 and len(dims) == 4:  # no Triton batching: the batch is in the dims
            self._fixed_batch: Optional[int] = dims[0] if dims[0] > 0 else None
            dims = dims[1:]
        else:
            self._fixed_batch = None
        if (len(inputs) != 1 or inputs[0].get("name") != protocol.INPUT or inputs[0].get("data_type") != "TYPE_UINT8"
                or len(dims) != 3 or dims[2] != 3 or min(dims[:2]) <= 0):
            raise UserError(f"{where} has inputs [{found}]; ds2a stations send {expected}; {SERVE}")
        hw = (dims[0], dims[1])
        batch_dim: List[Any] = [-1] if self._max_batch or self._fixed_batch is None else [self._fixed_batch]
        specs: Dict[str, Tuple[str, List[Any]]] = {}
        for name in (protocol.CLASS_MAP, protocol.LOGITS):
            if name in outputs:
                o = outputs[name]
                out_dims = _dims(o.get("dims", []))
                shape = out_dims if self._max_batch == 0 else batch_dim + out_dims
                specs[name] = (TRITON_TYPES.get(str(o.get("data_type")), str(o.get("data_type"))), shape)
        if protocol.CLASS_MAP not in specs:
            got = ", ".join(f"{n} {o.get('data_type')}" for n, o in outputs.items())
            raise UserError(f"{where} has outputs [{got}]; ds2a stations need {expected}; {SERVE}")
        check_output_spec(self.url, meta, hw, specs.get(protocol.CLASS_MAP), specs.get(protocol.LOGITS))
        self._has_logits = protocol.LOGITS in specs
        return meta, hw

    @property
    def batch_size(self) -> Optional[int]:
        return self._fixed_batch

    # --- inference ---------------------------------------------------------------------------
    def infer_batch(self, frames: Frames) -> List[InferResult]:
        batch = self.prepare_batch(frames)
        now = time.monotonic()
        if self._away_since is not None and now < self._retry_at:
            self.away_frames += len(batch)
            raise ModelUnavailable(f"the model server {self.url} is unavailable (for {now - self._away_since:.1f} s); "
                                   f"retrying in {self._retry_at - now:.1f} s")
        step = self._max_batch or None
        chunks = fit_batch(batch, self._fixed_batch) if self._fixed_batch else \
            [(batch[i:i + step], len(batch[i:i + step])) for i in range(0, len(batch), step)] if step else \
            [(batch, len(batch))]
        results: List[InferResult] = []
        for chunk, count in chunks:
            outs = self._request(chunk, len(batch))
            results.extend(make_results(outs.get(protocol.CLASS_MAP), outs.get(protocol.LOGITS), count,
                                        keep_logits=self.return_logits))
        return results

    def _request(self, chunk: np.ndarray, frames: int) -> Dict[str, np.ndarray]:
        if self._away_since is not None:
            self._connect()  # a fresh channel: a broken one waits out its own (long) backoff
        t0 = time.perf_counter()
        inp = self._mod.InferInput(protocol.INPUT, list(chunk.shape), "UINT8")
        inp.set_data_from_numpy(np.ascontiguousarray(chunk))
        names = [protocol.CLASS_MAP] + ([protocol.LOGITS] if self.return_logits else [])
        outputs = [self._mod.InferRequestedOutput(n) for n in names]
        try:
            result = self._call("infer", self.name, [inp], model_version=self.version, outputs=outputs)
        except Exception as exc:  # noqa: BLE001 - the server or the network failed
            self._gone(exc, frames)
        if self._away_since is not None:
            self._away_since, self._delay = None, self.retry_s
            self.reconnects += 1
        self.last_timings = {"request_ms": (time.perf_counter() - t0) * 1e3}
        try:
            outs = {n: result.as_numpy(n) for n in names}
        except ValueError as exc:  # e.g. an empty output where the shape says 256x256
            outs = {}
            reason = _reason(exc)
        else:
            missing = [n for n in names if outs[n] is None or outs[n].shape[:1] != chunk.shape[:1]]
            reason = f"{', '.join(missing)} missing or of another batch" if missing else ""
        if reason:
            raise UserError(f"{self.url}: the server's reply is unusable ({reason}); check the server's log "
                            "(a `ds2a serve` with the wrong NumPy refuses to start; restart it)")
        return outs

    def _gone(self, exc: BaseException, frames: int) -> None:
        """A failed request: the model is away (back off, ModelUnavailable) or it refused the input (UserError)."""
        if self._away_since is None and not _timed_out(exc) and self._model_ready():
            raise UserError(f"{self.url}: the server refused the request ({_reason(exc)})") from None
        now = time.monotonic()
        if self._away_since is None:
            self._away_since = now
        else:
            self._delay = min(self.max_retry_s, self._delay * 2)
        self._retry_at = now + self._delay
        self.away_frames += frames
        raise ModelUnavailable(f"the model server {self.url} is unavailable ({_reason(exc)}); "
                               f"retrying in {self._delay:.1f} s") from None

    def _model_ready(self) -> bool:
        try:
            return bool(self._call("is_model_ready", self.name, self.version))
        except Exception:  # noqa: BLE001
            return False

    def close(self) -> None:
        client, self._client = getattr(self, "_client", None), None
        local = getattr(self, "_local", None)
        if client is None and local is not None and getattr(local, "client", None) is not None:
            client, local.client, local.generation = local.client, None, None  # this thread's HTTP client
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
