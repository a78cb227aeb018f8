#!/usr/bin/env python3
"""Build a TensorRT engine on the device: same as `ds2a build-engine` (see deploy/README.md).

    python deploy/build_engine.py model.int8.onnx --out model.engine --timing-cache trt.cache
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from ds2a.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["build-engine", *sys.argv[1:]]))
