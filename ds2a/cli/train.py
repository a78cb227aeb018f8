"""`ds2a train`: train DS2A-Former on a dataset folder; single process, or `torchrun` for DDP.

examples:
  ds2a train --model ds2a_tiny --data data/synth --out runs/tiny --iters 2000 --batch-size 8
  ds2a train --model ds2a_tiny --data data/synth --out runs/tiny --resume
  ds2a train --model ds2a_tiny --data data/mine --out runs/ft --init ds2a/assets/demo/ds2a_tiny_synth.pt
  ds2a train --model ds2a_tiny --data data/synth --extra-data review/2026-12-07 --extra-repeat 4 --out runs/ft \
      --init ds2a/assets/demo/ds2a_tiny_synth.pt
  torchrun --nproc_per_node 2 -m ds2a train --model ds2a_r18 --data data/mbsd --out runs/r18

On a small CPU machine use one single-thread process per core (global batch = 2 x --batch-size):
  OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node 2 -m ds2a train ... --threads 1 --batch-size 2
On the project's 2-core machine this gave 2.1 samples/s against 0.36 for one process with
--threads 2 while other jobs ran, and the same speed (5.0-5.8 samples/s) when idle
(ds2a/assets/demo/MODEL_CARD.md). Best.pt is chosen on the val split; score the test
split once at the end with `ds2a eval`.
"""
from __future__ import annotations

import argparse
import json
import os

from ..cli.types import finite_float, int_range, torch_device
from ..errors import UserError
from ..meta import parse_size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="registered name: ds2a_tiny, ds2a_r18, ds2a_r34, ds2a_r50")
    parser.add_argument("--data", required=True, help="dataset folder (M-BSD layout, Crack-500, or images/+masks/)")
    parser.add_argument("--out", required=True, help="run folder: last.pt, best.pt, train.csv, eval.csv, log.jsonl")
    parser.add_argument("--iters", type=int_range(1), default=2000, help="total iterations (the poly schedule ends here)")
    parser.add_argument("--batch-size", type=int_range(1), default=8, help="images per step per process")
    parser.add_argument("--crop", default="256x256",
                        help="training crop HxW, multiples of 32; also the model's input size")
    parser.add_argument("--input-size", help="HxW the saved model runs at and is evaluated at (default: --crop)")
    parser.add_argument("--lr", type=finite_float(0, 10, lo_open=True), default=1e-4, help="AdamW learning rate (backbone gets x0.1)")
    parser.add_argument("--backbone-lr-mult", type=finite_float(0, 100), default=0.1,
                        help="backbone lr multiplier (official 0.1 for ImageNet weights; 1.0 from scratch)")
    parser.add_argument("--weight-decay", type=finite_float(0, 10), default=0.05)
    parser.add_argument("--grad-clip", type=finite_float(0), default=0.01, help="max gradient L2 norm (official 0.01; 0 = off)")
    parser.add_argument("--warmup-iters", type=int_range(0), default=0, help="linear lr warm-up before the poly decay")
    parser.add_argument("--eval-every", type=int_range(0), default=500,
                        help="evaluate on --eval-split every N iters and keep the best as best.pt (0 = never)")
    parser.add_argument("--eval-split", default="val",
                        help="split that chooses best.pt (default val; score test once afterwards with ds2a eval)")
    parser.add_argument("--ckpt-every", type=int_range(1), default=500, help="write last.pt every N iters")
    parser.add_argument("--log-every", type=int_range(1), default=10)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    parser.add_argument("--seed", type=int_range(0, 2**32 - 1), default=0)
    parser.add_argument("--workers", type=int_range(0, 256), default=2, help="DataLoader worker processes")
    parser.add_argument("--threads", type=int_range(0, 4096), default=0, help="torch CPU threads per process (0 = default)")
    parser.add_argument("--backbone-weights", help="torchvision ResNet .pth to start the backbone from")
    parser.add_argument("--backbone-norm", choices=("auto", "frozen_bn", "bn", "gn"), default="auto",
                        help="backbone normalisation; auto = frozen BN with --backbone-weights (official), "
                             "the --init checkpoint's, else trainable BN (from scratch); gn learned faster "
                             "than bn in short from-scratch runs (ds2a/assets/demo/MODEL_CARD.md)")
    parser.add_argument("--init", help="warm-start every weight from this ds2a checkpoint (fine-tuning; "
                        "same model and classes); the optimiser and schedule start fresh")
    parser.add_argument("--extra-data", action="append", default=[], metavar="DIR",
                        help="another dataset (same classes) mixed into the train split, repeatable: e.g. "
                        "reviewed frames from `ds2a review export` (docs/REVIEW.md); --data still chooses best.pt")
    parser.add_argument("--extra-repeat", type=int_range(1), default=1,
                        help="draw each --extra-data set this many times per pass over --data (default 1)")
    parser.add_argument("--time-limit-min", type=finite_float(0), default=0.0,
                        help="stop cleanly (eval + last.pt) after this many minutes of training")
    parser.add_argument("--num-classes", type=int_range(2, 255), help="must match the dataset's classes (a check)")
    parser.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                        help="mixed precision: auto = bf16/fp16 on CUDA, off on CPU")
    parser.add_argument("--num-points", type=int_range(1), default=12544, help="points per mask for the mask losses")
    parser.add_argument("--ratio-range", help="random rescale MIN,MAX of the image (e.g. 0.5,2.0) instead of "
                        "the official random short edge 256..1024")
    parser.add_argument("--vflip", type=finite_float(0, 1), default=0.0, help="probability of a vertical flip")
    parser.add_argument("--device", type=torch_device, help="cpu, cuda, cuda:1 (default: the local GPU if any, else CPU)")
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def messages_to_stderr(args: argparse.Namespace) -> bool:
    """stdout carries only the run's summary (one JSON object)."""
    return True


def run(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, train

    crop = parse_size(args.crop)
    ratio = None
    if args.ratio_range:
        try:
            lo, hi = (float(v) for v in args.ratio_range.split(","))
        except ValueError:
            raise UserError(f"--ratio-range '{args.ratio_range}' is not MIN,MAX (example: 0.5,2.0)") from None
        if not 0 < lo <= hi <= 100:
            raise UserError(f"--ratio-range '{args.ratio_range}' needs 0 < MIN <= MAX <= 100")
        ratio = (lo, hi)
    cfg = TrainConfig(
        model=args.model, data=args.data, out=args.out, iters=args.iters, batch_size=args.batch_size, crop=crop,
        input_size=parse_size(args.input_size) if args.input_size else None, backbone_lr_mult=args.backbone_lr_mult,
        lr=args.lr, weight_decay=args.weight_decay, grad_clip=args.grad_clip, warmup_iters=args.warmup_iters,
        eval_every=args.eval_every, eval_split=args.eval_split, ckpt_every=args.ckpt_every,
        log_every=args.log_every, resume=args.resume, seed=args.seed, workers=args.workers,
        threads=args.threads, backbone_weights=args.backbone_weights, time_limit_min=args.time_limit_min,
        num_classes=args.num_classes, amp=args.amp, num_points=args.num_points, device=args.device,
        progress=not args.quiet, ratio_range=ratio, vflip=args.vflip,
        backbone_norm=args.backbone_norm, init=args.init,
        extra_data=tuple(args.extra_data), extra_repeat=args.extra_repeat,
    )
    summary = train(cfg)
    if int(os.environ.get("RANK", "0")) == 0:  # other DDP ranks neither evaluate nor know the best
        print(json.dumps(summary))
    return 0
