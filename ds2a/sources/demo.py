"""`demo://`: a synthetic conveyor of battery cells, so inspection runs with no camera.

Cells (rendered with defects by `ds2a.data.synth.render_cell`) slide left to right over a
belt in a 1280x720 frame. Each cell is a part with an id (`cell-000017`); a frame carries
that id and the cell's box (the region to inspect) while the whole cell is in view, like a
photo-eye trigger and part locator on a real line. The generator's masks are the ground truth
of every part (`truth`), so a run on demo:// reports escapes and overkill.

URI options: `frames=N` (end after N >= 1 frames; default endless), `fps=F` (0..1000: pace like
a camera: it is then live, keeps the newest frame only; default unpaced, every frame processed),
`seed=S` (0..2**32-1), `width=` (64..7680), `height=` (64..4320), `speed=` (pixels per frame),
`codes=1` (a QR code, `codes=2` a Data Matrix, with the cell's id, on a label on the belt just above each
cell, moving with it like a carrier's label, for `--part-id barcode`: ds2a/sources/barcode.py; needs
zxing-cpp; the Data Matrix reads from 1280x720 up with zxing-cpp 2.3+). The label is outside the part
box, so the model never judges it (the demo model, trained without labels, calls a code on the cell a
defect).
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from ..errors import UserError
from .base import Frame, Source
from .uri import parse_source


class DemoSource(Source):
    """Endless or N-frame synthetic conveyor; deterministic for a given seed."""

    gives_parts = True
    gives_roi = True
    gives_truth = True  # `truth(part_id)`: escapes and overkill can be counted live

    def __init__(self, uri: str = "demo://", frames: Optional[int] = None, fps: float = 0.0, seed: int = 0,
                 width: int = 1280, height: int = 720, speed: int = 96, codes: int = 0) -> None:
        super().__init__(uri)
        if not (64 <= width <= 7680 and 64 <= height <= 4320 and 1 <= speed <= width):
            raise UserError(f"source {uri}: width must be 64..7680, height 64..4320 and speed 1..width")
        frames, fps, seed = None if frames is None else int(frames), float(fps), int(seed)
        width, height, speed = int(width), int(height), int(speed)
        self.frames = frames
        self.fps = fps if fps > 0 else None
        self.live = fps > 0
        self.width, self.height, self.speed = width, height, speed
        self.frame_hw = (height, width)
        self.seed = seed
        self.codes = {0: None, 1: "qr", 2: "datamatrix"}.get(int(codes), "?")
        if self.codes == "?":
            raise UserError(f"source {uri}: codes must be 0 (none), 1 (QR) or 2 (Data Matrix)")
        if self.codes:
            from .barcode import zxing

            zxing()  # refused at start, with the install command, when the encoder is missing
        self.cell_hw = (int(height * 0.62) // 2 * 2, int(width * 0.45) // 2 * 2)
        self.pitch = int(self.cell_hw[1] * 1.6)
        self.y0 = (height - self.cell_hw[0]) // 2
        self._belt = self._make_belt()
        self._cells: Dict[int, np.ndarray] = {}
        self._labels: Dict[int, np.ndarray] = {}  # codes=1|2: each cell's code label
        self._margin = max(2, self.y0 // 32)
        self._truth: Dict[int, np.ndarray] = {}  # label masks of recent cells (see `truth`)
        self._index = 0
        self._next_t: Optional[float] = None

    @classmethod
    def from_uri(cls, uri: str) -> "DemoSource":
        """The source for `demo://?...`; options are checked (names and ranges) by `parse_source`."""
        spec = parse_source(uri)
        if spec.kind != "demo":
            raise UserError(f"source {uri} is not a demo:// URI")
        return cls(uri, **spec.options)  # type: ignore[arg-type]

    def _make_belt(self) -> np.ndarray:
        """One belt period wider than the frame: dark rubber with slats, so motion is visible."""
        h, w = self.height, self.width + self.pitch
        rng = np.random.default_rng(self.seed + 7)
        belt = np.full((h, w, 3), 48, np.uint8)
        belt += rng.integers(0, 10, (h, w, 1), dtype=np.uint8)
        slat = max(8, self.pitch // 8)
        for x in range(0, w, slat):
            belt[:, x:x + 3] = 30
        belt[: self.y0 // 2] = 90  # rails
        belt[h - self.y0 // 2:] = 90
        return belt

    def _cell(self, cell_id: int) -> np.ndarray:
        if cell_id not in self._cells:
            from ..data.synth import render_cell

            rng = np.random.default_rng([self.seed, cell_id])
            ch, cw = self.cell_hw
            image, mask = render_cell(rng, (ch // 2, cw // 2))  # half size: 4x cheaper, the model sees less
            self._cells[cell_id] = cv2.resize(image[..., :3], (cw, ch), interpolation=cv2.INTER_LINEAR)
            self._truth[cell_id] = mask
            for old in [c for c in self._truth if c < cell_id - 64]:  # the output thread may lag a little
                self._truth.pop(old, None)
        return self._cells[cell_id]

    def _label(self, cell_id: int) -> np.ndarray:
        """The cell's id as a code (grey), as large as fits between the rail and the cell, at most 1/4 of the cell."""
        if cell_id not in self._labels:
            from .barcode import code_image

            room = self.y0 - self.y0 // 2 - 2 * self._margin
            self._labels[cell_id] = code_image(f"cell-{cell_id:06d}", self.codes, min(room, self.cell_hw[1] // 4))  # type: ignore[arg-type]
        return self._labels[cell_id]

    def truth(self, part_id: str) -> Optional[Tuple[np.ndarray, Tuple[int, int]]]:
        """Ground truth of part `cell-N`: (label mask, the size in frame pixels it covers), else None.

        The mask is the generator's own (pixel-exact); it is re-rendered when no longer cached.
        """
        if not part_id.startswith("cell-") or not part_id[5:].isdigit():
            return None
        cid = int(part_id[5:])
        mask = self._truth.get(cid)
        if mask is None:
            from ..data.synth import render_cell

            ch, cw = self.cell_hw
            mask = render_cell(np.random.default_rng([self.seed, cid]), (ch // 2, cw // 2))[1]
        return mask, self.cell_hw

    def _render(self, i: int) -> Tuple[np.ndarray, Optional[str], Optional[Tuple[int, int, int, int]]]:
        travel = i * self.speed
        off = travel % self.pitch
        frame = self._belt[:, self.pitch - off: self.pitch - off + self.width].copy()
        ch, cw = self.cell_hw
        first = (travel - self.width) // self.pitch  # oldest cell that can still be in view
        part = roi = None
        for cid in range(max(0, first), travel // self.pitch + 1):
            x = travel - cid * self.pitch - cw  # left edge: cell `cid` enters at travel = cid*pitch
            if x >= self.width or x + cw <= 0:
                continue
            a, b = max(0, x), min(self.width, x + cw)
            frame[self.y0:self.y0 + ch, a:b] = self._cell(cid)[:, a - x:b - x]
            if self.codes:  # the label rides above the cell's left end
                label = self._label(cid)
                lh, lw = label.shape
                lx, ly = x + self._margin, self.y0 - self._margin - lh
                la, lb = max(0, lx), min(self.width, lx + lw)
                if la < lb and ly >= 0:
                    frame[ly:ly + lh, la:lb] = label[:, la - lx:lb - lx, None]
            if x >= 0 and x + cw <= self.width:
                part, roi = f"cell-{cid:06d}", (x, self.y0, cw, ch)
        for cid in [c for c in self._cells if c < first]:
            del self._cells[cid]
            self._labels.pop(cid, None)
        return frame, part, roi

    def read(self) -> Optional[Frame]:
        if self._stop.is_set() or (self.frames is not None and self._index >= self.frames):
            return None
        if self.fps:
            now = time.perf_counter()
            self._next_t = now if self._next_t is None else self._next_t
            if self._stop.wait(max(0.0, self._next_t - now)):
                return None
            self._next_t += 1.0 / self.fps
        image, part, roi = self._render(self._index)
        self._index += 1
        return self._frame(image, self._index - 1, part_id=part, roi=roi)
