"""The calibration set fed to ONNX Runtime's quantizer, batched to the model's input; which images
it holds is chosen in ds2a/data/calibration.py."""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from ..data.calibration import CalibrationSet
from ..preprocess import normalize


class FrameReader(CalibrationDataReader):
    """onnxruntime CalibrationDataReader over a CalibrationSet, batching to the model's input."""

    def __init__(self, calib: CalibrationSet, input_name: str, batch: int, float_input: bool,
                 mean: Sequence[float], std: Sequence[float], limit: Optional[int] = None) -> None:
        self.calib, self.input_name, self.batch = calib, input_name, max(1, batch)
        self.float_input, self.mean, self.std = float_input, mean, std
        self.limit = limit
        self._range: Tuple[int, Optional[int]] = (0, None)  # batch indices [start, end) served
        self._it: Iterator[Dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[Dict[str, np.ndarray]]:
        frames = self.calib.frames[: self.limit] if self.limit else self.calib.frames
        usable = len(frames) - len(frames) % self.batch
        start, end = self._range
        stop = usable if end is None else min(usable, end * self.batch)
        for i in range(start * self.batch, stop, self.batch):
            chunk = frames[i : i + self.batch]
            x = normalize(chunk, self.mean, self.std) if self.float_input else np.ascontiguousarray(chunk)
            yield {self.input_name: x}

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()

    def set_range(self, start_index: int, end_index: int) -> None:
        """Serve only batches [start_index, end_index): ORT's strided calibration collects them step by step."""
        self._range = (start_index, end_index)
        self._it = self._batches()

    def __len__(self) -> int:
        n = len(self.calib.frames[: self.limit] if self.limit else self.calib.frames)
        return n // self.batch
