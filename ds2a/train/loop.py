"""The training loop: one process on CPU/GPU, or one process per GPU/CPU-rank under torchrun (DDP).

Everything a run needs to continue lives in `RUN_DIR/last.pt` (weights + optimiser + RNG +
iteration), so `--resume` picks up exactly where it stopped, also after `--time-limit-min`.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from ..errors import UserError
from ..meta import ModelMeta
from ..runtime.torch_backend import TorchSegmenter
from .data import default_transform, make_loader, open_train_set
from .losses import LossConfig, SetCriterion
from .optim import build_optimizer as official_adamw
from .optim import lr_factor, set_lr
from .targets import batch_targets

logger = logging.getLogger(__name__)
RUN_FILES = ("last.pt", "best.pt", "train.csv", "eval.csv", "log.jsonl")  # what a run writes into --out


@dataclass
class TrainConfig:
    """Everything one run needs; `ds2a train`'s flags map onto these fields (ds2a/cli/train.py).

    Checked when made (`validate`), so a bad value fails before a dataset is opened or --out written.
    """

    model: str
    data: str
    out: str
    iters: int = 2000
    batch_size: int = 8
    crop: Tuple[int, int] = (256, 256)
    input_size: Optional[Tuple[int, int]] = None  # model/eval size; None = crop
    lr: float = 1e-4
    weight_decay: float = 0.05
    backbone_lr_mult: float = 0.1
    grad_clip: float = 0.01  # official max_norm; 0 disables
    poly_power: float = 0.9
    warmup_iters: int = 0
    eval_every: int = 500
    ckpt_every: int = 500
    log_every: int = 10
    resume: bool = False
    seed: int = 0
    workers: int = 2
    threads: int = 0  # torch CPU threads per process; 0 = torch default
    backbone_weights: Optional[str] = None
    time_limit_min: float = 0.0
    num_classes: Optional[int] = None
    amp: str = "auto"  # auto | bf16 | fp16 | off
    num_points: int = 12544
    ratio_range: Optional[Tuple[float, float]] = None  # None = official short edge 256..1024
    vflip: float = 0.0
    eval_split: str = "val"  # checkpoint selection; the test split is scored once, after training
    backbone_norm: str = "auto"  # auto | frozen_bn | bn | gn (see resolve_backbone_norm)
    init: Optional[str] = None  # warm-start the whole model from this checkpoint
    extra_data: Tuple[str, ...] = ()  # more datasets mixed into the train split (ds2a/train/data.py MixedSet)
    extra_repeat: int = 1  # each extra set is drawn this many times per epoch of --data
    eval_limit: Optional[int] = None
    device: Optional[str] = None
    model_overrides: Dict[str, Any] = field(default_factory=dict)
    progress: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuse values no run can use, before anything is opened or written (UserError names the flag)."""
        for opt, size in (("--crop", self.crop), ("--input-size", self.model_size)):
            if any(v % 32 for v in size):
                raise UserError(f"{opt} {size[0]}x{size[1]}: both sides must be multiples of 32 (e.g. 256x256)")
        if self.iters < 1 or self.batch_size < 1:
            raise UserError("--iters and --batch-size must be at least 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr {self.lr} must be a finite number above 0 (e.g. 1e-4)")

    @property
    def model_size(self) -> Tuple[int, int]:
        """HxW the saved model runs and is evaluated at: --input-size, else the crop."""
        return tuple(self.input_size or self.crop)  # type: ignore[return-value]


# ---------------------------------------------------------------- process / device set-up

@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; gloo for CPU ranks, nccl for GPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device:
        try:
            dev = torch.device(cfg.device)
        except RuntimeError:
            raise UserError(f"--device '{cfg.device}' is not a device; use cpu, cuda or cuda:N") from None
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UserError(f"--device {cfg.device} asked for, but no CUDA GPU is visible; "
                            "drop --device to use the CPU")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def amp_dtype(mode: str, device: torch.device) -> Optional[torch.dtype]:
    """Mixed precision only where it pays: CUDA (bf16 when supported, else fp16); off on CPU unless asked."""
    if mode == "off":
        return None
    if mode == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA GPU; use --amp bf16 or --amp off on the CPU")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_backbone_norm(cfg: TrainConfig, init_norm: Optional[str] = None) -> str:
    """"auto": the official frozen BN with ImageNet weights, the init checkpoint's norm with
    --init, trainable BN from scratch (frozen BN at small batches from a random init is a
    train/test mismatch that costs accuracy)."""
    if cfg.backbone_norm != "auto":
        return cfg.backbone_norm
    if init_norm:
        return init_norm
    return "frozen_bn" if cfg.backbone_weights else "bn"


