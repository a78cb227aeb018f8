"""Named users with roles on the station's page (ds2a/web/actions.py, `ds2a inspect --web-users FILE`):
an operator acknowledges alarms and marks verdicts doubtful, an engineer also switches recipes and overrides
verdicts; a wrong role is refused with a clear 403 (in the browser and by a direct POST), a wrong password
is refused, a shared token acts for a single-user station, and every accepted action is a row of the audit
trail with the user's name, role and origin that `ds2a report DB --audit` lists and verifies. The recipe
book is a small fake with the interface of ds2a/inspect/recipes.py."""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import pytest

pytest.importorskip("aiohttp", reason="the web page needs aiohttp: pip install -e '.[web]'")
pytest.importorskip("matplotlib", reason="the web page's charts need matplotlib: pip install -e '.[web]'")

from headless_chromium import chromium, wait_for  # noqa: E402
from test_web import make_db  # noqa: E402

from ds2a.cli import main  # noqa: E402
from ds2a.errors import UserError  # noqa: E402
from ds2a.notify.users import hash_password, read_users  # noqa: E402
from ds2a.records import audit  # noqa: E402
from ds2a.web.actions import Actions  # noqa: E402
from ds2a.web.server import BackgroundServer, Site, make_app  # noqa: E402
from ds2a.web.station import Station, StationOptions  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PASSWORDS = {"anna": "anna-op-secret", "ben": "ben-eng-secret"}
TOKEN = "a-shared-token-for-one-station"


class FakeBook:
    """The recipe book's interface (names, current, request, state): a request is queued, as between parts, and
    audited by the book, as ds2a/inspect/recipes.py does for every request (page, OPC UA, line)."""

    def __init__(self, db: Optional[Path] = None) -> None:
        self.db = db
        self.recipes = {"cell-a": "a" * 64, "cell-b": "b" * 64}
        self.active, self.queued = "cell-a", None
        self.requests: List[Tuple[str, str, Optional[str], str]] = []

    def names(self) -> List[str]:
        return sorted(self.recipes)

    def current(self) -> Dict[str, str]:
        return {"name": self.active, "sha256": self.recipes[self.active]}

    def request(self, name: str, user: str, role: Optional[str], origin: str) -> str:
        if name not in self.recipes:
            raise UserError(f"recipe {name} is not one of {', '.join(self.names())}")
        self.requests.append((name, user, role, origin))
        self.queued = name
        con = sqlite3.connect(str(self.db))
        try:
            audit.append(con, "recipe_select", user, origin, role=role, detail={"recipe": name, "status": "requested"})
        finally:
            con.close()
        return f"{name} queued: applies before the next part"

    def state(self) -> Dict[str, Any]:
        return {"current": self.current(), "queued": self.queued}

    def apply(self) -> None:  # what the inspection does between parts
        self.active, self.queued = self.queued or self.active, None


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.txt"
    path.write_text("# test users\n"
                    f"anna:operator:{hash_password(PASSWORDS['anna'])}\n"
                    f"ben:engineer:{hash_password(PASSWORDS['ben'], method='pbkdf2_sha256')}\n")
    return path


def _live(run_id: int = 1) -> Any:
    from ds2a.inspect.overlay import Renderer
    from ds2a.web.live import LiveView

    return LiveView(Renderer(["background", "damage", "dust"], [(0, 0, 0), (20, 60, 230), (240, 150, 30)]),
                    records=SimpleNamespace(run_id=run_id))


