"""`ds2a synth`: write a synthetic battery-defect dataset in the M-BSD layout and report class balance."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ..cli.types import int_range
from ..data.synth import SynthOptions, synth_dataset
from ..meta import MBSD_CLASSES, parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="output folder (gets img_dir/{train,val,test} and ann_dir/{train,val,test})")
    parser.add_argument("--train", type=int_range(0, 10**7), default=400, help="training images (default 400)")
    parser.add_argument("--val", type=int_range(0, 10**7), default=50,
                        help="validation images for choosing checkpoints (default 50; 0 = none)")
    parser.add_argument("--test", type=int_range(0, 10**7), default=100, help="test images (default 100)")
    parser.add_argument("--size", default="256x256", help="image size HxW (default 256x256)")
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0, help="same seed, same bytes (default 0)")
    parser.add_argument("--force", action="store_true", help="replace an existing dataset in OUT")


def run(args: argparse.Namespace) -> int:
    h, w = parse_size(args.size)
    t0 = time.perf_counter()
    counts = synth_dataset(args.out, SynthOptions(train=args.train, val=args.val, test=args.test, size=(h, w),
                                                  seed=args.seed, force=args.force))
    elapsed = time.perf_counter() - t0
    print(f"wrote {args.train} train + {args.val} val + {args.test} test images ({h}x{w}, seed {args.seed}) "
          f"to {Path(args.out)} in {elapsed:.1f} s")
    print(f"{'class':<12}" + "".join(f"{s:>10}" for s in counts))
    fractions = {s: class_fractions(c) for s, c in counts.items()}
    for k, name in enumerate(MBSD_CLASSES):
        print(f"{name:<12}" + "".join(f"{100 * float(fractions[s][k]):>9.2f}%" for s in counts))
    return 0


def class_fractions(counts: np.ndarray) -> np.ndarray:
    """Pixel counts per class -> fractions summing to 1."""
    return counts / max(int(counts.sum()), 1)
