"""Our ModelMeta inside the ONNX file (metadata_props["ds2a"]), so no side file travels with a model.

Torch-free: calibration, the engine builder and the runtimes read it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import onnx

from ..errors import UserError
from ..meta import ONNX_META_KEY, ModelMeta

PathLike = Union[str, Path]



def load_onnx(path: PathLike) -> onnx.ModelProto:
    """onnx.load with a readable error for a missing or non-ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file '{path}' does not exist; export one with `ds2a export CKPT --out {path.name}`")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise UserError(f"'{path}' is not a readable ONNX model ({type(exc).__name__}); re-export it") from None


def write_meta(model: onnx.ModelProto, meta: ModelMeta) -> None:
    """Set (or replace) the ds2a entry in metadata_props."""
    for prop in list(model.metadata_props):
        if prop.key == ONNX_META_KEY:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = ONNX_META_KEY, meta.to_json()


def read_meta(model: onnx.ModelProto, path: PathLike = "model.onnx", required: bool = True) -> Optional[ModelMeta]:
    """ModelMeta from metadata_props; a foreign ONNX is refused (required) or gives None."""
    props = {p.key: p.value for p in model.metadata_props}
    if ONNX_META_KEY not in props:
        if not required:
            return None
        raise UserError(f"'{path}' has no '{ONNX_META_KEY}' metadata (not exported by ds2a): classes, "
                        f"normalisation and input size are unknown; export it with "
                        f"`ds2a export CKPT --out {Path(path).name}`")
    try:
        return ModelMeta.from_dict(json.loads(props[ONNX_META_KEY]))
    except (ValueError, TypeError) as exc:
        raise UserError(f"'{path}' has unreadable '{ONNX_META_KEY}' metadata ({exc}); "
                        "re-export it with `ds2a export`") from None
