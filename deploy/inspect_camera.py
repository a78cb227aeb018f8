#!/usr/bin/env python3
"""Realtime inspection on the device: same as `ds2a inspect` (run by deploy/ds2a-inspect.service).

    python3 deploy/inspect_camera.py --model model.engine --source csi://0 --rules deploy/rules.example.yaml \
        --db /var/lib/ds2a/inspect.sqlite --save-fail /var/lib/ds2a/fail --headless
"""
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from ds2a.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["inspect", *sys.argv[1:]]))
