"""Golden frames and the self-test every model runs when it is opened (docs/SELFTEST.md).

`ds2a export` and `ds2a calibrate` store a few frames with defects and the class maps the ONNX
gave for them in the model's metadata (`ModelMeta.extra["golden"]`, PNG in base64); the engine
builder stores the engine's own answers for them in its sidecar. `open_model` runs the frames
again and compares: a model whose answers changed (weights edited after export, a corrupted
file, another TensorRT/driver, a miscompiled engine) is refused before it judges a part.
The comparison allows the few boundary pixels that legitimately differ between CPUs, thread
counts and kernels (the tolerance was measured, docs/SELFTEST.md). Torch-free.
"""
from __future__ import annotations

import base64
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import cv2
import numpy as np

from ..errors import UserError

logger = logging.getLogger(__name__)

GOLDEN_KEY = "golden"  # in ModelMeta.extra
GOLDEN_FORMAT = 1
NUM_GOLDEN = 4
BUDGET_BYTES = 400_000  # PNG bytes of all golden frames and maps (base64 adds a third)
# Per golden frame, the lowest pixel agreement and defect agreement (see `defect_agreement`) with
# the stored class map. Measured on the demo model (benchmarks/selftest_spread.py, docs/SELFTEST.md):
# threads, graph optimisation and integer-vs-float QDQ kernels move at most 0.22 % of the pixels and
# 2.1 % of the defect pixels of a golden frame (4.9 % on noisy frames); a miscompiled or broken
# model moves tens of percent. The limits leave at least twice the worst measured spread for CPUs
# and GPUs we could not measure.
MIN_AGREEMENT = 0.995
MIN_DEFECT_AGREEMENT = 0.90


class SelfTestFailed(UserError):
    """The model's answers on its golden frames differ from the ones stored with it: it is not used."""


@dataclass
class Golden:
    """Frames (uint8 BGR at the model size) and the class maps a model gave for them."""

    frames: List[np.ndarray]
    class_maps: List[np.ndarray]
    produced_by: str = ""  # runtime, version and precision that produced the class maps
    source: str = ""  # where the frames came from

    def to_dict(self) -> Dict[str, Any]:
        return {"format": GOLDEN_FORMAT, "produced_by": self.produced_by, "source": self.source,
                "frames": [_png(f) for f in self.frames], "class_maps": [_png(m) for m in self.class_maps]}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "Golden":
        """The stored form back; UserError naming `where` when it is damaged (a damaged test is no test)."""
        try:
            if int(data.get("format", 0)) != GOLDEN_FORMAT:
                raise ValueError(f"format {data.get('format')} (this ds2a reads {GOLDEN_FORMAT})")
            frames = [_unpng(t, cv2.IMREAD_COLOR) for t in data["frames"]]
            maps = [_unpng(t, cv2.IMREAD_UNCHANGED) for t in data["class_maps"]]
            if not frames or len(frames) != len(maps):
                raise ValueError(f"{len(frames)} frames but {len(maps)} class maps")
            if any(f.shape[:2] != m.shape for f, m in zip(frames, maps)):
                raise ValueError("frame and class map sizes differ")
        except (ValueError, KeyError, TypeError, AttributeError, cv2.error) as exc:
            raise UserError(f"{where}: its golden frames are unreadable ({exc}); the model cannot prove itself: "
                            "export it again with `ds2a export` (or rebuild the engine)") from None
        return cls(frames, maps, str(data.get("produced_by", "")), str(data.get("source", "")))


def _png(image: np.ndarray) -> str:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    if not ok:
        raise ValueError(f"cannot encode an image of shape {image.shape} as PNG")
    return base64.b64encode(data.tobytes()).decode("ascii")


def _unpng(text: str, flags: int) -> np.ndarray:
    data = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), np.uint8)
    image = cv2.imdecode(data, flags)
    if image is None:
        raise ValueError("a PNG does not decode")
    return image


def golden_of(meta: Any, where: str = "the model") -> Optional[Golden]:
    """The golden frames in a ModelMeta (None when the model carries none)."""
    data = (getattr(meta, "extra", None) or {}).get(GOLDEN_KEY)
    return None if data is None else Golden.from_dict(data, where)


def set_golden(meta: Any, golden: Golden) -> None:
    """Store (or replace) the golden frames in a ModelMeta."""
    meta.extra = {**meta.extra, GOLDEN_KEY: golden.to_dict()}


