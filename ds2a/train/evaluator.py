"""An in-memory model as a runtime `Segmenter`, so training evaluates through the same
`ds2a.eval.evaluate` path (resize to model size, argmax, back to label size) as `ds2a eval`."""
from __future__ import annotations

from typing import Optional

import torch

from ..meta import ModelMeta
from ..runtime.torch_backend import TorchSegmenter


def ModuleSegmenter(model: torch.nn.Module, meta: ModelMeta, device: torch.device,  # noqa: N802
                    amp: Optional[torch.dtype] = None) -> TorchSegmenter:
    """The training model as a Segmenter: `TorchSegmenter.from_module` (ds2a/runtime/torch_backend.py)."""
    return TorchSegmenter.from_module(model, meta, device, amp=amp)