def _init_checkpoint(path: str) -> Dict[str, Any]:
    """Read the --init checkpoint early (its config decides the norm); UserError names the file."""
    from ..model.checkpoint import read_checkpoint

    if not os.path.isfile(path):
        raise UserError(f"--init '{path}' does not exist; give a ds2a checkpoint (.pt) to start from")
    try:
        return read_checkpoint(path)
    except UserError as exc:
        raise UserError(f"--init: {exc}") from None


# ---------------------------------------------------------------- logging

class Progress:
    """One status line (loss, lr, it/s, ETA): redrawn in place on a terminal (`ds2a train` logs to stderr;
    extra `end` is read by ds2a/cli/__init__.py's Console), every `every` iters otherwise."""

    def __init__(self, total: int, start: int, enabled: bool, every: int = 10) -> None:
        self.total, self.start, self.enabled, self.every = total, start, enabled, max(1, every)
        self.t0 = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def rate(self, it: int) -> float:
        done = it - self.start
        return done / max(1e-9, time.perf_counter() - self.t0)

    def update(self, it: int, loss: float, lr: float) -> None:
        if not self.enabled or (not self.tty and it % self.every and it != self.total):
            return
        rate = self.rate(it)
        eta = (self.total - it) / rate if rate > 0 else float("inf")
        eta_s = "--:--" if not math.isfinite(eta) else time.strftime("%H:%M:%S", time.gmtime(eta))
        line = f"it {it}/{self.total}  loss {loss:.4f}  lr {lr:.2e}  {rate:.2f} it/s  ETA {eta_s}"
        logger.info(("\r" + line) if self.tty else line, extra={"end": ""} if self.tty else None)

    def newline(self) -> None:
        if self.enabled and self.tty:
            logger.info("")  # ends the line redrawn in place


