"""`ds2a review`: operators mark wrong verdicts, engineers confirm them, and confirmed marks become training data.

`mark` records a false reject (a FAIL that should have passed) or a missed defect (a PASS that should have
failed) with a note; `confirm` is an engineer's answer (--reject to turn a mark down); `list` shows the marks;
`export` writes the marked parts' raw frames with the model's class maps as pre-labels, in the images/ +
masks/ layout `ds2a train` reads, a CVAT import file and a manifest (docs/REVIEW.md); `import-cvat` makes a
new training folder of an export with the labels corrected in CVAT. Marks never change a
verdict; each is an audit row (ds2a/records/review.py). With --users FILE (ds2a/notify/users.py) the user
signs in (password from a prompt or DS2A_PASSWORD); without it the name (and, to confirm, --role) is
recorded as given, unverified (a single-user station).

examples:
  ds2a review mark runs/demo/inspect.sqlite --part cell-000003 --kind false_reject --note "dust, not damage" --user anna
  ds2a review confirm runs/demo/inspect.sqlite --mark 1 --note "agreed" --user ben --users users.txt
  ds2a review list runs/demo/inspect.sqlite
  ds2a review export runs/demo/inspect.sqlite --out review/2026-12-07
  ds2a review import-cvat review/2026-12-07 --cvat task_annotations.zip --out review/2026-12-07-labelled
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Optional, Tuple

from ..errors import UserError
from ..notify.users import PASSWORD_ENV, ROLES, sign_in
from ..records import audit, review
from ..records.database import connect


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    p.epilog = "\n".join((__doc__ or "").split("\n")[2:])
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = sub.add_parser("mark", help="mark a part's verdict as a false reject or a missed defect")
    m.add_argument("db", help="the inspection database (`ds2a inspect --db`)")
    m.add_argument("--part", required=True, metavar="ID", help="the part id")
    m.add_argument("--run", type=int, metavar="N", help="the run (needed when the part was judged in several)")
    m.add_argument("--kind", required=True, choices=review.KINDS,
                   help="false_reject: a FAIL that should have passed; missed_defect: a PASS that should have failed")
    m.add_argument("--note", required=True, help="what is wrong (kept in the audit trail)")
    _who_arguments(m, confirm=False)
    c = sub.add_parser("confirm", help="an engineer confirms (or with --reject turns down) a mark")
    c.add_argument("db", help="the inspection database")
    c.add_argument("--mark", required=True, type=int, metavar="N", help="the mark's number (`ds2a review list`)")
    c.add_argument("--reject", action="store_true", help="the mark is wrong: the part stays out of the training data")
    c.add_argument("--note", default="", help="why (optional)")
    _who_arguments(c, confirm=True)
    ls = sub.add_parser("list", help="the marks and their answers")
    ls.add_argument("db", help="the inspection database (read-only)")
    ls.add_argument("--run", type=int, metavar="N", help="only this run")
    ls.add_argument("--json", action="store_true", help="one JSON object per mark")
    e = sub.add_parser("export", help="marked parts as a training set with pre-labels, a CVAT import file and a manifest")
    e.add_argument("db", help="the inspection database (read-only; the export is recorded in its audit trail)")
    e.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder for the export")
    e.add_argument("--run", type=int, metavar="N", help="only the marks of this run")
    e.add_argument("--all-marks", action="store_true", help="also marks no engineer has answered yet "
                   "(default: confirmed marks only; rejected marks are always left out)")
    i = sub.add_parser("import-cvat", help="a new training folder: an export's images with the labels corrected in CVAT")
    i.add_argument("export", help="the folder `ds2a review export` wrote (read only)")
    i.add_argument("--cvat", required=True, metavar="ZIP", help="the CVAT task's annotations exported as "
                   "\"Segmentation mask 1.1\"")
    i.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder for the corrected set")


def _who_arguments(p: argparse.ArgumentParser, confirm: bool) -> None:
    p.add_argument("--user", required=True, metavar="NAME", help="who " + ("answers" if confirm else "marks"))
    p.add_argument("--users", metavar="FILE", help=f"users file: NAME must sign in (prompt or ${PASSWORD_ENV}); "
                   "the role comes from the file")
    if confirm:
        p.add_argument("--role", choices=ROLES, help="without --users: the role NAME claims, recorded unverified "
                       "(confirming needs engineer or admin)")


def _who(args: argparse.Namespace) -> Tuple[str, Optional[str], bool]:
    """(name, role, authenticated); UserError for a wrong password."""
    if not args.users:
        return args.user, getattr(args, "role", None), False
    if getattr(args, "role", None):
        raise UserError("--role is for a station without --users; with --users the role comes from the file")
    user = sign_in(args.users, args.user)
    return user.name, user.role, True


def find_verdict(con, db: str, part: str, run: Optional[int]) -> int:
    """The verdict row id of `part` (in `run`); UserError naming the runs it was judged in otherwise."""
    found = con.execute("SELECT id, run_id FROM verdicts WHERE part_id=? ORDER BY id", (part,)).fetchall()
    if run is not None:
        mine = [r for r in found if r[1] == run]
        if not mine:
            other = f" (it was judged in run(s) {', '.join(str(r[1]) for r in found[:20])})" if found else ""
            raise UserError(f"part {part[:100]} has no verdict in run {run} of {db}{other}; nothing recorded")
        found = mine
    if not found:
        raise UserError(f"part {part[:100]} has no verdict in {db}; `ds2a report {db} --csv parts.csv` lists the "
                        "parts; nothing recorded")
    if len(found) > 1:
        raise UserError(f"part {part[:100]} has {len(found)} verdicts in {db} (runs "
                        f"{', '.join(str(r[1]) for r in found[:20])}); say which with --run N; nothing recorded")
    return int(found[0][0])


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args)
    if args.action == "export":
        from ..records.review_export import export

        result = export(args.db, args.out, confirmed_only=not args.all_marks, run_id=args.run)
        print(result.message())
        return 0
    if args.action == "import-cvat":
        from ..records.review_export import import_cvat

        folder, n = import_cvat(args.export, args.cvat, args.out)
        print(f"{folder}: {n} frame(s) with the labels from {args.cvat}; train with `ds2a train ... --extra-data "
              f"{args.out}`")
        return 0
    name, role, authenticated = _who(args)
    con = connect(args.db, create=False)
    try:
        detail = {"authenticated": authenticated, "via": "cli"}
        try:
            if args.action == "mark":
                verdict_id = find_verdict(con, args.db, args.part, args.run)
                mark_id = review.mark(con, verdict_id, args.kind, args.note, name, role, audit.local_origin(), detail)
                got = [m for m in review.marks(con) if m["id"] == mark_id][0]
                print(f"mark {mark_id}: part {got['part_id']} run {got['run_id']} ({got['verdict']}) marked "
                      f"{args.kind} by {_label(name, role, authenticated)}; the verdict is kept; an engineer confirms "
                      f"with `ds2a review confirm {args.db} --mark {mark_id}`")
            else:
                answer = review.confirm(con, args.mark, not args.reject, args.note, name, role, audit.local_origin(),
                                        detail)
                print(f"mark {args.mark} {'rejected' if args.reject else 'confirmed'} by "
                      f"{_label(name, role, authenticated)} (row {answer})")
        except review.ReviewError as exc:
            raise UserError(str(exc)) from None
    finally:
        con.close()
    return 0


def _label(name: str, role: Optional[str], authenticated: bool) -> str:
    return f"{name} ({role or 'no role'}{'' if authenticated else ', unverified: no --users file'})"


def _list(args: argparse.Namespace) -> int:
    con = connect(args.db, create=False, readonly=True)
    try:
        rows = review.marks(con, args.run)
    finally:
        con.close()
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print(f"no marks in {args.db}" + (f" run {args.run}" if args.run is not None else ""))
        return 0
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["t"]))
        answer = "" if r["status"] == "open" else f" by {r['answered_by']}" + (
            f": {r['answer_note']}" if r["answer_note"] else "")
        role = f" ({r['role']})" if r["role"] else ""
        print(f"{r['id']:>4}  {when}  run {r['run_id']} part {r['part_id']} {r['verdict']}  {r['kind']}  "
              f"by {r['user']}{role}: {r['note']}  [{r['status']}{answer}]")
    return 0
