"""What a viewer may do on the station's page, and the audit row each accepted action leaves.

Roles come from the users file (ds2a/notify/users.py), each with the rights of the ones before:
`operator` views, acknowledges the page's alarm and marks a verdict doubtful; `engineer` also switches
the recipe and overrides a verdict. A station without a users file is a single-user station: whoever
the page admits (the shared token's holder, or anyone on this machine) acts as engineer and is recorded
as `shared token` or `anonymous`; a page on the network without a token (--web-insecure) is view only.

Every accepted action is a row of the database's audit trail (ds2a/records/audit.py) with the user's
name, role and origin (`web ADDRESS`); an override or a doubt adds its override row beside it and the
verdict row is never changed (the same rows as `ds2a override`); a recipe request is audited by the recipe
book it goes to (ds2a/inspect/recipes.py), which every request passes through. The page opens its records read-only:
each action opens its own short writing connection, off the event loop.
"""
from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ..errors import UserError
from ..notify.users import ROLES
from ..records import audit
from ..records.database import connect

NEEDS = {"view": "operator", "acknowledge": "operator", "doubtful": "operator",
         "recipe": "engineer", "override": "engineer"}  # the least role for each action
WHAT = {"acknowledge": "acknowledging an alarm", "doubtful": "marking a verdict doubtful",
        "recipe": "switching the recipe", "override": "overriding a verdict"}
VERDICTS = ("PASS", "FAIL", "NONE")
MAX_REASON = 500
logger = logging.getLogger(__name__)


