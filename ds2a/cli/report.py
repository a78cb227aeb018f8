"""`ds2a report`: summarise an inspection database: parts, pass rate, defects per class, latency, drops.

examples:
  ds2a report runs/demo/inspect.sqlite
  ds2a report runs/demo/inspect.sqlite --run 3 --csv parts.csv
  ds2a report runs/demo/inspect.sqlite --check    # exit 1 and list them if any invariant is broken
  ds2a report runs/demo/inspect.sqlite --audit    # the audit trail; exit 1 if its hash chain is broken
  ds2a report runs/demo/inspect.sqlite --shadow --json   # the shadow model beside the live one (docs/SHADOW.md)
"""
from __future__ import annotations

import argparse
import json
import sqlite3

from ..outputs import check_outputs
from ..records import audit
from ..records import shadow as shadow_records
from ..records.check import check_database, format_check
from ..records.database import connect
from ..records.report import format_report, run_row, summarise, write_csv


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    p.epilog = "\n".join((__doc__ or "").split("\n")[2:])
    p.add_argument("db", help="the SQLite file written by `ds2a inspect --db`")
    p.add_argument("--run", type=int, help="run id (default: the latest run)")
    p.add_argument("--csv", metavar="OUT", help="write one row per part verdict to this CSV file")
    p.add_argument("--check", action="store_true",
                   help="verify every run (or --run N): one verdict per part, PASS only for fully inspected parts, "
                   "run status and counts consistent, no killed run left `running`, audit chain unbroken; "
                   "exit 1 listing any violation")
    p.add_argument("--audit", action="store_true",
                   help="list the audit trail (or --run N's rows) and verify its hash chain: exit 1 when a row "
                   "was edited, deleted or moved")
    p.add_argument("--shadow", action="store_true", help="also the shadow model's verdicts (`ds2a inspect --shadow`): "
                   "parts judged and sampled out, agreement, parts it would have let through or rejected, and with "
                   "ground truth both models' escapes and overkill (docs/SHADOW.md)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object (with --shadow: its "
                   "`shadow` object, null when the run had none)")


def run(args: argparse.Namespace) -> int:
    if args.csv:  # the database, its WAL and shared-memory files are inputs, never overwritten
        check_outputs([("--csv", args.csv)], [("DB", args.db), ("DB", args.db + "-wal"), ("DB", args.db + "-shm")])
    con = connect(args.db, create=False, readonly=True)
    con.row_factory = sqlite3.Row
    try:
        if args.check:
            only = run_row(con, args.run, args.db)["id"] if args.run is not None else None
            runs, violations = check_database(con, only)
            print(format_check(args.db, runs, violations))
            return 1 if violations else 0
        if args.audit:
            return _audit(con, args)
        run_id = run_row(con, args.run, args.db)["id"]
        s = summarise(con, run_id)
        if args.shadow:  # the candidate beside the live verdicts, never mixed into them (ds2a/records/shadow.py)
            s["shadow"] = shadow_records.summary(con, run_id)
        if args.json:
            print(json.dumps(s, default=str))
        else:
            print(format_report(s) + ("\n" + shadow_records.format_shadow(s["shadow"]) if args.shadow else ""))
        if args.csv:
            n = write_csv(con, run_id, args.csv)
            print(f"wrote {n} part rows to {args.csv}")
    finally:
        con.close()
    return 0


def _audit(con: sqlite3.Connection, args: argparse.Namespace) -> int:
    """The rows, then the chain's verdict over the whole table (a run's rows alone prove nothing)."""
    only = run_row(con, args.run, args.db)["id"] if args.run is not None else None
    if not audit.has_audit(con):
        print(f"audit {args.db}: no audit trail (a database of schema version 1, written before ds2a kept one)")
    else:
        print(f"audit trail of {args.db}" + (f", run {only}" if only is not None else "") + ":")
        print("\n".join(audit.format_rows(audit.rows(con, only))) or "  (no rows)")
    n, problems = audit.verify(con)
    if problems:
        print(f"audit {args.db}: CHAIN BROKEN, {len(problems)} problem(s) in {n} row(s):")
        print("\n".join(f"  {p}" for p in problems))
        return 1
    last, digest = audit.head(con)
    print(f"audit {args.db}: chain OK, {n} row(s); last row {last}, hash {digest}")
    return 0
