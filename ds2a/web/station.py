"""The live page and line notifiers of an inspection (`ds2a inspect --web/--notify`): checked before
the model opens, attached to the Publisher as observers, stopped after the run (notifier counts go
into the run's stats before it is marked finished)."""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

from ..errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class StationOptions:
    """The live view and the line notifiers of one inspection (`ds2a inspect --web/--notify`)."""

    web: Optional[str] = None  # HOST:PORT for the operator's page with a live view; None: no page
    web_token: Optional[str] = None  # required for a page beyond 127.0.0.1 (unless web_insecure)
    web_insecure: bool = False  # a page beyond 127.0.0.1 without a token (closed networks)
    notify: List[str] = field(default_factory=list)  # mqtt://... or modbus://... URLs (ds2a/notify/)

    @property
    def wanted(self) -> bool:
        return bool(self.web or self.notify or self.web_insecure)


class Station:
    """The web page and the line notifiers of one `ds2a inspect` run."""

    def __init__(self, options: StationOptions, db: Optional[str] = None) -> None:
        from ..notify import parse_notify_url

        self.bind = None
        self.token, self.db, self.urls = options.web_token, db, list(options.notify)
        if options.web:
            from .server import check_exposure, parse_bind

            self.bind = parse_bind(options.web, "--web")
            check_exposure(*self.bind, self.token, options.web_insecure, "--web")
        elif options.web_insecure:
            raise UserError("--web-insecure only applies with --web HOST:PORT")
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

    def start(self, publisher: Any, make_renderer: Callable[[], Any], records: Any) -> None:
        from ..notify import open_notifier

        for url in self.urls:
            self.notifiers.append(open_notifier(url, records))
            logger.info(f"notify  {self.notifiers[-1].target.label} (through an outbox: a line that is down never "
                        "stalls inspection)")
        publisher.observers += self.notifiers
        if self.bind is not None:
            from .live import LiveView
            from .server import BackgroundServer, Site, make_app, url_for

            self.live = LiveView(make_renderer())
            self.server = BackgroundServer(make_app(Site(self.db, self.live), self.token), *self.bind)
            port = self.server.start()
            publisher.observers.append(self.live)
            logger.info(f"web     {url_for(self.bind[0], port)} (live view{'' if self.db else '; no --db: no records'}"
                        f"{'; token required' if self.token else ''})")

    def finish(self) -> None:
        """End of the run: flush the notifiers (their counts go into the records), mark the live view ended."""
        notifiers, self.notifiers = self.notifiers, []
        for n in notifiers:
            n.close()
        if self.live is not None:
            self.live.close()

    def close(self) -> None:
        self.finish()
        server, self.server = self.server, None
        if server is not None:
            server.stop()


def station(options: StationOptions, db: Optional[str] = None) -> Optional[Station]:
    """None when neither a page nor a notifier is asked for (nothing imported, nothing started);
    otherwise the checked Station (nothing started before `start`)."""
    return Station(options, db) if options.wanted else None
