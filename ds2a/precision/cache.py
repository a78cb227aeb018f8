"""Calibration cache: activation ranges keyed by model hash, image list and settings.

Reused only when all three match; a cache made for another model, other images or other settings
is refused with a message (silently recalibrating or, worse, applying wrong ranges would both hide
a mistake). The ranges are onnxruntime's TensorsData, stored inside our own JSON with the key.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from ..errors import UserError
from ..outputs import atomic_write

FORMAT = "ds2a-calibration-cache"


def make_key(model_sha256: str, images_fingerprint: str, num_images: int, settings: Dict[str, Any]) -> Dict[str, Any]:
    return {"model_sha256": model_sha256, "images": images_fingerprint, "num_images": num_images,
            "settings": dict(sorted(settings.items()))}


def load_ranges(path: Path, key: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The cached ORT ranges dict when `path` holds a cache for exactly this key; None when absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"calibration cache '{path}' is unreadable ({exc}); delete it to recalibrate") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"'{path}' is not a ds2a calibration cache; pass another --cache path")
    old = data.get("key", {})
    if old != key:
        diff = [k for k in ("model_sha256", "images", "num_images", "settings") if old.get(k) != key.get(k)]
        words = {"model_sha256": "a different model", "images": "different calibration images",
                 "num_images": "a different --num-images", "settings": "different settings"}
        detail = ", ".join(words[k] for k in diff)
        if "settings" in diff:
            detail += f" (cached {old.get('settings')}, now {key['settings']})"
        raise UserError(f"calibration cache '{path}' was made for {detail}; delete it, pass --cache with a new "
                        f"path, or add --recalibrate to overwrite it")
    return data["ranges"]


def save_ranges(path: Path, key: Dict[str, Any], ranges: Dict[str, Any]) -> None:
    """Atomic write (a crash never leaves half a cache that the next run would trust)."""
    with atomic_write(path, label="calibration cache") as fh:
        json.dump({"format": FORMAT, "version": 1, "key": key, "ranges": ranges}, fh, default=_jsonable)


def _jsonable(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot store {type(obj).__name__} in a calibration cache")
