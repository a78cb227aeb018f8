"""`ds2a export-triton MODEL --repo DIR`: a model repository for the stock Triton container.

  ds2a export-triton model.onnx --repo triton_repo                      # onnxruntime_onnx
  ds2a export-triton model.engine --repo triton_repo --name line3 --max-batch 16 --instances 2
  docker run --gpus all --rm -p 8000-8002:8000-8002 -v $PWD/triton_repo:/models \\
      nvcr.io/nvidia/tritonserver:24.10-py3 tritonserver --model-repository=/models
"""
from __future__ import annotations

import argparse

from ..cli.types import int_range
from ..serve.repository import KINDS, export_repository


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="MODEL.onnx (from `ds2a export`/`calibrate`) or MODEL.engine (with its .json)")
    p.add_argument("--repo", required=True, help="model repository folder (created; other models in it stay)")
    p.add_argument("--name", default="ds2a", help="model name stations ask for (default ds2a)")
    p.add_argument("--version", type=int_range(1), default=1, help="version folder (default 1)")
    p.add_argument("--max-batch", type=int_range(1), default=8,
                   help="max_batch_size for a dynamic-batch model (default 8; a fixed batch stays fixed)")
    p.add_argument("--max-queue-delay-us", type=int_range(0), default=2000,
                   help="dynamic batching: how long a request may wait for others (default 2000 us)")
    p.add_argument("--instances", type=int_range(1), default=1, help="instance_group count (default 1)")
    p.add_argument("--kind", choices=sorted(KINDS), default="auto", help="instance kind (default auto)")


def run(args: argparse.Namespace) -> int:
    config = export_repository(args.model, args.repo, name=args.name, version=args.version,
                               max_batch=args.max_batch, max_queue_delay_us=args.max_queue_delay_us,
                               instances=args.instances, kind=args.kind)
    print(f"wrote {config} and its version {args.version} model")
    print(f"  serve: tritonserver --model-repository={args.repo}   (or the Triton container, deploy/README.md)")
    print(f"  stations: --model triton://SERVER:8001/{args.name}")
    return 0