def choose_frames(candidates: Sequence[np.ndarray], class_maps: Sequence[np.ndarray], n: int = NUM_GOLDEN,
                  num_classes: int = 0) -> List[int]:
    """Indices of `n` candidates that together show the most defect classes, then the most defect pixels.

    Greedy: each pick adds the classes not yet covered (most first), ties broken by defect pixels;
    a frame with defects is always preferred to a clean one, so the test exercises the defect classes.
    """
    counts = [np.bincount(np.asarray(m).ravel(), minlength=max(num_classes, 1)) for m in class_maps]
    chosen: List[int] = []
    covered: set = set()
    while len(chosen) < min(n, len(candidates)):
        def score(i: int) -> tuple:
            present = {c for c in range(1, len(counts[i])) if counts[i][c] > 0}
            return (len(present - covered), int(counts[i][1:].sum()), -i)

        best = max((i for i in range(len(candidates)) if i not in chosen), key=score)
        chosen.append(best)
        covered |= {c for c in range(1, len(counts[best])) if counts[best][c] > 0}
    return chosen


def demo_frames(size_hw: Sequence[int], n: int = 12, seed: int = 2024) -> List[np.ndarray]:
    """Candidate frames from the built-in battery-cell generator (ds2a/data/synth.py) at the model size.

    Rendered without sensor noise, so the PNGs stay small; the defects are the generator's.
    """
    from ..data.synth import compose_cell

    h, w = int(size_hw[0]), int(size_hw[1])
    frames = []
    for i in range(n):
        _, img, _ = compose_cell(np.random.default_rng(seed + i), h, w)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def make_golden(candidates: Sequence[np.ndarray], infer: Callable[[np.ndarray], List[np.ndarray]],
                produced_by: str, source: str, num_classes: int = 0, n: int = NUM_GOLDEN,
                budget_bytes: int = BUDGET_BYTES) -> Golden:
    """Run `infer` ((N,H,W,3) uint8 -> class maps) on the candidates and keep the `n` richest in defects
    (fewer when their PNGs pass `budget_bytes`; at least one)."""
    batch = np.stack([np.ascontiguousarray(f, dtype=np.uint8) for f in candidates])
    maps = [np.asarray(m, np.uint8) for m in infer(batch)]
    pick = choose_frames(list(batch), maps, n, num_classes)
    keep, used = [], 0
    for i in pick:  # large real frames: fewer of them, so the metadata stays small
        used += len(_png(batch[i])) + len(_png(maps[i]))
        if keep and used > budget_bytes:
            break
        keep.append(i)
    return Golden([batch[i] for i in keep], [maps[i] for i in keep], produced_by, source)


