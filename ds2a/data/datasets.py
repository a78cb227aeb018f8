"""Segmentation dataset readers: M-BSD (`img_dir`/`ann_dir`), Crack-500 (`*_mask.png`) and plain folders.

Every reader yields `Sample(image BGR uint8, mask uint8 class indices, name)`; 255 in a mask
means "ignore". Bad files raise `UserError` naming the file and the fix. A training run that
would rather drop bad files than stop passes `on_error="skip"`: unpaired files are left out at
construction and unreadable/mismatched samples are skipped when loaded; each one is warned
about once and listed in `dataset.skipped` (see `dataset.summary()`).

Folder datasets without split folders get a fixed split from `split_names`: sorted names,
every `test_every`-th (default 5th: index 4, 9, 14, ...) goes to test, every other `test_every`-th
of the rest (index 3, 13, 23, ...) to val (for choosing checkpoints), the remainder to train.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from ..meta import MBSD_CLASSES, default_palette
from .imageio import IMAGE_SUFFIXES, PathLike, read_image, read_mask

logger = logging.getLogger(__name__)

IGNORE_INDEX = 255
ON_ERROR_CHOICES = ("raise", "skip")
RULE_SPLITS = ("train", "test", "val", "all")


@dataclass
class Sample:
    """One training/eval example: BGR uint8 (H, W, 3), class-index mask uint8 (H, W), file stem."""

    image: np.ndarray
    mask: np.ndarray
    name: str


def split_names(names: Sequence[str], split: str, test_every: int = 5) -> List[str]:
    """The documented fixed split for folders without split folders.

    Names are sorted; the one at 0-based index i is test when `i % test_every == test_every - 1`
    (every 5th by default), val when `i % (2 * test_every) == test_every - 2` (every 10th by
    default, never a test name), train otherwise. "all" keeps all. Val is for choosing the
    checkpoint, so test is scored once, by a model that never saw it.
    """
    if split not in RULE_SPLITS:
        raise UserError(f"unknown split '{split}'; use one of {', '.join(RULE_SPLITS)}")
    if test_every < 2:
        raise UserError(f"test_every must be at least 2 (got {test_every})")
    ordered = sorted(names)
    if split == "all":
        return ordered

    def which(i: int) -> str:
        if i % test_every == test_every - 1:
            return "test"
        return "val" if i % (2 * test_every) == test_every - 2 else "train"

    return [n for i, n in enumerate(ordered) if which(i) == split]


def _few(items: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(items[:k])
    return shown + (f", ... ({len(items)} in all)" if len(items) > k else "")


def _images_in(folder: Path) -> Dict[str, Path]:
    """stem -> path of every image file in a folder (first suffix in IMAGE_SUFFIXES order wins)."""
    found: Dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(p.stem, p)
    return found


def _require_dir(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise UserError(f"'{folder}' does not exist or is not a folder; {what}")


class SegmentationDataset:
    """Paired image/mask files with class names; indexing loads and validates one sample."""

    def __init__(
        self,
        image_paths: Sequence[Path],
        mask_paths: Sequence[Path],
        classes: Sequence[str],
        root: PathLike = "",
        split: str = "",
        palette: Optional[Sequence[Tuple[int, int, int]]] = None,
        on_error: str = "raise",
    ) -> None:
        if on_error not in ON_ERROR_CHOICES:
            raise UserError(f"on_error must be one of {ON_ERROR_CHOICES} (got '{on_error}')")
        if len(image_paths) != len(mask_paths):
            raise ValueError("image_paths and mask_paths must have the same length")
        self.root = Path(root)
        self.split = split
        self.image_paths = [Path(p) for p in image_paths]
        self.mask_paths = [Path(p) for p in mask_paths]
        self.names = [p.stem for p in self.image_paths]
        self.classes = list(classes)
        if len(self.classes) < 2:
            raise UserError(f"a segmentation dataset needs at least 2 classes (got {self.classes})")
        self.palette = [tuple(int(v) for v in c) for c in (palette or default_palette(len(self.classes)))]
        self.on_error = on_error
        self.skipped: Dict[str, str] = {}
        if not self.image_paths:
            where = f"split '{split}' of '{self.root}'" if split else f"'{self.root}'"
            raise UserError(f"{where} has no image/mask pairs; check the path and split, "
                            f"or write a dataset with `ds2a synth`")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.image_paths)

    def convert_mask(self, mask: np.ndarray, path: Path) -> np.ndarray:
        """Stored mask values -> class indices (identity here; Crack-500 maps 255 -> 1)."""
        return mask

    def load(self, index: int) -> Sample:
        """Load and validate sample `index`; always raises UserError on a bad file."""
        img_path, mask_path = self.image_paths[index], self.mask_paths[index]
        image = read_image(img_path)
        mask = self.convert_mask(read_mask(mask_path), mask_path)
        if image.shape[:2] != mask.shape[:2]:
            raise UserError(
                f"'{img_path}' is {image.shape[0]}x{image.shape[1]} but its mask '{mask_path}' is "
                f"{mask.shape[0]}x{mask.shape[1]} (HxW); masks must match their image pixel for pixel: "
                "re-export the mask at the image size")
        bad = mask[(mask >= self.num_classes) & (mask != IGNORE_INDEX)]
        if bad.size:
            values = sorted(int(v) for v in np.unique(bad))
            raise UserError(
                f"'{mask_path}' has labels {values[:10]} outside 0..{self.num_classes - 1} "
                f"(classes: {', '.join(self.classes)}); fix the mask, or give enough class names "
                f"(classes=... or a classes.txt beside images), 255 marks ignored pixels")
        return Sample(image=image, mask=mask, name=self.names[index])

    def __getitem__(self, index: int) -> Sample:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(index)
        index %= n
        if self.on_error == "raise":
            return self.load(index)
        for k in range(n):
            j = (index + k) % n
            if self.names[j] in self.skipped:
                continue
            try:
                return self.load(j)
            except UserError as exc:
                self._skip(self.names[j], str(exc))
        raise UserError(f"every file in '{self.root}' split '{self.split}' is unusable "
                        f"({len(self.skipped)} skipped); first problem: {next(iter(self.skipped.values()))}")

    def __iter__(self) -> Iterator[Sample]:
        if self.on_error == "raise":
            for i in range(len(self)):
                yield self.load(i)
            return
        for i in range(len(self)):
            if self.names[i] in self.skipped:
                continue
            try:
                yield self.load(i)
            except UserError as exc:
                self._skip(self.names[i], str(exc))
        if self.skipped:
            logger.warning(self.summary())

    def _skip(self, name: str, reason: str) -> None:
        if name not in self.skipped:
            self.skipped[name] = reason
            logger.warning(f"skipping {reason}")

    def summary(self) -> str:
        """One line: how many samples were skipped, and why (first few)."""
        if not self.skipped:
            return f"{len(self)} samples, none skipped"
        return (f"skipped {len(self.skipped)} of {len(self)} samples in '{self.root}' ({self.split}): "
                + "; ".join(list(self.skipped.values())[:3]))

    def check(self) -> List[str]:
        """Load every sample; return the problems found (empty list = clean). For `--check`-style use."""
        problems = []
        for i in range(len(self)):
            try:
                self.load(i)
            except UserError as exc:
                problems.append(str(exc))
        return problems

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root='{self.root}', split='{self.split}', "
                f"n={len(self)}, classes={self.classes})")


def _pair(
    images: Dict[str, Path], masks: Dict[str, Path], image_dir: Path, mask_dir: Path, on_error: str,
) -> Tuple[List[Path], List[Path]]:
    """Match image and mask files by stem; unmatched ones are an error (or dropped with a warning)."""
    no_mask = sorted(set(images) - set(masks))
    no_image = sorted(set(masks) - set(images))
    problems = []
    if no_mask:
        problems.append(f"{len(no_mask)} image(s) in '{image_dir}' have no mask in '{mask_dir}' "
                        f"({_few([images[n].name for n in no_mask])})")
    if no_image:
        problems.append(f"{len(no_image)} mask(s) in '{mask_dir}' have no image in '{image_dir}' "
                        f"({_few([masks[n].name for n in no_image])})")
    if problems:
        text = "; ".join(problems)
        if on_error == "raise":
            raise UserError(f"{text}; add the missing files or remove the extra ones "
                            "(or load with on_error='skip' to leave them out)")
        logger.warning(f"leaving out unpaired files: {text}")
    common = sorted(set(images) & set(masks))
    return [images[n] for n in common], [masks[n] for n in common]


def _classes_txt(folder: Path) -> Optional[List[str]]:
    path = folder / "classes.txt"
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"'{path}' is not UTF-8 text (byte {exc.start}); save it as UTF-8, one class name per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) < 2:
        raise UserError(f"'{path}' lists {len(names)} class(es); write one class name per line, background first")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"'{path}' lists {', '.join(twice)} more than once; every class needs its own name")
    return names


def _classes_from_source_md(folder: Path) -> Optional[List[str]]:
    """Read a markdown table with 'class' and 'mask value' columns (as in our real-data SOURCE.md files)."""
    path = folder / "SOURCE.md"
    if not path.is_file():
        return None
    by_value: Dict[int, str] = {}
    cols: Optional[Tuple[int, int]] = None
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip().startswith("|"):
            cols = None if not line.strip() else cols
            continue
        cells = [c.strip().lower() for c in line.strip().strip("|").split("|")]
        if "class" in cells and "mask value" in cells:
            cols = (cells.index("class"), cells.index("mask value"))
        elif cols and max(cols) < len(cells) and re.fullmatch(r"\d+", cells[cols[1]]):
            by_value[int(cells[cols[1]])] = cells[cols[0]]
    if not by_value:
        return None
    names = [by_value.get(i, f"class_{i}") for i in range(max(by_value) + 1)]
    names[0] = "background"
    return names if len(names) >= 2 else None


def _classes_from_masks(mask_paths: Sequence[Path]) -> List[str]:
    """Class names inferred from the mask values, which must be the contiguous ids 0..K-1 (255 = ignore).

    A gap (e.g. ids 0, 1 and one stray 200) would make a 201-class model out of a typo, so it is
    refused naming the file that holds the first value past the gap.
    """
    first_seen: Dict[int, Path] = {}
    for p in mask_paths:
        for v in np.unique(read_mask(p)):
            if int(v) != IGNORE_INDEX:
                first_seen.setdefault(int(v), p)
    values = sorted(first_seen) or [0]
    top = max(1, values[-1])
    missing = [i for i in range(1, top) if i not in first_seen]
    if missing:
        stray = next(v for v in values if v > missing[0])
        raise UserError(
            f"'{first_seen[stray]}' has mask value {stray}, but no mask uses {_few([str(i) for i in missing])}; "
            f"a stray value would make a {top + 1}-class model. Fix the mask (255 marks ignored pixels), or "
            "list every class in a classes.txt in the dataset folder (one name per line, background first)")
    return ["background"] + [f"class_{i}" for i in range(1, top + 1)]


class MBSDDataset(SegmentationDataset):
    """M-BSD / mmsegmentation layout: `img_dir/<split>/*.jpg` + `ann_dir/<split>/*.png` (0..3)."""

    def __init__(self, root: PathLike, split: str = "train", classes: Optional[Sequence[str]] = None,
                 on_error: str = "raise") -> None:
        root = Path(root)
        img_dir, ann_dir = root / "img_dir" / split, root / "ann_dir" / split
        layout = "expected M-BSD layout img_dir/{train,test}/*.jpg with ann_dir/{train,test}/*.png"
        if not img_dir.is_dir() and (root / "img_dir").is_dir():
            have = sorted(p.name for p in (root / "img_dir").iterdir() if p.is_dir())
            raise UserError(f"'{img_dir}' does not exist; splits present: {', '.join(have) or 'none'}; "
                            f"pick one with --split")
        _require_dir(img_dir, layout)
        _require_dir(ann_dir, layout)
        masks = {p.stem: p for p in sorted(ann_dir.glob("*.png")) if p.is_file()}
        images, masks_p = _pair(_images_in(img_dir), masks, img_dir, ann_dir, on_error)
        classes = list(classes) if classes else (_classes_txt(root) or list(MBSD_CLASSES))
        super().__init__(images, masks_p, classes, root, split, on_error=on_error)


class Crack500Dataset(SegmentationDataset):
    """Crack-500: `NAME.jpg` beside `NAME_mask.png` (0/255), in split folders or one flat folder.

    Split folders tried: `<split>`, `<split>crop` (the official `traincrop/testcrop/valcrop`).
    A flat folder uses the `split_names` rule. Masks are converted per file by the rule in
    `convert_mask` (0/255 -> crack = 1; class ids kept with 255 = ignore; ambiguous values refused).
    """

    SPLIT_DIRS: ClassVar[Dict[str, Tuple[str, ...]]] = {
        "train": ("train", "traincrop"), "test": ("test", "testcrop"), "val": ("val", "valcrop"),
    }

    def __init__(self, root: PathLike, split: str = "train", classes: Optional[Sequence[str]] = None,
                 on_error: str = "raise", test_every: int = 5) -> None:
        root = Path(root)
        _require_dir(root, "expected a Crack-500 folder with NAME.jpg + NAME_mask.png files")
        folder = next((root / d for d in self.SPLIT_DIRS.get(split, ()) if (root / d).is_dir()), None)
        rule = folder is None
        folder = folder or root
        masks = {p.name[: -len("_mask.png")]: p for p in sorted(folder.glob("*_mask.png")) if p.is_file()}
        images = {s: p for s, p in _images_in(folder).items() if not s.endswith("_mask")}
        if rule:
            keep = set(split_names(sorted(set(images) | set(masks)), split, test_every))
            images = {s: p for s, p in images.items() if s in keep}
            masks = {s: p for s, p in masks.items() if s in keep}
        image_paths, mask_paths = _pair(images, masks, folder, folder, on_error)
        classes = list(classes) if classes else (_classes_txt(root) or ["background", "crack"])
        super().__init__(image_paths, mask_paths, classes, root, split, on_error=on_error)

    def convert_mask(self, mask: np.ndarray, path: Path) -> np.ndarray:
        """Per-file rule, so no pixel changes meaning silently:

        - values within 0..K-1 (plus 255) with a crack id present: class ids, 255 stays ignore;
        - only 0 and 255: the Crack-500 convention, 255 = crack;
        - 255 with grey values between (anti-aliased edges of a 0/255 mask): crack where >= 128;
        - anything else (e.g. 0/2) is ambiguous and refused, naming the file and its values.
        """
        values = np.unique(mask)
        k = self.num_classes
        if all(v < k or v == IGNORE_INDEX for v in values) and any(0 < v < k for v in values):
            return mask
        if all(v in (0, 255) for v in values):
            return (mask == 255).astype(np.uint8)
        grey = [int(v) for v in values if 1 < v < 255]
        if values[-1] == 255 and grey:
            return (mask >= 128).astype(np.uint8)
        shown = [int(v) for v in values[:10]]
        raise UserError(f"'{path}' has mask values {shown}, which are neither Crack-500's 0/255 (255 = crack) nor "
                        f"class ids 0..{k - 1} (with 255 = ignore); re-export the mask as 0/255, or give the classes "
                        "in a classes.txt beside the images")


class FolderDataset(SegmentationDataset):
    """Generic `images/NAME.{jpg,png,bmp}` + `masks/NAME.png` (grayscale images become BGR).

    Split layouts: `<split>/images` + `<split>/masks`, or `images/<split>` + `masks/<split>`;
    otherwise one `images/` + `masks/` pair split by `split_names` (every 5th sorted name to test).
    Classes: given, else `classes.txt`, else the class table of a `SOURCE.md`, else inferred from
    the largest mask value (`background, class_1, ...`).
    """

    def __init__(self, root: PathLike, split: str = "train", classes: Optional[Sequence[str]] = None,
                 on_error: str = "raise", test_every: int = 5) -> None:
        root = Path(root)
        layout = "expected images/NAME.jpg|png|bmp with masks/NAME.png"
        _require_dir(root, layout)
        candidates = [(root / split / "images", root / split / "masks"),
                      (root / "images" / split, root / "masks" / split)]
        found = next(((i, m) for i, m in candidates if i.is_dir() and m.is_dir()), None)
        if found:
            image_dir, mask_dir = found
        else:
            image_dir, mask_dir = root / "images", root / "masks"
            _require_dir(image_dir, layout)
            _require_dir(mask_dir, layout)
        images = _images_in(image_dir)
        masks = {p.stem: p for p in sorted(mask_dir.glob("*.png")) if p.is_file()}
        if not found:
            keep = set(split_names(sorted(set(images) | set(masks)), split, test_every))
            images = {s: p for s, p in images.items() if s in keep}
            masks = {s: p for s, p in masks.items() if s in keep}
        image_paths, mask_paths = _pair(images, masks, image_dir, mask_dir, on_error)
        if classes:
            names = list(classes)
        else:
            names = _classes_txt(root) or _classes_from_source_md(root)
            if names is None:
                all_masks = sorted(p for p in mask_dir.glob("*.png") if p.is_file())
                names = _classes_from_masks(all_masks) if all_masks else ["background", "class_1"]
        super().__init__(image_paths, mask_paths, names, root, split, on_error=on_error)


LAYOUTS = ("M-BSD: img_dir/<split>/*.jpg + ann_dir/<split>/*.png; "
           "Crack-500: NAME.jpg + NAME_mask.png (optionally in train/test or traincrop/testcrop); "
           "folder: images/NAME.jpg + masks/NAME.png")


def detect_layout(path: PathLike) -> str:
    """'mbsd', 'crack500' or 'folder' for a dataset root, from the files it holds."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"dataset '{root}' does not exist; expected one of: {LAYOUTS}")
    if not root.is_dir():
        raise UserError(f"dataset '{root}' is a file; give the dataset folder ({LAYOUTS})")
    if (root / "img_dir").is_dir() or (root / "ann_dir").is_dir():
        return "mbsd"
    if (root / "images").is_dir() or (root / "masks").is_dir() or any(
            (d / "images").is_dir() for d in root.iterdir() if d.is_dir()):
        return "folder"
    if any(root.glob("*_mask.png")) or any(root.glob("*/*_mask.png")):
        return "crack500"
    raise UserError(f"cannot tell the layout of '{root}'; expected one of: {LAYOUTS}")


def open_dataset(path: PathLike, split: str = "train", classes: Optional[Sequence[str]] = None,
                 on_error: str = "raise", test_every: int = 5) -> SegmentationDataset:
    """Open any supported dataset folder, detecting its layout (see `detect_layout`)."""
    kind = detect_layout(path)
    if kind == "mbsd":
        return MBSDDataset(path, split, classes, on_error)
    if kind == "crack500":
        return Crack500Dataset(path, split, classes, on_error, test_every)
    return FolderDataset(path, split, classes, on_error, test_every)