class Station_:
    """A station's page as `ds2a inspect --web` serves it (live view, actions, recipe book), on a free port."""

    def __init__(self, db: Optional[Path], users: Optional[Path] = None, token: Optional[str] = None,
                 book: Any = None) -> None:
        self.live, self.book = _live(), book
        self.actions = Actions(str(db) if db else None, self.live, SimpleNamespace(recipes=book))
        app = make_app(Site(str(db) if db else None, self.live), token, read_users(str(users)) if users else None,
                       self.actions)
        self.server = BackgroundServer(app, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.start()}/"

    def __enter__(self) -> "Station_":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.stop()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def call(url: str, method: str = "GET", body: Any = None, headers: Optional[Dict[str, str]] = None,
         form: Optional[Dict[str, str]] = None) -> Tuple[int, bytes, Any]:
    data, hdrs = None, dict(headers or {})
    if body is not None:
        data, hdrs["Content-Type"] = json.dumps(body).encode(), "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        hdrs["Content-Type"] = "application/x-www-form-urlencoded"
    req = urllib.request.Request(url, data=data, headers=hdrs, method=method)
    try:
        with urllib.request.build_opener(_NoRedirect).open(req, timeout=15) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def sign_in(url: str, name: str, password: str) -> Dict[str, str]:
    """The session cookie's header after POST /login (the redirect to the page is not followed)."""
    status, _, headers = call(url + "login", "POST", form={"name": name, "password": password})
    assert status == 303, status
    cookie = headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith("ds2a_session=")
    return {"Cookie": cookie}


def audit_rows(db: Path) -> List[Tuple]:
    con = sqlite3.connect(str(db))
    try:
        return con.execute("SELECT user, role, origin, action, run_id, part_id, detail FROM audit "
                           "WHERE action NOT IN ('run_start', 'run_stop') ORDER BY id").fetchall()
    finally:
        con.close()


def fail_part(db: Path, run_id: int = 1) -> str:
    con = sqlite3.connect(str(db))
    try:
        return con.execute("SELECT part_id FROM verdicts WHERE run_id=? AND verdict='FAIL' ORDER BY id",
                           (run_id,)).fetchone()[0]
    finally:
        con.close()


def verdict_rows(db: Path) -> List[Tuple]:
    con = sqlite3.connect(str(db))
    try:
        return con.execute("SELECT * FROM verdicts ORDER BY id").fetchall()
    finally:
        con.close()


# --- HTTP level ------------------------------------------------------------------------------------------------

def test_an_operator_may_doubt_and_acknowledge_but_not_override_or_switch(tmp_path, users_file):
    from ds2a.inspect.parts import PartVerdict

    db = make_db(tmp_path / "i.sqlite", parts=10, seed=3)
    part, before = fail_part(db), verdict_rows(db)
    with Station_(db, users_file, book=FakeBook(db)) as s:
        anna = sign_in(s.url, "anna", PASSWORDS["anna"])
        status, body, _ = call(s.url + "api/me", headers=anna)
        assert json.loads(body) == {"name": "anna", "role": "operator", "authenticated": True,
                                    "rights": ["view", "acknowledge", "doubtful"]}
        for path, payload, what in (("api/override", {"run": 1, "part_id": part, "verdict": "PASS", "reason": "dust"},
                                     "overriding a verdict"),
                                    ("api/recipe", {"name": "cell-b"}, "switching the recipe")):
            status, body, _ = call(s.url + path, "POST", payload, anna)
            assert status == 403 and json.loads(body)["message"] == (
                f"refused: anna is operator; {what} needs engineer or above; nothing recorded")
        assert s.book.requests == [] and audit_rows(db) == []
        status, body, _ = call(s.url + "api/doubtful", "POST", {"run": 1, "part_id": part, "reason": "glare"}, anna)
        assert status == 200 and json.loads(body)["message"].startswith(f"part {part} run 1: FAIL marked doubtful by "
                                                                         "anna")
        # an alarm: a part the station could not judge; the operator acknowledges it
        status, body, _ = call(s.url + "api/alarm/ack", "POST", {}, anna)
        assert status == 409 and "no alarm to acknowledge" in json.loads(body)["message"]
        s.live.publish(None, [PartVerdict("cell-x", "part", False, ["model unavailable"], 0, 0, 1, 0.0, 1.0, none=True)])
        assert json.loads(call(s.url + "api/live", headers=anna)[1])["alarm"]["active"] is True
        status, body, _ = call(s.url + "api/alarm/ack", "POST", {"comment": "cell set aside"}, anna)
        assert status == 200 and "cell-x could not be judged (NONE)" in json.loads(body)["message"]
        assert json.loads(call(s.url + "api/live", headers=anna)[1])["alarm"]["active"] is False
    rows = audit_rows(db)
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in rows] == [
        ("anna", "operator", "web 127.0.0.1", "doubtful", part), ("anna", "operator", "web 127.0.0.1", "alarm_ack", None)]
    assert json.loads(rows[1][6])["comment"] == "cell set aside"
    assert verdict_rows(db) == before  # a doubt adds rows, never changes a verdict


