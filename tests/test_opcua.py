"""The OPC UA server (ds2a/notify/opcua_server.py) against asyncua's own client on this machine: the URL and
users file checked at start, browse and read, every part result reaching a subscriber (a demo run through
`ds2a inspect`, and a burst far faster than 30 parts/s), alarms raised by NONE parts and acknowledged, the
recipe methods, roles, and anonymous sessions refused on a binding reachable from the network."""
from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest

from ds2a.cli import main
from ds2a.errors import UserError
from ds2a.inspect.parts import PartVerdict
from ds2a.notify import opcua_server
from ds2a.notify.opcua_server import NAMESPACE, OpcuaStation, check_opcua_option, parse_opcua_url
from ds2a.notify.users import Users, hash_password, may, read_users, verify_password

asyncua = pytest.importorskip("asyncua", reason="asyncua missing: pip install -e '.[notify]'")
from asyncua import Client, ua  # noqa: E402

RESULT_FIELDS = ("ResultSequence", "ResultId", "PartId", "Verdict", "Level", "Reasons", "CreationTime",
                 "FrameCount", "RunId", "InternalRecipeId", "RecipeSha256", "ModelSha256", "EngineSha256", "Result")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def part(i: int, verdict: str = "PASS") -> PartVerdict:
    return PartVerdict(f"cell-{i:04d}", "part", verdict == "PASS", [] if verdict == "PASS" else [f"why {i}"],
                       2 * i, 2 * i + 1, 2, 1.7e9 + i, 1.7e9 + i + 0.5, none=verdict == "NONE")


FRAME = SimpleNamespace()  # Publisher hands a Result per frame; the station only needs "not the end"


def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.txt"
    path.write_text("# station users\n"
                    f"olga:operator:{hash_password('olga-secret')}\n"
                    f"eric:engineer:{hash_password('eric-secret', 'pbkdf2_sha256')}\n")
    return path


class Served:
    """An OpcuaStation on its own thread, as `ds2a inspect` runs it, with a records stand-in."""

    def __init__(self, url: str, users: Optional[Users] = None) -> None:
        self.records = SimpleNamespace(run_id=7, extra={})
        self.station = OpcuaStation(parse_opcua_url(url), users)
        self.station.info = {"recipe": "rules.yaml", "recipe_sha256": "a" * 64, "model_sha256": "b" * 64,
                             "engine_sha256": "", "model": "m.onnx", "backend": "onnxruntime", "version": "0.1.0"}

    def __enter__(self) -> OpcuaStation:
        self.station.start(None, self.records)
        return self.station

    def __exit__(self, *exc: Any) -> None:
        self.station.close()


async def ds2a_node(client: Client, *path: str) -> Any:
    ns = await client.get_namespace_index(NAMESPACE)
    return await client.nodes.objects.get_child([f"{ns}:DS2A"] + [f"{ns}:{p}" for p in path])


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


# --- URL, users file, start-up checks ---------------------------------------------------------------

@pytest.mark.parametrize("url,words", [
    ("http://127.0.0.1:4840", "opc.tcp://HOST:PORT"),
    ("opc.tcp://127.0.0.1:99999", "port"),
    ("opc.tcp://127.0.0.1:port", "port"),
    ("opc.tcp://:4840", "opc.tcp://HOST:PORT"),
    ("opc.tcp://user:pw@127.0.0.1:4840", "--opcua-users"),
    ("opc.tcp://127.0.0.1:4840?cert=a.pem", "both cert=FILE and key=FILE"),
    ("opc.tcp://127.0.0.1:4840?secure=1", "unknown option"),
    ("opc.tcp://no-such-host.invalid:4840", "does not resolve"),
])
def test_bad_urls_are_one_line_errors(url, words):
    with pytest.raises(UserError) as err:
        parse_opcua_url(url)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_good_urls():
    t = parse_opcua_url("opc.tcp://127.0.0.1")
    assert (t.host, t.port, t.loopback, t.url) == ("127.0.0.1", 4840, True, "opc.tcp://127.0.0.1:4840/")
    assert parse_opcua_url("opc.tcp://localhost:4841/ds2a").loopback
    assert not parse_opcua_url("opc.tcp://0.0.0.0:4841").loopback


def test_passwords_are_salted_hashes_and_roles_rise():
    a, b = hash_password("s3cret-pw"), hash_password("s3cret-pw")
    assert a != b and "s3cret" not in a and a.startswith("scrypt$")  # a fresh salt each time
    assert verify_password(a, "s3cret-pw") and not verify_password(a, "s3cret-pX")
    p = hash_password("s3cret-pw", "pbkdf2_sha256")
    assert p.startswith("pbkdf2_sha256$") and verify_password(p, "s3cret-pw") and not verify_password(p, "")
    assert may("operator", "acknowledge") and not may("operator", "select_recipe")
    assert may("engineer", "select_recipe") and may("admin", "select_recipe") and not may("guest", "view")


