"""Inspection records in SQLite: the schema and the write queue (ds2a/records/database.py) and the
read-only summaries behind `ds2a report` and the page (ds2a/records/report.py). Below both inspection
and the web page, so readers never import the station."""
from .database import SCHEMA_VERSION, Records, RecordsBackedUp, connect, identify
from .report import format_report, run_row, summarise, truth_line, write_csv

__all__ = ["SCHEMA_VERSION", "Records", "RecordsBackedUp", "connect", "format_report", "identify", "run_row",
           "summarise", "truth_line", "write_csv"]
