"""Reading image and mask files strictly: a corrupt or truncated file is an error, never a half image.

OpenCV happily decodes a truncated JPEG with a grey bottom and only prints a warning, so the
end-of-image marker is checked before decoding.
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

import cv2
import numpy as np

from ..errors import UserError
from ..preprocess import to_bgr

PathLike = Union[str, Path]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def _read_bytes(path: Path) -> np.ndarray:
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        raise UserError(f"cannot read '{path}': {exc.strerror}; check the path and permissions") from None
    if data.size == 0:
        raise UserError(f"'{path}' is empty (0 bytes); replace or delete the file")
    return data


def _check_complete(path: Path, data: np.ndarray) -> None:
    """Reject truncated JPEG/PNG files that OpenCV would decode silently."""
    head = data[:8].tobytes()
    tail = data[-1024:].tobytes()  # some cameras append a trailer after the end marker
    if head[:2] == b"\xff\xd8" and b"\xff\xd9" not in tail:
        raise UserError(f"'{path}' is a truncated JPEG (no end-of-image marker); replace or delete the file")
    if head == b"\x89PNG\r\n\x1a\n" and b"IEND" not in tail:
        raise UserError(f"'{path}' is a truncated PNG (no IEND chunk); replace or delete the file")


def _decode(path: PathLike, what: str) -> np.ndarray:
    """File bytes -> array as stored, with truncation caught before OpenCV silently half-decodes."""
    path = Path(path)
    data = _read_bytes(path)
    _check_complete(path, data)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise UserError(f"'{path}' is not a readable {what} (corrupt or unknown format); replace or delete the file")
    return array


def read_image(path: PathLike) -> np.ndarray:
    """Any 8/16-bit, grey/colour image file -> uint8 BGR (H, W, 3)."""
    return to_bgr(_decode(path, "image"))


def read_mask(path: PathLike) -> np.ndarray:
    """An index-mask file -> uint8 (H, W) exactly as stored (no colour conversion, no rescaling)."""
    mask = _decode(path, "mask")
    if mask.ndim == 3:
        if mask.shape[2] >= 3 and not (np.array_equal(mask[..., 0], mask[..., 1])
                                       and np.array_equal(mask[..., 0], mask[..., 2])):
            raise UserError(
                f"'{path}' is a colour mask; masks must be single-channel class indices "
                "(0 = background, 1..K-1 = classes, 255 = ignore); convert it to an index png")
        mask = mask[..., 0]
    if mask.dtype != np.uint8:
        if mask.max() > 255:
            raise UserError(f"'{path}' holds mask values above 255; save class indices as 8-bit png")
        mask = mask.astype(np.uint8)
    return np.ascontiguousarray(mask)


def write_image(path: PathLike, image: np.ndarray, jpeg_quality: int = 95) -> None:
    """Write an image (jpg with the given quality, png lossless) deterministically."""
    path = Path(path)
    ext = path.suffix.lower()
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if ext in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(ext, image, params)
    if not ok:
        raise UserError(f"cannot encode '{path}' as {ext}; use .jpg or .png")
    buf.tofile(str(path))
