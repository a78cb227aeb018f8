"""`ds2a serve MODEL`: host a model on Triton Inference Server for many stations (HTTP, gRPC, metrics).

  ds2a serve ds2a/assets/demo/ds2a_tiny_synth.int8.onnx
  ds2a serve model.engine --name line3 --max-batch 8 --max-queue-delay-us 2000 --instances 2   # batch-profile engine
  ds2a inspect --model triton://SERVER:8001/ds2a --source csi://0 --headless    # on each station
"""
from __future__ import annotations

import argparse
import os
import sys

from ..cli.types import int_range
from ..runtime import triton_protocol as protocol
from ..runtime.options import MAX_THREADS
from ..serve.server import ServeOptions, serve_forever


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file: .onnx (ONNX Runtime), .engine (TensorRT) or .pt (PyTorch)")
    p.add_argument("--name", default="ds2a", help="model name stations ask for (default ds2a)")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0: every interface)")
    p.add_argument("--http-port", type=int, default=protocol.HTTP_PORT, help="HTTP/REST port (default 8000)")
    p.add_argument("--grpc-port", type=int, default=protocol.GRPC_PORT, help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=int, default=protocol.METRICS_PORT,
                   help="Prometheus metrics port (default 8002; /metrics)")
    p.add_argument("--max-batch", type=int_range(1), default=None,
                   help="largest batch Triton forms from the stations' frames (default: the model's fixed batch, "
                        "8 for a dynamic-batch model)")
    p.add_argument("--max-queue-delay-us", type=int_range(0), default=2000,
                   help="how long Triton may hold a frame to batch it with others (default 2000 us)")
    p.add_argument("--instances", type=int_range(1), default=1,
                   help="model copies running batches in parallel (default 1)")
    p.add_argument("--threads", type=int_range(0, MAX_THREADS), default=0,
                   help="intra-op threads per instance for ONNX Runtime / PyTorch (default 0: the backend's own)")
    p.add_argument("--device", help="device for the runtime: cpu, cuda, tensorrt, auto (ONNX Runtime)")
    p.add_argument("--backend", help="force a runtime backend: onnxruntime, tensorrt, pytorch")
    p.add_argument("--verbose", action="store_true", help="show Triton's own log")


def run(args: argparse.Namespace) -> int:
    opts = ServeOptions(name=args.name, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                        metrics_port=args.metrics_port, max_batch=args.max_batch,
                        max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                        threads=args.threads, device=args.device, backend=args.backend, verbose=args.verbose)
    code = serve_forever(args.model, opts)
    if code:  # Triton died under us: PyTriton's leftover native threads abort a normal interpreter exit
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
