"""Latency and accuracy benchmarking of any Segmenter, trtexec-style; torch-free.

`measure()` times a model, `machine_info()` says where, `report` writes JSON / markdown / PNG,
`ds2a bench` (command.py) ties them together with CI gates.
"""
from __future__ import annotations

from .latency import BenchResult, measure
from .machine import machine_info
from .stats import latency_stats

__all__ = ["BenchResult", "measure", "machine_info", "latency_stats"]
