"""Shared set-up for the TensorRT tests: a fake of a real release plus a fake GPU, and a build helper."""
from __future__ import annotations

import logging
from typing import Any, List, Optional, Tuple

import pytest

from ds2a.engine.builder import BuildOptions, BuildReport, build_engine
from ds2a.trt.features import TrtFeatures, detect_features

from . import wheels
from .fake_trt import FakeCuda, FakeTensorRT
from .surface85 import surface_8_5

NEWEST_10 = "10.16.1.11"


def fake_for(version: str, as_version: Optional[str] = None, gpu: str = "NVIDIA Orin",
             cc: Tuple[int, int] = (8, 7)) -> Tuple[FakeTensorRT, FakeCuda]:
    """A fake of `version`'s real surface (optionally reporting `as_version`), skipping without the wheel.

    8.5 (no wheel) is 8.6's surface less what 8.6 added (`surface85`).
    """
    surface, why = wheels.surface(version)
    if surface is None:
        pytest.skip(f"TensorRT {version} bindings unavailable: {why}")
    if as_version and as_version.startswith("8.5."):
        surface = surface_8_5(surface, as_version)
    fake = FakeTensorRT(surface, version=as_version)
    cuda = FakeCuda(gpu, cc)
    fake.state.cuda = cuda
    return fake, cuda


def build(fake: FakeTensorRT, cuda: FakeCuda, onnx_path: str, out: str, log: Any = None,
          **options: Any) -> BuildReport:
    """build_engine on the fakes; `log` (a list) gets the messages the builder logs during the build."""
    lines = log if log is not None else []
    handler = _Lines(lines)
    logger = logging.getLogger("ds2a.engine")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        return build_engine(onnx_path, out, BuildOptions(**options), trt=fake, device=cuda.info, cuda_api=cuda)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _Lines(logging.Handler):
    def __init__(self, lines: List[str]) -> None:
        super().__init__()
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def features(version: str) -> TrtFeatures:
    """The features detected on a fake of `version` ("8.5.2" is the 8.6 surface less 8.6's additions)."""
    if version.startswith("8.5."):
        return detect_features(fake_for("8.6.1", as_version=version)[0])
    return detect_features(fake_for(version)[0])
