"""Our self-describing checkpoint: weights plus the config and ModelMeta needed to rebuild the model.

File = torch.save of {"format": "ds2a-checkpoint", "version": 1, "arch", "config", "meta",
"state_dict", "extra"}. `half=True` stores floating tensors as fp16 (small demo files);
loading always gives an fp32 model in eval mode.
"""
from __future__ import annotations

import os
from typing import Any

import torch

from ..errors import UserError
from ..meta import ModelMeta, file_sha256
from ..outputs import atomic_path
from .backbone import load_torchvision_state
from .config import MODEL_CONFIGS, ModelConfig
from .ds2a_former import DS2AFormer

FORMAT = "ds2a-checkpoint"
VERSION = 1



def save_checkpoint(path: str, model: DS2AFormer, meta: ModelMeta | None = None,
                    extra: dict[str, Any] | None = None, half: bool = False) -> str:
    """Write `model` (and its meta) to `path`; returns the file's sha256.

    A DDP- or torch.compile-wrapped model is unwrapped, so the keys are always the plain ones.
    """
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    meta = meta if meta is not None else model.meta
    if meta.num_classes != model.config.num_classes:
        raise UserError(f"meta has {meta.num_classes} classes, model has {model.config.num_classes}; fix the class list")
    state = {k: (v.detach().half() if half and v.is_floating_point() else v.detach()).cpu().clone()
             for k, v in model.state_dict().items()}
    meta_dict = meta.to_dict()
    meta_dict["checkpoint_sha256"] = None  # a file cannot hold its own hash; load_model fills it in
    ckpt = {"format": FORMAT, "version": VERSION, "arch": model.config.name, "config": model.config.to_dict(),
            "meta": meta_dict, "state_dict": state, "extra": dict(extra or {})}
    with atomic_path(path, label="checkpoint") as tmp:  # never leave a half-written checkpoint behind
        torch.save(ckpt, tmp)
    return file_sha256(path)


def load_error(exc: BaseException) -> str:
    """The informative line of a torch.load failure (its weights-only errors open with generic advice)."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text[text.index(marker) + len(marker):]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {(lines[0] if lines else 'empty or truncated file')[:200]}"


def read_checkpoint(path: str, map_location: str = "cpu") -> dict[str, Any]:
    """Load and validate the checkpoint dict (no model built)."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint '{path}' does not exist; check the path (train one with `ds2a train`)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not our file"
        raise UserError(f"'{path}' is not a readable ds2a checkpoint ({load_error(exc)}); "
                        "for an official mmsegmentation file run `ds2a convert-official IN.pth OUT.pt --arch r18`") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        hint = ("it looks like an official mmsegmentation checkpoint; convert it with "
                "`ds2a convert-official IN.pth OUT.pt --arch r18|r34|r50`"
                if isinstance(ckpt, dict) and "state_dict" in ckpt else "use a file written by `ds2a train` or `ds2a convert-official`")
        raise UserError(f"'{path}' is not a ds2a checkpoint; {hint}")
    if ckpt.get("version") != VERSION:
        raise UserError(f"'{path}' has checkpoint version {ckpt.get('version')}, this ds2a reads version {VERSION}; "
                        "upgrade ds2a or re-save the checkpoint")
    return ckpt


def _check_expected(path: str, config: ModelConfig, arch: str | None, num_classes: int | None) -> None:
    if arch is not None:
        want = arch if arch in MODEL_CONFIGS else f"ds2a_{arch}"
        if config.name != want:
            raise UserError(f"'{path}' holds a {config.name} model, expected {want}; "
                            f"pass --model {config.name} or use a {want} checkpoint")
    if num_classes is not None and config.num_classes != num_classes:
        raise UserError(f"'{path}' has {config.num_classes} classes, expected {num_classes}; "
                        f"use a checkpoint trained on this dataset or set the class count to {config.num_classes}")


def _load_state(path: str, model: DS2AFormer, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{name}: {', '.join(keys[:6])}{' ...' if len(keys) > 6 else ''}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise UserError(f"'{path}' does not match a {model.config.name} with {model.config.num_classes} classes ("
                        + "; ".join(parts) + "); the file is damaged or from another model variant")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})


def load_model(path: str, map_location: str = "cpu", arch: str | None = None,
               num_classes: int | None = None) -> DS2AFormer:
    """Rebuild the model a checkpoint describes: fp32, eval mode, `.meta` restored (sha256 filled in).

    `arch` / `num_classes`, when given, must match the file (else UserError with the fix).
    """
    ckpt = read_checkpoint(path, map_location)
    try:
        config = ModelConfig.from_dict(ckpt["config"])
        meta = ModelMeta.from_dict(ckpt["meta"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"'{path}' has a damaged config/meta section ({exc}); re-create the checkpoint") from None
    _check_expected(path, config, arch, num_classes)
    if meta.num_classes != config.num_classes:
        raise UserError(f"'{path}' is inconsistent: meta lists {meta.num_classes} classes, model has {config.num_classes}")
    model = DS2AFormer(config, meta)
    _load_state(path, model, ckpt["state_dict"])
    model.meta.checkpoint_sha256 = file_sha256(path)
    model.meta.extra = {**model.meta.extra, **{k: v for k, v in ckpt.get("extra", {}).items()
                                               if isinstance(v, (str, int, float, bool))}}
    return model.float().eval()


def load_weights(model: DS2AFormer, path: str, map_location: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint's weights into an existing model (resume / fine-tune); returns its `extra`.

    The file must hold the same architecture and class count, else UserError says what differs.
    """
    ckpt = read_checkpoint(path, map_location)
    config = ModelConfig.from_dict(ckpt["config"])
    _check_expected(path, config, model.config.name, model.config.num_classes)
    _load_state(path, model, ckpt["state_dict"])
    return dict(ckpt.get("extra", {}))


def load_backbone_weights(model: DS2AFormer, path: str) -> list[str]:
    """Initialise the backbone from a torchvision ResNet `.pth` (ImageNet); returns the ignored keys (fc.*).

    Also accepts a dict with a "state_dict" entry and `backbone.`-prefixed keys (mmseg files).
    """
    if not os.path.isfile(path):
        raise UserError(f"backbone weights '{path}' do not exist; download e.g. resnet18-f37072fd.pth from "
                        "https://download.pytorch.org/models/ and pass its path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"'{path}' is not a readable PyTorch weights file ({load_error(exc)}); "
                        "pass a torchvision ResNet .pth file") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"'{path}' does not hold a state dict; pass a torchvision ResNet .pth file")
    bb = model.backbone
    try:
        return load_torchvision_state(bb, state)
    except KeyError as exc:
        raise UserError(f"'{path}' is not a ResNet-{bb.depth} state dict (missing {exc.args[0]}); "
                        f"use torchvision's resnet{bb.depth} weights") from None
    except ValueError as exc:
        raise UserError(f"'{path}' does not fit a ResNet-{bb.depth} of width {bb.width} ({exc}); "
                        f"ImageNet weights need backbone_width=64 and the matching depth") from None
