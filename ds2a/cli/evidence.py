"""`ds2a evidence`: one folder per part (pictures, defects, the rule that decided, recipe, model, self-test) that
an auditor opens without ds2a: index.html, manifest.json with every file's sha256, SHA256SUMS.

examples:
  ds2a evidence runs/demo/inspect.sqlite --part cell-000003 --out evidence/
  ds2a evidence /var/lib/ds2a/inspect.sqlite --from 2026-12-07T06:00 --to 2026-12-07T07:00 --out evidence/ --zip
  ds2a evidence --verify evidence/cell-000003_run1_FAIL_20261207T060031Z
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError
from ..outputs import check_outputs, check_writable_dir
from ..records.evidence import MAX_PARTS, Evidence, check_out, parse_time, verify


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    p.epilog = "\n".join((__doc__ or "").split("\n")[2:])
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("db", nargs="?", metavar="DB", help="inspection database (`ds2a inspect --db`), read-only")
    p.add_argument("--part", metavar="ID", help="the part id (a part judged in several runs gets one folder per run)")
    p.add_argument("--run", type=int, metavar="N", help="only this run")
    p.add_argument("--from", dest="t_from", metavar="TIME", help="parts judged at or after TIME "
                   "(2026-12-07T06:00 local, ...Z for UTC, or epoch seconds)")
    p.add_argument("--to", dest="t_to", metavar="TIME", help="parts judged at or before TIME")
    p.add_argument("--out", metavar="DIR", help="folder that receives one new evidence folder per part")
    p.add_argument("--zip", action="store_true", help="also a .zip of each evidence folder, beside it")
    p.add_argument("--max-parts", type=int, default=MAX_PARTS, help=f"refuse more parts than this (default {MAX_PARTS})")
    p.add_argument("--verify", metavar="FOLDER", help="check an evidence folder against its manifest and exit")


def run(args: argparse.Namespace) -> int:
    if args.verify:
        problems = verify(args.verify)
        for line in problems:
            print(f"{args.verify}: {line}", file=sys.stderr)
        print(f"{args.verify}: {'FAILED, ' + str(len(problems)) + ' problem(s)' if problems else 'every file matches its manifest'}")
        return 1 if problems else 0
    if not args.db or not args.out:
        raise UserError("give the database and --out DIR, e.g. `ds2a evidence inspect.sqlite --part ID --out evidence/`")
    if args.part is None and args.t_from is None and args.t_to is None and args.run is None:
        raise UserError("say which parts: --part ID, --run N and/or --from/--to TIME")
    t_from = parse_time(args.t_from, "--from") if args.t_from else None
    t_to = parse_time(args.t_to, "--to") if args.t_to else None
    out = check_out(args.out, args.db)
    ev = Evidence(args.db)  # missing, empty or not a ds2a database: a one-line error here
    try:
        rows = ev.parts(args.part, args.run, t_from, t_to)
        if len(rows) > args.max_parts:
            raise UserError(f"{len(rows)} parts match, more than --max-parts {args.max_parts}; narrow --from/--to "
                            "or raise --max-parts")
        check_writable_dir(out, f"--out {args.out}")
        # every file written goes through the output checks against every file read (ds2a/outputs.py)
        check_outputs([("--out", os.path.join(out, "manifest.json"))], ev.inputs(rows))
        for pv in rows:
            folder, archive = ev.write(pv, out, args.zip)
            print(f"{pv['part_id']} (run {pv['run_id']}, {pv['verdict']}): {folder}" + (f" + {archive}" if archive else ""))
    finally:
        ev.close()
    return 0
