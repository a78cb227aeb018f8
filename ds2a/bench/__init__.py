"""Latency and accuracy benchmarking of any Segmenter, trtexec-style; torch-free.

`bench(models, BenchOptions(...))` is the bench stage (runner.py): `measure()` times a model
(latency.py), `machine_info()` says where, `report` writes JSON / markdown / PNG, and
`ds2a bench` (ds2a/cli/bench.py) maps its flags onto it.
"""
from __future__ import annotations

from .latency import Measurement, measure
from .machine import machine_info
from .report import make_report, write_all
from .runner import BenchOptions, BenchResult, bench, bench_model, check_gates
from .stats import latency_stats

__all__ = ["BenchOptions", "BenchResult", "Measurement", "bench", "bench_model", "check_gates", "latency_stats",
           "machine_info", "make_report", "measure", "write_all"]
