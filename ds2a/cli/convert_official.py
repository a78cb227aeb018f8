"""`ds2a convert-official IN.pth OUT.pt --arch r18|r34|r50`: official mmseg checkpoint -> ds2a checkpoint."""
from __future__ import annotations

import argparse

from ..cli.types import int_range
from ..outputs import check_outputs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="official DS2A-Former checkpoint (.pth written by mmsegmentation)")
    parser.add_argument("output", help="our checkpoint to write (.pt)")
    parser.add_argument("--arch", required=True, choices=["r18", "r34", "r50"], help="backbone of the official model")
    parser.add_argument("--num-classes", type=int_range(2, 255), default=None,
                        help="expected class count (default: read from the checkpoint; 4 for M-BSD)")
    parser.add_argument("--classes", default=None,
                        help="comma-separated class names (default: background,damage,smudge,dust for 4 classes)")
    parser.add_argument("--input-size", default=None, help="deployment size HxW stored in the metadata, e.g. 512x512")
    parser.add_argument("--half", action="store_true", help="store weights as fp16 (half the file size)")
    parser.add_argument("--trust-checkpoint", action="store_true",
                        help="allow full unpickling of INPUT when the safe (weights-only) load refuses it. RISK: a "
                             "crafted .pth runs arbitrary code on this machine when fully unpickled; use only for "
                             "files from a source you trust")


def run(args: argparse.Namespace) -> int:
    from ..meta import parse_size
    from ..model.convert import convert_official_checkpoint

    check_outputs([("OUTPUT", args.output)], [("INPUT", args.input)])
    overrides = {}
    if args.input_size:
        overrides["input_size"] = parse_size(args.input_size)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    report = convert_official_checkpoint(args.input, args.output, args.arch, num_classes=args.num_classes,
                                         classes=classes, half=args.half, trust_checkpoint=args.trust_checkpoint,
                                         **overrides)
    for line in report.lines():
        print(line)
    print(f"wrote {args.output}")
    return 0
