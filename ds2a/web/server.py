"""The aiohttp application: the page, charts, saved images, JSON for the live view; token check; binding.

The database is opened read-only (sqlite mode=ro) once per server and only read. Listening
beyond this machine needs a token (or an explicit --web-insecure): stations sit on plant networks.
With a users file (ds2a/notify/users.py) viewers sign in at /login with their name and password and
each request knows who asks; a shared token still works beside it, for a single-user station, and is
named as such in the log. On a station's page (`ds2a inspect --web`) viewers act by role: the POST
endpoints under /api/ check the role and audit each accepted action (ds2a/web/actions.py).
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import os
import secrets
import sqlite3
import threading
import time
import urllib.parse
from typing import Any, Dict, Optional, Tuple

from ..errors import UserError
from ..notify.users import LoginBudget, User, Users, read_users
from ..records import review
from . import data, page
from .actions import Actions, Actor, Refused

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
COOKIE = "ds2a_token"
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
    # same-origin, not no-referrer: under no-referrer a browser sends `Origin: null` with the page's own POSTs
    # (sign-in, actions), which the same-site check must then refuse; other sites still get no referrer
    "Referrer-Policy": "same-origin",
}
MIN_TOKEN = 12
SESSION_COOKIE = "ds2a_session"
SESSION_S = 12 * 3600  # a sign-in lasts a shift
SIGN_INS_PER_S = 5  # password checks a second for the whole page (each costs scrypt: see LoginBudget)
SHARED = User("shared token", "", "")  # who a request with the shared token is (a single-user station)
REFRESH_S = float(page.REFRESH_S)  # the page refreshes from one snapshot; the records are read at most this often
logger = logging.getLogger(__name__)


def _aiohttp() -> Any:
    try:
        from aiohttp import web
    except ImportError:
        raise UserError("the web page needs aiohttp and matplotlib: pip install 'ds2a-edge[web]'") from None
    return web


def parse_bind(text: str, flag: str = "--bind") -> Tuple[str, int]:
    """'HOST:PORT' (IPv6 as [::1]:8080; port 0 picks a free one) -> (host, port); UserError otherwise."""
    parts = urllib.parse.urlsplit("//" + str(text).strip())
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        host, port = None, None
    if not host or port is None or parts.path or parts.query or parts.username:
        raise UserError(f"{flag} {text}: give HOST:PORT, for example 127.0.0.1:8080 (or [::1]:8080)")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, port: int, token: Optional[str], insecure: bool, flag: str = "--bind",
                   users: bool = False) -> None:
    """A page reachable from the plant network needs a token or a users file, or the user's explicit
    --web-insecure."""
    if token is not None and len(token) < MIN_TOKEN:
        raise UserError(f"--web-token: use at least {MIN_TOKEN} characters (for example the output of "
                        "`python -c 'import secrets; print(secrets.token_urlsafe(16))'`)")
    if not is_loopback(host) and not token and not users and not insecure:
        raise UserError(f"{flag} {host}:{port} listens beyond this machine: give --web-token TOKEN (viewers open "
                        f"http://{host}:{port}/?token=TOKEN once) or {'--web-users' if flag == '--web' else '--users'} "
                        f"FILE (viewers sign in) or, on a closed network, --web-insecure; or bind 127.0.0.1:{port}")


def on_loopback(request: Any) -> bool:
    """Whether the connection came in on a loopback address (only this machine can reach it)."""
    transport = getattr(request, "transport", None)
    sock = transport.get_extra_info("sockname") if transport is not None else None
    return bool(sock) and isinstance(sock, tuple) and is_loopback(str(sock[0]))


def host_allowed(request: Any) -> bool:
    """Without a token, a connection to a loopback address must name the host as localhost or an IP address.

    A web page the station's browser opens can point its own DNS name at 127.0.0.1 (DNS rebinding) and read
    the records through that browser; its requests carry that name in Host, which is refused here.
    """
    transport = getattr(request, "transport", None)
    sock = transport.get_extra_info("sockname") if transport is not None else None
    if not sock or not isinstance(sock, tuple) or not is_loopback(str(sock[0])):
        return True  # reachable beyond this machine only with a token or --web-insecure (check_exposure)
    try:
        host = request.headers.get("Host")
        name = urllib.parse.urlsplit("//" + host).hostname or "" if host else None
    except ValueError:
        return False
    if name is None or name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def record_id(text: str, what: str) -> int:
    """A frame or run id from a URL; one SQLite cannot hold (above 2**63 - 1) is not in the records."""
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"{what} '{text[:30]}' is not a number") from None
    if not 0 <= value < 2 ** 63:
        raise UserError(f"{what} {text[:30]}{'...' if len(text) > 30 else ''} is not in the records")
    return value


class Site:
    """The state the handlers share: the read-only connection, the live view, snapshots and their charts."""

    def __init__(self, db: Optional[str], live: Any = None) -> None:
        self.db, self.live = db, live
        self._con: Optional[sqlite3.Connection] = None
        self._charts: Dict[Tuple[str, int], Tuple[str, bytes]] = {}  # (chart, run) -> (snapshot version, SVG)
        self._snaps: Dict[int, Tuple[float, Dict[str, Any]]] = {}  # run -> (when read, snapshot)
        self._recent: Dict[Tuple[int, str], Dict[str, Any]] = {}  # (run, version) -> snapshot, the last few
        self._lock = threading.RLock()  # handlers run on one loop, charts on executor threads
        self._draw_lock = threading.Lock()  # one matplotlib drawing at a time

    def con(self) -> Optional[sqlite3.Connection]:
        if self.db is None:
            return None
        if self._con is None:
            if not os.path.isfile(self.db):
                return None
            self._con = data.open_readonly(self.db)
        return self._con

    def snapshot(self, run_id: int) -> Dict[str, Any]:
        """One consistent read of a run (data.snapshot), shared for REFRESH_S by every viewer: the tiles, the
        live count, the tables and the charts of one refresh all come from it."""
        with self._lock:
            now = time.monotonic()
            hit = self._snaps.get(run_id)
            if hit is None or now - hit[0] >= REFRESH_S:
                con = self.con()
                assert con is not None
                hit = self._snaps[run_id] = (now, data.snapshot(con, run_id))
                self._recent[(run_id, hit[1]["version"])] = hit[1]
                while len(self._recent) > 8:
                    del self._recent[next(iter(self._recent))]
            return hit[1]

    def summary(self, run_id: int) -> Dict[str, Any]:
        """`ds2a report`'s numbers, from the current snapshot."""
        return self.snapshot(run_id)["summary"]

    def colours(self, snap: Dict[str, Any]) -> Dict[str, str]:
        """'#rrggbb' per class: the live model's palette for the run it inspects, else the one the run kept."""
        from .charts import class_colours

        live = self.live
        if live is not None and getattr(live, "run_id", None) == snap["run"] and getattr(live, "palette", None):
            return class_colours(live.classes, live.palette)
        return class_colours(snap["classes"], snap["palette"])

    def view(self, snap: Dict[str, Any]) -> Dict[str, Any]:
        """What one refresh of the page applies (api/snapshot): numbers, chart addresses, tables."""
        colours = self.colours(snap)
        return {"run": snap["run"], "version": snap["version"], "summary": snap["summary"],
                "charts": page.chart_urls(snap["run"], snap["version"]), "colours": colours,
                "run_label": page.run_label(snap["run"], snap["summary"]["started"], snap["summary"]["status"],
                                            snap["summary"]["parts"]),
                "live_run": getattr(self.live, "run_id", None),
                "html": {"defects": page.defects_section(snap["summary"], colours),
                         "failures": page.gallery(snap["failed_parts"]),
                         "overrides": page.overrides_list(snap["summary"])}}

    def chart(self, name: str, run_id: int, version: Optional[str] = None) -> bytes:
        """The chart of the snapshot `version` (the one the page's numbers came from), else of the current one;
        drawn once per snapshot whatever the number of viewers."""
        from . import charts

        with self._lock:
            snap = self._recent.get((run_id, version or "")) or self.snapshot(run_id)
            cached = self._charts.get((name, run_id))
        if cached is not None and cached[0] == snap["version"]:
            return cached[1]
        with self._draw_lock:
            with self._lock:  # another viewer may have drawn it while this one waited
                cached = self._charts.get((name, run_id))
            if cached is not None and cached[0] == snap["version"]:
                return cached[1]
            if name == "pass_rate":
                svg = charts.pass_rate_svg(snap["trend"])
            else:
                svg = charts.defects_svg(snap["trend"], self.colours(snap))
        with self._lock:
            self._charts[(name, run_id)] = (snap["version"], svg)
        return svg

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None


