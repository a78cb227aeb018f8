"""The station as an OPC UA server (`ds2a inspect --opcua opc.tcp://HOST:PORT`), for lines that speak OPC UA.

The information model follows OPC 40100-1 (OPC UA for Machine Vision) where it fits, in a
namespace of our own (docs/OPCUA.md lists every node): the station's state and alarm, the last
part result (`PartId`, `Verdict`, ...) with a `ResultSequence` that rises by one per part,
counters, the recipe in force and methods to acknowledge an alarm and select a recipe.

asyncua runs in its own thread with its own event loop. The Publisher's output thread hands each
part verdict over through a bounded queue and never waits (like the notifiers, ds2a/notify/notifier.py);
the server writes every result as its own value changes with the part's time as source timestamp,
so a subscriber with a large enough queue sees every part, however fast they come.

Security: anonymous sessions only on a loopback binding. A binding reachable from the network needs
a users file (ds2a/notify/users.py) and refuses anonymous sessions; writes are refused to everyone
(every variable is read-only) and each method checks the caller's role. Method calls are audited: a
log line, a row in the database's audit trail as the call happens (ds2a/records/audit.py, refused calls
too) and an entry in the run's stats (`opcua_audit`).
"""
from __future__ import annotations

import collections
import contextvars
import datetime as dt
import errno
import hashlib
import ipaddress
import json
import logging
import os
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

from ..errors import UserError
from ..meta import file_sha256_or_empty
from ..records.audit import append as audit_append
from .users import LoginBudget, Users, may, read_users

logger = logging.getLogger(__name__)

NAMESPACE = "urn:ds2a-edge:inspection"  # our own namespace URI (docs/OPCUA.md)
APPLICATION_URI = "urn:ds2a-edge:station"  # the server's; a server certificate names it (docs/OPCUA.md)
DEFAULT_PORT = 4840
CAPACITY = 10000  # results waiting for the server thread; beyond this the oldest is given up (and counted)
AUDIT_KEEP = 1000  # audit entries kept in the run's stats (all are logged)
CHECKS_PER_S = 5  # password checks a second at most (_UserManager)
END_WAIT_S = 2.0  # at the end, how long the last changes get to reach subscribers before the server stops
AUDIT_ACTIONS = {"AcknowledgeAlarm": "alarm_ack", "SelectRecipe": "recipe_select"}  # -> audit trail actions
STATES = {"idle": "Halted", "running": "Operational", "error": "Error"}  # ours -> OPC 40100-1 top-level state

_caller: "contextvars.ContextVar[Any]" = contextvars.ContextVar("ds2a_opcua_caller", default=None)


@dataclass
class OpcuaTarget:
    """A checked `--opcua` URL."""

    url: str  # the endpoint URL asyncua serves
    host: str
    port: int
    loopback: bool  # only this machine can connect
    cert: Optional[str] = None  # server certificate (PEM or DER): encrypted channel and passwords
    key: Optional[str] = None  # its private key


