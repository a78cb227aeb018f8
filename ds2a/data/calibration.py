"""Which images calibrate an INT8 model, chosen deterministically and so that every defect class is seen.

Sources: an M-BSD style dataset folder (any layout ds2a.data.open_dataset detects; train split by
default), a plain folder of images, or a manifest (text file, one image path per line, relative
to the manifest; '#' starts a comment). Frames go through ds2a.preprocess.resize_frame, the
same function inference uses, so calibration sees exactly what the deployed model sees.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np

from ..errors import UserError
from ..preprocess import resize_frame

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
MAX_SCAN = 400  # candidates whose masks are read for stratification


@dataclass
class CalibrationSet:
    """The chosen frames (uint8 BGR NHWC at model size) and what had to be skipped."""

    names: List[str]
    frames: np.ndarray
    skipped: List[Tuple[str, str]] = field(default_factory=list)
    class_counts: Dict[int, int] = field(default_factory=dict)  # images containing each class

    def fingerprint(self) -> str:
        """Hash of names and pixel content: the 'image list' part of the calibration-cache key."""
        h = hashlib.sha256()
        for name in self.names:
            h.update(name.encode() + b"\0")
        h.update(np.ascontiguousarray(self.frames).tobytes())
        return h.hexdigest()


@dataclass
class _Candidate:
    name: str
    load: Callable[[], Tuple[np.ndarray, Optional[np.ndarray]]]  # -> (image BGR, mask or None)


def _read_image(path: Path) -> np.ndarray:
    try:
        from ..data.imageio import read_image
    except ImportError:  # pragma: no cover - data package always present in this repo
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"'{path}' is not a readable image")
        return img
    return read_image(path)


def _files_candidates(paths: Sequence[Path]) -> List[_Candidate]:
    return [_Candidate(str(p), (lambda p=p: (_read_image(p), None))) for p in paths]


def _manifest_paths(manifest: Path) -> List[Path]:
    paths = []
    for line in manifest.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            p = Path(line)
            paths.append(p if p.is_absolute() else manifest.parent / p)
    if not paths:
        raise UserError(f"manifest '{manifest}' lists no image paths; write one image path per line")
    return paths


def _dataset_candidates(source: Path, split: str) -> Optional[List[_Candidate]]:
    """Samples of a segmentation dataset (with masks), or None when the folder is not one."""
    try:
        from ..data import open_dataset
    except ImportError:
        return None
    try:
        ds = open_dataset(source, split=split)
    except UserError:
        return None
    names = list(getattr(ds, "names", [str(i) for i in range(len(ds))]))

    def loader(i: int) -> Callable[[], Tuple[np.ndarray, Optional[np.ndarray]]]:
        def load() -> Tuple[np.ndarray, Optional[np.ndarray]]:
            s = ds[i]
            return s.image, s.mask
        return load

    return [_Candidate(f"{split}/{names[i]}", loader(i)) for i in range(len(ds))]


def find_candidates(source: str, split: str = "train") -> Tuple[List[_Candidate], str]:
    """All usable inputs of a source and a word saying what kind of source it was."""
    path = Path(source)
    if not path.exists():
        raise UserError(f"calibration data '{source}' does not exist; pass a dataset folder, an image folder "
                        "or a manifest file")
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            raise UserError(f"'{source}' is a single image; pass a folder of images or a manifest listing many")
        return _files_candidates(_manifest_paths(path)), "manifest"
    ds = _dataset_candidates(path, split)
    if ds:
        return ds, "dataset"
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under '{source}'; pass the dataset root "
                        f"(M-BSD layout img_dir/{split}), an image folder, or a manifest file")
    return _files_candidates(files), "folder"


def select_calibration_set(
    source: str,
    size_hw: Tuple[int, int],
    num_images: int = 64,
    seed: int = 0,
    split: str = "train",
    num_classes: int = 4,
    min_images: Optional[int] = None,
) -> CalibrationSet:
    """Deterministic, class-stratified choice of `num_images` frames; corrupt files are skipped and counted.

    With masks (dataset sources) the images are taken round-robin over the defect classes
    (1..K-1), each class from its own seeded shuffle, then topped up with the rest; without masks
    it is a seeded shuffle. Fails when fewer than `min_images` (default min(8, N)) could be read.
    """
    if num_images < 1:
        raise UserError(f"--num-images must be at least 1 (got {num_images})")
    candidates, kind = find_candidates(source, split)
    rng = np.random.default_rng(seed)
    order = [candidates[i] for i in rng.permutation(len(candidates))]
    min_images = min(8, num_images) if min_images is None else min_images
    skipped: List[Tuple[str, str]] = []
    loaded: Dict[str, Tuple[np.ndarray, Set[int]]] = {}  # name -> (frame at model size, classes present)

    def try_load(c: _Candidate) -> bool:
        if c.name in loaded:
            return True
        try:
            img, mask = c.load()
        except UserError as exc:
            skipped.append((c.name, str(exc)))
            return False
        present = set() if mask is None else {int(k) for k in np.unique(mask) if int(k) < num_classes}
        loaded[c.name] = (resize_frame(img, size_hw), present)
        return True

    chosen: List[str] = []
    if kind == "dataset":
        scan = [c for c in order[:MAX_SCAN] if try_load(c)]
        by_class: Dict[int, List[str]] = {k: [] for k in range(1, num_classes)}
        for c in scan:
            for k in loaded[c.name][1] - {0}:
                by_class[k].append(c.name)
        queues = {k: list(v) for k, v in by_class.items() if v}
        while len(chosen) < num_images and any(queues.values()):
            for k in sorted(queues):
                while queues[k] and queues[k][0] in chosen:
                    queues[k].pop(0)
                if queues[k] and len(chosen) < num_images:
                    chosen.append(queues[k].pop(0))
        for c in scan:
            if len(chosen) >= num_images:
                break
            if c.name not in chosen:
                chosen.append(c.name)
    else:
        for c in order:
            if len(chosen) >= num_images:
                break
            if try_load(c):
                chosen.append(c.name)
    if len(chosen) < min_images:
        detail = "; ".join(f"{n}: {r}" for n, r in skipped[:3])
        raise UserError(f"only {len(chosen)} readable calibration images in '{source}' (need at least {min_images}; "
                        f"{len(skipped)} unreadable{': ' + detail if detail else ''}); "
                        "add images or lower --num-images")
    frames = np.stack([loaded[n][0] for n in chosen])
    counts: Dict[int, int] = {}
    for n in chosen:
        for k in loaded[n][1]:
            counts[k] = counts.get(k, 0) + 1
    return CalibrationSet(chosen, frames, skipped, counts)
