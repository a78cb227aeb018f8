#!/usr/bin/env python3
"""A random-weight checkpoint of any registered model at any input size, for memory and time rows
(benchmarks/results/memory.md): they do not depend on the weights' values.

    python benchmarks/random_checkpoint.py ds2a_r50 512 runs/mem/ds2a_r50_512.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent  # this checkout's ds2a first; no script here may shadow a module
sys.path[:] = [str(_HERE.parent)] + [p for p in sys.path if Path(p or ".").resolve() != _HERE]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="registered name: ds2a_tiny, ds2a_r18, ds2a_r34, ds2a_r50")
    ap.add_argument("size", help="HxW or one number (square)")
    ap.add_argument("out", help="checkpoint file to write (.pt)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from ds2a.errors import UserError
    from ds2a.meta import parse_size
    from ds2a.model import build_model, save_checkpoint

    torch.manual_seed(args.seed)
    try:
        model = build_model(args.model, input_size=parse_size(args.size))
    except (UserError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(args.out, model)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