def _is_loopback(host: str, flag: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        raise UserError(f"{flag}: host '{host}' does not resolve; give an address of this machine, "
                        "e.g. opc.tcp://127.0.0.1:4840 or opc.tcp://0.0.0.0:4840") from None
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def parse_opcua_url(url: str, flag: str = "--opcua") -> OpcuaTarget:
    """`opc.tcp://HOST[:PORT][/PATH][?cert=FILE&key=FILE]`; UserError with the fix for anything else."""
    example = "e.g. opc.tcp://127.0.0.1:4840"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UserError(f"{flag} {url}: the port is not a number from 1 to 65535; {example}") from None
    if parts.scheme != "opc.tcp" or not parts.hostname:
        raise UserError(f"{flag} {url}: give opc.tcp://HOST:PORT, {example} (0.0.0.0 for every network)")
    if parts.username or parts.password or parts.fragment:
        raise UserError(f"{flag} {url}: no user, password or #fragment in the URL; users come from --opcua-users FILE")
    if port == 0:
        raise UserError(f"{flag} {url}: the port is not a number from 1 to 65535; {example}")
    query = parse_qs(parts.query, keep_blank_values=True)
    unknown = sorted(set(query) - {"cert", "key"})
    if unknown:
        raise UserError(f"{flag} {url}: unknown option(s) {', '.join(unknown)}; only cert=FILE&key=FILE")
    cert, key = (query.get(k, [None])[-1] for k in ("cert", "key"))
    if bool(cert) != bool(key):
        raise UserError(f"{flag} {url}: give both cert=FILE and key=FILE (the server's certificate and its key)")
    for name, path in (("cert", cert), ("key", key)):
        if path and not os.path.isfile(path):
            raise UserError(f"{flag} {url}: {name} file {path} does not exist")
    host = parts.hostname
    port = port or DEFAULT_PORT
    shown = f"[{host}]" if ":" in host else host
    return OpcuaTarget(f"opc.tcp://{shown}:{port}{parts.path or '/'}", host, port,
                       _is_loopback(host, f"{flag} {url}"), cert, key)


def _probe_port(target: OpcuaTarget, flag: str) -> None:
    """Refuse a port that is taken (or an address not of this machine) before the model opens."""
    family = socket.AF_INET6 if ":" in target.host else socket.AF_INET
    try:
        host = socket.getaddrinfo(target.host, target.port, family, socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror:
        host = target.host
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's server does
        sock.bind((host, target.port))
    except OSError as exc:
        raise UserError(_bind_error(target, exc, flag)) from None
    finally:
        sock.close()


def _bind_error(target: OpcuaTarget, exc: OSError, flag: str) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (f"{flag} {target.url}: port {target.port} is already in use (another OPC UA server or ds2a?); "
                "stop it or choose another port")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{flag} {target.url}: {target.host} is not an address of this machine; use one of its addresses or 0.0.0.0"
    if exc.errno == errno.EACCES:
        return f"{flag} {target.url}: no permission to listen on port {target.port}; use a port above 1023"
    return f"{flag} {target.url}: cannot listen ({exc.strerror or exc})"


def check_opcua_option(options: Any) -> Optional["OpcuaStation"]:
    """`--opcua`/`--opcua-users` checked before the model opens; None when no OPC UA server is asked for."""
    url, users_file = getattr(options, "opcua", None), getattr(options, "opcua_users", None)
    if not url:
        if users_file:
            raise UserError("--opcua-users applies only with --opcua opc.tcp://HOST:PORT")
        return None
    target = parse_opcua_url(url)
    users = read_users(users_file) if users_file else None
    if not target.loopback and users is None:
        raise UserError(f"--opcua {url} can be reached from the network: give --opcua-users FILE (named users with "
                        "roles, docs/OPCUA.md); anonymous access is only for 127.0.0.1")
    try:
        import asyncua  # noqa: F401
    except ImportError:
        raise UserError("--opcua needs the Python package asyncua: pip install 'ds2a-edge[notify]'") from None
    _check_certificate(target, f"--opcua {url}")
    if users is not None and users.certificate_users:
        _check_user_certificates(target, users_file)
    _probe_port(target, "--opcua")
    return OpcuaStation(target, users)


def _check_user_certificates(target: OpcuaTarget, users_file: str) -> None:
    """Users who log in with a client certificate need a server certificate (the user token is signed over
    an encrypted channel) and an asyncua that checks that signature (proof the client holds the key)."""
    from asyncua.server.internal_server import InternalServer

    if not (target.cert and target.key):
        raise UserError(f"users file {users_file} has certificate users (x509_sha256$...): give the server a "
                        f"certificate too, --opcua {target.url}?cert=FILE&key=FILE (docs/OPCUA.md)")
    if not hasattr(InternalServer, "verify_x509_token"):
        import asyncua

        version = getattr(asyncua, "__version__", "this version")
        raise UserError(f"users file {users_file} has certificate users, but asyncua {version} does not check that a "
                        "client holds its certificate's key; use passwords for them, or asyncua 2 or newer "
                        "(Python 3.9+)")


def _check_certificate(target: OpcuaTarget, where: str) -> None:
    """The server certificate and key read as asyncua will (PEM or DER, key not password-protected)."""
    if not (target.cert and target.key):
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    for name, path in (("cert", target.cert), ("key", target.key)):
        try:
            with open(path, "rb") as f:
                data = f.read()
            pem = data.lstrip().startswith(b"-----")
            if name == "cert":
                (x509.load_pem_x509_certificate if pem else x509.load_der_x509_certificate)(data)
            else:
                (serialization.load_pem_private_key if pem else serialization.load_der_private_key)(data, None)
        except (OSError, ValueError, TypeError) as exc:
            what = "certificate" if name == "cert" else "private key without a password"
            raise UserError(f"{where}: {name} {path} is not a readable PEM or DER {what} "
                            f"({str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__})") from None


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc)


def identity(options: Any, model: Any, rules: Any) -> Dict[str, str]:
    """What the station judges with: the recipe (the rules file) and the model and engine, with their sha256."""
    path = str(getattr(options, "model", "") or "")
    engine = path.endswith(".engine")
    model_sha = "" if engine else file_sha256_or_empty(path)
    if engine:  # the ONNX it was built from, as its sidecar records it (ds2a/trt/sidecar.py)
        try:
            from ..trt.sidecar import read_sidecar

            record = read_sidecar(path)
            model_sha = str(getattr(record, "onnx_sha256", "") or "") if record is not None else ""
        except (OSError, ValueError, UserError):
            model_sha = ""
    rules_file = getattr(options, "rules", None)
    if rules_file:
        recipe, recipe_sha = os.path.basename(rules_file), file_sha256_or_empty(rules_file)
    else:  # no rules file: the built-in rules (any defect region fails), named and hashed as they read
        text = rules.to_yaml() if hasattr(rules, "to_yaml") else ""
        recipe, recipe_sha = "default", hashlib.sha256(text.encode("utf-8")).hexdigest()
    from .. import __version__

    return {"recipe": recipe, "recipe_sha256": recipe_sha, "model": os.path.basename(path) or path,
            "model_sha256": model_sha, "engine_sha256": file_sha256_or_empty(path) if engine else "",
            "backend": str(getattr(model, "backend", "") or ""), "version": __version__}


class OpcuaStation:
    """The Publisher's observer that serves the station over OPC UA; `start`, `publish` per frame, `close` once.

    Used as a context manager around the run (ExitStack.push): an exception that ends the run
    becomes the station's alarm before the server stops.
    """

    def __init__(self, target: OpcuaTarget, users: Optional[Users] = None, capacity: int = CAPACITY) -> None:
        self.target, self.users, self.capacity = target, users, int(capacity)
        # anonymous: loopback without users = a single-user station (may act); with users = view only
        self.anonymous_role: Optional[str] = "engineer" if users is None else None
        self.records: Any = None
        self.recipes: Any = None  # the run's RecipeBook (--recipes, ds2a/inspect/recipes.py); None: one rules file
        self._by_recipe: Dict[str, Dict[str, str]] = {}  # recipe name -> its identity, for the results it judged
        self.info: Dict[str, str] = {}
        self._queue: Deque[Tuple[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._loop: Any = None
        self._wake: Any = None
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._error = ""
        self._thread: Optional[threading.Thread] = None
        self.published = 0  # results written into the address space
        self.dropped = 0  # results given up because the server thread fell CAPACITY behind
        self.audit: List[Dict[str, Any]] = []
        self.seq = 0
        self._shown_state = ""  # the last state handed over (the output thread's view)
        self._results_queued = 0  # results in _queue (states, alarms and stop are never given up)
        self._busy = False  # the server thread is writing an item it took
        self._calls = 0  # method calls audited
        self._last_change = 0.0  # monotonic time of the last value written (server thread)
        self._audit_con: Optional[sqlite3.Connection] = None  # the server thread's own connection to the records

    # ---- the inspection side (output thread / main thread) -----------------------------------------------
    def start(self, publisher: Any, records: Any = None, options: Any = None, model: Any = None,
              rules: Any = None, timeout_s: float = 60.0) -> None:
        """Serve from now on (state idle until the first frame); UserError when the server cannot listen."""
        self.records = records
        self.info = identity(options, model, rules) if options is not None else dict(self.info)
        if self.recipes is not None:  # the recipe in force, as the recipe book names and hashes it
            current = self.recipes.current()
            self.info.update(recipe=current["name"], recipe_sha256=current["sha256"])
            self._by_recipe[current["name"]] = dict(self.info)
        if records is not None:  # created here, in the main thread: the server thread only appends
            self.audit = records.extra.setdefault("opcua_audit", [])
        self._thread = threading.Thread(target=self._main, name="opcua server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s):
            self._error = self._error or f"--opcua {self.target.url}: the server did not start within {timeout_s:g} s"
        if self._error:
            self._stop_thread()
            raise UserError(self._error)
        if publisher is not None:
            publisher.observers.append(self)
        anonymous = ("anonymous: " + (self.anonymous_role or "view only") if self.target.loopback else
                     "no anonymous access")
        logger.info(f"opcua   {self.target.url} (namespace {NAMESPACE}; "
                    f"{f'{len(self.users)} user(s) from {self.users.origin}; ' if self.users else ''}{anonymous}"
                    f"{'; encrypted with ' + os.path.basename(self.target.cert) if self.target.cert else ''})")
        if not self.target.loopback and not self.target.cert:
            logger.warning(f"warning: --opcua {self.target.url} has no certificate (?cert=FILE&key=FILE): passwords "
                           "and results travel unencrypted on the network (docs/OPCUA.md)")

    def _put(self, kind: str, item: Any) -> None:
        with self._lock:
            if kind == "result":
                if self._results_queued >= self.capacity:
                    self._give_up_oldest_result()
                self._results_queued += 1
            self._queue.append((kind, item))
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:  # the loop has ended
                pass

    def _give_up_oldest_result(self) -> None:
        """The queue is full of results: the oldest goes (its sequence number is then missing for subscribers)."""
        for i, (kind, _) in enumerate(self._queue):
            if kind == "result":
                del self._queue[i]
                break
        self._results_queued -= 1
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 100 == 0:
            logger.warning(f"warning: opcua: {self.dropped} result(s) given up, the server thread is "
                           f"{self.capacity} behind; inspection goes on")

    def publish(self, res: Any, closed: List[Any]) -> None:
        """Per frame (res None at the end of the run): each closed part becomes one result."""
        if res is not None and self._shown_state != "running":
            self._shown_state = "running"
            self._put("state", "running")
        for pv in closed:
            self.seq += 1
            info = self._by_recipe.get(str(getattr(pv, "recipe", None)), self.info)  # the model that judged it
            result = {"seq": self.seq, "run": getattr(self.records, "run_id", None), "part_id": str(pv.part_id),
                      "verdict": str(pv.verdict), "level": str(getattr(pv, "level", "") or ""),
                      "reasons": [str(r) for r in (pv.reasons or [])], "t": float(pv.t_end),
                      "n_frames": int(pv.n_frames), "first_seq": pv.first_seq, "last_seq": pv.last_seq,
                      "recipe": str(getattr(pv, "recipe", None) or self.info.get("recipe", "")),
                      "recipe_sha256": str(getattr(pv, "recipe_sha256", None) or self.info.get("recipe_sha256", "")),
                      "model_sha256": info.get("model_sha256", ""),
                      "engine_sha256": info.get("engine_sha256", "")}
            self._put("result", result)
            if result["verdict"] == "NONE":  # unsure is never silent: the line is told, and must acknowledge
                why = "; ".join(result["reasons"]) or "not judged"
                self.raise_alarm(f"part {result['part_id']} could not be judged (NONE): {why}")
        if res is None:
            self._put("state", "idle")
            self.flush()
            if self.records is not None:
                self.records.extra["opcua"] = self.stats()

    def recipe_changed(self, current: Dict[str, str]) -> None:
        """The recipe book put another recipe in force (any thread): ActiveRecipe, its sha256 and the
        identification of its model follow."""
        facts = dict(getattr(getattr(self.recipes, "active", None), "facts", None) or {})
        facts.pop("recipe", None)
        facts.pop("recipe_sha256", None)
        self.info = {**self.info, **facts, "recipe": current["name"], "recipe_sha256": current["sha256"]}
        self._by_recipe[current["name"]] = dict(self.info)
        self._put("recipe", dict(self.info))

    def raise_alarm(self, text: str) -> None:
        """Set the station's alarm (state error) until a client acknowledges it."""
        self._put("alarm", (time.time(), str(text)[:500]))

    def flush(self, patience_s: float = 2.0) -> bool:
        """Wait up to `patience_s` until the server thread has written everything handed over."""
        end = time.monotonic() + patience_s
        while time.monotonic() < end and not self._stopped.is_set():
            with self._lock:
                if not self._queue and not self._busy:
                    return True
            time.sleep(0.01)
        return False

    def stats(self) -> Dict[str, Any]:
        return {"url": self.target.url, "results": self.seq, "published": self.published, "dropped": self.dropped,
                "method_calls": self._calls}

    def __enter__(self) -> "OpcuaStation":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is not None and not isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
            self.raise_alarm(f"inspection stopped: {exc}")
            self.flush(1.0)
        self.close()

    def close(self) -> None:
        """Stop the server (idempotent), END_WAIT_S after the last change so that subscribers publishing at
        intervals up to that long receive it (the last parts, the final state)."""
        if self._thread is not None and self._last_change:
            time.sleep(max(0.0, min(END_WAIT_S, self._last_change + END_WAIT_S - time.monotonic())))
        self._stop_thread()

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._put("stop", None)
        thread.join(timeout=10.0)
        if thread.is_alive():
            logger.warning("warning: opcua: the server thread did not stop within 10 s")

    # ---- the server thread -----------------------------------------------------------------------------------
    def _main(self) -> None:
        import asyncio

        try:
            asyncio.run(self._serve())
        except Exception as exc:  # noqa: BLE001 - reported to start() or logged, never raised into inspection
            if not self._ready.is_set():
                self._error = f"--opcua {self.target.url}: the server failed to start ({exc})"
            else:
                logger.error(f"ERROR: opcua: the server stopped: {exc}")
        finally:
            self._stopped.set()
            self._ready.set()

    async def _serve(self) -> None:
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        model = _Model(self)
        try:
            await model.build()
            await model.server.start()
        except OSError as exc:
            self._error = _bind_error(self.target, exc, "--opcua")
            return
        self._ready.set()
        self._wake.set()  # anything handed over before the server listened
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while True:
                    with self._lock:
                        if not self._queue:
                            self._busy = False
                            break
                        kind, item = self._queue.popleft()
                        if kind == "result":
                            self._results_queued -= 1
                        self._busy = True
                    if kind == "stop":
                        return
                    await model.apply(kind, item)
        finally:
            with self._lock:
                self._busy = False
            if self._audit_con is not None:
                self._audit_con.close()
                self._audit_con = None
            try:
                await model.server.stop()
            except Exception as exc:  # noqa: BLE001 - stopping is best effort
                logger.debug(f"opcua: stop: {exc}")

    def audited(self, entry: Dict[str, Any]) -> None:
        """A method call: a log line, and an entry in the run's stats (the first AUDIT_KEEP)."""
        self._calls += 1
        logger.info(f"opcua   audit: {entry['user']} ({entry['role'] or 'view only'}"
                    f"{', from ' + entry['peer'] if entry.get('peer') else ''}) called {entry['method']}"
                    f"({', '.join(repr(a) for a in entry['args'])}) -> {entry['status']}"
                    f"{': ' + entry['detail'] if entry.get('detail') else ''}")
        self._audit_row(entry)
        if len(self.audit) < AUDIT_KEEP:
            self.audit.append(entry)

    def _audit_row(self, entry: Dict[str, Any]) -> None:
        """The call as a row of the audit trail, now (the server thread's own connection, a short lock wait);
        a database that refuses it is logged, and the call stays in the run's stats."""
        path, action = getattr(self.records, "path", None), AUDIT_ACTIONS.get(entry.get("method", ""))
        if not path or action is None:
            return
        origin = f"opc.tcp {entry['peer']}" if entry.get("peer") else f"opc.tcp session on {entry.get('endpoint')}"
        try:
            if self._audit_con is None:
                self._audit_con = sqlite3.connect(path, timeout=2.0, check_same_thread=False)
            entry["audit_id"], _ = audit_append(
                self._audit_con, action, entry["user"], origin, role=entry.get("role"),
                run_id=getattr(self.records, "run_id", None), t=entry.get("t"),
                detail={"method": entry["method"], "args": entry["args"], "status": entry["status"],
                        "detail": entry.get("detail", "")})
        except sqlite3.Error as exc:
            logger.error(f"ERROR: opcua: {entry['method']} by {entry['user']} not written to the audit trail of "
                         f"{path}: {exc} (kept in the run's stats)")


class _Model:
    """The address space (docs/OPCUA.md) and what changes it; lives on the server thread's loop."""

    def __init__(self, station: OpcuaStation) -> None:
        self.station = station
        self.server: Any = None
        self.idx = 0
        self.nodes: Dict[str, Tuple[Any, Any]] = {}  # browse name -> (NodeId, VariantType)
        self.state = "idle"  # idle | running, under any alarm
        self.alarm: Optional[Tuple[float, str]] = None
        self.alarms = 0  # unacknowledged alarms
        self.counts = {"PASS": 0, "FAIL": 0, "NONE": 0}

    async def build(self) -> None:
        from asyncua import Server, ua

        st, target = self.station, self.station.target
        logging.getLogger("asyncua.server.server").addFilter(_said_already)
        manager = _UserManager(st)
        self.server = server = Server(user_manager=manager)
        await server.init()
        if st.users and st.users.certificate_users:
            manager.watch_x509(server.iserver)
        server.set_endpoint(target.url)
        server.set_server_name("ds2a inspection station")
        await server.set_application_uri(APPLICATION_URI)
        tokens = ([ua.AnonymousIdentityToken] if target.loopback else []) + (
            [ua.UserNameIdentityToken] if st.users else []) + (
            [ua.X509IdentityToken] if st.users and st.users.certificate_users else [])
        if hasattr(server, "set_identity_tokens"):  # asyncua >= 1.2
            server.set_identity_tokens(tokens)
        else:
            server.set_security_IDs(["Anonymous" if t is ua.AnonymousIdentityToken else "Username" for t in tokens])
        policies = [ua.SecurityPolicyType.NoSecurity]
        if target.cert and target.key:  # with a certificate, a network binding offers only encrypted channels
            await server.load_certificate(target.cert)
            await server.load_private_key(target.key)
            policies = policies[:target.loopback] + [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
        server.set_security_policy(policies, permission_ruleset=_permissions(st))
        self.idx = await server.register_namespace(NAMESPACE)
        await self._add_nodes()

    def _id(self, name: str) -> Any:
        from asyncua import ua

        return ua.NodeId(name, self.idx)

    async def _object(self, parent: Any, path: str, name: str) -> Any:
        from asyncua import ua

        return await parent.add_object(self._id(path), ua.QualifiedName(name, self.idx))

    async def _var(self, parent: Any, path: str, name: str, value: Any, vtype: Any) -> None:
        from asyncua import ua

        node = await parent.add_variable(self._id(path), ua.QualifiedName(name, self.idx), ua.Variant(value, vtype),
                                         vtype)
        self.nodes[name] = (node.nodeid, vtype)

    async def _add_nodes(self) -> None:
        from asyncua import ua

        S, B, U, D, U32 = (ua.VariantType.String, ua.VariantType.Boolean, ua.VariantType.UInt64,
                         ua.VariantType.DateTime, ua.VariantType.UInt32)
        info, now = self.station.info, _utc(time.time())
        root = await self._object(self.server.nodes.objects, "DS2A", "DS2A")
        ident = await self._object(root, "DS2A.Identification", "Identification")
        for name, key in (("SoftwareRevision", "version"), ("Model", "model"), ("ModelSha256", "model_sha256"),
                          ("EngineSha256", "engine_sha256"), ("Backend", "backend")):
            await self._var(ident, f"DS2A.Identification.{name}", name, info.get(key, ""), S)
            self.nodes[f"Identification.{name}"] = self.nodes[name]  # ResultManagement reuses two of the names
        sm = await self._object(root, "DS2A.VisionStateMachine", "VisionStateMachine")
        await self._var(sm, "DS2A.VisionStateMachine.State", "State", "idle", S)
        await self._var(sm, "DS2A.VisionStateMachine.CurrentState", "CurrentState", STATES["idle"], S)
        await self._var(sm, "DS2A.VisionStateMachine.AlarmActive", "AlarmActive", False, B)
        await self._var(sm, "DS2A.VisionStateMachine.AlarmText", "AlarmText", "", S)
        await self._var(sm, "DS2A.VisionStateMachine.AlarmTime", "AlarmTime", now, D)
        await self._var(sm, "DS2A.VisionStateMachine.AlarmsUnacknowledged", "AlarmsUnacknowledged", 0, U32)
        await sm.add_method(self._id("DS2A.VisionStateMachine.AcknowledgeAlarm"),
                            ua.QualifiedName("AcknowledgeAlarm", self.idx), self._acknowledge,
                            [_arg("Comment", ua.ObjectIds.String, "why (kept in the audit)")],
                            [_arg("Message", ua.ObjectIds.String, "what was acknowledged")])
        res = await self._object(root, "DS2A.ResultManagement", "ResultManagement")
        await self._var(res, "DS2A.ResultManagement.ResultSequence", "ResultSequence", 0, U)
        for name, vtype, value in (("ResultId", S, ""), ("PartId", S, ""), ("Verdict", S, ""), ("Level", S, ""),
                                   ("Reasons", S, []), ("CreationTime", D, now), ("FrameCount", U32, 0),
                                   ("RunId", U, 0), ("InternalRecipeId", S, ""), ("RecipeSha256", S, ""),
                                   ("ModelSha256", S, ""), ("EngineSha256", S, ""), ("Result", S, "")):
            await self._var(res, f"DS2A.ResultManagement.{name}", name, value, vtype)
        counters = await self._object(root, "DS2A.Counters", "Counters")
        for name in ("Parts", "PartsPass", "PartsFail", "PartsNone"):
            await self._var(counters, f"DS2A.Counters.{name}", name, 0, U)
        rec = await self._object(root, "DS2A.RecipeManagement", "RecipeManagement")
        names = self.station.recipes.names() if self.station.recipes is not None else [info.get("recipe", "")]
        await self._var(rec, "DS2A.RecipeManagement.RecipeList", "RecipeList", names, S)
        await self._var(rec, "DS2A.RecipeManagement.ActiveRecipe", "ActiveRecipe", info.get("recipe", ""), S)
        await self._var(rec, "DS2A.RecipeManagement.ActiveRecipeSha256", "ActiveRecipeSha256",
                        info.get("recipe_sha256", ""), S)
        await rec.add_method(self._id("DS2A.RecipeManagement.SelectRecipe"), ua.QualifiedName("SelectRecipe", self.idx),
                             self._select_recipe, [_arg("Name", ua.ObjectIds.String, "a name from RecipeList")],
                             [_arg("Message", ua.ObjectIds.String, "what happened")])

    async def _write(self, name: str, value: Any, t: float) -> None:
        from asyncua import ua

        nodeid, vtype = self.nodes[name]
        dv = ua.DataValue(Value=ua.Variant(value, vtype), SourceTimestamp=_utc(t), ServerTimestamp=_utc(time.time()))
        await self.server.write_attribute_value(nodeid, dv)
        self.station._last_change = time.monotonic()

    async def apply(self, kind: str, item: Any) -> None:
        if kind == "result":
            await self._result(item)
        elif kind == "alarm":
            t, text = item
            self.alarm, self.alarms = (t, text), self.alarms + 1
            logger.warning(f"ALARM   opcua: {text}")
            await self._write("AlarmText", text, t)
            await self._write("AlarmTime", _utc(t), t)
            await self._write("AlarmsUnacknowledged", self.alarms, t)
            await self._write("AlarmActive", True, t)
            await self._show_state(t)
        elif kind == "recipe":
            now = time.time()
            for name, key in (("Model", "model"), ("ModelSha256", "model_sha256"), ("EngineSha256", "engine_sha256"),
                              ("Backend", "backend")):
                await self._write(f"Identification.{name}", str(item.get(key, "")), now)
            await self._write("ActiveRecipe", item["recipe"], now)
            await self._write("ActiveRecipeSha256", item["recipe_sha256"], now)
        elif kind == "state" and item != self.state:
            self.state = item
            await self._show_state(time.time())

    async def _show_state(self, t: float) -> None:
        state = "error" if self.alarm is not None else self.state
        await self._write("State", state, t)
        await self._write("CurrentState", STATES[state], t)

    async def _result(self, r: Dict[str, Any]) -> None:
        """One part: every field a value change stamped with the part's time; ResultSequence last, so a
        client that sees a new sequence number can read the fields of that part."""
        t = r["t"]
        verdict = r["verdict"] if r["verdict"] in self.counts else "NONE"
        self.counts[verdict] += 1
        values = {"ResultId": f"run{r['run'] or 0}-{r['seq']}", "PartId": r["part_id"], "Verdict": r["verdict"],
                  "Level": r["level"], "Reasons": list(r["reasons"]), "CreationTime": _utc(t),
                  "FrameCount": r["n_frames"], "RunId": int(r["run"] or 0), "InternalRecipeId": r["recipe"],
                  "RecipeSha256": r["recipe_sha256"], "ModelSha256": r["model_sha256"],
                  "EngineSha256": r["engine_sha256"],
                  "Result": json.dumps({**r, "time": _utc(t).isoformat()}, sort_keys=True),
                  "Parts": sum(self.counts.values()), "PartsPass": self.counts["PASS"],
                  "PartsFail": self.counts["FAIL"], "PartsNone": self.counts["NONE"], "ResultSequence": r["seq"]}
        for name, value in values.items():
            await self._write(name, value, t)
        self.station.published += 1

    # ---- methods (audited) -------------------------------------------------------------------------------
    def _caller(self) -> Tuple[str, Optional[str]]:
        """(user name, role) of the session calling now: set by the permission check of this request."""
        user = _caller.get()
        name = getattr(user, "name", None)
        if name and self.station.users is not None and name in self.station.users.by_name:
            return name, self.station.users.by_name[name].role
        return "anonymous", self.station.anonymous_role

    def _peer(self) -> str:
        """HOST:PORT of the calling client where asyncua tells (asyncua 2 keeps its sessions by token, each
        named by the peer's address; asyncua 1.x does not): '' when unknown."""
        user = _caller.get()
        sessions = getattr(getattr(self.server, "iserver", None), "_external_sessions", None)
        for session in (sessions or {}).values() if isinstance(sessions, dict) else ():
            peer = getattr(session, "name", None)
            if getattr(session, "user", None) is user and isinstance(peer, tuple) and len(peer) >= 2:
                return f"{peer[0]}:{peer[1]}"
        return ""

    def _done(self, method: str, args: List[Any], status: str, detail: str, who: Tuple[str, Optional[str]]) -> None:
        self.station.audited({"t": round(time.time(), 3), "user": who[0], "role": who[1], "method": method,
                              "args": [str(a)[:200] for a in args], "status": status, "detail": detail,
                              "peer": self._peer(), "endpoint": self.station.target.url})

    async def _acknowledge(self, parent: Any, comment: Any = "") -> Any:
        from asyncua import ua

        who = self._caller()
        comment = str(getattr(comment, "Value", comment) or "")
        if not may(who[1] or "", "acknowledge"):
            self._done("AcknowledgeAlarm", [comment], "BadUserAccessDenied", "the role may not acknowledge", who)
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        if self.alarm is None:
            self._done("AcknowledgeAlarm", [comment], "BadInvalidState", "no alarm to acknowledge", who)
            return ua.StatusCode(ua.StatusCodes.BadInvalidState)
        text, n = self.alarm[1], self.alarms
        self.alarm, self.alarms = None, 0
        now = time.time()
        await self._write("AlarmActive", False, now)
        await self._write("AlarmsUnacknowledged", 0, now)
        await self._show_state(now)
        msg = f"acknowledged {n} alarm(s), the last: {text}"
        self._done("AcknowledgeAlarm", [comment], "Good", msg, who)
        return [ua.Variant(msg, ua.VariantType.String)]

    async def _select_recipe(self, parent: Any, name: Any = "") -> Any:
        from asyncua import ua

        who = self._caller()
        name = str(getattr(name, "Value", name) or "")
        active = self.station.info.get("recipe", "")
        if not may(who[1] or "", "select_recipe"):
            self._done("SelectRecipe", [name], "BadUserAccessDenied", "the role may not select recipes", who)
            return ua.StatusCode(ua.StatusCodes.BadUserAccessDenied)
        book = self.station.recipes
        if book is not None:  # a real changeover: queued, applied between parts once the model is ready
            peer = self._peer()
            try:
                msg = book.request(name, who[0], who[1] or "", f"opc.tcp {peer}" if peer else
                                   f"opc.tcp session on {self.station.target.url}")
            except UserError as exc:
                self._done("SelectRecipe", [name], "BadNotFound", str(exc), who)
                return ua.StatusCode(ua.StatusCodes.BadNotFound)
            self._done("SelectRecipe", [name], "Good", msg, who)
            return [ua.Variant(msg, ua.VariantType.String)]
        if name != active:
            self._done("SelectRecipe", [name], "BadNotFound",
                       f"not in RecipeList (only the rules file in force, {active}, until recipes exist)", who)
            return ua.StatusCode(ua.StatusCodes.BadNotFound)
        msg = f"{active} is already the active recipe"
        self._done("SelectRecipe", [name], "Good", msg, who)
        return [ua.Variant(msg, ua.VariantType.String)]


def _said_already(record: logging.LogRecord) -> bool:
    """asyncua's plaintext-password warning: OpcuaStation.start says it once, with the fix (a certificate)."""
    return "password may get transferred in plaintext" not in record.getMessage()


def _arg(name: str, type_id: int, text: str) -> Any:
    from asyncua import ua

    arg = ua.Argument()
    arg.Name, arg.DataType, arg.ValueRank = name, ua.NodeId(type_id), -1
    arg.Description = ua.LocalizedText(text)
    return arg


def _asyncua_users() -> Tuple[Any, Any, Any]:
    """(PermissionRuleset, User, UserRole): asyncua 2 keeps User in crypto.permission_rules, 1.x in server.users."""
    from asyncua.crypto.permission_rules import PermissionRuleset

    try:
        from asyncua.crypto.permission_rules import User, UserRole
    except ImportError:  # asyncua 1.x (the newest on Python 3.8)
        from asyncua.server.users import User, UserRole
    return PermissionRuleset, User, UserRole


class _UserManager:
    """asyncua's user manager: names and passwords from the users file; anonymous where the binding allows it;
    a client certificate listed in the users file, only from an X509 user token whose signature asyncua
    verified (`watch_x509`: asyncua passes the channel's certificate for the other tokens too, which must
    not log anyone in).

    At most CHECKS_PER_S password checks a second (each costs scrypt's memory and tens of ms of CPU):
    a flood of logins from the network cannot take the CPU from inspection; beyond it, refused unchecked.
    """

    def __init__(self, station: OpcuaStation) -> None:
        self.station = station
        self.budget = LoginBudget(CHECKS_PER_S)
        self.flooded = 0  # logins refused unchecked
        self.clock = time.monotonic
        self._x509: Optional[bytes] = None  # the certificate of the X509 user token just verified

    def watch_x509(self, iserver: Any) -> None:
        """Note each X509 user token asyncua verifies; `get_user` runs right after, in the same call."""
        verify = iserver.verify_x509_token

        def verified(isession: Any, token: Any, signature: Any) -> bytes:
            self._x509 = None
            der = verify(isession, token, signature)  # raises on a bad signature: the session is refused
            self._x509 = bytes(der)
            return der

        iserver.verify_x509_token = verified

    def _may_check(self) -> bool:
        return self.budget.take(self.clock())

    def get_user(self, iserver: Any, username: Optional[str] = None, password: Optional[str] = None,
                 certificate: Any = None) -> Any:
        _, User, UserRole = _asyncua_users()
        x509, self._x509 = self._x509, None
        if x509 is not None and username is None:  # an X509 user token, its signature verified (key possession)
            known = self.station.users.check_certificate(x509) if self.station.users else None
            if known is None:
                logger.warning("warning: opcua: refused a session with a client certificate no user has")
                return None
            return User(role=UserRole.User, name=known.name)
        if username is None:  # an anonymous token
            return User(role=UserRole.Anonymous, name=None) if self.station.target.loopback else None
        name = str(username)[:64]
        if not self._may_check():
            self.flooded += 1
            if self.flooded == 1 or self.flooded % 100 == 0:
                logger.warning(f"warning: opcua: more than {CHECKS_PER_S} logins a second; refused '{name}' "
                               f"unchecked ({self.flooded} so far)")
            return None
        user = self.station.users.check(username, password) if self.station.users and username else None
        if user is None:
            logger.warning(f"warning: opcua: refused a session for user '{name}' (unknown user or wrong password)")
            return None
        return User(role=UserRole.User, name=user.name)


def _permissions(station: OpcuaStation) -> Any:
    """Per request: remember the caller for the method handlers; refuse address-space edits to everyone and
    writes and calls to anonymous sessions that may not act (any non-loopback binding, or users configured)."""
    from asyncua import ua

    PermissionRuleset, _, UserRole = _asyncua_users()
    ids = ua.ObjectIds
    acting = {ua.NodeId(ids.WriteRequest_Encoding_DefaultBinary), ua.NodeId(ids.CallRequest_Encoding_DefaultBinary)}
    editing = {ua.NodeId(getattr(ids, n)) for n in (
        "AddNodesRequest_Encoding_DefaultBinary", "DeleteNodesRequest_Encoding_DefaultBinary",
        "AddReferencesRequest_Encoding_DefaultBinary", "DeleteReferencesRequest_Encoding_DefaultBinary",
        "HistoryUpdateRequest_Encoding_DefaultBinary", "RegisterServerRequest_Encoding_DefaultBinary",
        "RegisterServer2Request_Encoding_DefaultBinary")}

    class Permissions(PermissionRuleset):  # type: ignore[misc, valid-type]
        def check_validity(self, user: Any, action_type_id: Any, body: Any) -> bool:
            _caller.set(user)  # same task as the method handler that follows
            if action_type_id in editing:
                return False
            anonymous = user is None or user.role == UserRole.Anonymous
            if anonymous and action_type_id in acting:
                return station.target.loopback and station.anonymous_role is not None
            return True

    return Permissions()