class Sessions:
    """Who signed in to the page: a random cookie per sign-in, kept in memory for SESSION_S (a restart signs
    everyone out)."""

    def __init__(self, users: Users) -> None:
        self.users = users
        self._by_key: Dict[str, Tuple[User, float]] = {}
        self.budget = LoginBudget(SIGN_INS_PER_S)  # the whole page, every connection together

    def open(self, user: User) -> str:
        now = time.monotonic()
        self._by_key = {k: v for k, v in self._by_key.items() if v[1] > now}
        key = secrets.token_urlsafe(32)
        self._by_key[key] = (user, now + SESSION_S)
        return key

    def get(self, key: str) -> Optional[User]:
        found = self._by_key.get(key) if key else None
        return found[0] if found is not None and found[1] > time.monotonic() else None

    def close(self, key: str) -> None:
        self._by_key.pop(key, None)


def _login_page(message: str = "") -> str:
    form = ('<form method="post" action="/login"><p><label>name <input name="name" autocomplete="username" '
            'required></label></p><p><label>password <input name="password" type="password" '
            'autocomplete="current-password" required></label></p><p><button type="submit">sign in</button></p>'
            "</form>")
    return page.message_page("ds2a station: sign in", message or "Sign in with your name and password.").replace(
        "</p>", "</p>" + form, 1)