@dataclass
class SelfTestResult:
    """What the self-test found; `to_dict` is what a run records."""

    status: str  # "passed", "failed", "absent" (no golden frames) or "skipped" (PyTorch run at another size)
    frames: int = 0
    agreement: List[float] = field(default_factory=list)  # per golden frame: share of equal pixels
    defect_agreement: List[float] = field(default_factory=list)  # per golden frame, on the defect pixels
    min_agreement: float = MIN_AGREEMENT
    min_defect_agreement: float = MIN_DEFECT_AGREEMENT
    seconds: float = 0.0
    produced_by: str = ""

    @property
    def worst(self) -> float:
        return min(self.agreement) if self.agreement else 1.0

    @property
    def worst_defect(self) -> float:
        return min(self.defect_agreement) if self.defect_agreement else 1.0

    @property
    def passed(self) -> bool:
        return self.worst >= self.min_agreement and self.worst_defect >= self.min_defect_agreement

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["agreement"] = [round(a, 6) for a in self.agreement]
        d["defect_agreement"] = [round(a, 6) for a in self.defect_agreement]
        d["seconds"] = round(self.seconds, 4)
        return d

    def line(self) -> str:
        if self.status in ("absent", "skipped"):
            return f"self-test {self.status}" + (" (the model carries no golden frames)" if self.status == "absent"
                                                 else " (run at another size than its golden frames)")
        return (f"self-test {self.status}: {self.frames} golden frames, worst pixel agreement {100 * self.worst:.3f} % "
                f"(>= {100 * self.min_agreement:.1f} %), on defect pixels {100 * self.worst_defect:.2f} % "
                f"(>= {100 * self.min_defect_agreement:.0f} %), {1000 * self.seconds:.0f} ms")


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels with the same class (0 when the shapes differ)."""
    a, b = np.asarray(a), np.asarray(b)
    return float((a == b).mean()) if a.shape == b.shape and a.size else 0.0


def defect_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of the pixels either map calls a defect (class != 0) on which both give the same class.

    Background is most of a frame, so the plain pixel share hardly moves when a model breaks;
    this one is what a changed model moves (1.0 when neither map shows a defect).
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return 0.0
    union = (a != 0) | (b != 0)
    n = int(union.sum())
    return 1.0 if n == 0 else float(((a == b) & union).sum()) / n


def run_selftest(model: Any, min_agreement: float = MIN_AGREEMENT, min_defect_agreement: float = MIN_DEFECT_AGREEMENT,
                 fix: str = "") -> SelfTestResult:
    """Run a Segmenter's golden frames and compare; SelfTestFailed (a UserError) when they disagree.

    A model without golden frames gets status "absent" and a warning: it was made before golden
    frames existed, or by another tool.
    """
    where = getattr(model, "path", model.backend)
    golden = golden_of(model.meta, where)
    if golden is None:
        logger.warning(f"warning: {where} carries no golden frames, so it cannot prove at start that it answers as "
                       "when it was made; export it again with `ds2a export` / `ds2a calibrate` (engines: "
                       "rebuild them) to add them")
        return SelfTestResult("absent", min_agreement=min_agreement, min_defect_agreement=min_defect_agreement)
    h, w = model.input_size
    gh, gw = golden.frames[0].shape[:2]
    if (gh, gw) != (h, w) and getattr(model, "backend", "") == "pytorch":  # asked to run at another size
        logger.warning(f"warning: {where} runs at {w}x{h}, its golden frames are {gw}x{gh}: self-test skipped")
        return SelfTestResult("skipped", min_agreement=min_agreement, min_defect_agreement=min_defect_agreement)
    if (gh, gw) != (h, w):
        raise SelfTestFailed(f"{where}: its golden frames are {gw}x{gh} but the model runs at {w}x{h}: the model and "
                             f"its metadata disagree; {fix or default_fix(model)}")
    t0 = time.perf_counter()
    try:
        results = model.infer_batch(np.stack(golden.frames))
    except UserError:
        raise
    except Exception as exc:  # a runtime error on its own frames (e.g. an index out of bounds): not usable
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise SelfTestFailed(f"{where} failed its self-test: it could not run its golden frames ({type(exc).__name__}: "
                             f"{first}); it is not used to judge parts; {fix or default_fix(model)}") from None
    seconds = time.perf_counter() - t0
    pixels = [agreement(r.class_map, m) for r, m in zip(results, golden.class_maps)]
    defects = [defect_agreement(r.class_map, m) for r, m in zip(results, golden.class_maps)]
    result = SelfTestResult("passed", len(pixels), pixels, defects, min_agreement, min_defect_agreement, seconds,
                            golden.produced_by)
    if not result.passed:
        result.status = "failed"
        i = min(range(len(pixels)), key=lambda j: (pixels[j] >= min_agreement, defects[j]))
        raise SelfTestFailed(
            f"{where} failed its self-test: on golden frame {i + 1} of {len(pixels)} it agrees with the class map "
            f"stored by {golden.produced_by or 'its maker'} on {100 * pixels[i]:.2f} % of pixels and "
            f"{100 * defects[i]:.1f} % of defect pixels (needs >= {100 * min_agreement:.1f} % and >= "
            f"{100 * min_defect_agreement:.0f} %). Its answers changed since it was made (file edited or corrupted, "
            f"another TensorRT/JetPack/driver, or a miscompiled engine), so it is not used to judge parts; "
            f"{fix or default_fix(model)}")
    return result


def default_fix(model: Any) -> str:
    where = getattr(model, "path", "MODEL")
    return {"tensorrt": f"rebuild the engine on this device (`ds2a build-engine MODEL.onnx --out {where}`), which "
                        "also checks it against ONNX Runtime",
            "onnxruntime": "export it again from its checkpoint (`ds2a export`, then `ds2a calibrate` for INT8)",
            "pytorch": "use the checkpoint as trained, or export it again",
            "triton": "check which model the server loaded and restart it from the exported file"
            }.get(getattr(model, "backend", ""), "export the model again")
