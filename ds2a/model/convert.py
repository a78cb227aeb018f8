"""Official mmsegmentation DS2A-Former checkpoints -> our checkpoint.

The official state dict uses mmcv/mmdet module names (`decode_head.pixel_decoder.encoder.layers.N.
ffn.layers.0.0.weight`, `...DQGSA.pwconv1_1...`); `RENAMES` maps each to ours. Three groups of
official parameters never take part in the forward pass (each decoder layer's `self_attn`, DQGSA's
`transconv` and `norm2`); they are dropped and reported. Everything else must match exactly.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any

import torch

from ..errors import UserError
from ..meta import ModelMeta, file_sha256
from .checkpoint import load_error, save_checkpoint
from .config import ModelConfig, get_config
from .ds2a_former import DS2AFormer, default_meta

logger = logging.getLogger(__name__)

Tensor = torch.Tensor

# (official regex, our replacement), applied in order; the first match wins.
RENAMES: list[tuple[str, str]] = [
    (r"^backbone\.(.*)$", r"backbone.\1"),
    (r"^decode_head\.pixel_decoder\.(input_convs|lateral_convs|output_convs)\.(\d+)\.conv\.(.*)$", r"pixel_decoder.\1.\2.0.\3"),
    (r"^decode_head\.pixel_decoder\.(input_convs|lateral_convs|output_convs)\.(\d+)\.gn\.(.*)$", r"pixel_decoder.\1.\2.1.\3"),
    (r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.self_attn\.(.*)$", r"pixel_decoder.layers.\1.attn.\2"),
    (r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.(.*)$", r"pixel_decoder.layers.\1.ffn.fc1.\2"),
    (r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.ffn\.layers\.1\.(.*)$", r"pixel_decoder.layers.\1.ffn.fc2.\2"),
    (r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.norms\.0\.(.*)$", r"pixel_decoder.layers.\1.norm1.\2"),
    (r"^decode_head\.pixel_decoder\.encoder\.layers\.(\d+)\.norms\.1\.(.*)$", r"pixel_decoder.layers.\1.norm2.\2"),
    (r"^decode_head\.pixel_decoder\.level_encoding\.(.*)$", r"pixel_decoder.level_embed.\1"),
    (r"^decode_head\.pixel_decoder\.mask_feature\.(.*)$", r"pixel_decoder.mask_feature.\1"),
    (r"^decode_head\.(dssca[123])\.conv1\.(.*)$", r"\1.spatial.\2"),
    (r"^decode_head\.(dssca[123])\.transconv\.(.*)$", r"\1.up.\2"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.cross_attn\.attn\.(.*)$", r"transformer_decoder.layers.\1.cross_attn.\2"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.norms\.([012])\.(.*)$", r"transformer_decoder.layers.\1.norm\2.\3"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.ffn\.layers\.0\.0\.(.*)$", r"transformer_decoder.layers.\1.ffn.fc1.\2"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.ffn\.layers\.1\.(.*)$", r"transformer_decoder.layers.\1.ffn.fc2.\2"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.DQGSA\.conv1\.(.*)$", r"transformer_decoder.layers.\1.dqgsa.spatial.\2"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.DQGSA\.conv2\.(.*)$", r"transformer_decoder.layers.\1.dqgsa.proj.\2"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.DQGSA\.conv3\.(.*)$", r"transformer_decoder.layers.\1.dqgsa.dist_conv.\2"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.DQGSA\.norm1\.(.*)$", r"transformer_decoder.layers.\1.dqgsa.norm.\2"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.DQGSA\.pwconv1_1\.(.*)$", r"transformer_decoder.layers.\1.dqgsa.fc1.\2"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.DQGSA\.pwconv1_2\.(.*)$", r"transformer_decoder.layers.\1.dqgsa.fc2.\2"),
    (r"^decode_head\.transformer_decoder\.layers\.(\d+)\.DQGSA\.gamma1$", r"transformer_decoder.layers.\1.dqgsa.gamma"),
    (r"^decode_head\.transformer_decoder\.post_norm\.(.*)$", r"transformer_decoder.post_norm.\1"),
    (r"^decode_head\.(query_embed|query_feat|level_embed)\.(.*)$", r"\1.\2"),
    (r"^decode_head\.(cls_embed|mask_embed)\.(.*)$", r"head.\1.\2"),
]

# Official parameters that the forward pass never uses.
UNUSED: list[str] = [
    r"^decode_head\.transformer_decoder\.layers\.\d+\.self_attn\.",
    r"^decode_head\.transformer_decoder\.layers\.\d+\.DQGSA\.transconv\.",
    r"^decode_head\.transformer_decoder\.layers\.\d+\.DQGSA\.norm2\.",
]

_RENAMES = [(re.compile(p), r) for p, r in RENAMES]
_UNUSED = [re.compile(p) for p in UNUSED]


def official_to_ours(key: str) -> str | None:
    """Our parameter name for an official key, or None if the key is not part of the model."""
    for pattern, repl in _RENAMES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    return None


def is_unused_official_key(key: str) -> bool:
    return any(p.match(key) for p in _UNUSED)


def _list(keys: list[str], n: int = 8) -> str:
    return ", ".join(keys[:n]) + (f" ... (+{len(keys) - n} more)" if len(keys) > n else "")


def convert_official_state_dict(state: dict[str, Tensor], config: ModelConfig,
                                source: str = "official checkpoint") -> tuple[dict[str, Tensor], list[str]]:
    """Rename an official state dict to ours. Returns (our state dict, dropped unused official keys).

    Raises UserError naming the keys if anything is missing, unknown or of the wrong shape for `config`.
    """
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    with torch.device("meta"):  # shapes only: no memory, no init cost
        reference = DS2AFormer(config)
    own = reference.state_dict()
    out: dict[str, Tensor] = {}
    dropped, unknown = [], []
    for key, value in state.items():
        if is_unused_official_key(key):
            dropped.append(key)
            continue
        ours = official_to_ours(key)
        if ours is None or ours not in own:
            unknown.append(key)
            continue
        out[ours] = value
    # BN counters are bookkeeping only; older files may lack them.
    for k in own:
        if k.endswith("num_batches_tracked") and k not in out:
            out[k] = torch.zeros((), dtype=torch.long)
    missing = sorted(k for k in own if k not in out)
    wrong = sorted(f"{k} {tuple(out[k].shape)} vs {tuple(own[k].shape)}" for k in own
                   if k in out and tuple(out[k].shape) != tuple(own[k].shape))
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_list(missing)}")
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): {_list(sorted(unknown))}")
    if wrong:
        problems.append(f"wrong shape (file vs {config.name}): {_list(wrong, 4)}")
    if problems:
        raise UserError(f"{source} does not fit {config.name} with {config.num_classes} classes: "
                        + "; ".join(problems) + ". Check --arch / --num-classes, or re-download the checkpoint")
    return out, sorted(dropped)


def ours_to_official(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Inverse renaming (our keys -> official keys), without the unused official parameters.

    Used to build official-format test files; each name is checked to map back to itself.
    """
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        off = key
        for pattern, repl in _INVERSE:
            if pattern.match(key):
                off = pattern.sub(repl, key)
                break
        if official_to_ours(off) != key:
            raise ValueError(f"no official name for {key}")
        out[off] = value
    return out


