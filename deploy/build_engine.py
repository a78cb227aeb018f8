#!/usr/bin/env python3
"""Build a TensorRT engine on the device: same as `ds2a build-engine` (see deploy/README.md).

    python deploy/build_engine.py model.int8.onnx --out model.engine --timing-cache trt.cache
"""
import os
import sys

# This folder is sys.path[0] when run as a script; drop it so deploy/*.py never shadow stdlib modules.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]

from ds2a.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["build-engine", *sys.argv[1:]]))
