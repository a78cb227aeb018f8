"""Realtime inspection: sources and sinks by URI, a threaded capture|infer|output loop,
defect quantification, PASS/FAIL rules and SQLite records. Torch-free.

`inspect(InspectOptions(model=..., source=...))` runs one inspection (ds2a/inspect/run.py);
`ds2a inspect` only maps its flags onto InspectOptions.
"""
from ..sources import open_source
from .run import InspectOptions, inspect
from .sinks import open_sink
from .summary import InspectionSummary

__all__ = ["InspectOptions", "InspectionSummary", "inspect", "open_sink", "open_source"]