def make_app(site: Site, token: Optional[str] = None, users: Optional[Users] = None,
             actions: Optional[Actions] = None) -> Any:
    """actions: what viewers may do on a station's page (ds2a/web/actions.py); None: the page only reads."""
    web = _aiohttp()
    sessions = Sessions(users) if users is not None else None

    async def login(request: Any) -> Any:
        """GET: the form; POST: check the name and password (scrypt, off the event loop), then a session."""
        if sessions is None:
            raise web.HTTPNotFound()
        if request.method != "POST":
            return web.Response(content_type="text/html", text=_login_page())
        origin = request.headers.get("Origin")
        if origin and urllib.parse.urlsplit(origin).netloc != request.host:
            return web.Response(status=403, content_type="text/html", text=_login_page("Sign in from this page."))
        form = await request.post()
        name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))[:1024]
        if not sessions.budget.take(time.monotonic()):  # a flood of guesses: refused unchecked, never the CPU
            if sessions.budget.refused == 1 or sessions.budget.refused % 100 == 0:
                logger.warning(f"warning: web: more than {SIGN_INS_PER_S} sign-ins a second; refused '{name}' "
                               f"unchecked ({sessions.budget.refused} so far)")
            return web.Response(status=429, content_type="text/html",
                                text=_login_page("Too many sign-ins right now; try again in a moment."))
        user = await asyncio.get_running_loop().run_in_executor(None, sessions.users.check, name, password)
        if user is None:
            logger.warning(f"warning: web: refused a sign-in for '{name}' from {request.remote} (unknown user or "
                           "wrong password)")
            await asyncio.sleep(1.0)  # one guess a second per connection
            return web.Response(status=401, content_type="text/html",
                                text=_login_page("Unknown user or wrong password."))
        logger.info(f"web: {user.name} ({user.role}) signed in from {request.remote}")
        resp = web.HTTPSeeOther("/")
        resp.set_cookie(SESSION_COOKIE, sessions.open(user), httponly=True, samesite="Strict", max_age=SESSION_S)
        raise resp

    def _signed_in(request: Any) -> Optional[User]:
        return sessions.get(request.cookies.get(SESSION_COOKIE, "")) if sessions is not None else None

    def actor(request: Any) -> Actor:
        """Who acts (ds2a/web/actions.py): a signed-in user by role; without a users file (a single-user
        station) the shared token's holder, or anyone on this machine, as engineer; else view only."""
        origin, user = f"web {request.remote}", request.get("user")
        if user is not None and user is not SHARED:
            return Actor(user.name, user.role, origin, authenticated=True)
        single = sessions is None
        if user is SHARED:
            return Actor("shared token", "engineer" if single else None, origin)
        return Actor("anonymous", "engineer" if single and on_loopback(request) else None, origin)

    def page_actions(request: Any) -> Optional[Dict[str, Any]]:
        if actions is None:
            return None
        who = actor(request)
        return {"who": who.as_dict(), "recipes": actions.recipes_state(who)}

    async def act(request: Any, name: str, fn: Any) -> Any:
        """One POSTed action: same-site JSON only, the role checked, run off the event loop, answered as JSON."""
        if actions is None:
            return web.json_response({"ok": False, "message": "this page only reads the records (ds2a web); act on "
                                      "the station's own page (ds2a inspect --web)"}, status=404)
        origin = request.headers.get("Origin")
        if (origin and urllib.parse.urlsplit(origin).netloc != request.host) or \
                request.content_type != "application/json":
            return web.json_response({"ok": False, "message": "send actions from this page (same-site JSON)"},
                                     status=403)
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"ok": False, "message": "the request body must be a JSON object"}, status=400)
        who = actor(request)
        try:
            result = await asyncio.get_running_loop().run_in_executor(None, fn, who, body)
        except Refused as exc:
            logger.warning(f"warning: web: {name} by {who.name} ({who.role or 'view only'}) from {who.origin} "
                           f"refused: {exc}")
            return web.json_response({"ok": False, "message": str(exc)}, status=exc.status)
        except sqlite3.Error as exc:
            logger.error(f"ERROR: web: {name} by {who.name} not recorded in {site.db}: {exc}")
            return web.json_response({"ok": False, "message": f"the database refused the action ({exc}); nothing "
                                      "recorded, try again"}, status=503)
        if name in ("override", "doubtful"):
            with site._lock:  # the next refresh reads the records again and lists it
                site._snaps.clear()
        return web.json_response(result)

    async def alarm_ack(request: Any) -> Any:
        return await act(request, "acknowledge", lambda who, body: actions.acknowledge(  # type: ignore[union-attr]
            who, str(body.get("comment") or "")))

    async def override(request: Any) -> Any:
        return await act(request, "override", lambda who, body: actions.review(  # type: ignore[union-attr]
            who, "override", body))

    async def doubtful(request: Any) -> Any:
        return await act(request, "doubtful", lambda who, body: actions.review(  # type: ignore[union-attr]
            who, "doubtful", body))

    def review_action(who: Actor, body: Dict[str, Any], mark_id: Optional[int] = None) -> Dict[str, Any]:
        """POST /api/mark (operator and above) and /api/mark/{id}/confirm (engineer): ds2a/records/review.py."""
        if who.role is None:
            raise Refused("this page is view only here: sign in at /login; nothing recorded")
        con = actions._write()  # type: ignore[union-attr]
        try:
            detail = {"via": "page", "authenticated": who.authenticated}
            if mark_id is None:
                part = str(body.get("part_id") or "").strip()
                try:
                    run_id = int(body.get("run"))  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise Refused("name the run (run: a number); nothing recorded", 400) from None
                found = con.execute("SELECT id FROM verdicts WHERE run_id=? AND part_id=?", (run_id, part)).fetchall()
                if len(found) != 1:
                    raise Refused(f"part {part[:100]} has {'no verdict' if not found else 'several verdicts'} in run "
                                  f"{run_id}; nothing recorded", 404 if not found else 409)
                new = review.mark(con, int(found[0][0]), str(body.get("kind") or ""), str(body.get("note") or ""),
                                  who.name, who.role, who.origin, detail)
                msg = f"mark {new}: part {part} run {run_id} marked {body.get('kind')} by {who.name}; an engineer confirms it"
            else:
                accept = body.get("accept", True) is not False
                new = review.confirm(con, mark_id, accept, str(body.get("note") or ""), who.name, who.role,
                                     who.origin, detail)
                msg = f"mark {mark_id} {'confirmed' if accept else 'rejected'} by {who.name}"
        except review.ReviewError as exc:
            raise Refused(str(exc), exc.status) from None
        finally:
            con.close()
        logger.info(f"web: {msg}, from {who.origin}")
        return {"ok": True, "message": msg, "id": new}

    async def mark(request: Any) -> Any:
        return await act(request, "mark", review_action)

    async def mark_confirm(request: Any) -> Any:
        mark_id = record_id(request.match_info["mark"], "mark")
        return await act(request, "confirm", lambda who, body: review_action(who, body, mark_id))

    async def marks(request: Any) -> Any:
        con = site.con()
        run = request.query.get("run")
        rows = review.marks(con, record_id(run, "run") if run else None) if con is not None else []
        return web.json_response({"marks": rows})

    async def recipe(request: Any) -> Any:
        return await act(request, "recipe", lambda who, body: actions.switch_recipe(  # type: ignore[union-attr]
            who, body))

    async def recipes(request: Any) -> Any:
        if actions is None:
            return web.json_response({"available": False, "may_switch": False})
        return web.json_response(actions.recipes_state(actor(request)))

    async def me(request: Any) -> Any:
        return web.json_response(actor(request).as_dict() if actions is not None else {"rights": []})

    async def logout(request: Any) -> Any:
        origin = request.headers.get("Origin")
        if origin and urllib.parse.urlsplit(origin).netloc != request.host:
            raise web.HTTPForbidden()
        if sessions is not None:
            key = request.cookies.get(SESSION_COOKIE, "")
            user = sessions.get(key)
            sessions.close(key)
            if user is not None:
                logger.info(f"web: {user.name} ({user.role}) signed out from {request.remote}")
        resp = web.HTTPSeeOther("/login" if sessions is not None else "/")
        resp.del_cookie(SESSION_COOKIE)
        raise resp

    @web.middleware
    async def guard(request: Any, handler: Any) -> Any:
        if sessions is not None and request.path != "/login":
            request["user"] = _signed_in(request)
            if request["user"] is None and not token:
                if request.method == "GET" and not request.path.startswith("/api/"):
                    raise web.HTTPSeeOther("/login")
                return web.Response(status=401, content_type="text/html", headers=HEADERS,
                                    text=_login_page("Sign in first."))
        if sessions is not None and request.path == "/login":
            pass  # the sign-in form answers anyone who reached this address (the users file guards the rest)
        elif request.get("user") is not None:
            pass
        elif not token and not host_allowed(request):
            return web.Response(status=403, content_type="text/html", headers=HEADERS,
                                text=page.message_page("ds2a station: unknown host name",
                                                       "Without a token this page answers only to localhost or an "
                                                       "IP address; open it as http://127.0.0.1:PORT/."))
        if token and request.get("user") is None and not (sessions is not None and request.path == "/login"):
            given = request.query.get("token")
            if given is not None and hmac.compare_digest(given.encode(), token.encode()):
                query = {k: v for k, v in request.query.items() if k != "token"}
                # one leading slash: '//evil.example/x' (or '/\\evil...') would send the viewer off this site
                target = "/" + request.path.lstrip("/\\") + ("?" + urllib.parse.urlencode(query) if query else "")
                resp = web.HTTPFound(target)
                resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
                raise resp
            auth = request.headers.get("Authorization", "")
            supplied = request.cookies.get(COOKIE) or (auth[7:] if auth.startswith("Bearer ") else "")
            if not hmac.compare_digest(supplied.encode(), token.encode()):
                return web.Response(status=401, content_type="text/html", headers=HEADERS,
                                    text=page.message_page("ds2a station: token needed",
                                                           "Open this page with ?token=YOUR_TOKEN once"
                                                           + (", or sign in at /login." if sessions else ".")))
            request["user"] = SHARED
        try:
            resp = await handler(request)
        except UserError as exc:
            resp = web.Response(status=404, content_type="text/html", text=page.message_page("not found", str(exc)))
        except sqlite3.Error as exc:
            resp = web.Response(status=503, content_type="text/html",
                                text=page.message_page("database busy", f"{site.db}: {exc}; reload in a moment"))
        for k, v in HEADERS.items():
            resp.headers.setdefault(k, v)
        return resp

    def _run(con: sqlite3.Connection, request: Any) -> Optional[int]:
        run = request.query.get("run")
        if run:
            record_id(run, "run")  # an id SQLite cannot hold is not in the records (not an OverflowError)
        return data.pick_run(con, run, site.db or "")

    async def index(request: Any) -> Any:
        con = site.con()
        acts = page_actions(request)
        if con is None:
            return web.Response(content_type="text/html", text=page.overview(site.db, [], None, None, [],
                                                                            site.live is not None, actions=acts))
        with site._lock:
            run_id = _run(con, request)
            runs = data.runs(con)
            notify = data.notify_stats(con, run_id) if run_id is not None else []
            snap = site.snapshot(run_id) if run_id is not None else None
        if snap is None:
            return web.Response(content_type="text/html", text=page.overview(site.db, runs, None, None, [],
                                                                            site.live is not None, actions=acts))
        return web.Response(content_type="text/html", text=page.overview(
            site.db, runs, run_id, snap["summary"], snap["failed_parts"], site.live is not None, notify,
            site.colours(snap), snap["version"], actions=acts))

    async def summary(request: Any) -> Any:
        con = site.con()
        run_id = _run(con, request) if con is not None else None
        if run_id is None:
            return web.json_response({"run": None})
        return web.json_response(site.summary(run_id))

    async def snapshot(request: Any) -> Any:
        con = site.con()
        run_id = _run(con, request) if con is not None else None
        if run_id is None:
            return web.json_response({"run": None})
        snap = await asyncio.get_running_loop().run_in_executor(None, site.snapshot, run_id)
        return web.json_response(site.view(snap))

    async def failure(request: Any) -> Any:
        con = site.con()
        f = data.failure(con, record_id(request.match_info["frame"], "frame")) if con is not None else None
        if f is None:
            raise UserError(f"frame {request.match_info['frame']} is not in the records")
        return web.Response(content_type="text/html", text=page.failure_page(f))

    async def image(request: Any) -> Any:
        con = site.con()
        path = data.image_file(con, record_id(request.match_info["frame"], "frame"), request.match_info["kind"],
                               site.db or "") \
            if con is not None else None
        if path is None:
            raise UserError("that image is not in the records or its file is gone")
        return web.FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    async def evidence(request: Any) -> Any:  # one part's evidence folder as a .zip (ds2a/records/evidence.py)
        if not site.db:
            raise UserError("no database: this server only shows the live view")
        from ..records.evidence import evidence_zip

        verdict_id = record_id(request.match_info["verdict"], "part verdict")
        body, name = await asyncio.get_running_loop().run_in_executor(None, evidence_zip, site.db, verdict_id)
        who = request.get("user")
        if who is not None:  # the page reads the database only: who took which evidence goes to the log
            logger.info(f"web: evidence of part verdict {verdict_id} taken by {who.name}"
                        f"{f' ({who.role})' if who.role else ''} from {request.remote}")
        return web.Response(body=body, content_type="application/zip",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    async def chart(request: Any) -> Any:
        con = site.con()
        run_id = _run(con, request) if con is not None else None
        if run_id is None or request.match_info["name"] not in ("pass_rate", "defects"):
            raise UserError("no such chart")
        svg = await asyncio.get_running_loop().run_in_executor(None, site.chart, request.match_info["name"], run_id,
                                                               request.query.get("v"))
        return web.Response(body=svg, content_type="image/svg+xml")

    async def live_state(_request: Any) -> Any:
        if site.live is None:
            raise UserError("no live view: this server only shows records (use ds2a inspect --web)")
        return web.json_response(site.live.state())

    async def live_jpeg(_request: Any) -> Any:
        if site.live is None:
            raise UserError("no live view")
        jpeg = await asyncio.get_running_loop().run_in_executor(None, site.live.jpeg)
        if jpeg is None:
            return web.Response(status=503, text="no frame yet")
        return web.Response(body=jpeg, content_type="image/jpeg")

    async def static(request: Any) -> Any:
        name = request.match_info["name"]
        if name not in ("page.js", "page.css"):
            raise UserError("no such file")
        return web.FileResponse(os.path.join(STATIC, name), headers={"Cache-Control": "max-age=300"})

    app = web.Application(middlewares=[guard])
    app.router.add_get("/", index)
    app.router.add_get("/api/summary", summary)
    app.router.add_get("/api/snapshot", snapshot)
    app.router.add_get(r"/failure/{frame:\d+}", failure)
    app.router.add_get(r"/image/{frame:\d+}/{kind:annotated|raw}", image)
    app.router.add_get(r"/evidence/{verdict:\d+}.zip", evidence)
    app.router.add_get(r"/chart/{name}.svg", chart)
    app.router.add_get("/api/live", live_state)
    app.router.add_get("/live.jpg", live_jpeg)
    app.router.add_get(r"/static/{name}", static)
    app.router.add_route("*", "/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/api/me", me)
    app.router.add_get("/api/recipes", recipes)
    app.router.add_post("/api/recipe", recipe)
    app.router.add_post("/api/alarm/ack", alarm_ack)
    app.router.add_post("/api/override", override)
    app.router.add_post("/api/doubtful", doubtful)
    app.router.add_post("/api/mark", mark)  # review marks: ds2a/records/review.py, docs/REVIEW.md
    app.router.add_post(r"/api/mark/{mark:\d+}/confirm", mark_confirm)
    app.router.add_get("/api/marks", marks)
    app.on_cleanup.append(lambda _app: _close(site))
    return app


async def _close(site: Site) -> None:
    site.close()


class BackgroundServer:
    """The app on its own thread and event loop, beside `ds2a inspect`; start() fails (UserError) if the
    address cannot be bound, before the run begins."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self.app, self.host, self.port = app, host, port
        self.loop = asyncio.new_event_loop()
        self._runner: Any = None
        self._thread = threading.Thread(target=self.loop.run_forever, name="web", daemon=True)

    async def _start(self) -> int:
        web = _aiohttp()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # the real port when 0 was asked

    def start(self) -> int:
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(15)
        except OSError as exc:
            self.stop()
            raise UserError(f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}; pick another "
                            "HOST:PORT") from None
        return self.port

    def stop(self) -> None:
        if self._runner is not None:
            try:
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(5)
            except Exception:  # noqa: BLE001 - shutting down: nothing left to tell the user
                pass
            self._runner = None
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve_database(db: str, bind: str = "127.0.0.1:8080", token: Optional[str] = None,
                   insecure: bool = False, users_file: Optional[str] = None) -> None:
    """Serve `db` read-only as the operator's page until interrupted (`ds2a web`).

    Refuses, before listening, an address beyond 127.0.0.1 without a token (unless `insecure`)
    and a missing, foreign or damaged database.
    """
    host, port = parse_bind(bind)
    users = read_users(users_file) if users_file else None
    check_exposure(host, port, token, insecure, users=users is not None)
    data.open_readonly(db).close()
    web = _aiohttp()
    app = make_app(Site(db), token, users)
    logger.info(f"serving {db} (read-only) on {url_for(host, port)}" + (" (token required)" if token else "")
                + (f" ({len(users)} user(s) from {users_file} sign in at /login)" if users else ""))
    try:
        web.run_app(app, host=host, port=port, print=None, access_log=None, handle_signals=True)
    except OSError as exc:
        raise UserError(f"--bind {bind}: cannot listen: {exc.strerror or exc}; pick another HOST:PORT") from None