def test_users_file_is_read_and_checked(tmp_path):
    users = read_users(str(users_file(tmp_path)))
    assert len(users) == 2 and users.by_name["olga"].role == "operator"
    assert users.check("olga", "olga-secret").name == "olga"
    assert users.check("olga", "eric-secret") is None and users.check("nobody", "olga-secret") is None
    good = hash_password("pw-long-enough")
    for text, words in ((f"anna:boss:{good}", "role 'boss'"), (f"anna:operator:{good}\nanna:engineer:{good}", "twice"),
                        ("anna:operator:plaintext", "unusable"), ("anna:operator", "NAME:ROLE:HASH"),
                        (f"an na:operator:{good}", "user name"), ("# nobody\n", "no users"),
                        ("anna:operator:scrypt$3$8$1$AAAAAAAAAAA=$AAAAAAAAAAAAAAAAAAAAAA==", "power of two")):
        path = tmp_path / "bad.txt"
        path.write_text(text + "\n")
        with pytest.raises(UserError) as err:
            read_users(str(path))
        assert words in str(err.value) and str(path) in str(err.value), text
    with pytest.raises(UserError, match="cannot read"):
        read_users(str(tmp_path / "missing.txt"))


def test_start_checks_exposure_users_and_port(tmp_path):
    with pytest.raises(UserError, match="reached from the network: give --opcua-users"):
        check_opcua_option(SimpleNamespace(opcua=f"opc.tcp://0.0.0.0:{free_port()}", opcua_users=None))
    with pytest.raises(UserError, match="only with --opcua"):
        check_opcua_option(SimpleNamespace(opcua=None, opcua_users=str(users_file(tmp_path))))
    assert check_opcua_option(SimpleNamespace(opcua=None, opcua_users=None)) is None
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(UserError) as err:
            check_opcua_option(SimpleNamespace(opcua=f"opc.tcp://127.0.0.1:{port}", opcua_users=None))
        assert f"port {port} is already in use" in str(err.value) and "\n" not in str(err.value)
        station = OpcuaStation(parse_opcua_url(f"opc.tcp://127.0.0.1:{port}"))  # taken between check and start
        with pytest.raises(UserError, match=f"port {port} is already in use"):
            station.start(None)


