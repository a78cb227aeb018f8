"""`ds2a web`: serve an inspection database as the operator's page, read-only.

examples:
  ds2a web runs/demo/inspect.sqlite                                   # http://127.0.0.1:8080/
  ds2a web /var/lib/ds2a/inspect.sqlite --bind 0.0.0.0:8080 --token "$DS2A_WEB_TOKEN"
"""
from __future__ import annotations

import argparse
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (__doc__ or "").split("\n\n")[0]
    p.epilog = "\n".join((__doc__ or "").split("\n")[2:])
    p.add_argument("db", help="the SQLite file written by `ds2a inspect --db` (opened read-only)")
    p.add_argument("--bind", default="127.0.0.1:8080", metavar="HOST:PORT", help="where to listen (default "
                   "127.0.0.1:8080, this machine only)")
    p.add_argument("--token", "--web-token", dest="token", default=os.environ.get("DS2A_WEB_TOKEN"),
                   help="required to listen beyond 127.0.0.1; viewers open /?token=TOKEN once "
                   "(default: $DS2A_WEB_TOKEN)")
    p.add_argument("--users", metavar="FILE", help="users file (ds2a/notify/users.py): viewers sign in at /login with "
                   "name and password; a --token still works beside it (a single-user station)")
    p.add_argument("--insecure", "--web-insecure", dest="insecure", action="store_true",
                   help="listen beyond 127.0.0.1 without a token (closed networks only)")


def run(args: argparse.Namespace) -> int:
    from ..web.server import serve_database

    serve_database(args.db, args.bind, args.token, args.insecure, args.users)
    return 0