_DH, _TD, _PD = "decode_head.", "decode_head.transformer_decoder.layers.", "decode_head.pixel_decoder."
_INVERSE = [(re.compile(p), r) for p, r in [
    (r"^pixel_decoder\.(input_convs|lateral_convs|output_convs)\.(\d+)\.0\.", _PD + r"\1.\2.conv."),
    (r"^pixel_decoder\.(input_convs|lateral_convs|output_convs)\.(\d+)\.1\.", _PD + r"\1.\2.gn."),
    (r"^pixel_decoder\.layers\.(\d+)\.attn\.", _PD + r"encoder.layers.\1.self_attn."),
    (r"^pixel_decoder\.layers\.(\d+)\.ffn\.fc1\.", _PD + r"encoder.layers.\1.ffn.layers.0.0."),
    (r"^pixel_decoder\.layers\.(\d+)\.ffn\.fc2\.", _PD + r"encoder.layers.\1.ffn.layers.1."),
    (r"^pixel_decoder\.layers\.(\d+)\.norm1\.", _PD + r"encoder.layers.\1.norms.0."),
    (r"^pixel_decoder\.layers\.(\d+)\.norm2\.", _PD + r"encoder.layers.\1.norms.1."),
    (r"^pixel_decoder\.level_embed\.", _PD + "level_encoding."),
    (r"^pixel_decoder\.mask_feature\.", _PD + "mask_feature."),
    (r"^(dssca[123])\.spatial\.", _DH + r"\1.conv1."),
    (r"^(dssca[123])\.up\.", _DH + r"\1.transconv."),
    (r"^transformer_decoder\.layers\.(\d+)\.cross_attn\.", _TD + r"\1.cross_attn.attn."),
    (r"^transformer_decoder\.layers\.(\d+)\.norm([012])\.", _TD + r"\1.norms.\2."),
    (r"^transformer_decoder\.layers\.(\d+)\.ffn\.fc1\.", _TD + r"\1.ffn.layers.0.0."),
    (r"^transformer_decoder\.layers\.(\d+)\.ffn\.fc2\.", _TD + r"\1.ffn.layers.1."),
    (r"^transformer_decoder\.layers\.(\d+)\.dqgsa\.spatial\.", _TD + r"\1.DQGSA.conv1."),
    (r"^transformer_decoder\.layers\.(\d+)\.dqgsa\.proj\.", _TD + r"\1.DQGSA.conv2."),
    (r"^transformer_decoder\.layers\.(\d+)\.dqgsa\.dist_conv\.", _TD + r"\1.DQGSA.conv3."),
    (r"^transformer_decoder\.layers\.(\d+)\.dqgsa\.norm\.", _TD + r"\1.DQGSA.norm1."),
    (r"^transformer_decoder\.layers\.(\d+)\.dqgsa\.fc1\.", _TD + r"\1.DQGSA.pwconv1_1."),
    (r"^transformer_decoder\.layers\.(\d+)\.dqgsa\.fc2\.", _TD + r"\1.DQGSA.pwconv1_2."),
    (r"^transformer_decoder\.layers\.(\d+)\.dqgsa\.gamma$", _TD + r"\1.DQGSA.gamma1"),
    (r"^transformer_decoder\.post_norm\.", "decode_head.transformer_decoder.post_norm."),
    (r"^(query_embed|query_feat|level_embed)\.", _DH + r"\1."),
    (r"^head\.(cls_embed|mask_embed)\.", _DH + r"\1."),
]]