def test_an_engineer_overrides_and_switches_and_the_original_verdict_stays(tmp_path, users_file, capsys):
    db = make_db(tmp_path / "i.sqlite", parts=10, seed=3)
    part, before = fail_part(db), verdict_rows(db)
    book = FakeBook(db)
    with Station_(db, users_file, book=book) as s:
        ben = sign_in(s.url, "ben", PASSWORDS["ben"])
        recipes = json.loads(call(s.url + "api/recipes", headers=ben)[1])
        assert recipes["names"] == ["cell-a", "cell-b"] and recipes["may_switch"] is True
        status, body, _ = call(s.url + "api/recipe", "POST", {"name": "cell-z"}, ben)
        assert status == 404 and "recipe cell-z is not one of cell-a, cell-b" in json.loads(body)["message"]
        status, body, _ = call(s.url + "api/recipe", "POST", {"name": "cell-b"}, ben)
        assert status == 200 and json.loads(body)["message"] == "cell-b queued: applies before the next part"
        assert book.requests == [("cell-b", "ben", "engineer", "web 127.0.0.1")]
        payload = {"run": 1, "part_id": part, "verdict": "PASS", "reason": "dust, blown off"}
        assert call(s.url + "api/override", "POST", {**payload, "reason": "  "}, ben)[0] == 400  # no reason
        assert call(s.url + "api/override", "POST", {**payload, "verdict": "FAIL"}, ben)[0] == 409  # already FAIL
        assert call(s.url + "api/override", "POST", {**payload, "part_id": "no-such"}, ben)[0] == 404
        status, body, _ = call(s.url + "api/override", "POST", payload, ben)
        assert status == 200 and f"part {part} run 1: FAIL -> PASS by ben" in json.loads(body)["message"]
        snap = json.loads(call(s.url + "api/snapshot?run=1", headers=ben)[1])  # the page lists it at once
        assert "FAIL -&gt; PASS by ben (engineer)" in snap["html"]["overrides"]
    assert verdict_rows(db) == before
    assert [(r[0], r[1], r[3]) for r in audit_rows(db)] == [("ben", "engineer", "recipe_select"),
                                                           ("ben", "engineer", "override")]
    assert main(["report", str(db), "--audit"]) == 0  # the chain verifies, and names who did what
    out = capsys.readouterr().out
    assert "ben (engineer) from web 127.0.0.1: recipe_select" in out and \
        f"ben (engineer) from web 127.0.0.1: override run 1 part {part}" in out


def test_a_wrong_password_or_no_sign_in_is_refused_and_nothing_recorded(tmp_path, users_file):
    db = make_db(tmp_path / "i.sqlite", parts=6, seed=1)
    with Station_(db, users_file, book=FakeBook(db)) as s:
        status, body, headers = call(s.url + "login", "POST", form={"name": "ben", "password": "wrong-password"})
        assert status == 401 and b"Unknown user or wrong password." in body and "Set-Cookie" not in headers
        status, _, _ = call(s.url + "api/override", "POST", {"run": 1, "part_id": fail_part(db), "verdict": "PASS",
                                                             "reason": "x"})
        assert status == 401
        assert call(s.url + "api/override", "POST", {}, {"Cookie": "ds2a_session=forged"})[0] == 401
    assert audit_rows(db) == []


