"""DS2A-Former Edge: battery-surface-defect segmentation from PyTorch training to TensorRT inspection.

`import ds2a` stays torch-free; `ds2a.build_model` / `ds2a.load_model` import torch when called.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def build_model(name: str, **kwargs: Any) -> Any:
    """Build a registered DS2A-Former (`ds2a_tiny`, `ds2a_r18`, `ds2a_r34`, `ds2a_r50`)."""
    from .model import build_model as _build

    return _build(name, **kwargs)


def load_model(path: str, **kwargs: Any) -> Any:
    """Load one of our checkpoints; arch, classes, palette, normalisation and size come with it."""
    from .model import load_model as _load

    return _load(path, **kwargs)
