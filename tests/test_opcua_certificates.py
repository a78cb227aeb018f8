"""OPC UA logins with a client certificate (ds2a/notify/users.py `x509_sha256$` lines): the certificate must be
listed, and the client must prove it holds the certificate's key; other certificates and forged tokens are refused."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pytest

pytest.importorskip("asyncua")

from asyncua import Client, ua  # noqa: E402
from asyncua.crypto.cert_gen import setup_self_signed_certificate  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402
from test_opcua import Served, ds2a_node, free_port, run  # noqa: E402

from ds2a.errors import UserError  # noqa: E402
from ds2a.notify import opcua_server  # noqa: E402
from ds2a.notify import users as users_mod  # noqa: E402
from ds2a.notify.users import certificate_fingerprint, hash_password, read_certificate, read_users  # noqa: E402


def _certificate(tmp_path: Path, name: str, server: bool = False) -> None:
    uri = opcua_server.APPLICATION_URI if server else f"urn:test:{name}"
    use = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    run(setup_self_signed_certificate(tmp_path / f"{name}.pem", tmp_path / f"{name}.der", uri, "localhost", [use],
                                      {"commonName": name}))


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    for name in ("server", "carla", "stranger", "mallory"):
        _certificate(tmp_path, name, server=name == "server")
    (tmp_path / "users.txt").write_text(
        f"carla:operator:{certificate_fingerprint(read_certificate(str(tmp_path / 'carla.der')))}\n"
        f"eric:engineer:{hash_password('eric-secret')}\n")
    return tmp_path


def test_a_certificate_user_logs_in_with_proof_of_key_and_nothing_else_gets_in(pki: Path):
    port = free_port("0.0.0.0")
    url = f"opc.tcp://127.0.0.1:{port}"

    async def session(cert: str, key: str, token_cert: str = "", token_key: str = "") -> Dict[str, Any]:
        c = Client(url)
        await c.set_security_string(f"Basic256Sha256,SignAndEncrypt,{pki / cert},{pki / key}")
        # the user token: by default the channel's certificate and key; a forgery names one certificate and signs
        # with another key
        if token_cert != "-":  # "-": no user token at all (an anonymous session on an encrypted channel)
            await c.load_client_certificate(str(pki / (token_cert or cert)))
            await c.load_private_key(str(pki / (token_key or key)))
        try:
            await c.connect()
        except (ua.UaStatusCodeError, ua.UaError, OSError) as exc:
            return {"refused": getattr(exc, "code", None) or str(exc)}
        try:
            sm = await ds2a_node(c, "VisionStateMachine")
            ack = await sm.get_child(f"{sm.nodeid.NamespaceIndex}:AcknowledgeAlarm")
            await sm.call_method(ack, ua.Variant("seen", ua.VariantType.String))
            return {"ack": "Good"}
        finally:
            await c.disconnect()

    async def everyone() -> Dict[str, Dict[str, Any]]:
        return {"carla": await session("carla.der", "carla.pem"),
                "stranger": await session("stranger.der", "stranger.pem"),
                "anonymous": await session("carla.der", "carla.pem", token_cert="-", token_key="-"),
                "forged": await session("mallory.der", "mallory.pem", token_cert="carla.der", token_key="mallory.pem")}

    served_url = f"opc.tcp://0.0.0.0:{port}?cert={pki / 'server.der'}&key={pki / 'server.pem'}"
    served = Served(served_url, read_users(str(pki / "users.txt")))
    with served as station:
        station.raise_alarm("test alarm")
        got = run(everyone())
    assert got["carla"] == {"ack": "Good"}
    assert got["stranger"]["refused"] and got["forged"]["refused"] and got["anonymous"]["refused"]
    audit = [(a["user"], a["role"], a["method"], a["status"]) for a in served.records.extra["opcua_audit"]]
    assert audit == [("carla", "operator", "AcknowledgeAlarm", "Good")]


def test_certificate_users_need_a_server_certificate_and_an_asyncua_that_checks_key_possession(pki: Path,
                                                                                              monkeypatch):
    from types import SimpleNamespace

    from asyncua.server.internal_server import InternalServer

    users = str(pki / "users.txt")
    plain = SimpleNamespace(opcua=f"opc.tcp://0.0.0.0:{free_port('0.0.0.0')}", opcua_users=users)
    with pytest.raises(UserError, match=r"certificate users .*give the server a certificate too, --opcua .*cert=FILE"):
        opcua_server.check_opcua_option(plain)
    with_cert = SimpleNamespace(opcua=plain.opcua + f"?cert={pki / 'server.der'}&key={pki / 'server.pem'}",
                                opcua_users=users)
    assert opcua_server.check_opcua_option(with_cert) is not None
    monkeypatch.delattr(InternalServer, "verify_x509_token")  # as in asyncua 1.1.5, the newest for Python 3.8
    with pytest.raises(UserError, match="does not check that a client holds its certificate's key"):
        opcua_server.check_opcua_option(with_cert)


def test_certificate_lines_are_checked_and_a_certificate_user_has_no_password(pki: Path, tmp_path: Path, capsys):
    users = read_users(str(pki / "users.txt"))
    import ssl

    carla = read_certificate(str(pki / "carla.der"))
    (tmp_path / "carla.crt").write_text(ssl.DER_cert_to_PEM_cert(carla))
    assert read_certificate(str(tmp_path / "carla.crt")) == carla  # PEM and DER give the same fingerprint
    with pytest.raises(UserError, match="carla.pem: not a readable PEM or DER X.509 certificate"):
        read_certificate(str(pki / "carla.pem"))  # a private key is not a certificate
    assert users.check_certificate(carla).name == "carla" and users.certificate_users == 1
    assert users.check_certificate(read_certificate(str(pki / "stranger.der"))) is None
    assert users.check("carla", "") is None and users.check("carla", users.by_name["carla"].secret) is None
    bad = tmp_path / "bad.txt"
    bad.write_text("dora:operator:x509_sha256$ABC\n")
    with pytest.raises(UserError, match=r"bad.txt line 1: .*64 lowercase hex digits"):
        read_users(str(bad))
    assert users_mod.main(["carla", "operator", "--certificate", str(pki / "carla.der")]) == 0
    line = capsys.readouterr().out.strip()
    assert line == f"carla:operator:{certificate_fingerprint(carla)}"
    (tmp_path / "junk.der").write_bytes(b"junk")
    assert users_mod.main(["x", "operator", "--certificate", str(tmp_path / "junk.der")]) == 1
    assert "junk.der: not a readable PEM or DER X.509 certificate" in capsys.readouterr().err
