"""Password checks are rationed per login interface (ds2a/notify/users.py LoginBudget): a flood of guesses
is refused unchecked instead of taking the CPU (scrypt) from inspection, on OPC UA and on the page."""
from __future__ import annotations

import pytest

from ds2a.notify.users import LoginBudget, hash_password


def test_the_budget_allows_per_s_checks_in_any_second_and_counts_the_rest():
    budget = LoginBudget(3)
    assert [budget.take(10.0) for _ in range(5)] == [True, True, True, False, False] and budget.refused == 2
    assert budget.take(10.9) is False  # still within the second of the first three
    assert budget.take(11.01) and budget.take(11.02) and budget.take(11.03) and not budget.take(11.04)
    assert budget.refused == 4


def test_the_page_refuses_sign_ins_beyond_its_budget_unchecked(tmp_path, monkeypatch):
    pytest.importorskip("aiohttp")
    pytest.importorskip("matplotlib")
    from test_web import make_db
    from test_web_roles import Station_, call

    from ds2a.notify import users as users_mod
    from ds2a.web import server

    path = tmp_path / "users.txt"
    path.write_text(f"ben:engineer:{hash_password('ben-eng-secret')}\n")
    checked = []
    real = users_mod.Users.check
    monkeypatch.setattr(users_mod.Users, "check", lambda self, n, p: checked.append(n) or real(self, n, p))
    db = make_db(tmp_path / "i.sqlite", parts=2, seed=1)
    monkeypatch.setattr(server, "SIGN_INS_PER_S", 0)  # a budget already spent: every sign-in is over it
    with Station_(db, path) as s:
        status, body, headers = call(s.url + "login", "POST", form={"name": "ben", "password": "ben-eng-secret"})
    assert status == 429 and b"Too many sign-ins" in body and "Set-Cookie" not in headers and checked == []
    monkeypatch.setattr(server, "SIGN_INS_PER_S", 5)
    with Station_(db, path) as s:
        status, _, headers = call(s.url + "login", "POST", form={"name": "ben", "password": "ben-eng-secret"})
    assert status == 303 and "ds2a_session" in headers.get("Set-Cookie", "") and checked == ["ben"]
