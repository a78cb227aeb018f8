"""argparse `type=` callables that refuse NaN, infinities and out-of-range numbers at parse time.

argparse's plain `type=float` accepts "nan" and "inf", which then disable comparisons (a NaN
limit is never exceeded) or make loops never end. Every numeric option goes through these, so
a bad value is a one-line usage error (exit 2) before any work starts. Torch-free, Python 3.8.
"""
from __future__ import annotations

import argparse
import math
from typing import Callable, Optional

__all__ = ["finite_float", "int_range", "torch_device"]


def _bounds(lo: Optional[float], hi: Optional[float], lo_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo:g}"
    return f"<= {hi:g}" if hi is not None else "finite"


def finite_float(lo: Optional[float] = None, hi: Optional[float] = None,
                 lo_open: bool = False) -> Callable[[str], float]:
    """A float parser: finite, >= lo (> lo when lo_open) and <= hi."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        ok = math.isfinite(value)
        ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
        ok = ok and (hi is None or value <= hi)
        if not ok:
            raise argparse.ArgumentTypeError(f"'{text}' must be a finite number {_bounds(lo, hi, lo_open)}")
        return value

    parse.__name__ = "number"  # argparse shows "invalid number value" for anything unforeseen
    return parse


def int_range(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    """An integer parser: lo <= value <= hi."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"'{text}' must be a whole number {_bounds(lo, hi, False)}")
        return value

    parse.__name__ = "integer"
    return parse


def torch_device(text: str) -> str:
    """A PyTorch device string: cpu, cuda or cuda:N (checked here so torch never sees a typo)."""
    from ..runtime.options import torch_device as check  # the one check; lazy: it imports the runtime

    try:
        return check(text, allow_auto=False)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
