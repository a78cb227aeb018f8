"""`ds2a report`: summarise an inspection database: parts, pass rate, defects per class, latency, drops.

examples:
  ds2a report runs/demo/inspect.sqlite
  ds2a report runs/demo/inspect.sqlite --run 3 --csv parts.csv
"""
from __future__ import annotations

import argparse
import sqlite3

from ..outputs import check_outputs
from ..records.database import connect
from ..records.report import format_report, run_row, summarise, write_csv


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    p.epilog = "\n".join((__doc__ or "").split("\n")[2:])
    p.add_argument("db", help="the SQLite file written by `ds2a inspect --db`")
    p.add_argument("--run", type=int, help="run id (default: the latest run)")
    p.add_argument("--csv", metavar="OUT", help="write one row per part verdict to this CSV file")


def run(args: argparse.Namespace) -> int:
    if args.csv:  # the database, its WAL and shared-memory files are inputs, never overwritten
        check_outputs([("--csv", args.csv)], [("DB", args.db), ("DB", args.db + "-wal"), ("DB", args.db + "-shm")])
    con = connect(args.db, create=False, readonly=True)
    con.row_factory = sqlite3.Row
    try:
        run_id = run_row(con, args.run, args.db)["id"]
        print(format_report(summarise(con, run_id)))
        if args.csv:
            n = write_csv(con, run_id, args.csv)
            print(f"wrote {n} part rows to {args.csv}")
    finally:
        con.close()
    return 0
