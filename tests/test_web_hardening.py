"""The operator's page against hostile requests: DNS rebinding (a foreign Host on the loopback page without
a token), an open redirect through the token redirect, and ids too large for SQLite (404, never a 500)."""
from __future__ import annotations

import http.client
import sqlite3
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")

from ds2a.records.database import Records  # noqa: E402
from ds2a.web.server import BackgroundServer, Site, make_app  # noqa: E402

TOKEN = "a-long-enough-token"
HUGE = "999999999999999999999"


def _db(path: Path) -> Path:
    rec = Records(str(path))
    rec.start_run("m.onnx", "onnxruntime", "demo://", ["background", "damage"], {}, None)
    rec.finish_run("finished", {})
    rec.close()
    return path


class _Served:
    def __init__(self, db: Optional[Path], token: Optional[str] = None, host: str = "127.0.0.1") -> None:
        self.server = BackgroundServer(make_app(Site(str(db) if db else None), token), host, 0)
        self.host, self.port = host, self.server.start()

    def get(self, path: str, headers: Optional[Dict[str, str]] = None) -> Tuple[int, bytes, Dict[str, str]]:
        """One request, redirects not followed, with exactly the Host header given."""
        con = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            con.putrequest("GET", path, skip_host=headers is not None and "Host" in headers)
            for k, v in (headers or {}).items():
                con.putheader(k, v)
            con.endheaders()
            resp = con.getresponse()
            return resp.status, resp.read(), dict(resp.getheaders())
        finally:
            con.close()

    def __enter__(self) -> "_Served":
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop()


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "127.0.0.1.nip.io", "localhost.evil.example",
                                  "[::1"])
def test_the_loopback_page_without_a_token_refuses_foreign_host_names(tmp_path, host):
    with _Served(_db(tmp_path / "i.sqlite")) as s:
        status, body, _ = s.get("/", {"Host": host})
        assert status == 403 and b"localhost or an IP address" in body
        assert s.get("/api/summary", {"Host": host})[0] == 403


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:{port}", "localhost:{port}", "LOCALHOST", "[::1]:{port}",
                                  "station.localhost", "192.168.1.20:{port}"])
def test_the_loopback_page_answers_to_localhost_and_ip_hosts(tmp_path, host):
    with _Served(_db(tmp_path / "i.sqlite")) as s:
        assert s.get("/", {"Host": host.format(port=s.port)})[0] == 200


def test_with_a_token_the_host_name_is_not_what_protects_the_page(tmp_path):
    with _Served(_db(tmp_path / "i.sqlite"), TOKEN) as s:
        assert s.get("/", {"Host": "station01.plant", "Authorization": f"Bearer {TOKEN}"})[0] == 200
        assert s.get("/", {"Host": "station01.plant"})[0] == 401


@pytest.mark.parametrize("path", ["//evil.example/x", "///evil.example/", "/\\evil.example/", "//evil.example"])
def test_the_token_redirect_stays_on_this_site(tmp_path, path):
    with _Served(_db(tmp_path / "i.sqlite"), TOKEN) as s:
        status, _, headers = s.get(f"{path}?token={TOKEN}&run=1")
        assert status == 302
        location = headers["Location"]
        assert location.startswith("/") and not location.startswith(("//", "/\\")) and "evil.example" in location
        assert location.endswith("?run=1") and TOKEN not in location


def test_a_plain_token_redirect_keeps_the_path_and_query(tmp_path):
    with _Served(_db(tmp_path / "i.sqlite"), TOKEN) as s:
        status, _, headers = s.get(f"/failure/3?run=1&token={TOKEN}")
        assert status == 302 and headers["Location"] == "/failure/3?run=1"


@pytest.mark.parametrize("path", [f"/failure/{HUGE}", f"/image/{HUGE}/raw", f"/image/{HUGE}/annotated",
                                  f"/?run={HUGE}", f"/api/summary?run={HUGE}", f"/chart/pass_rate.svg?run={HUGE}",
                                  f"/?run=-{HUGE}", "/failure/" + "9" * 400])
def test_ids_beyond_sqlite_integers_are_not_found(tmp_path, path):
    with _Served(_db(tmp_path / "i.sqlite")) as s:
        status, body, _ = s.get(path)
        assert status == 404 and b"is not in the records" in body and len(body) < 5000


def test_report_run_beyond_sqlite_integers_is_a_clear_error(tmp_path, capsys):
    from ds2a.cli import main

    db = _db(tmp_path / "i.sqlite")
    assert main(["report", str(db), "--run", HUGE]) == 2
    err = capsys.readouterr().err
    assert "is not in" in err and "runs there: 1" in err and "Traceback" not in err and "Overflow" not in err
    assert sqlite3.connect(str(db)).execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