def official_unused_parameters(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the official-only parameters (for building test files)."""
    c = config.hidden_dim
    shapes: dict[str, tuple[int, ...]] = {}
    for n in range(config.decoder_layers):
        p = f"decode_head.transformer_decoder.layers.{n}."
        shapes.update({p + "self_attn.attn.in_proj_weight": (3 * c, c), p + "self_attn.attn.in_proj_bias": (3 * c,),
                       p + "self_attn.attn.out_proj.weight": (c, c), p + "self_attn.attn.out_proj.bias": (c,),
                       p + "DQGSA.transconv.weight": (c, c, 3, 3), p + "DQGSA.transconv.bias": (c,),
                       p + "DQGSA.norm2.weight": (c,), p + "DQGSA.norm2.bias": (c,)})
    return shapes


# --- files -------------------------------------------------------------------------------------

def read_official_checkpoint(path: str, trust: bool = False) -> dict[str, Tensor]:
    """The state dict of an official (mmengine) checkpoint file, or of a bare state dict file."""
    return _load_official(path, trust)[0]


def _dataset_classes(obj: Any) -> list[str] | None:
    """Class names mmengine stores under meta.dataset_meta.classes, if any."""
    meta = obj.get("meta") if isinstance(obj, dict) else None
    dataset_meta = meta.get("dataset_meta") if isinstance(meta, dict) else None
    names = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else None
    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def _numpy_safe_globals() -> list[Any]:
    """numpy's data-only reconstructors (scalars, arrays, dtypes) that mmengine's training meta pickles.

    They build plain values and never call user code, so the restricted unpickler may use them;
    each is also listed under its numpy 1.x module name so files written with either numpy load.
    """
    import importlib

    import numpy as np

    try:
        multiarray = importlib.import_module("numpy._core.multiarray")  # numpy 2
    except ImportError:
        multiarray = importlib.import_module("numpy.core.multiarray")
    found: list[Any] = [np.ndarray, np.dtype]
    for name in ("scalar", "_reconstruct"):
        obj = getattr(multiarray, name)
        found += [obj, (obj, f"numpy.core.multiarray.{name}"), (obj, f"numpy._core.multiarray.{name}")]
    dtypes = getattr(np, "dtypes", None)
    found += [v for v in vars(dtypes).values() if isinstance(v, type)] if dtypes else []
    return found


def _blocked_globals(path: str) -> list[str]:
    """The pickled globals a weights-only load refuses (empty if torch cannot tell)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint, or an older torch: nothing to name
        return []


def load_official_object(path: str, trust: bool = False) -> Any:
    """torch.load an official file without running code: weights only, plus numpy's plain data types.

    Anything else (objects whose unpickling can run code) is refused with the globals that blocked
    it, unless `trust=True`, the explicit opt-in to full unpickling for files from a trusted source.
    """
    allowed = _numpy_safe_globals()
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any refusal or damage is explained below
        safe_error = exc
    blocked = _blocked_globals(path)
    if not trust:
        if blocked:
            raise UserError(
                f"'{path}' holds pickled objects a safe load refuses ({_list(blocked, 6)}); loading them could run "
                "code from the file. If the file comes from a source you trust, pass --trust-checkpoint "
                "(full unpickling), or re-save just its 'state_dict' tensors with torch.save")
        raise UserError(f"cannot read '{path}' ({load_error(safe_error)}); "
                        "is it an mmsegmentation .pth checkpoint?")
    logger.warning(f"warning: --trust-checkpoint: fully unpickling '{path}' (it can run code; blocked by the safe "
                   f"load: {_list(blocked, 6) or 'unknown'})")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot read '{path}' ({load_error(exc)}); "
                        "is it an mmsegmentation .pth checkpoint?") from None


