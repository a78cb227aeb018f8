"""Shared set-up for the TensorRT tests: a fake of a real release plus a fake GPU, and a build helper."""
from __future__ import annotations

from typing import Any, Optional, Tuple

import pytest

from ds2a.engine.builder import BuildOptions, BuildReport, build_engine

from . import wheels
from .fake_trt import FakeCuda, FakeTensorRT

NEWEST_10 = "10.16.1.11"


def fake_for(version: str, as_version: Optional[str] = None, gpu: str = "NVIDIA Orin",
             cc: Tuple[int, int] = (8, 7)) -> Tuple[FakeTensorRT, FakeCuda]:
    """A fake of `version`'s real surface (optionally reporting `as_version`), skipping without the wheel."""
    surface, why = wheels.surface(version)
    if surface is None:
        pytest.skip(f"TensorRT {version} bindings unavailable: {why}")
    fake = FakeTensorRT(surface, version=as_version)
    cuda = FakeCuda(gpu, cc)
    fake.state.cuda = cuda
    return fake, cuda


def build(fake: FakeTensorRT, cuda: FakeCuda, onnx_path: str, out: str, log: Any = None,
          **options: Any) -> BuildReport:
    lines = log if log is not None else []
    return build_engine(onnx_path, out, BuildOptions(**options), trt=fake, device=cuda.info, log=lines.append)