class Refused(Exception):
    """An action the viewer may not take (HTTP 403) or cannot take now (HTTP 409); the message says why."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Actor:
    """Who acts: a signed-in user, the shared token or an anonymous viewer; role None is view only."""

    name: str
    role: Optional[str]
    origin: str
    authenticated: bool = False

    def may(self, action: str) -> bool:
        return self.role in ROLES and ROLES.index(self.role) >= ROLES.index(NEEDS[action])

    def rights(self) -> List[str]:
        return [a for a in NEEDS if self.may(a)]

    def check(self, action: str) -> None:
        if self.may(action):
            return
        if self.role is None:
            why = ("this page is view only for the shared token when users sign in: sign in at /login"
                   if self.name == "shared token" else "this page is view only to the network without a sign-in or "
                   "token (start the station with --web-users FILE or --web-token TOKEN, or act from 127.0.0.1)")
        else:
            why = f"{self.name} is {self.role}; {WHAT[action]} needs {NEEDS[action]} or above"
        raise Refused(f"refused: {why}; nothing recorded")

    def as_dict(self) -> Dict[str, Any]:
        return {"name": self.name, "role": self.role, "authenticated": self.authenticated, "rights": self.rights()}


def reason_of(body: Dict[str, Any]) -> str:
    reason = str(body.get("reason") or "").strip()
    if not reason:
        raise Refused("say why (reason): it is kept in the audit trail; nothing recorded", 400)
    return reason[:MAX_REASON]


class Actions:
    """The page's writing side for one station: the records path, the live view (its alarm) and the station
    (its recipe book, `station.recipes`, set by the inspection when it has one)."""

    def __init__(self, db: Optional[str], live: Any = None, station: Any = None) -> None:
        self.db, self.live, self.station = db, live, station

    @property
    def recipes(self) -> Any:
        return getattr(self.station, "recipes", None)

    def _write(self) -> sqlite3.Connection:
        if not self.db:
            raise Refused("no --db: this station keeps no records, so no action can be audited; nothing done", 409)
        try:
            return connect(self.db, create=False)
        except UserError as exc:
            raise Refused(f"{exc}; nothing recorded", 409) from None

    def _audit(self, action: str, who: Actor, run_id: Optional[int] = None, detail: Optional[Dict[str, Any]] = None
               ) -> int:
        con = self._write()
        try:
            aid, _ = audit.append(con, action, who.name, who.origin, role=who.role, run_id=run_id,
                                  detail={**(detail or {}), "via": "page", "authenticated": who.authenticated})
        finally:
            con.close()
        return aid

    def acknowledge(self, who: Actor, comment: str = "") -> Dict[str, Any]:
        """Clear the page's alarm (a NONE part, an error): operator and above; audited as `alarm_ack`."""
        who.check("acknowledge")
        alarm = self.live.alarm_state() if self.live is not None else None
        if not alarm or not alarm.get("active"):
            raise Refused("no alarm to acknowledge; nothing recorded", 409)
        aid = self._audit("alarm_ack", who, getattr(self.live, "run_id", None),
                          {"alarm": alarm.get("text"), "alarms": alarm.get("count"), "comment": comment[:MAX_REASON]})
        self.live.acknowledge()
        msg = f"acknowledged {alarm.get('count')} alarm(s), the last: {alarm.get('text')}"
        logger.info(f"web: {who.name} ({who.role}) from {who.origin}: {msg} (audit row {aid})")
        return {"ok": True, "message": msg, "audit_id": aid}

    def review(self, who: Actor, kind: str, body: Dict[str, Any]) -> Dict[str, Any]:
        """Override a part's verdict (engineer) or mark it doubtful (operator); the original stays."""
        who.check(kind)
        reason = reason_of(body)
        verdict = None
        if kind == "override":
            verdict = str(body.get("verdict") or "")
            if verdict not in VERDICTS:
                raise Refused(f"verdict must be one of {', '.join(VERDICTS)}; nothing recorded", 400)
        part = str(body.get("part_id") or "").strip()
        if not part:
            raise Refused("name the part (part_id); nothing recorded", 400)
        try:
            run_id = int(body.get("run"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise Refused("name the run (run: a number); nothing recorded", 400) from None
        con = self._write()
        try:
            found = con.execute("SELECT id FROM verdicts WHERE run_id=? AND part_id=? ORDER BY id",
                                (run_id, part)).fetchall()
            if len(found) != 1:
                raise Refused(f"part {part[:100]} has {'no verdict' if not found else 'several verdicts'} in run "
                              f"{run_id} (a part just decided reaches the records within seconds); nothing recorded",
                              404 if not found else 409)
            try:
                aid, original = audit.add_override(
                    con, int(found[0][0]), kind, reason, who.name, who.origin, role=who.role, verdict=verdict,
                    detail={"via": "page", "authenticated": who.authenticated})
            except ValueError as exc:
                raise Refused(f"{exc}; nothing recorded", 409) from None
        finally:
            con.close()
        what = f"{original} -> {verdict}" if kind == "override" else f"{original} marked doubtful"
        msg = f"part {part} run {run_id}: {what} by {who.name}; the original verdict is kept (audit row {aid})"
        logger.info(f"web: {msg}, from {who.origin}")
        return {"ok": True, "message": msg, "audit_id": aid}

    def recipes_state(self, who: Actor) -> Dict[str, Any]:
        """What the page shows of the recipes: the one in force, the others, whether this viewer may switch."""
        book = self.recipes
        if book is None:
            return {"available": False, "may_switch": False}
        return {"available": True, "names": list(book.names()), "current": dict(book.current()),
                "state": book.state(), "may_switch": who.may("recipe")}

    def switch_recipe(self, who: Actor, body: Dict[str, Any]) -> Dict[str, Any]:
        """Ask the recipe book (ds2a/inspect/recipes.py) for another recipe, applied between parts: engineer.
        The book writes the `recipe_select` audit rows, as for OPC UA and the line."""
        who.check("recipe")
        book = self.recipes
        if book is None:
            raise Refused("this station has no recipe book; nothing done", 409)
        name = str(body.get("name") or "").strip()
        if not name:
            raise Refused("name the recipe (name); nothing done", 400)
        self._write().close()  # no request reaches the book unless it can be audited
        try:  # the book audits the request and, at the part boundary, the changeover (`recipe_select` rows)
            message = str(book.request(name, who.name, who.role, who.origin))
        except UserError as exc:
            raise Refused(f"{exc}; nothing done", 404) from None
        logger.info(f"web: {who.name} ({who.role}) from {who.origin} asked for recipe {name}: {message}")
        return {"ok": True, "message": message}