def test_an_unreadable_certificate_is_a_one_line_error(tmp_path):
    (tmp_path / "server.der").write_bytes(b"not a certificate")
    (tmp_path / "server.pem").write_text("not a key")
    station = OpcuaStation(parse_opcua_url(f"opc.tcp://127.0.0.1:{free_port()}?cert={tmp_path / 'server.der'}"
                                           f"&key={tmp_path / 'server.pem'}"))
    with pytest.raises(UserError) as err:
        station.start(None)  # no check before: asyncua's own error, on one line
    assert "the server failed to start" in str(err.value) and "\n" not in str(err.value)
    url = f"opc.tcp://127.0.0.1:{free_port()}?cert={tmp_path / 'server.der'}&key={tmp_path / 'server.pem'}"
    with pytest.raises(UserError) as err:  # `ds2a inspect` checks them before the model opens
        check_opcua_option(SimpleNamespace(opcua=url, opcua_users=None))
    assert f"cert {tmp_path / 'server.der'} is not a readable PEM or DER certificate" in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_refuses_a_bad_url_and_a_busy_port_before_the_model_opens(tmp_path, capsys):
    rc = main(["inspect", "--model", str(tmp_path / "never-opened.onnx"), "--headless", "--opcua", "opc.tcp://x:y"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--opcua opc.tcp://x:y" in err and "never-opened" not in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        rc = main(["inspect", "--model", str(tmp_path / "never-opened.onnx"), "--headless",
                   "--opcua", f"opc.tcp://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "already in use" in err and "never-opened" not in err


def test_users_command_prints_a_line_that_reads_back(tmp_path, monkeypatch, capsys):
    from ds2a.notify import users as users_module

    answers = iter(["long-password", "long-password", "short", "short"])
    monkeypatch.setattr(users_module.getpass, "getpass", lambda prompt="": next(answers))
    assert users_module.main(["anna", "engineer"]) == 0
    line = capsys.readouterr().out.strip()
    (tmp_path / "u.txt").write_text(line + "\n")
    assert "long-password" not in line and read_users(str(tmp_path / "u.txt")).check("anna", "long-password").role == \
        "engineer"
    assert users_module.main(["anna", "engineer"]) == 1  # too short
    assert users_module.main(["anna", "boss"]) == 2 and "ROLE" in capsys.readouterr().err


def test_identity_names_the_recipe_and_hashes_rules_model_and_engine(tmp_path):
    import hashlib

    from ds2a.trt.sidecar import write_sidecar

    def sha(data: bytes) -> str:
        return hashlib.sha256(data).hexdigest()

    (tmp_path / "m.onnx").write_bytes(b"onnx bytes")
    (tmp_path / "line3.yaml").write_text("version: 1\n")
    info = opcua_server.identity(SimpleNamespace(model=str(tmp_path / "m.onnx"), rules=str(tmp_path / "line3.yaml")),
                                 SimpleNamespace(backend="onnxruntime"), None)
    assert (info["recipe"], info["recipe_sha256"]) == ("line3.yaml", sha(b"version: 1\n"))
    assert (info["model_sha256"], info["engine_sha256"], info["backend"]) == (sha(b"onnx bytes"), "", "onnxruntime")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    default = SimpleNamespace(to_yaml=lambda: "level: part\n")
    info = opcua_server.identity(SimpleNamespace(model=str(engine), rules=None), SimpleNamespace(backend="t"), default)
    assert (info["engine_sha256"], info["model_sha256"]) == (sha(b"plan"), "")  # no sidecar: the ONNX is unknown
    assert (info["recipe"], info["recipe_sha256"]) == ("default", sha(b"level: part\n"))
    write_sidecar(str(engine), {"tensorrt_version": "10.3", "gpu_name": "Orin", "compute_capability": "8.7",
                                "precision": "int8", "inputs": [], "outputs": [], "onnx_sha256": sha(b"onnx bytes")})
    info = opcua_server.identity(SimpleNamespace(model=str(engine), rules=None), SimpleNamespace(backend="t"), default)
    assert (info["engine_sha256"], info["model_sha256"]) == (sha(b"plan"), sha(b"onnx bytes"))


def test_the_hand_over_never_blocks_and_counts_what_it_gives_up():
    station = OpcuaStation(parse_opcua_url(f"opc.tcp://127.0.0.1:{free_port()}"), capacity=3)
    station.publish(FRAME, [part(i) for i in range(5)])  # returns with no server thread taking anything
    station.raise_alarm("an alarm is never given up")
    station.publish(FRAME, [part(6)])
    assert station.dropped == 3  # room for 3 results: 6 handed over, the 3 oldest given up
    assert [(kind, item if kind == "state" else item[1] if kind == "alarm" else item["seq"])
            for kind, item in station._queue] == [("state", "running"), ("result", 4), ("result", 5),
                                                  ("alarm", "an alarm is never given up"), ("result", 6)]


# --- a served station -------------------------------------------------------------------------------

def test_browse_and_read_the_node_set():
    url = f"opc.tcp://127.0.0.1:{free_port()}"

    async def client() -> Dict[str, Any]:
        async with Client(url) as c:
            root = await ds2a_node(c)
            children = {(await n.read_browse_name()).Name for n in await root.get_children()}
            res = await ds2a_node(c, "ResultManagement")
            names = {(await n.read_browse_name()).Name for n in await res.get_children()}
            sm = await ds2a_node(c, "VisionStateMachine")
            rec = await ds2a_node(c, "RecipeManagement")
            return {"children": children, "result": names,
                    "state": await (await sm.get_child(f"{root.nodeid.NamespaceIndex}:State")).read_value(),
                    "current": await (await ds2a_node(c, "VisionStateMachine", "CurrentState")).read_value(),
                    "recipes": await (await ds2a_node(c, "RecipeManagement", "RecipeList")).read_value(),
                    "active": await (await ds2a_node(c, "RecipeManagement", "ActiveRecipe")).read_value(),
                    "model": await (await ds2a_node(c, "Identification", "ModelSha256")).read_value(),
                    "methods": {(await m.read_browse_name()).Name for m in await rec.get_methods()} |
                               {(await m.read_browse_name()).Name for m in await sm.get_methods()},
                    "parts": await (await ds2a_node(c, "Counters", "Parts")).read_value(),
                    "verdict_id": (await ds2a_node(c, "ResultManagement", "Verdict")).nodeid,
                    "ns": await c.get_namespace_index(NAMESPACE)}

    with Served(url):
        got = run(client())
    assert got["children"] >= {"Identification", "VisionStateMachine", "ResultManagement", "Counters",
                                "RecipeManagement"}
    assert got["result"] >= set(RESULT_FIELDS)
    assert (got["state"], got["current"], got["parts"]) == ("idle", "Halted", 0)
    assert got["recipes"] == ["rules.yaml"] and got["active"] == "rules.yaml" and got["model"] == "b" * 64
    assert got["methods"] == {"SelectRecipe", "AcknowledgeAlarm"}
    assert got["verdict_id"] == ua.NodeId("DS2A.ResultManagement.Verdict", got["ns"]) and got["ns"] == 2


class Collector:
    """asyncua subscription handler keeping every data change with its node's browse name."""

    def __init__(self, names: Dict[Any, str]) -> None:
        self.names, self.changes = names, []  # type: ignore[var-annotated]

    def datachange_notification(self, node: Any, value: Any, data: Any) -> None:
        self.changes.append((self.names[node.nodeid], value, data.monitored_item.Value.SourceTimestamp))

    def values(self, name: str) -> List[Any]:
        return [v for n, v, _ in self.changes if n == name]


async def subscribe(c: Client, names: List[str], period_ms: float = 50) -> Collector:
    nodes = {}
    for name in names:
        folder = "Counters" if name.startswith("Parts") else "VisionStateMachine" if name in (
            "State", "AlarmActive", "AlarmText") else "ResultManagement"
        nodes[name] = await ds2a_node(c, folder, name)
    handler = Collector({n.nodeid: name for name, n in nodes.items()})
    sub = await c.create_subscription(period_ms, handler)
    await sub.subscribe_data_change(list(nodes.values()), queuesize=5000)
    return handler


def test_a_subscriber_gets_every_result_of_a_burst_far_faster_than_30_parts_per_second():
    url, n = f"opc.tcp://127.0.0.1:{free_port()}", 600
    station_box: List[OpcuaStation] = []

    async def client() -> Collector:
        async with Client(url) as c:
            got = await subscribe(c, ["ResultSequence", "Result", "PartId"])
            await asyncio.sleep(0.3)  # the initial values
            t0 = time.perf_counter()
            for i in range(1, n + 1):  # the output thread's pace: no waiting between parts
                station_box[0].publish(FRAME, [part(i, "FAIL" if i % 5 == 0 else "PASS")])
            hand_over = time.perf_counter() - t0
            end = time.monotonic() + 30
            while time.monotonic() < end and (got.values("ResultSequence") or [0])[-1] < n:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            got.hand_over_s = hand_over  # type: ignore[attr-defined]
            return got

    with Served(url) as station:
        station_box.append(station)
        got = run(client())
        assert station.dropped == 0 and station.published == n
    seqs = got.values("ResultSequence")
    assert seqs == list(range(0, n + 1))  # the initial 0, then every part once, in order
    results = [json.loads(v) for v in got.values("Result")[1:]]
    assert [r["seq"] for r in results] == list(range(1, n + 1))
    assert [r["part_id"] for r in results] == [f"cell-{i:04d}" for i in range(1, n + 1)]
    assert [r["verdict"] for r in results] == ["FAIL" if i % 5 == 0 else "PASS" for i in range(1, n + 1)]
    assert got.values("PartId")[1:] == [f"cell-{i:04d}" for i in range(1, n + 1)]  # a new id each part
    stamps = [ts for name, _, ts in got.changes if name == "ResultSequence"][1:]
    assert [round(s.timestamp(), 3) for s in stamps] == [round(1.7e9 + i + 0.5, 3) for i in range(1, n + 1)]
    print(f"opcua: {n} parts handed over in {got.hand_over_s * 1e3:.1f} ms")  # type: ignore[attr-defined]


def test_a_none_part_raises_an_alarm_that_a_client_acknowledges_and_the_audit_keeps():
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    box: List[OpcuaStation] = []

    async def client() -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        async with Client(url) as c:
            sm = await ds2a_node(c, "VisionStateMachine")
            ns = sm.nodeid.NamespaceIndex
            ack = await sm.get_child(f"{ns}:AcknowledgeAlarm")
            state, text = await sm.get_child(f"{ns}:State"), await sm.get_child(f"{ns}:AlarmText")
            with pytest.raises(ua.UaStatusCodeError) as none_yet:
                await sm.call_method(ack, ua.Variant("nothing", ua.VariantType.String))
            out["none_yet"] = none_yet.value.code
            box[0].publish(FRAME, [part(1), part(2, "NONE")])
            end = time.monotonic() + 10
            while time.monotonic() < end and await state.read_value() != "error":
                await asyncio.sleep(0.02)
            out["state"], out["text"] = await state.read_value(), await text.read_value()
            out["active"] = await (await sm.get_child(f"{ns}:AlarmActive")).read_value()
            out["current"] = await (await sm.get_child(f"{ns}:CurrentState")).read_value()
            out["answer"] = await sm.call_method(ack, ua.Variant("cell-0002 set aside", ua.VariantType.String))
            out["after"] = await state.read_value()
            out["active_after"] = await (await sm.get_child(f"{ns}:AlarmActive")).read_value()
            out["none"] = await (await ds2a_node(c, "Counters", "PartsNone")).read_value()
        return out

    served = Served(url)
    with served as station:
        box.append(station)
        got = run(client())
    assert got["none_yet"] == ua.StatusCodes.BadInvalidState
    assert (got["state"], got["current"], got["active"]) == ("error", "Error", True)
    assert "cell-0002" in got["text"] and "NONE" in got["text"] and "why 2" in got["text"]
    assert "acknowledged 1 alarm" in got["answer"] and got["after"] == "running" and not got["active_after"]
    assert got["none"] == 1
    audit = served.records.extra["opcua_audit"]
    assert [(a["method"], a["status"], a["user"], a["role"]) for a in audit] == [
        ("AcknowledgeAlarm", "BadInvalidState", "anonymous", "engineer"),
        ("AcknowledgeAlarm", "Good", "anonymous", "engineer")]
    assert audit[1]["args"] == ["cell-0002 set aside"] and "cell-0002" in audit[1]["detail"]
    if int(asyncua.__version__.split(".")[0]) >= 2:  # asyncua 1.x does not say where a session comes from
        assert audit[1]["peer"].startswith("127.0.0.1:")


def test_an_error_that_ends_the_run_reaches_subscribers_before_the_server_stops():
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    served = Served(url)
    station = served.__enter__()

    async def client() -> Collector:
        c = Client(url)
        await c.connect()
        got = await subscribe(c, ["State", "AlarmText", "ResultSequence"], period_ms=500)
        await asyncio.sleep(0.7)
        station.publish(FRAME, [part(1)])  # the last part and the error, right before the end
        ended = asyncio.get_running_loop().run_in_executor(
            None, station.__exit__, RuntimeError, RuntimeError("camera lost"), None)
        await ended
        try:
            await asyncio.wait_for(c.disconnect(), 2)
        except Exception:  # noqa: BLE001 - the server is gone
            pass
        return got

    got = run(client())
    assert got.values("ResultSequence") == [0, 1] and got.values("State")[-1] == "error"
    assert got.values("AlarmText")[-1] == "inspection stopped: camera lost"


def test_select_recipe_accepts_only_the_rules_file_in_force():
    url = f"opc.tcp://127.0.0.1:{free_port()}"

    async def client() -> Dict[str, Any]:
        async with Client(url) as c:
            rec = await ds2a_node(c, "RecipeManagement")
            select = await rec.get_child(f"{rec.nodeid.NamespaceIndex}:SelectRecipe")
            same = await rec.call_method(select, ua.Variant("rules.yaml", ua.VariantType.String))
            with pytest.raises(ua.UaStatusCodeError) as other:
                await rec.call_method(select, ua.Variant("other.yaml", ua.VariantType.String))
            active = await (await ds2a_node(c, "RecipeManagement", "ActiveRecipe")).read_value()
        return {"same": same, "other": other.value.code, "active": active}

    served = Served(url)
    with served:
        got = run(client())
    assert "already the active recipe" in got["same"] and got["active"] == "rules.yaml"
    assert got["other"] == ua.StatusCodes.BadNotFound
    assert [a["status"] for a in served.records.extra["opcua_audit"]] == ["Good", "BadNotFound"]


class FakeBook:
    """The recipe book's surface the server uses (ds2a/inspect/recipes.py RecipeBook)."""

    def __init__(self) -> None:
        self.asked: List[Any] = []

    def names(self) -> List[str]:
        return ["cheap-cell", "premium"]

    def current(self) -> Dict[str, str]:
        return {"name": "cheap-cell", "sha256": "c" * 64}

    def request(self, name: str, user: str, role: str, origin: str) -> str:
        if name not in self.names():
            raise UserError(f"recipe {name} is not a recipe of recipes/")
        self.asked.append((name, user, role, origin))
        return f"{name} queued: applies before the next part"


def test_select_recipe_with_a_recipe_book_queues_a_changeover_and_active_recipe_follows():
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    book = FakeBook()

    async def client() -> Dict[str, Any]:
        async with Client(url) as c:
            rec = await ds2a_node(c, "RecipeManagement")
            select = await rec.get_child(f"{rec.nodeid.NamespaceIndex}:SelectRecipe")
            names = await (await ds2a_node(c, "RecipeManagement", "RecipeList")).read_value()
            first = await (await ds2a_node(c, "RecipeManagement", "ActiveRecipe")).read_value()
            msg = await rec.call_method(select, ua.Variant("premium", ua.VariantType.String))
            with pytest.raises(ua.UaStatusCodeError) as other:
                await rec.call_method(select, ua.Variant("rules.yaml", ua.VariantType.String))
            served.station.recipe_changed({"name": "premium", "sha256": "p" * 64})  # the book's listener
            served.station.flush()
            active = await (await ds2a_node(c, "RecipeManagement", "ActiveRecipe")).read_value()
            sha = await (await ds2a_node(c, "RecipeManagement", "ActiveRecipeSha256")).read_value()
        return {"names": names, "first": first, "msg": msg, "other": other.value.code, "active": active, "sha": sha}

    served = Served(url)
    served.station.recipes = book
    with served:
        got = run(client())
    assert got["names"] == ["cheap-cell", "premium"] and got["first"] == "cheap-cell"
    assert got["msg"] == "premium queued: applies before the next part" and got["other"] == ua.StatusCodes.BadNotFound
    assert (got["active"], got["sha"]) == ("premium", "p" * 64)
    assert [a[:3] for a in book.asked] == [("premium", "anonymous", "engineer")] and book.asked[0][3].startswith("opc.tcp")
    assert [a["status"] for a in served.records.extra["opcua_audit"]] == ["Good", "BadNotFound"]


# --- security ---------------------------------------------------------------------------------------

def test_a_network_binding_refuses_anonymous_sessions_and_enforces_roles(tmp_path):
    port = free_port("0.0.0.0")
    url = f"opc.tcp://127.0.0.1:{port}"
    users = read_users(str(users_file(tmp_path)))

    async def as_user(name: Optional[str], password: Optional[str] = None) -> Dict[str, Any]:
        c = Client(url)
        if name:
            c.set_user(name)
            c.set_password(password or "")
        out: Dict[str, Any] = {}
        try:
            await c.connect()
        except (ua.UaStatusCodeError, ua.UaError) as exc:
            return {"refused": getattr(exc, "code", None) or str(exc)}
        try:
            out["read"] = await (await ds2a_node(c, "ResultManagement", "ResultSequence")).read_value()
            part_id = await ds2a_node(c, "ResultManagement", "PartId")
            try:
                await part_id.write_value(ua.DataValue(ua.Variant("forged", ua.VariantType.String)))
                out["write"] = "Good"
            except ua.UaStatusCodeError as exc:
                out["write"] = exc.code
            rec = await ds2a_node(c, "RecipeManagement")
            select = await rec.get_child(f"{rec.nodeid.NamespaceIndex}:SelectRecipe")
            sm = await ds2a_node(c, "VisionStateMachine")
            ack = await sm.get_child(f"{sm.nodeid.NamespaceIndex}:AcknowledgeAlarm")
            for key, node, method, arg in (("select", rec, select, "rules.yaml"), ("ack", sm, ack, "ok")):
                try:
                    await node.call_method(method, ua.Variant(arg, ua.VariantType.String))
                    out[key] = "Good"
                except ua.UaStatusCodeError as exc:
                    out[key] = exc.code
            out["part_id"] = await part_id.read_value()
        finally:
            await c.disconnect()
        return out

    async def everyone() -> Dict[str, Dict[str, Any]]:
        return {"anonymous": await as_user(None), "wrong": await as_user("olga", "eric-secret"),
                "olga": await as_user("olga", "olga-secret"), "eric": await as_user("eric", "eric-secret")}

    served = Served(f"opc.tcp://0.0.0.0:{port}", users)
    with served as station:
        station.raise_alarm("test alarm")
        got = run(everyone())
    assert got["anonymous"]["refused"] in (ua.StatusCodes.BadIdentityTokenRejected, ua.StatusCodes.BadUserAccessDenied)
    assert got["wrong"]["refused"] in (ua.StatusCodes.BadIdentityTokenRejected, ua.StatusCodes.BadUserAccessDenied)
    olga, eric = got["olga"], got["eric"]
    assert olga["read"] == 0 and olga["write"] != "Good" and olga["part_id"] == ""  # nobody writes results
    assert olga["select"] == ua.StatusCodes.BadUserAccessDenied and olga["ack"] == "Good"  # an operator
    assert eric["select"] == "Good" and eric["write"] != "Good"  # an engineer; the alarm was olga's to clear
    assert eric["ack"] == ua.StatusCodes.BadInvalidState
    audit = [(a["user"], a["role"], a["method"], a["status"]) for a in served.records.extra["opcua_audit"]]
    assert audit == [("olga", "operator", "SelectRecipe", "BadUserAccessDenied"),
                     ("olga", "operator", "AcknowledgeAlarm", "Good"),
                     ("eric", "engineer", "SelectRecipe", "Good"),
                     ("eric", "engineer", "AcknowledgeAlarm", "BadInvalidState")]


def test_a_flood_of_logins_is_refused_without_checking_each_password(tmp_path, monkeypatch):
    users = read_users(str(users_file(tmp_path)))
    checked: List[str] = []
    real = users.check
    monkeypatch.setattr(users, "check", lambda name, pw: checked.append(name) or real(name, pw))
    manager = opcua_server._UserManager(OpcuaStation(parse_opcua_url("opc.tcp://0.0.0.0:4840"), users))
    now = [100.0]
    manager.clock = lambda: now[0]  # 20 logins within the same instant
    answers = [manager.get_user(None, "olga", "guess") for _ in range(20)]
    assert answers == [None] * 20 and len(checked) == opcua_server.CHECKS_PER_S and manager.flooded == 15
    now[0] += 1.01  # a second later
    assert manager.get_user(None, "olga", "olga-secret").name == "olga" and len(checked) == 6


def test_with_users_a_loopback_anonymous_session_may_only_look(tmp_path):
    url = f"opc.tcp://127.0.0.1:{free_port()}"

    async def client() -> Dict[str, Any]:
        async with Client(url) as c:
            seq = await (await ds2a_node(c, "ResultManagement", "ResultSequence")).read_value()
            sm = await ds2a_node(c, "VisionStateMachine")
            ack = await sm.get_child(f"{sm.nodeid.NamespaceIndex}:AcknowledgeAlarm")
            with pytest.raises(ua.UaStatusCodeError) as call:
                await sm.call_method(ack, ua.Variant("", ua.VariantType.String))
            with pytest.raises(ua.UaStatusCodeError) as write:
                await (await ds2a_node(c, "ResultManagement", "Verdict")).write_value(
                    ua.DataValue(ua.Variant("PASS", ua.VariantType.String)))
            return {"seq": seq, "call": call.value.code, "write": write.value.code}

    with Served(url, read_users(str(users_file(tmp_path)))) as station:
        station.raise_alarm("stays until a named user acknowledges it")
        got = run(client())
    assert got["seq"] == 0 and got["call"] == ua.StatusCodes.BadUserAccessDenied
    assert got["write"] == ua.StatusCodes.BadUserAccessDenied


# --- through `ds2a inspect` -------------------------------------------------------------------------

def test_a_demo_run_reaches_a_subscriber_part_by_part(tmp_path, monkeypatch):
    """30 frames of demo:// through `ds2a inspect --opcua`: the client subscribes before the first part (the
    station's start waits for it) and the server stays up until the client has every result."""
    from fakes.onnx_models import threshold_onnx

    model = threshold_onnx(tmp_path / "thr.onnx")
    db = tmp_path / "i.sqlite"
    url = f"opc.tcp://127.0.0.1:{free_port()}"
    started, subscribed, ended, done = (threading.Event() for _ in range(4))
    final: List[int] = []
    real_check = opcua_server.check_opcua_option

    def check(options: Any) -> OpcuaStation:
        station = real_check(options)
        real_start, real_publish, real_close = station.start, station.publish, station.close

        def start(*a: Any, **k: Any) -> None:
            real_start(*a, **k)
            station.raise_alarm("raised before the run")  # for the client to acknowledge during the run
            started.set()
            assert subscribed.wait(30)

        def publish(res: Any, closed: List[Any]) -> None:
            real_publish(res, closed)
            if res is None:
                final.append(station.seq)
                ended.set()

        def close() -> None:
            done.wait(30)
            real_close()

        station.start, station.publish, station.close = start, publish, close  # type: ignore[method-assign]
        return station

    monkeypatch.setattr("ds2a.inspect.run.check_opcua_option", check)
    got: Dict[str, Any] = {}

    async def client() -> None:
        async with Client(url) as c:
            sub = await subscribe(c, ["ResultSequence", "Result", "State", "Parts", "PartsPass", "PartsFail"])
            await asyncio.sleep(0.3)
            sm = await ds2a_node(c, "VisionStateMachine")
            ack = await sm.get_child(f"{sm.nodeid.NamespaceIndex}:AcknowledgeAlarm")
            got["ack"] = await sm.call_method(ack, ua.Variant("seen at start", ua.VariantType.String))
            subscribed.set()
            await asyncio.get_running_loop().run_in_executor(None, ended.wait, 60)
            end = time.monotonic() + 20
            while time.monotonic() < end and (sub.values("ResultSequence") or [0])[-1] < final[0]:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            got["sub"] = sub
            got["counters"] = [await (await ds2a_node(c, "Counters", n)).read_value()
                               for n in ("Parts", "PartsPass", "PartsFail", "PartsNone")]
            got["model"] = await (await ds2a_node(c, "Identification", "ModelSha256")).read_value()

    def client_thread() -> None:
        try:
            started.wait(60)
            asyncio.run(asyncio.wait_for(client(), 90))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            got["error"] = repr(exc)
        finally:
            subscribed.set()
            done.set()

    thread = threading.Thread(target=client_thread, daemon=True)
    thread.start()
    rc = main(["inspect", "--model", str(model), "--source", "demo://?frames=30&width=320&height=180&speed=24",
               "--headless", "--db", str(db), "--opcua", url])
    thread.join(30)
    assert rc == 0 and "error" not in got, got.get("error")
    con = sqlite3.connect(str(db))
    want = [tuple(r) for r in con.execute("SELECT part_id, verdict FROM verdicts ORDER BY id")]
    stats = json.loads(con.execute("SELECT stats FROM runs").fetchone()[0])
    con.close()
    sub = got["sub"]
    assert len(want) > 0 and final == [len(want)]
    assert sub.values("ResultSequence") == list(range(0, len(want) + 1))
    results = [json.loads(v) for v in sub.values("Result")[1:]]
    assert [(r["part_id"], r["verdict"]) for r in results] == want
    assert all(r["run"] == 1 and r["model_sha256"] == got["model"] and len(r["model_sha256"]) == 64 for r in results)
    assert got["counters"] == [len(want), sum(v == "PASS" for _, v in want), sum(v == "FAIL" for _, v in want),
                               sum(v == "NONE" for _, v in want)]
    states = sub.values("State")
    nones = any(v == "NONE" for _, v in want)  # a NONE part raises an alarm that outlives the run
    assert states[:3] == ["error", "idle", "running"] and states[-1] == ("error" if nones else "idle")
    assert "acknowledged 1 alarm" in got["ack"]
    assert stats["opcua"]["published"] == len(want) and stats["opcua"]["dropped"] == 0
    assert [(a["method"], a["status"], a["args"]) for a in stats["opcua_audit"]] == [
        ("AcknowledgeAlarm", "Good", ["seen at start"])]


def test_a_server_certificate_on_a_network_binding_allows_only_encrypted_channels(tmp_path):
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    async def make(name: str, uri: str, use: Any) -> None:
        await setup_self_signed_certificate(tmp_path / f"{name}.pem", tmp_path / f"{name}.der", uri, "localhost",
                                            [use], {"commonName": name})

    run(make("server", opcua_server.APPLICATION_URI, ExtendedKeyUsageOID.SERVER_AUTH))
    run(make("client", "urn:test:client", ExtendedKeyUsageOID.CLIENT_AUTH))
    port = free_port("0.0.0.0")
    url = f"opc.tcp://127.0.0.1:{port}"

    async def client() -> Dict[str, Any]:
        probe = Client(url)
        endpoints = await probe.connect_and_get_server_endpoints()
        c = Client(url)
        await c.set_security_string(f"Basic256Sha256,SignAndEncrypt,{tmp_path / 'client.der'},{tmp_path / 'client.pem'}")
        c.set_user("olga")
        c.set_password("olga-secret")
        async with c:
            seq = await (await ds2a_node(c, "ResultManagement", "ResultSequence")).read_value()
        return {"seq": seq, "endpoints": [(e.SecurityMode, [(t.TokenType, t.SecurityPolicyUri) for t in
                                                            e.UserIdentityTokens]) for e in endpoints]}

    served_url = f"opc.tcp://0.0.0.0:{port}?cert={tmp_path / 'server.der'}&key={tmp_path / 'server.pem'}"
    opcua_server._check_certificate(parse_opcua_url(served_url), "--opcua")  # what the start-up check accepts
    with Served(served_url, read_users(str(users_file(tmp_path)))):
        got = run(client())
    assert got["seq"] == 0
    # a network binding with a certificate offers only the encrypted endpoint, and no anonymous token there
    assert [(mode, [t for t, _ in tokens]) for mode, tokens in got["endpoints"]] == [
        (ua.MessageSecurityMode.SignAndEncrypt, [ua.UserTokenType.UserName])]
