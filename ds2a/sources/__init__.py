"""Frame sources by URI (cameras, streams, files, the `demo://` conveyor), below inspection and the
web page so both can use them. `open_source(uri)` is the entry point (ds2a/sources/factory.py)."""
from .base import Frame, Source, SourceStats
from .factory import open_source
from .uri import parse_source

__all__ = ["Frame", "Source", "SourceStats", "open_source", "parse_source"]
