"""Realtime inspection: sources and sinks by URI, a threaded capture|infer|output loop,
defect quantification, PASS/FAIL rules and SQLite records. Torch-free.
"""
from .sinks import open_sink
from .sources import open_source

__all__ = ["open_sink", "open_source"]
