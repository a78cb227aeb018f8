"""The live page and line notifiers of an inspection (`ds2a inspect --web/--notify`): checked before
the model opens, attached to the Publisher as observers, stopped after the run (notifier counts go
into the run's stats before it is marked finished)."""
from __future__ import annotations

import importlib.util
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from ..errors import UserError
from ..options_check import check_fields

logger = logging.getLogger(__name__)
END_WAIT_S = 3.0  # at the end, how long a page polled in the last seconds gets to learn that the run ended


@dataclass
class StationOptions:
    """The live view and the line notifiers of one inspection (`ds2a inspect --web/--notify`)."""

    def __post_init__(self) -> None:
        check_fields(self)  # a Python caller's wrong type is a clear error here (ds2a/options_check.py)

    web: Optional[str] = None  # HOST:PORT for the operator's page with a live view; None: no page
    web_token: Optional[str] = None  # required for a page beyond 127.0.0.1 (unless web_insecure)
    web_insecure: bool = False  # a page beyond 127.0.0.1 without a token (closed networks)
    web_users: Optional[str] = None  # users file (ds2a/notify/users.py): viewers sign in, act by role
    notify: List[str] = field(default_factory=list)  # mqtt://... or modbus://... URLs (ds2a/notify/)

    @property
    def wanted(self) -> bool:
        return bool(self.web or self.notify or self.web_insecure or self.web_users)


class Station:
    """The web page and the line notifiers of one `ds2a inspect` run."""

    def __init__(self, options: StationOptions, db: Optional[str] = None) -> None:
        from ..notify import parse_notify_url

        self.bind = None
        self.token, self.db, self.urls = options.web_token, db, list(options.notify)
        self.users: Any = None
        self.recipes: Any = None  # the recipe book (ds2a/inspect/recipes.py), set by the inspection when it has one
        if options.web:
            from ..notify.users import read_users
            from .server import check_exposure, parse_bind

            self.bind = parse_bind(options.web, "--web")
            self.users = read_users(options.web_users) if options.web_users else None
            check_exposure(*self.bind, self.token, options.web_insecure, "--web", users=self.users is not None)
        elif options.web_insecure or options.web_users:
            raise UserError(f"{'--web-insecure' if options.web_insecure else '--web-users'} only applies with "
                            "--web HOST:PORT")
        needs = {"aiohttp": "web", "matplotlib": "web"} if options.web else {}
        for url in self.urls:
            scheme = parse_notify_url(url).scheme  # a bad URL is refused before the model and camera open
            needs.update({"paho": "notify"} if scheme == "mqtt" else {"pymodbus": "notify"})
        for module, extra in needs.items():
            if importlib.util.find_spec(module) is None:
                raise UserError(f"{'--web' if extra == 'web' else '--notify'} needs the Python package {module}: "
                                f"pip install 'ds2a-edge[{extra}]'")
        self.live: Any = None
        self.server: Any = None
        self.notifiers: List[Any] = []
        self.records: Any = None
        self.site: Any = None

    def start(self, publisher: Any, make_renderer: Callable[[], Any], records: Any) -> None:
        from ..notify import open_notifier

        for url in self.urls:
            self.notifiers.append(open_notifier(url, records))
            logger.info(f"notify  {self.notifiers[-1].target.label} (through an outbox: a line that is down never "
                        "stalls inspection)")
        publisher.observers += self.notifiers
        if self.bind is not None:
            from .actions import Actions
            from .live import LiveView
            from .server import BackgroundServer, Site, make_app, url_for

            self.records = records
            self.live = LiveView(make_renderer(), records=records)
            self.site = Site(self.db, self.live)
            actions = Actions(self.db, self.live, self)  # reads self.recipes when asked
            self.server = BackgroundServer(make_app(self.site, self.token, self.users, actions), *self.bind)
            port = self.server.start()
            publisher.observers.append(self.live)
            if self.recipes is not None and isinstance(getattr(self.recipes, "alarms", None), list):
                self.recipes.alarms.append(self.live.raise_alarm)  # a refused changeover is an alarm on the page
            logger.info(f"web     {url_for(self.bind[0], port)} (live view{'' if self.db else '; no --db: no records'}"
                        f"{'; token required' if self.token else ''}"
                        f"{f'; {len(self.users)} user(s) sign in at /login' if self.users else ''})")

    def finish(self) -> None:
        """End of the run: flush the notifiers (their counts go into the records, which are marked after)."""
        notifiers, self.notifiers = self.notifiers, []
        for n in notifiers:
            n.close()

    def close(self) -> None:
        """After the records are marked: open pages learn that the run ended, with its summary, then the
        server stops (waiting up to END_WAIT_S for a page that was polling to hear it)."""
        self.finish()
        if self.live is not None and self.live.running:
            self.live.close(self._final_summary())
            if time.monotonic() - self.live.polled_last < END_WAIT_S:
                end = time.monotonic() + END_WAIT_S
                while not self.live.end_seen and time.monotonic() < end:
                    time.sleep(0.05)
        server, self.server = self.server, None
        if server is not None:
            server.stop()

    def _final_summary(self) -> Optional[Dict[str, Any]]:
        """`ds2a report`'s numbers of the run that ended (status included), or None without records."""
        run_id = getattr(self.records, "run_id", None)
        if self.site is None or run_id is None:
            return None
        from . import data

        try:  # through the page's own read-only connection (a second one in this process can fail)
            with self.site._lock:
                con = self.site.con()
                s = data.summary(con, run_id) if con is not None else None
            if s is None:
                return None
        except (UserError, sqlite3.Error) as exc:
            logger.warning(f"web     the page could not read the run's summary: {exc}")
            return None
        keys = ("run", "status", "parts", "pass", "fail", "pass_rate", "frames", "frames_fail", "started", "ended")
        from .page import run_label

        return {**{k: s[k] for k in keys}, "label": run_label(run_id, s["started"], s["status"], s["parts"])}


def station(options: StationOptions, db: Optional[str] = None) -> Optional[Station]:
    """None when neither a page nor a notifier is asked for (nothing imported, nothing started);
    otherwise the checked Station (nothing started before `start`)."""
    return Station(options, db) if options.wanted else None
