"""Training DS2A-Former: Mask2Former-style set prediction (Hungarian matching, point-sampled
mask losses, deep supervision) driven by one loop that runs single-process or under torchrun.

The library entry point is `train(TrainConfig(...)) -> summary dict` (ds2a/train/loop.py);
it is imported on first use, so torch-free parts such as `ds2a.train.plot` import without torch.
"""
from __future__ import annotations

from typing import Any

__all__ = ["TrainConfig", "Trainer", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
