"""The CLI turns file-system and database failures into one line naming the path (tracebacks only with DS2A_DEBUG)."""
from __future__ import annotations

import sqlite3
import types

import pytest

from ds2a import cli


def test_an_os_error_is_one_line_naming_the_path(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert cli.main(["synth", str(blocker / "data"), "--train", "1", "--test", "1", "--size", "32x32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(blocker) in err and err.startswith("ds2a synth: error:")


def _fake_command(monkeypatch, exc: BaseException) -> None:
    def run(args):
        raise exc

    module = types.SimpleNamespace(add_arguments=lambda p: p.add_argument("--db"), run=run)
    monkeypatch.setattr(cli, "_command_parser", lambda verb: (_parser(module), module))


def _parser(module):
    import argparse

    p = argparse.ArgumentParser()
    module.add_arguments(p)
    return p


def test_a_database_error_is_one_line_naming_the_database(monkeypatch, capsys) -> None:
    _fake_command(monkeypatch, sqlite3.DatabaseError("file is not a database"))
    assert cli.main(["report", "--db", "runs/x.sqlite"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'runs/x.sqlite'" in err and "file is not a database" in err


def test_ds2a_debug_keeps_the_traceback(monkeypatch) -> None:
    _fake_command(monkeypatch, PermissionError(13, "Permission denied", "/x/out.json"))
    monkeypatch.setenv("DS2A_DEBUG", "1")
    with pytest.raises(PermissionError):
        cli.main(["report"])


def test_genuine_bugs_still_raise(monkeypatch) -> None:
    _fake_command(monkeypatch, ZeroDivisionError("bug"))
    with pytest.raises(ZeroDivisionError):
        cli.main(["report"])