def _load_official(path: str, trust: bool = False) -> tuple[dict[str, Tensor], list[str] | None]:
    if not os.path.isfile(path):
        raise UserError(f"official checkpoint '{path}' does not exist; download it from the DS2A-Former release and pass its path")
    obj = load_official_object(path, trust)
    if isinstance(obj, dict) and obj.get("format") == "ds2a-checkpoint":
        raise UserError(f"'{path}' is already a ds2a checkpoint; load it directly with ds2a.load_model")
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise UserError(f"'{path}' holds no state dict; expected an mmsegmentation checkpoint with 'state_dict'")
    if not any(k.startswith(("decode_head.", "module.decode_head.")) for k in state):
        raise UserError(f"'{path}' has no decode_head.* weights, so it is not a DS2A-Former mmsegmentation checkpoint")
    return state, _dataset_classes(obj)


def detect_depth(state: dict[str, Tensor]) -> int | None:
    """ResNet depth from the backbone keys: bottleneck -> 50, layer3 block count 2 -> 18, 6 -> 34."""
    if "backbone.layer1.0.conv3.weight" in state:
        return 50
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"^backbone\.layer3\.(\d+)\.", k))}
    return {2: 18, 6: 34}.get(len(blocks))


@dataclass
class ConversionReport:
    arch: str
    num_classes: int
    converted: int
    dropped: list[str] = field(default_factory=list)
    sha256: str = ""
    source_sha256: str = ""

    def lines(self) -> list[str]:
        groups: dict[str, int] = {}
        for key in self.dropped:  # e.g. "...layers.3.DQGSA.transconv.weight" -> "DQGSA.transconv"
            m = re.search(r"\.layers\.\d+\.(self_attn|DQGSA\.[^.]+)\.", key)
            name = m.group(1) if m else key
            groups[name] = groups.get(name, 0) + 1
        detail = ", ".join(f"{name} x{n}" for name, n in sorted(groups.items()))
        return [f"arch {self.arch}, {self.num_classes} classes, {self.converted} tensors converted",
                f"dropped {len(self.dropped)} unused official tensors" + (f": {detail}" if detail else ""),
                f"sha256 {self.sha256}"]


def convert_official_checkpoint(src: str, dst: str, arch: str, num_classes: int | None = None,
                                classes: list[str] | None = None, half: bool = False,
                                trust_checkpoint: bool = False, **overrides: Any) -> ConversionReport:
    """Read an official checkpoint, check arch and class count, load strictly, write our checkpoint.

    Class names: `classes` if given, else the file's meta.dataset_meta.classes, else M-BSD's for 4 classes.
    `trust_checkpoint` allows full unpickling (can run code from the file; see `load_official_object`).
    """
    state, file_names = _load_official(src, trust_checkpoint)
    name = arch if arch.startswith("ds2a_") else f"ds2a_{arch}"
    depth = detect_depth(state)
    config = get_config(name, **overrides)
    if depth is not None and depth != config.backbone_depth:
        raise UserError(f"'{src}' holds a ResNet-{depth} DS2A-Former, not {name}; use --arch r{depth}")
    cls_w = state.get("decode_head.cls_embed.weight", state.get("module.decode_head.cls_embed.weight"))
    file_classes = int(cls_w.shape[0]) - 1 if cls_w is not None else None
    if num_classes is not None and file_classes is not None and num_classes != file_classes:
        raise UserError(f"'{src}' was trained with {file_classes} classes, not {num_classes}; "
                        f"use --num-classes {file_classes} (or leave it out)")
    k = num_classes or file_classes or config.num_classes
    if classes is not None and len(classes) != k:
        raise UserError(f"{len(classes)} class names given but '{src}' has {k} classes; pass {k} names")
    config = get_config(name, num_classes=k, **overrides)
    ours, dropped = convert_official_state_dict(state, config, source=f"'{src}'")
    names = classes or (file_names if file_names and len(file_names) == k else None)
    meta = default_meta(config) if names is None else ModelMeta(config.name, names, input_size=config.input_size)
    model = DS2AFormer(config, meta)
    model.load_state_dict({kk: v.float() if v.is_floating_point() else v for kk, v in ours.items()}, strict=True)
    src_sha = file_sha256(src)
    meta.extra = {**meta.extra, "source": "official", "source_file": os.path.basename(src), "source_sha256": src_sha}
    sha = save_checkpoint(dst, model, meta, extra={"converted_from": os.path.basename(src), "source_sha256": src_sha}, half=half)
    return ConversionReport(config.name, k, len(ours), dropped, sha, src_sha)
