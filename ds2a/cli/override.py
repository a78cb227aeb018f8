"""`ds2a override`: overrule a part's verdict, or mark it doubtful, with a reason; the original stays.

An override adds an audit row (ds2a/records/audit.py) and an override row; the part's verdict row is never
changed, and `ds2a report` shows both. With --users FILE (the format of ds2a/notify/users.py) the user
signs in (password from a prompt, or DS2A_PASSWORD): `engineer` or `admin` may override, `operator` may
only mark a verdict doubtful. Without --users the name is recorded as given, unverified (a single-user
station).

examples:
  ds2a override runs/demo/inspect.sqlite --part cell-000003 --verdict PASS --reason "dust, blown off" --user ben
  ds2a override inspect.sqlite --part cell-000007 --doubtful --reason "glare on the tab" --user anna --users users.txt
"""
from __future__ import annotations

import argparse
from typing import Optional, Tuple

from ..errors import UserError
from ..notify.users import PASSWORD_ENV, ROLES, sign_in
from ..records import audit
from ..records.database import connect

NEEDS = {"override": "engineer", "doubtful": "operator"}  # the least role for each (ROLES order)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    p.epilog = "\n".join((__doc__ or "").split("\n")[2:])
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("db", help="the inspection database (`ds2a inspect --db`)")
    p.add_argument("--part", required=True, metavar="ID", help="the part id")
    p.add_argument("--run", type=int, metavar="N", help="the run (needed when the part was judged in several)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--verdict", choices=("PASS", "FAIL", "NONE"), help="the verdict that overrules the original")
    what.add_argument("--doubtful", action="store_true", help="mark the verdict doubtful (no new verdict)")
    p.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    p.add_argument("--user", required=True, metavar="NAME", help="who overrides")
    p.add_argument("--users", metavar="FILE", help=f"users file: NAME must sign in (prompt or ${PASSWORD_ENV}) "
                   "and hold the role")


def may(role: Optional[str], kind: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(NEEDS[kind])


def _who(args: argparse.Namespace, kind: str) -> Tuple[str, Optional[str], bool]:
    """(name, role, authenticated); UserError for a wrong password or a role without the right."""
    if not args.users:
        return args.user, None, False
    user = sign_in(args.users, args.user)
    if not may(user.role, kind):
        raise UserError(f"user {user.name} is {user.role}: {'overriding a verdict' if kind == 'override' else kind} "
                        f"needs {NEEDS[kind]} or above"
                        + ("; an operator may mark it --doubtful" if kind == "override" else "") + "; nothing recorded")
    return user.name, user.role, True


def run(args: argparse.Namespace) -> int:
    reason = (args.reason or "").strip()
    if not reason:
        raise UserError("--reason is empty: say why the verdict is overruled or doubtful")
    kind = "doubtful" if args.doubtful else "override"
    name, role, authenticated = _who(args, kind)
    con = connect(args.db, create=False)
    try:
        sql, params = "SELECT id, run_id, verdict FROM verdicts WHERE part_id=?", [args.part]
        if args.run is not None:
            sql, params = sql + " AND run_id=?", params + [args.run]
        found = con.execute(sql + " ORDER BY id", params).fetchall()
        if not found:
            where = f" in run {args.run}" if args.run is not None else ""
            raise UserError(f"part {args.part[:100]} has no verdict{where} in {args.db}; `ds2a report {args.db} --csv "
                            "parts.csv` lists the parts")
        if len(found) > 1:
            runs = ", ".join(str(r[1]) for r in found[:20])
            raise UserError(f"part {args.part[:100]} has {len(found)} verdicts in {args.db} (runs {runs}); "
                            "say which with --run N")
        verdict_id, run_id, original = found[0]
        if kind == "override" and args.verdict == original:
            raise UserError(f"part {args.part[:100]} is already {original}; nothing to override")
        try:  # the audit row and the override row in one transaction, as the page writes them
            aid, original = audit.add_override(con, verdict_id, kind, reason, name, audit.local_origin(), role=role,
                                               verdict=args.verdict, detail={"authenticated": authenticated})
        except ValueError as exc:  # changed by another writer since it was read
            raise UserError(f"{args.db}: {exc}") from None
    finally:
        con.close()
    what = f"{original} -> {args.verdict}" if kind == "override" else f"{original} marked doubtful"
    who = f"{name} ({role})" if authenticated else f"{name} (unverified: no --users file)"
    print(f"part {args.part} run {run_id}: {what} by {who}, audit row {aid}; the original verdict is kept")
    return 0