class MetricsLog:
    """Training rows -> train.csv, eval rows -> eval.csv, every row -> log.jsonl (all append, resume-safe)."""

    def __init__(self, out: Path, classes: List[str]) -> None:
        self.out, self.classes = out, classes

    def _csv(self, name: str, row: Dict[str, Any]) -> None:
        path = self.out / name
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)

    def _json(self, row: Dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def train(self, row: Dict[str, Any]) -> None:
        self._csv("train.csv", row)
        self._json({"kind": "train", **row})

    def eval(self, it: int, result: Dict[str, Any], elapsed_s: float) -> None:
        row: Dict[str, Any] = {"iter": it, "elapsed_s": round(elapsed_s, 1), "mIoU": result["mIoU"],
                               "mDice": result["mDice"], "aAcc": result["aAcc"]}
        for name, per in result["per_class"].items():
            row[f"IoU.{name}"] = per["IoU"]
        self._csv("eval.csv", row)
        self._json({"kind": "eval", **row, "per_class": result["per_class"]})


# ---------------------------------------------------------------- the run

class Trainer:
    """One training run, built from a TrainConfig in named steps (as detectron2's DefaultTrainer).

    The order matters: the seed is set before the model is built (its initial weights), the
    data is opened before the model (the class count), --resume loads after the optimiser
    exists (its state) and the DDP wrap comes last (it probes the finished model).
    """

    def __init__(self, cfg: TrainConfig) -> None:
        cfg.validate()  # again: fields may have been assigned after the config was made
        self.cfg = cfg
        self.input_size = cfg.model_size
        self.setup_process()
        self.build_data()
        self.build_model()
        self.build_optimizer()
        self.resume_or_start()
        self.ddp_model = self.wrap_distributed()
        self.log = MetricsLog(self.out, self.classes)

    # -- build steps
    def setup_process(self) -> None:
        """CPU threads, torchrun's process group, the device, mixed precision and the seed."""
        cfg = self.cfg
        if cfg.threads > 0:
            torch.set_num_threads(cfg.threads)
        kind = "cuda" if (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda") else "cpu"
        self.dist = init_distributed(kind)
        self.device = pick_device(cfg, self.dist.local_rank)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.amp = amp_dtype(cfg.amp, self.device)
        seed_everything(cfg.seed)

    def build_data(self) -> None:
        """The train split (with any --extra-data), the split that chooses best.pt, and the class names
        (--num-classes is a check)."""
        cfg = self.cfg
        self.train_set = open_train_set(cfg.data, cfg.extra_data, cfg.extra_repeat)
        self.eval_set = self._open_eval_set()
        classes = list(self.train_set.classes)
        k = cfg.num_classes or len(classes)
        if k != len(classes):
            raise UserError(f"--num-classes {k} but '{cfg.data}' has {len(classes)} classes "
                            f"({', '.join(classes)}); drop --num-classes or fix the dataset's classes")
        self.classes = classes

    def _open_eval_set(self) -> Optional[Any]:
        """--eval-split, refused when missing or when it has no pixel to score; None with --eval-every 0."""
        from ..data import open_dataset

        cfg = self.cfg
        try:
            eval_set = open_dataset(cfg.data, split=cfg.eval_split) if cfg.eval_every > 0 else None
        except UserError as exc:
            raise UserError(f"{exc} (split '{cfg.eval_split}' chooses best.pt every {cfg.eval_every} iterations; "
                            "add that split (`ds2a synth --val N` writes one), pick another --eval-split, "
                            "or pass --eval-every 0 to train without evaluation)") from None
        if eval_set is not None and not any((eval_set[i].mask != 255).any() for i in range(len(eval_set))):
            raise UserError(f"every mask pixel of the '{cfg.eval_split}' split of '{cfg.data}' is 255 (ignore), so "
                            "evaluation would score nothing; fix the masks, choose another --eval-split, "
                            "or pass --eval-every 0")
        return eval_set

    def build_model(self) -> None:
        """The network (its backbone norm from --backbone-norm or the --init checkpoint), its starting
        weights (--backbone-weights, --init) and the metadata every checkpoint carries."""
        from ..model import build_model as build_network
        from ..model import load_backbone_weights

        cfg = self.cfg
        init_ckpt = _init_checkpoint(cfg.init) if cfg.init else None
        init_norm = ((init_ckpt or {}).get("config") or {}).get("backbone_norm", "frozen_bn") if init_ckpt else None
        overrides = {"backbone_norm": resolve_backbone_norm(cfg, init_norm), **cfg.model_overrides}
        self.model = build_network(cfg.model, num_classes=len(self.classes), input_size=self.input_size, **overrides)
        if cfg.backbone_weights:
            load_backbone_weights(self.model, cfg.backbone_weights)
        if cfg.init and not cfg.resume:
            self._warm_start(cfg.init)
        self.meta = ModelMeta(arch=self.model.meta.arch if hasattr(self.model, "meta") else cfg.model,
                              classes=self.classes, palette=list(self.train_set.palette),
                              input_size=self.input_size, extra={"trained_on": str(cfg.data)})
        self.model.meta = self.meta
        self.model.to(self.device)

    def build_optimizer(self) -> None:
        """The set criterion, AdamW with the official parameter groups, and the fp16 loss scaler."""
        cfg = self.cfg
        self.criterion = SetCriterion(LossConfig(num_classes=len(self.classes), num_points=cfg.num_points))
        self.optimizer = official_adamw(self.model, cfg.lr, cfg.weight_decay, cfg.backbone_lr_mult)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)

    def resume_or_start(self) -> None:
        """--resume: continue --out's last.pt; otherwise start at iteration 0 in a folder without a run."""
        self.out = Path(self.cfg.out)
        self.start_iter, self.best_miou, self.best_iter = 0, -1.0, -1
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        if self.cfg.init and not self.cfg.resume:  # the run's files never replace the checkpoint it starts from
            from ..outputs import check_outputs

            check_outputs([(f"--out {self.out} ({name})", str(self.out / name)) for name in RUN_FILES],
                          [("--init", self.cfg.init)])
        if self.cfg.resume:
            self._load_state()
        elif (self.out / "last.pt").exists():
            raise UserError(f"'{self.out}' already holds a run (last.pt); pass --resume to continue it "
                            "or choose another --out")

    def wrap_distributed(self) -> torch.nn.Module:
        """Under torchrun the model wrapped in DDP (SyncBN on GPUs); in one process the model itself."""
        self.find_unused = False
        if self.dist.world_size <= 1:
            return self.model
        return self._wrap_ddp()

    def build_loader(self) -> torch.utils.data.DataLoader:
        """Augmented crops, sharded over the ranks, skipping the batches a resumed run has seen."""
        cfg = self.cfg
        transform = default_transform(tuple(cfg.crop), cfg.ratio_range, cfg.vflip)
        return make_loader(self.train_set, transform, cfg.batch_size, cfg.seed, self.dist.rank,
                           self.dist.world_size, skip_batches=self.start_iter, workers=cfg.workers,
                           pin_memory=self.device.type == "cuda")

    def _warm_start(self, path: str) -> None:
        """--init: every weight from a checkpoint of the same model and class count (fine-tuning)."""
        from ..model import load_weights

        try:
            load_weights(self.model, path)
        except UserError as exc:
            raise UserError(f"--init: {exc}") from None

    # -- DDP
    def _unused_parameters(self) -> List[str]:
        """Parameters that get no gradient from the loss: DDP must be told (find_unused_parameters)."""
        self.model.train()
        h, w = self.cfg.crop
        x = torch.zeros(1, 3, h, w, device=self.device)
        y = torch.zeros(1, h, w, dtype=torch.int64, device=self.device)
        y[:, : h // 2] = 1 % len(self.classes)
        state = torch.get_rng_state()
        local = SetCriterion(self.criterion.cfg, distributed=False)  # no collective: ranks probe alone
        losses = local(self.model(x), batch_targets(y))
        losses["loss"].backward()
        torch.set_rng_state(state)
        unused = [n for n, p in self.model.named_parameters() if p.requires_grad and p.grad is None]
        self.model.zero_grad(set_to_none=True)
        return unused

    def _wrap_ddp(self) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel as DDP

        unused = self._unused_parameters()
        self.find_unused = bool(unused)
        ids = None
        if self.device.type == "cuda":
            # the official configs use SyncBN (statistics over the global batch); CPU ranks keep
            # plain BN and DDP broadcasts rank 0's running statistics before every forward
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            ids = [self.device.index]
        return DDP(self.model, device_ids=ids, find_unused_parameters=self.find_unused)

    # -- checkpoints
    def _train_state(self, it: int) -> Dict[str, Any]:
        return {"iter": it, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(), "best_mIoU": self.best_miou, "best_iter": self.best_iter,
                "config": json.loads(json.dumps(asdict(self.cfg))), "world_size": self.dist.world_size}

    def save(self, name: str, it: int, with_state: bool) -> Path:
        from ..model import save_checkpoint

        path = self.out / name
        extra: Dict[str, Any] = {"iter": it, "best_mIoU": self.best_miou}
        if with_state:
            extra["train_state"] = self._train_state(it)
        save_checkpoint(str(path), self.model, meta=self.meta, extra=extra)  # atomic (tmp + rename)
        return path

    def _load_state(self) -> None:
        path = self.out / "last.pt"
        if not path.exists():
            raise UserError(f"--resume: '{path}' does not exist; start without --resume "
                            "or point --out at the run to continue")
        from ..model.checkpoint import read_checkpoint

        try:
            ckpt = read_checkpoint(str(path))
        except UserError as exc:
            raise UserError(f"--resume: {exc}; delete it to start over, or restore it from a backup") from None
        saved = list((ckpt.get("meta") or {}).get("classes") or [])
        if len(saved) == len(self.classes) and saved != list(self.classes):  # counts: checked by the load
            raise UserError(f"--resume: '{path}' was trained with classes {', '.join(map(str, saved))} but "
                            f"'{self.cfg.data}' lists {', '.join(self.classes)}; resume on the same dataset "
                            "(same classes.txt, same order) or start a new run")
        state = (ckpt.get("extra") or {}).get("train_state")
        if not isinstance(state, dict):
            raise UserError(f"--resume: '{path}' has no training state (it is an export-only checkpoint); "
                            "resume from a run's last.pt")
        try:
            self.model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as exc:
            raise UserError(f"--resume: '{path}' was trained with another model/classes than --model "
                            f"{self.cfg.model} on '{self.cfg.data}': {str(exc).splitlines()[0]}") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["torch_rng"])
            self.start_iter = int(state["iter"])
            self.best_miou, self.best_iter = float(state["best_mIoU"]), int(state["best_iter"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise UserError(f"--resume: '{path}' has a damaged training state ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''}); delete it to start over") from None

    # -- evaluation
    def evaluate(self) -> Dict[str, Any]:
        from ..eval import evaluate_segmenter

        self.model.eval()
        try:
            seg = TorchSegmenter.from_module(self.model, self.meta, self.device, amp=self.amp)
            return evaluate_segmenter(seg, self.eval_set, batch_size=max(1, self.cfg.batch_size), limit=self.cfg.eval_limit)
        finally:
            self.model.train()

    def _maybe_eval(self, it: int, t_start: float) -> None:
        if self.eval_set is None:
            return
        if self.dist.main:
            result = self.evaluate()
            self.log.eval(it, result, time.perf_counter() - t_start)
            improved = result["mIoU"] > self.best_miou
            if improved:
                self.best_miou, self.best_iter = result["mIoU"], it
                self.save("best.pt", it, with_state=False)
            if self.cfg.progress:
                logger.info(f"\n[eval it {it}] mIoU {result['mIoU']:.4f} mDice {result['mDice']:.4f} "
                            f"aAcc {result['aAcc']:.4f}  best {self.best_miou:.4f} @ {self.best_iter}")
        if self.dist.world_size > 1:
            dist.barrier()

    # -- one iteration
    def step(self, images: torch.Tensor, masks: torch.Tensor, it: int) -> Dict[str, float]:
        """Iteration `it` (0-based): lr, forward, loss, backward, clip, optimiser step; the losses as floats."""
        cfg = self.cfg
        set_lr(self.optimizer, lr_factor(it, cfg.iters, cfg.poly_power, cfg.warmup_iters))
        images = images.to(self.device, non_blocking=True)
        masks = masks.to(self.device, non_blocking=True)
        targets = batch_targets(masks)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            outputs = self.ddp_model(images)
        losses = self.criterion([(c.float(), m.float()) for c, m in outputs], targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["loss"]).backward()
        self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        out = {k: float(v.detach()) for k, v in losses.items()}
        out["grad_norm"] = float(grad_norm)
        if not math.isfinite(out["loss"]):
            raise UserError(f"loss became {out['loss']} at iteration {it}; lower --lr or use --amp off")
        return out

    def log_step(self, it: int, losses: Dict[str, float], progress: Progress, t_start: float) -> None:
        """The progress line, and a train.csv / log.jsonl row every --log-every iterations and at the end."""
        cfg = self.cfg
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        progress.update(it, losses["loss"], lr)
        if self.dist.main and (it % cfg.log_every == 0 or it == cfg.iters):
            self.log.train({"iter": it, "elapsed_s": round(time.perf_counter() - t_start, 2), "lr": lr,
                            **{k: round(v, 6) for k, v in losses.items()}})

    # -- periodic hooks
    def _should_stop(self, t_start: float) -> bool:
        if self.cfg.time_limit_min <= 0:
            return False
        stop = torch.tensor(float(time.perf_counter() - t_start > 60.0 * self.cfg.time_limit_min))
        if self.dist.world_size > 1:
            stop = stop.to(self.device)
            dist.broadcast(stop, 0)
        return bool(stop.item())

    def after_step(self, it: int, t_start: float) -> bool:
        """After iteration `it` (1-based): evaluate every --eval-every and write last.pt every
        --ckpt-every, both also at the end and at the time limit; True when the time limit is reached."""
        cfg = self.cfg
        stop = self._should_stop(t_start)
        final = it == cfg.iters or stop
        if cfg.eval_every > 0 and (it % cfg.eval_every == 0 or final):
            self._maybe_eval(it, t_start)
        if self.dist.main and (it % max(1, cfg.ckpt_every) == 0 or final):
            self.save("last.pt", it, with_state=True)
        return stop

    # -- the run
    def run(self) -> Dict[str, Any]:
        """Train from start_iter to --iters (or the time limit); returns the summary."""
        cfg = self.cfg
        if self.start_iter >= cfg.iters:
            if self.dist.main:
                logger.info(f"run in '{self.out}' is already at iteration {self.start_iter} of {cfg.iters}; "
                            "raise --iters to train further")
            return self.summary(self.start_iter, stopped_early=False)
        batches = iter(self.build_loader())
        self.model.train()
        progress = Progress(cfg.iters, self.start_iter, enabled=cfg.progress and self.dist.main, every=cfg.log_every)
        t_start = time.perf_counter()
        it, stop = self.start_iter, False
        while it < cfg.iters and not stop:
            images, masks = next(batches)
            losses = self.step(images, masks, it)
            it += 1
            self.log_step(it, losses, progress, t_start)
            stop = self.after_step(it, t_start)
        progress.newline()
        if self.dist.world_size > 1:
            dist.barrier()
        return self.summary(it, stopped_early=stop and it < cfg.iters)

    def summary(self, it: int, stopped_early: bool) -> Dict[str, Any]:
        """Where the run ended and its best checkpoint; rank 0 also writes it to summary.json."""
        out = {"iter": it, "iters": self.cfg.iters, "best_mIoU": self.best_miou, "best_iter": self.best_iter,
               "stopped_early": stopped_early, "out": str(self.out)}
        if self.dist.main:
            (self.out / "summary.json").write_text(json.dumps(out, indent=2))
        return out


def train(cfg: TrainConfig) -> Dict[str, Any]:
    """Build everything from the config and train; returns a summary (iterations, best mIoU)."""
    trainer = Trainer(cfg)
    try:
        return trainer.run()
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
