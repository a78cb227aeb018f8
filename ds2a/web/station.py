"""`ds2a inspect --web/--notify`: checked before the model opens, attached to the Publisher as observers,
stopped after the run (notifier counts go into the run's stats before it is marked finished)."""
from __future__ import annotations

import argparse
import importlib.util
import os
from typing import IO, Any, Callable, List, Optional

from ..errors import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--web", metavar="HOST:PORT", help="serve the operator's page with a live view while inspecting, "
                   "e.g. 127.0.0.1:8080 (the records part needs --db)")
    p.add_argument("--web-token", default=os.environ.get("DS2A_WEB_TOKEN"), metavar="TOKEN",
                   help="required for --web beyond 127.0.0.1; viewers open /?token=TOKEN once (default: $DS2A_WEB_TOKEN)")
    p.add_argument("--web-insecure", action="store_true", help="--web beyond 127.0.0.1 without a token (closed networks)")
    p.add_argument("--notify", action="append", default=[], metavar="URL",
                   help="send part verdicts to the line, repeatable: mqtt://BROKER:1883/line1/station3 (JSON, QoS 1) "
                   "or modbus://PLC:502?unit=1&coil=12 (pulse per FAIL; register=N counts FAILs)")


class Station:
    """The web page and the line notifiers of one `ds2a inspect` run."""

    def __init__(self, args: argparse.Namespace) -> None:
        from ..notify import parse_notify_url

        self.bind = None
        self.token, self.db, self.urls = args.web_token, args.db, list(args.notify)
        if args.web:
            from .server import check_exposure, parse_bind

            self.bind = parse_bind(args.web, "--web")
            check_exposure(*self.bind, self.token, args.web_insecure, "--web")
        elif args.web_insecure:
            raise UserError("--web-insecure only applies with --web HOST:PORT")
        needs = {"aiohttp": "web", "matplotlib": "web"} if args.web else {}
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

    def start(self, publisher: Any, make_renderer: Callable[[], Any], records: Any, log: IO[str]) -> None:
        from ..notify import open_notifier

        for url in self.urls:
            self.notifiers.append(open_notifier(url, records, log))
            print(f"notify  {self.notifiers[-1].target.label} (through an outbox: a line that is down never "
                  "stalls inspection)", file=log)
        publisher.observers += self.notifiers
        if self.bind is not None:
            from .live import LiveView
            from .server import BackgroundServer, Site, make_app, url_for

            self.live = LiveView(make_renderer())
            self.server = BackgroundServer(make_app(Site(self.db, self.live), self.token), *self.bind)
            port = self.server.start()
            publisher.observers.append(self.live)
            print(f"web     {url_for(self.bind[0], port)} (live view{'' if self.db else '; no --db: no records'}"
                  f"{'; token required' if self.token else ''})", file=log, flush=True)

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


def station(args: argparse.Namespace) -> Optional[Station]:
    """None when neither --web nor --notify is given (nothing imported, nothing started)."""
    return Station(args) if (args.web or args.notify or args.web_insecure) else None
