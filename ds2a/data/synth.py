"""Synthetic battery-cell surfaces with pixel-exact defect masks (M-BSD classes), numpy + OpenCV only.

Real M-BSD data is distributed on request only, so tests, demos and the `demo://` camera use
this generator. Each defect is drawn as a mask first and the image is changed only inside that
mask, so labels match the picture exactly. Classes (M-BSD order): 0 background, 1 damage
(dents, scratches, cracks), 2 smudge (soft dark blobs and wipe streaks), 3 dust (small bright
or dark specks and fibres). About 15 % of cells are clean. Layering: smudge, damage, dust on top.
"""
from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import cv2
import numpy as np

from ..errors import UserError
from ..meta import MBSD_CLASSES
from ..options_check import check_fields
from .imageio import write_image

BACKGROUND, DAMAGE, SMUDGE, DUST = 0, 1, 2, 3
CLEAN_FRACTION = 0.15
MAX_SIDE = 8192  # beyond this one image alone needs gigabytes


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled with bicubic interpolation."""
    gh, gw = max(2, h // cells), max(2, w // cells)
    small = rng.uniform(-1, 1, (gh, gw)).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _streaks(rng: np.random.Generator, side: int, length: float) -> np.ndarray:
    """Row-wise independent noise, smooth along x over about `length` pixels (cheap: upsampled)."""
    cols = max(4, int(side / length))
    small = rng.standard_normal((side, cols)).astype(np.float32)
    return cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)


def _brushed(rng: np.random.Generator, h: int, w: int, angle_deg: float) -> np.ndarray:
    """Anisotropic noise (unit std) whose streaks run along `angle_deg`: brushed / rolled metal."""
    side = math.ceil(math.hypot(h, w)) + 2
    streak = _streaks(rng, side, rng.uniform(6, 20)) + 0.5 * _streaks(rng, side, rng.uniform(30, 60))
    streak = cv2.blur(streak, (1, 2))  # scratches of the brush are ~2 px wide
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), angle_deg, 1.0)
    rot[0, 2] -= (side - w) / 2
    rot[1, 2] -= (side - h) / 2
    out = cv2.warpAffine(streak, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out / (out.std() + 1e-6)


def _soft_blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; wide ones run at reduced resolution (same look, a fraction of the time)."""
    if sigma <= 4:
        return cv2.GaussianBlur(a, (0, 0), sigma)
    h, w = a.shape[:2]
    f = int(sigma // 2)
    small = cv2.resize(a, (max(1, w // f), max(1, h // f)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigma / f)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _surface(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray, float]:
    """Defect-free cell: float32 BGR image, bool cell region, brushing angle (degrees)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = float(rng.choice([0.0, 90.0]) + rng.normal(0, 4))
    base = rng.uniform(95, 175)
    lum = np.full((h, w), base, np.float32)
    lum += rng.uniform(3, 9) * _brushed(rng, h, w, angle)
    lum += rng.uniform(2, 8) * _smooth_noise(rng, h, w, int(rng.integers(24, 64)))
    # lighting gradient across the part and a soft vignette
    theta = rng.uniform(0, 2 * math.pi)
    ramp = ((xx - w / 2) * math.cos(theta) + (yy - h / 2) * math.sin(theta)) / max(h, w)
    lum += rng.uniform(10, 45) * ramp
    r2 = ((xx - w / 2) / w) ** 2 + ((yy - h / 2) / h) ** 2
    lum -= rng.uniform(0, 30) * r2
    # specular bands along the brushing direction (a cylindrical cell reflects the lamp as a stripe)
    a = math.radians(angle)
    across = -(xx - w / 2) * math.sin(a) + (yy - h / 2) * math.cos(a)
    for _ in range(int(rng.integers(0, 3))):
        centre = rng.uniform(-0.5, 0.5) * max(h, w)
        width = rng.uniform(0.02, 0.15) * max(h, w)
        amp = rng.uniform(15, 60) * (1 if rng.random() < 0.75 else -0.6)
        lum += amp * np.exp(-0.5 * ((across - centre) / width) ** 2)
    # cell outline: a rounded rectangle whose sides may fall outside the picture
    region, rim = _cell_outline(rng, h, w, xx, yy)
    lum += rim
    tint = np.array([1.0, 1.0, 1.0], np.float32) + rng.normal(0, 0.02, 3).astype(np.float32)
    img = lum[..., None] * tint
    bg = rng.uniform(15, 55)
    conveyor = bg + 4 * _smooth_noise(rng, h, w, 16)
    img[~region] = conveyor[~region, None] * np.array([1.0, 1.02, 1.05], np.float32)
    return img, region, angle


def _cell_outline(rng: np.random.Generator, h: int, w: int, xx: np.ndarray, yy: np.ndarray
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """Region inside the cell and the bevel shading near its edge (bright rim, darker lip)."""
    def side(size: int) -> float:
        return rng.uniform(0.04, 0.2) * size if rng.random() < 0.12 else -rng.uniform(0.3, 1.0) * size

    x0, y0, x1, y1 = side(w), side(h), w - 1 - side(w), h - 1 - side(h)
    rad = rng.uniform(0.03, 0.15) * min(h, w)
    dx = np.maximum(np.maximum(x0 + rad - xx, xx - (x1 - rad)), 0)
    dy = np.maximum(np.maximum(y0 + rad - yy, yy - (y1 - rad)), 0)
    dist = np.sqrt(dx * dx + dy * dy) - rad  # < 0 inside the cell
    region = dist < 0
    bevel = rng.uniform(2, 6)
    rim = rng.uniform(25, 60) * np.exp(-0.5 * ((dist + bevel) / (0.5 * bevel)) ** 2)
    rim -= rng.uniform(10, 25) * np.exp(-0.5 * ((dist + 2.5 * bevel) / bevel) ** 2)
    return region, rim.astype(np.float32)


def _line_mask(h: int, w: int, pts: np.ndarray, thickness: int) -> np.ndarray:
    canvas = np.zeros((h, w), np.uint8)
    cv2.polylines(canvas, [pts.astype(np.int32).reshape(-1, 1, 2)], False, 1, int(thickness), cv2.LINE_8)
    return canvas.astype(bool)


def _dent(rng: np.random.Generator, h: int, w: int, scale: float, light: float
          ) -> Tuple[np.ndarray, np.ndarray]:
    """Elliptic dent: shading from the slope of a bump under a directional light."""
    cy, cx = rng.uniform(0, h), rng.uniform(0, w)
    ra = rng.uniform(4, 50) * scale
    rb = ra * rng.uniform(0.4, 1.0)
    phi = rng.uniform(0, math.pi)
    y0, y1 = int(max(cy - ra - 2, 0)), int(min(cy + ra + 3, h))
    x0, x1 = int(max(cx - ra - 2, 0)), int(min(cx + ra + 3, w))
    region = np.zeros((h, w), bool)
    effect = np.zeros((h, w), np.float32)
    if y1 <= y0 or x1 <= x0:
        return region, effect
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u = ((xx - cx) * math.cos(phi) + (yy - cy) * math.sin(phi)) / ra
    v = (-(xx - cx) * math.sin(phi) + (yy - cy) * math.cos(phi)) / rb
    r2 = u * u + v * v
    inside = r2 < 1.0
    height = -np.exp(-2.5 * r2)  # a dent: negative height
    gy, gx = np.gradient(height)
    shade = (gx * math.cos(light) + gy * math.sin(light)) * (ra * 1.2)
    strength = rng.uniform(15, 50)
    local = strength * np.clip(shade, -1.5, 1.5) - rng.uniform(3, 15) * (-height)
    region[y0:y1, x0:x1] = inside
    effect[y0:y1, x0:x1] = np.where(inside, local, 0)
    return region, effect


def _scratch(rng: np.random.Generator, h: int, w: int, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """Thin, almost straight line, bright (cut through the coating) or dark."""
    length = rng.uniform(0.1, 0.7) * max(h, w)
    a = rng.uniform(0, math.pi)
    p0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    n = int(rng.integers(2, 5))
    t = np.linspace(0, 1, n)[:, None]
    pts = p0 + t * length * np.array([math.cos(a), math.sin(a)])
    pts += rng.normal(0, 0.02 * length, pts.shape) * (t * (1 - t) * 4)
    region = _line_mask(h, w, pts, max(1, round(rng.uniform(1.0, 3.4) * scale)))
    amp = rng.uniform(25, 70) * (1 if rng.random() < 0.55 else -1)
    along = 0.6 + 0.4 * np.abs(_smooth_noise(rng, h, w, 32))
    return region, np.where(region, amp * along, 0).astype(np.float32)


def _crack(rng: np.random.Generator, h: int, w: int, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """Dark branching polyline (random walk with a persistent heading)."""
    region = np.zeros((h, w), bool)
    start = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h])
    heading = rng.uniform(0, 2 * math.pi)
    n_branches = int(rng.integers(1, 4))
    step = max(2.0, 4.0 * scale)
    trunk = start[None]
    for b in range(n_branches):
        p = start.copy() if b == 0 else trunk[int(rng.integers(len(trunk)))].copy()
        hd = heading if b == 0 else heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        steps = int(rng.integers(6, 30) * (1.0 if b == 0 else 0.6))
        trail = [p.copy()]
        for _ in range(steps):
            hd += rng.normal(0, 0.25)
            p = p + step * np.array([math.cos(hd), math.sin(hd)])
            trail.append(p.copy())
        if b == 0:
            trunk = np.array(trail)
        region |= _line_mask(h, w, np.array(trail), max(1, round(rng.uniform(1.0, 3.0) * scale)))
    depth = rng.uniform(35, 90)
    return region, np.where(region, -depth, 0).astype(np.float32)


def _smudge(rng: np.random.Generator, h: int, w: int, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """Oily film: soft blob cluster or a wipe streak; low contrast, thresholded for the label."""
    alpha = np.zeros((h, w), np.float32)
    if rng.random() < 0.6:
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        size = rng.uniform(8, 60) * scale
        for _ in range(int(rng.integers(1, 5))):
            c = (int(cx + rng.normal(0, size * 0.6)), int(cy + rng.normal(0, size * 0.6)))
            axes = (max(2, int(size * rng.uniform(0.4, 1.0))), max(2, int(size * rng.uniform(0.3, 0.9))))
            cv2.ellipse(alpha, c, axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        blur = size * 0.35
    else:
        a = rng.uniform(0, math.pi)
        length = rng.uniform(0.2, 0.8) * max(h, w)
        p0 = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        t = np.linspace(0, 1, 5)[:, None]
        pts = p0 + t * length * np.array([math.cos(a), math.sin(a)])
        pts += rng.normal(0, 0.05 * length, pts.shape)
        thick = max(3, int(rng.uniform(4, 18) * scale))
        cv2.polylines(alpha, [pts.astype(np.int32).reshape(-1, 1, 2)], False, 1.0, thick, cv2.LINE_AA)
        blur = thick * 0.5
    alpha = _soft_blur(alpha, max(blur, 1.0))
    alpha *= 0.75 + 0.25 * _smooth_noise(rng, h, w, 12)
    region = alpha > 0.35
    strength = rng.uniform(16, 40)
    return region, np.where(region, -strength * np.minimum(alpha, 1.0), 0).astype(np.float32)


def _dust(rng: np.random.Generator, h: int, w: int, scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """Scattered specks (1-4 px) and the odd fibre; each bright or dark."""
    region = np.zeros((h, w), bool)
    effect = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(3, 30))):
        m = np.zeros((h, w), np.uint8)
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        if rng.random() < 0.12:  # fibre
            heading = rng.uniform(0, 2 * math.pi) + np.cumsum(rng.normal(0, 0.6, 4))
            step = rng.uniform(2, 6) * scale
            pts = np.array(c, np.float64) + np.cumsum(
                np.stack([np.zeros(2)] + [step * np.array([math.cos(t), math.sin(t)]) for t in heading]), axis=0)
            cv2.polylines(m, [pts.astype(np.int32).reshape(-1, 1, 2)], False, 1, 1, cv2.LINE_8)
        else:
            r = int(max(0, round(rng.uniform(0.6, 3.4) * scale)))
            cv2.circle(m, c, r, 1, -1, cv2.LINE_8)
            if r > 0 and rng.random() < 0.5:  # irregular clump
                cv2.circle(m, (c[0] + int(rng.integers(-r, r + 1)), c[1] + int(rng.integers(-r, r + 1))),
                           max(0, r - 1), 1, -1, cv2.LINE_8)
        sel = m.astype(bool)
        amp = rng.uniform(35, 100) * (1 if rng.random() < 0.5 else -1)
        region |= sel
        effect[sel] = amp
    return region, effect


def compose_cell(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean surface, surface with defects, mask) as float32 BGR before sensor noise.

    Kept separate so a test can prove that pixels outside the mask are untouched.
    """
    scale = min(h, w) / 256.0
    clean, region, _ = _surface(rng, h, w)
    img = clean.copy()
    mask = np.zeros((h, w), np.uint8)
    if rng.random() >= CLEAN_FRACTION:
        light = rng.uniform(0, 2 * math.pi)
        present = rng.random(3) < (0.6, 0.5, 0.55)  # damage, smudge, dust
        if not present.any():
            present[int(rng.integers(3))] = True
        layers: List[Tuple[int, Tuple[np.ndarray, np.ndarray], bool]] = []
        if present[1]:
            for _ in range(int(rng.integers(1, 3))):
                layers.append((SMUDGE, _smudge(rng, h, w, scale), True))
        if present[0]:
            for _ in range(int(rng.integers(1, 4))):
                kind = rng.choice(3, p=(0.35, 0.35, 0.3))
                part = (_dent(rng, h, w, scale, light) if kind == 0 else
                        _scratch(rng, h, w, scale) if kind == 1 else _crack(rng, h, w, scale))
                layers.append((DAMAGE, part, False))
        if present[2]:
            layers.append((DUST, _dust(rng, h, w, scale), False))
        dull = cv2.GaussianBlur(img, (0, 0), 2.0) if present[1] else None
        for cls, (where, effect), is_smudge in layers:
            where = where & region
            if not where.any():
                continue
            if is_smudge and dull is not None:  # an oily film also dulls the brushed texture
                k = np.clip(-effect / 35.0, 0, 1)[..., None] * where[..., None]
                img = img * (1 - 0.6 * k) + dull * (0.6 * k)
            tint = np.array([1.1, 1.0, 0.85], np.float32) if is_smudge else np.ones(3, np.float32)
            img += (effect * where)[..., None] * tint
            mask[where] = cls
    return clean, img, mask


def render_cell(rng: np.random.Generator, size_hw: Tuple[int, int] = (256, 256)
                ) -> Tuple[np.ndarray, np.ndarray]:
    """One synthetic cell surface: (BGR uint8 (H, W, 3), mask uint8 (H, W) with M-BSD class indices)."""
    h, w = int(size_hw[0]), int(size_hw[1])
    _, img, mask = compose_cell(rng, h, w)
    img += rng.normal(0, rng.uniform(1.0, 3.0), (h, w, 1)).astype(np.float32)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8), mask


def write_dataset(out: Union[str, Path], n_train: int, n_test: int, size_hw: Tuple[int, int] = (256, 256),
                  seed: int = 0, n_val: int = 0) -> Dict[str, np.ndarray]:
    """Write an M-BSD layout dataset (jpg q95 + png masks); returns per-split class pixel counts.

    Each image has its own generator seeded from (seed, split, index): the same seed gives the
    same bytes, and image i does not depend on how many others were asked for. The val split
    (for choosing checkpoints; written only when `n_val` > 0) has its own stream, so adding it
    leaves train and test byte-identical.
    """
    out = Path(out)
    counts: Dict[str, np.ndarray] = {}
    splits = [(0, "train", n_train), (1, "test", n_test)] + ([(2, "val", n_val)] if n_val > 0 else [])
    for split_id, split, n in splits:
        img_dir, ann_dir = out / "img_dir" / split, out / "ann_dir" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        total = np.zeros(len(MBSD_CLASSES), np.int64)
        for i in range(n):
            rng = np.random.default_rng([seed, split_id, i])
            image, mask = render_cell(rng, size_hw)
            name = f"cell_{split}_{i:05d}"
            write_image(img_dir / f"{name}.jpg", image, jpeg_quality=95)
            write_image(ann_dir / f"{name}.png", mask)
            total += np.bincount(mask.ravel(), minlength=len(MBSD_CLASSES))[: len(MBSD_CLASSES)]
        counts[split] = total
    return counts


@dataclass
class SynthOptions:
    """What `ds2a synth` writes (its flags map 1:1)."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    train: int = 400
    val: int = 50  # for choosing checkpoints; 0 = none
    test: int = 100
    size: Tuple[int, int] = (256, 256)  # (H, W)
    seed: int = 0  # same seed, same bytes
    force: bool = False  # replace an existing dataset in `out`


def synth_dataset(out: Union[str, Path], options: Optional[SynthOptions] = None) -> Dict[str, np.ndarray]:
    """The whole `ds2a synth` stage: check the request, (re)write `out` with its classes.txt, and
    return per-split class pixel counts. Refuses a non-empty folder unless `force`."""
    opts = options or SynthOptions()
    out = Path(out)
    h, w = opts.size
    size = f"{h}x{w}"
    if min(h, w) < 32:
        raise UserError(f"--size {size} is too small for cells with defects; use at least 32x32")
    if max(h, w) > MAX_SIDE:
        raise UserError(f"--size {size} is larger than {MAX_SIDE} pixels a side; use e.g. 256x256")
    if min(opts.train, opts.val, opts.test) < 0 or opts.train + opts.val + opts.test == 0:
        raise UserError("--train, --val and --test must be >= 0 and not all 0 "
                        "(example: --train 400 --val 50 --test 100)")
    if out.exists() and not out.is_dir():
        raise UserError(f"'{out}' is a file; give a folder for the dataset")
    if out.is_dir() and any(out.iterdir()):
        if not opts.force:
            raise UserError(f"'{out}' is not empty; choose a new folder or pass --force to replace it")
        for sub in ("img_dir", "ann_dir"):
            shutil.rmtree(out / sub, ignore_errors=True)
    counts = write_dataset(out, opts.train, opts.test, (h, w), opts.seed, n_val=opts.val)
    (out / "classes.txt").write_text("\n".join(MBSD_CLASSES) + "\n", encoding="utf-8")
    return counts
