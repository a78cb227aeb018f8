"""The one inference interface every backend (TensorRT, ONNX Runtime, PyTorch) implements.

Callers (inspection loop, eval, bench) hold a `Segmenter` and never branch on the backend.
Torch-free: only numpy/OpenCV here.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import UserError
from ..meta import ModelMeta
from ..preprocess import resize_frame
from .io_layout import SHAPE_FIX
from .selftest import SelfTestResult, run_selftest

logger = logging.getLogger(__name__)

Frames = Union[np.ndarray, Sequence[np.ndarray]]


@dataclass
class InferResult:
    """One frame's prediction at the model size."""

    class_map: np.ndarray  # uint8 (H, W) class indices
    logits: Optional[np.ndarray] = None  # float32 (K, H, W), when the backend was asked for them
    confidence: Optional[np.ndarray] = None  # float32 (H, W): max over K of the logits


class Segmenter(ABC):
    """A loaded model that turns frames into class maps.

    Subclasses set `meta`, `backend` and implement `infer_batch`. `last_timings` holds the
    per-stage milliseconds of the latest call when a backend can measure them separately
    (TensorRT: "h2d_ms", "compute_ms", "d2h_ms", "enqueue_ms"); the benchmark reports them.
    """

    backend: str = "base"
    meta: ModelMeta
    selftest: Optional[SelfTestResult] = None  # set once the golden frames ran (ds2a/runtime/selftest.py)

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = meta
        self.last_timings: Dict[str, float] = {}

    @property
    def input_size(self) -> Tuple[int, int]:
        """(H, W) the model runs at; frames of other sizes are resized to it."""
        return tuple(self.meta.input_size)  # type: ignore[return-value]

    @property
    def batch_size(self) -> Optional[int]:
        """Fixed batch size of the model, or None when any batch size works."""
        return 1

    def prepare(self, frame: np.ndarray) -> np.ndarray:
        """Any uint8 image (gray, BGR, BGRA, any size) -> contiguous uint8 BGR at the model size."""
        frame = np.asarray(frame)
        if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] not in (1, 3, 4)):
            raise UserError(
                f"cannot run {self.backend} on a frame of shape {frame.shape}: expected one image "
                "HxW (gray), HxWx1, HxWx3 (BGR) or HxWx4 (BGRA); pass a batch (N,H,W,3) to infer_batch"
            )
        return resize_frame(frame, self.input_size)

    def prepare_batch(self, frames: Frames) -> np.ndarray:
        """A (N,H,W,3) array or a list of frames -> uint8 (N,H,W,3) BGR at the model size."""
        if isinstance(frames, np.ndarray) and frames.ndim != 4:
            raise UserError(
                f"infer_batch needs frames shaped (N,H,W,C), got {frames.shape}; use infer() for one frame"
            )
        if len(frames) == 0:  # an empty list and a (0,H,W,3) array alike
            raise UserError("infer_batch got an empty batch; pass at least one frame")
        h, w = self.input_size
        if isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.shape[1:] == (h, w, 3):
            return np.ascontiguousarray(frames)
        return np.stack([self.prepare(f) for f in frames])

    def infer(self, frame: np.ndarray) -> InferResult:
        """One frame -> its class map (and logits/confidence when the backend returns them)."""
        return self.infer_batch(self.prepare(frame)[None])[0]

    @abstractmethod
    def infer_batch(self, frames: Frames) -> List[InferResult]:
        """Several frames -> one result each, in order."""

    def run_selftest(self) -> SelfTestResult:
        """Run the golden frames the model carries and compare with the class maps stored with them;
        SelfTestFailed (a UserError) when the answers changed. `open_model` calls it."""
        self.selftest = run_selftest(self)
        if self.selftest.status == "passed":
            logger.info(f"{getattr(self, 'path', self.backend)}: {self.selftest.line()}")
        return self.selftest

    def warmup(self, n: int = 3) -> None:
        """Run a few dummy frames so lazy allocation and autotuning are out of the timed path, and
        check what comes out against the metadata (a model that disagrees is refused, not run).
        A model that has not run its self-test yet (one not opened by `open_model`) runs it first."""
        if self.selftest is None:
            self.run_selftest()
        h, w = self.input_size
        batch = max(1, self.batch_size or 1)
        frames = [np.zeros((h, w, 3), np.uint8), np.full((h, w, 3), 255, np.uint8)]
        for i in range(max(0, n)):
            check_results(getattr(self, "path", self.backend), self.meta,
                          self.infer_batch(np.stack([frames[i % 2]] * batch)))

    def close(self) -> None:
        """Release sessions, engines and device buffers."""

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        h, w = self.input_size
        return f"{type(self).__name__}(backend={self.backend!r}, arch={self.meta.arch!r}, size={h}x{w})"


def make_results(class_map: Optional[np.ndarray], logits: Optional[np.ndarray], count: int,
                 keep_logits: bool = True) -> List[InferResult]:
    """Batched outputs (N,H,W) / (N,K,H,W) -> the first `count` InferResults.

    The class map comes from the logits (argmax) when the model has no class-map output.
    """
    if class_map is None:
        if logits is None:
            raise ValueError("a model must give a class map or logits")
        class_map = logits.argmax(axis=1)
    class_map = np.asarray(class_map)
    if class_map.ndim == 4 and class_map.shape[1] == 1:
        class_map = class_map[:, 0]
    class_map = class_map.astype(np.uint8, copy=False)
    results = []
    for i in range(count):
        lg = conf = None
        if logits is not None and keep_logits:
            lg = np.asarray(logits[i], dtype=np.float32)
            conf = lg.max(axis=0)
        results.append(InferResult(class_map=class_map[i], logits=lg, confidence=conf))
    return results


def fit_batch(frames: np.ndarray, batch: Optional[int]) -> List[Tuple[np.ndarray, int]]:
    """Split/pad (N,H,W,3) into chunks a fixed-batch model accepts: [(chunk, real_count), ...]."""
    if batch is None or batch <= 0:
        return [(frames, len(frames))]
    chunks = []
    for start in range(0, len(frames), batch):
        part = frames[start:start + batch]
        n = len(part)
        if n < batch:  # pad by repeating the last frame; padded results are dropped
            part = np.concatenate([part, np.repeat(part[-1:], batch - n, axis=0)])
        chunks.append((part, n))
    return chunks


def check_results(path: str, meta: ModelMeta, results: Sequence[InferResult]) -> None:
    """The same check on real outputs (warm-up): class ids within the class list, logits with K classes."""
    k = meta.num_classes
    for r in results:
        cm = np.asarray(r.class_map)
        if cm.ndim != 2 or cm.dtype != np.uint8:
            raise UserError(f"{path}: gave a class map {cm.dtype} {list(cm.shape)}; expected uint8 (H,W); "
                            f"{SHAPE_FIX}")
        top = int(cm.max()) if cm.size else 0
        if top >= k:
            raise UserError(f"{path}: gave class id {top} but its metadata lists {k} classes "
                            f"({', '.join(meta.classes)}); the model and its metadata disagree; {SHAPE_FIX}")
        if r.logits is not None and (r.logits.ndim != 3 or r.logits.shape[0] != k):
            raise UserError(f"{path}: gave logits {list(r.logits.shape)}; expected ({k},H,W) for the "
                            f"{k} classes in its metadata; {SHAPE_FIX}")