def test_a_shared_token_acts_for_a_single_user_station_and_is_view_only_beside_users(tmp_path, users_file):
    db = make_db(tmp_path / "i.sqlite", parts=10, seed=3)
    part = fail_part(db)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    payload = {"run": 1, "part_id": part, "verdict": "NONE", "reason": "camera fogged"}
    with Station_(db, users_file, token=TOKEN) as s:  # users sign in: the token only views
        assert call(s.url + "api/snapshot", headers=bearer)[0] == 200
        status, body, _ = call(s.url + "api/override", "POST", payload, bearer)
        assert status == 403 and "view only for the shared token when users sign in" in json.loads(body)["message"]
    with Station_(db, token=TOKEN) as s:  # no users file: one user, the token's holder, as engineer
        status, body, _ = call(s.url + "api/override", "POST", payload, bearer)
        assert status == 200, body
        assert call(s.url + "api/override", "POST", payload)[0] == 401  # without the token
    (user, role, origin, action, _, _, detail), = audit_rows(db)
    assert (user, role, origin, action) == ("shared token", "engineer", "web 127.0.0.1", "override")
    assert json.loads(detail)["authenticated"] is False


def test_actions_must_come_from_the_page_and_need_records(tmp_path, users_file):
    db = make_db(tmp_path / "i.sqlite", parts=6, seed=1)
    with Station_(db, users_file) as s:
        ben = sign_in(s.url, "ben", PASSWORDS["ben"])
        payload = {"run": 1, "part_id": fail_part(db), "reason": "glare"}
        status, body, _ = call(s.url + "api/doubtful", "POST", payload, {**ben, "Origin": "http://evil.example"})
        assert status == 403 and "same-site JSON" in json.loads(body)["message"]
        req = urllib.request.Request(s.url + "api/doubtful", data=urllib.parse.urlencode(payload).encode(),
                                     headers={**ben, "Content-Type": "application/x-www-form-urlencoded"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=10)
        assert err.value.code == 403
        status, body, _ = call(s.url + "api/recipe", "POST", {"name": "cell-b"}, ben)
        assert status == 409 and "no recipe book" in json.loads(body)["message"]
    with Station_(None, users_file) as s:  # no --db: nothing can be audited, so nothing is done
        ben = sign_in(s.url, "ben", PASSWORDS["ben"])
        s.live.raise_alarm("camera lost")
        status, body, _ = call(s.url + "api/alarm/ack", "POST", {}, ben)
        assert status == 409 and "no --db" in json.loads(body)["message"] and s.live.alarm_state()["active"]
    assert audit_rows(db) == []


def test_web_users_is_checked_before_the_model_opens(tmp_path, users_file):
    with pytest.raises(UserError, match="--web-users only applies with --web HOST:PORT"):
        Station(StationOptions(web_users=str(users_file)))
    with pytest.raises(UserError, match="give --web-token TOKEN .* or --web-users FILE"):
        Station(StationOptions(web="0.0.0.0:0"))
    assert Station(StationOptions(web="0.0.0.0:0", web_users=str(users_file))).users is not None
    bad = tmp_path / "bad.txt"
    bad.write_text("carl:boss:x\n")
    with pytest.raises(UserError, match=f"users file {bad} line 1: role 'boss' is not one of"):
        Station(StationOptions(web="127.0.0.1:0", web_users=str(bad)))


def test_inspect_web_users_with_the_real_recipe_book(tmp_path, users_file, capsys):
    """`ds2a inspect --recipes DIR --web --web-users FILE` end to end, with the real recipe book
    (ds2a/inspect/recipes.py): an operator signs in, is refused the recipe and an override, marks a decided
    part doubtful; an engineer switches the recipe, which comes in force at a part boundary; the audit trail
    names both."""
    from fakes.onnx_models import threshold_onnx

    folder = tmp_path / "recipes"
    folder.mkdir()
    threshold_onnx(folder / "thr.onnx")
    (folder / "cell-a.yaml").write_text("model: thr.onnx\nrules: {classes: {damage: {max_count: 0}}}\n")
    (folder / "cell-b.yaml").write_text("model: thr.onnx\nrules: {classes: {damage: {max_area_px: 50}}}\n")
    (folder / "broken.onnx").write_bytes(b"not a model")  # found at start; refused when it is opened
    (folder / "cell-c.yaml").write_text("model: broken.onnx\nrules: {classes: {damage: {max_count: 0}}}\n")
    db = tmp_path / "live.sqlite"
    cmd = [sys.executable, "-m", "ds2a", "inspect", "--recipes", str(folder), "--recipe", "cell-a", "--source",
           "demo://?fps=15&width=320&height=180&speed=12", "--headless", "--db", str(db), "--web", "127.0.0.1:0",
           "--web-users", str(users_file), "--duration", "60"]
    proc = subprocess.Popen(cmd, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, lines = None, []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("web "):
                url = line.split()[1]
                break
        assert url and "user(s) sign in at /login" in lines[-1], "".join(lines)
        assert call(url)[0] == 303  # the page asks for a sign-in
        anna, ben = sign_in(url, "anna", PASSWORDS["anna"]), sign_in(url, "ben", PASSWORDS["ben"])
        part = None
        end = time.monotonic() + 30
        while part is None and time.monotonic() < end:
            try:
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
                row = con.execute("SELECT part_id FROM verdicts ORDER BY id LIMIT 1").fetchone()
                con.close()
                part = row[0] if row else None
            except sqlite3.Error:
                pass
            time.sleep(0.2)
        assert part is not None, "no part decided"
        payload = {"run": 1, "part_id": part, "reason": "looked odd", "verdict": "FAIL"}
        assert call(url + "api/override", "POST", payload, anna)[0] == 403
        assert call(url + "api/recipe", "POST", {"name": "cell-b"}, anna)[0] == 403
        status, body, _ = call(url + "api/doubtful", "POST", payload, anna)
        assert status == 200, body

        def current() -> str:
            return json.loads(call(url + "api/recipes", headers=ben)[1])["current"]["name"]

        assert json.loads(call(url + "api/recipes", headers=ben)[1])["names"] == ["cell-a", "cell-b", "cell-c"]
        assert current() == "cell-a"
        status, body, _ = call(url + "api/recipe", "POST", {"name": "cell-b"}, ben)
        assert status == 200 and json.loads(body)["message"].startswith("cell-b queued: applies before the next part")
        end = time.monotonic() + 20
        while time.monotonic() < end and current() != "cell-b":
            time.sleep(0.2)
        assert current() == "cell-b"  # in force from a part boundary on
        # a changeover the book refuses (its model does not open) is an alarm on the page; the operator acknowledges
        assert call(url + "api/recipe", "POST", {"name": "cell-c"}, ben)[0] == 200

        def alarm() -> Dict[str, Any]:
            return json.loads(call(url + "api/live", headers=anna)[1])["alarm"]

        end = time.monotonic() + 20
        while time.monotonic() < end and "recipe cell-c refused" not in (alarm()["text"] or ""):
            time.sleep(0.2)
        assert alarm()["active"] and "recipe cell-c refused, cell-b stays" in alarm()["text"]
        assert call(url + "api/alarm/ack", "POST", {"comment": "wrong model file"}, anna)[0] == 200
        assert alarm()["active"] is False and current() == "cell-b"
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode in (0, 130)
    assert main(["report", str(db), "--audit"]) == 0
    out = capsys.readouterr().out
    assert f"anna (operator) from web 127.0.0.1: doubtful run 1 part {part}" in out
    assert 'ben (engineer) from web 127.0.0.1: recipe_select run 1  {"detail":"cell-b queued' in out
    assert 'ben (engineer) from web 127.0.0.1: recipe_select run 1  {"from":"cell-a","recipe":"cell-b"' in out
    assert "anna (operator) from web 127.0.0.1: recipe_select" not in out  # refused before the book
    assert 'ben (engineer) from web 127.0.0.1: recipe_select run 1  {"reason":' in out  # cell-c, refused
    assert "anna (operator) from web 127.0.0.1: alarm_ack run 1" in out and "recipe cell-c refused" in out


# --- in headless Chromium --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    yield from chromium()


def browser_sign_in(browser: Any, url: str, name: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    browser.get(url)
    assert wait_for(lambda: browser.current_url.endswith("/login"))
    browser.find_element(By.NAME, "name").send_keys(name)
    browser.find_element(By.NAME, "password").send_keys(password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def page_post(browser: Any, path: str, body: Dict[str, Any]) -> Tuple[int, Dict[str, Any]]:
    """A direct POST from the signed-in page's own origin (what a crafted request could try)."""
    status, text = browser.execute_async_script(
        "const done = arguments[2]; fetch(arguments[0], {method: 'POST', headers: {'Content-Type': "
        "'application/json'}, body: JSON.stringify(arguments[1])}).then(async r => done([r.status, await r.text()]))"
        ".catch(e => done([0, String(e)]));", path, body)
    return status, json.loads(text)


def test_operator_in_the_browser_sees_no_engineer_controls_and_is_refused_them(browser, tmp_path, users_file):
    from selenium.webdriver.common.by import By

    db = make_db(tmp_path / "i.sqlite", parts=10, seed=3)
    part = fail_part(db)
    with Station_(db, users_file, book=FakeBook(db)) as s:
        browser_sign_in(browser, s.url, "anna", PASSWORDS["anna"])
        assert wait_for(lambda: browser.find_elements(By.ID, "who"))
        assert browser.find_element(By.ID, "who").text == "anna (operator)"
        assert browser.find_element(By.ID, "recipe-name").text == "cell-a"  # shown, but no control to switch it
        assert browser.find_elements(By.ID, "recipe-switch") == [] and browser.find_elements(By.ID, "recipe-select") == []
        assert browser.find_elements(By.ID, "review-override") == []
        status, answer = page_post(browser, "api/override", {"run": 1, "part_id": part, "verdict": "PASS",
                                                               "reason": "dust"})
        assert status == 403 and "anna is operator; overriding a verdict needs engineer" in answer["message"]
        status, answer = page_post(browser, "api/recipe", {"name": "cell-b"})
        assert status == 403 and "switching the recipe needs engineer" in answer["message"]
        assert s.book.requests == []
        # what she may do: pick a FAIL part in the gallery, mark it doubtful; acknowledge an alarm
        browser.find_element(By.CSS_SELECTOR, f"#failures .part[data-part='{part}'] h3").click()
        assert browser.find_element(By.ID, "review-part").get_attribute("value") == part
        browser.find_element(By.ID, "review-reason").send_keys("glare on the tab")
        browser.find_element(By.ID, "review-doubtful").click()
        msg = browser.find_element(By.ID, "review-msg")
        assert wait_for(lambda: "marked doubtful by anna" in msg.text), msg.text
        assert wait_for(lambda: f"{part} FAIL, doubtful by anna (operator)" in
                        browser.find_element(By.ID, "overrides").text, 15)
        s.live.raise_alarm("inspection stopped: camera lost")
        alarm = browser.find_element(By.ID, "alarm")
        assert wait_for(lambda: alarm.is_displayed() and "camera lost" in alarm.text)
        browser.find_element(By.ID, "alarm-ack").click()
        assert wait_for(lambda: not alarm.is_displayed())
        assert "acknowledged 1 alarm(s)" in browser.find_element(By.ID, "alarm-msg").text
    assert [(r[0], r[1], r[3]) for r in audit_rows(db)] == [("anna", "operator", "doubtful"),
                                                           ("anna", "operator", "alarm_ack")]


def test_engineer_in_the_browser_switches_the_recipe_and_overrides_a_verdict(browser, tmp_path, users_file, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    db = make_db(tmp_path / "i.sqlite", parts=10, seed=3)
    part, before = fail_part(db), verdict_rows(db)
    book = FakeBook(db)
    with Station_(db, users_file, book=book) as s:
        browser_sign_in(browser, s.url, "ben", PASSWORDS["anna"])  # a wrong password first
        assert wait_for(lambda: "Unknown user or wrong password." in browser.page_source, 15)
        assert browser.current_url.endswith("/login") and browser.get_cookies() == []
        browser_sign_in(browser, s.url, "ben", PASSWORDS["ben"])
        assert wait_for(lambda: browser.find_elements(By.ID, "who"))
        assert browser.find_element(By.ID, "who").text == "ben (engineer)"
        Select(browser.find_element(By.ID, "recipe-select")).select_by_value("cell-b")
        browser.find_element(By.ID, "recipe-switch").click()
        msg = browser.find_element(By.ID, "recipe-msg")
        assert wait_for(lambda: msg.text == "cell-b queued: applies before the next part"), msg.text
        assert book.requests == [("cell-b", "ben", "engineer", "web 127.0.0.1")]
        book.apply()  # the inspection applies it between parts: the page follows
        assert wait_for(lambda: browser.find_element(By.ID, "recipe-name").text == "cell-b", 15)
        browser.find_element(By.ID, "review-part").send_keys(part)
        browser.find_element(By.ID, "review-reason").send_keys("dust, blown off")
        Select(browser.find_element(By.ID, "review-verdict")).select_by_value("PASS")
        browser.find_element(By.ID, "review-override").click()
        msg = browser.find_element(By.ID, "review-msg")
        assert wait_for(lambda: "FAIL -> PASS by ben" in msg.text), msg.text
        assert wait_for(lambda: f"{part} FAIL -> PASS by ben (engineer)" in
                        browser.find_element(By.ID, "overrides").text, 15)
        browser.find_element(By.CSS_SELECTOR, "#signout button").click()  # signing out ends the session
        assert wait_for(lambda: browser.current_url.endswith("/login"))
        browser.get(s.url)
        assert wait_for(lambda: browser.current_url.endswith("/login"))
    assert verdict_rows(db) == before  # the original verdict row is untouched
    assert main(["report", str(db), "--audit"]) == 0
    out = capsys.readouterr().out
    assert "ben (engineer) from web 127.0.0.1: recipe_select" in out
    assert f"ben (engineer) from web 127.0.0.1: override run 1 part {part}" in out
    assert main(["report", str(db)]) == 0
    assert f"part {part}: FAIL -> PASS by ben (engineer)" in capsys.readouterr().out


def test_alarm_is_raised_by_a_none_part_only(tmp_path):
    from ds2a.inspect.parts import PartVerdict

    live = _live()
    live.publish(None, [PartVerdict("a", "part", True, [], 0, 0, 1, 0.0, 1.0),
                        PartVerdict("b", "part", False, ["damage"], 1, 1, 1, 1.0, 2.0)])
    assert live.alarm_state() == {"active": False, "t": None, "text": None, "count": 0}
    live.publish(None, [PartVerdict("c", "part", False, ["frame not inspected"], 2, 2, 1, 2.0, 3.0, none=True)])
    state = live.state()["alarm"]
    assert state["active"] and state["count"] == 1 and state["text"] == \
        "part c could not be judged (NONE): frame not inspected"
    live.acknowledge()
    assert live.alarm_state() == {"active": False, "t": None, "text": None, "count": 0}


def test_what_each_role_may_do_and_why_not():
    from ds2a.web.actions import Actor, Refused

    assert Actor("anna", "operator", "web 10.0.0.7").rights() == ["view", "acknowledge", "doubtful"]
    assert Actor("ben", "engineer", "web 10.0.0.7").rights() == ["view", "acknowledge", "doubtful", "recipe",
                                                                 "override"]
    assert Actor("root", "admin", "web 10.0.0.7").rights() == Actor("ben", "engineer", "").rights()
    nobody = Actor("anonymous", None, "web 10.0.0.9")  # --web-insecure, from the network: view only
    assert nobody.rights() == []
    with pytest.raises(Refused, match="view only to the network without a sign-in or token .*--web-users FILE"):
        nobody.check("acknowledge")
    with pytest.raises(Refused, match="view only for the shared token when users sign in"):
        Actor("shared token", None, "web 10.0.0.9").check("doubtful")
