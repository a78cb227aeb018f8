"""An in-memory model as a runtime `Segmenter`, so training evaluates through the same
`ds2a.eval.evaluate` path (resize to model size, argmax, back to label size) as `ds2a eval`."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch

from ..meta import ModelMeta
from ..preprocess import normalize
from ..runtime.base import Frames, InferResult, Segmenter


class ModuleSegmenter(Segmenter):
    backend = "pytorch-module"

    def __init__(self, model: torch.nn.Module, meta: ModelMeta, device: torch.device,
                 amp: Optional[torch.dtype] = None) -> None:
        super().__init__(meta)
        self.model, self.device, self.amp = model, device, amp

    @property
    def batch_size(self) -> Optional[int]:
        return None

    @torch.no_grad()
    def infer_batch(self, frames: Frames) -> List[InferResult]:
        batch = self.prepare_batch(frames)
        x = torch.from_numpy(normalize(batch, self.meta.mean, self.meta.std)).to(self.device)
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            logits = self.model.semantic_logits(x)
        class_map = logits.float().argmax(1).to(torch.uint8).cpu().numpy()
        return [InferResult(class_map=np.ascontiguousarray(c)) for c in class_map]
