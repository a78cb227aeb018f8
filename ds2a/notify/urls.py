"""`--notify` URLs, checked at start: mqtt://[USER:PASS@]HOST[:1883]/TOPIC and modbus://HOST[:502]?unit=1&coil=12."""
from __future__ import annotations

import socket
import urllib.parse
from dataclasses import dataclass, field
from typing import Dict, Optional

from ..errors import UserError

EXAMPLES = "mqtt://broker:1883/line1/station3 or modbus://plc:502?unit=1&coil=12"
OPTIONS = {
    "mqtt": {"frames": "also send each FAIL frame (0/1)", "max_age": "seconds a verdict may wait (default 60)",
             "client_id": "MQTT client id (default ds2a-TOPIC)"},
    "modbus": {"unit": "device id 0..247 (default 1)", "coil": "coil pulsed per FAIL",
               "register": "holding register set to the FAIL count per FAIL", "pulse_ms": "coil pulse (default 200)",
               "frames": "per FAIL frame instead of per FAIL part (0/1)",
               "max_age": "seconds a FAIL may wait before it is too late to reject (default 2)"},
}


@dataclass
class NotifyTarget:
    """One parsed --notify URL."""

    scheme: str
    host: str
    port: int
    topic: str = ""  # mqtt
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    client_id: str = ""
    unit: int = 1  # modbus
    coil: Optional[int] = None
    register: Optional[int] = None
    pulse_ms: int = 200
    frames: bool = False
    max_age_s: float = 60.0

    @property
    def label(self) -> str:
        """The URL without its password, for logs and the run's stats."""
        if self.scheme == "mqtt":
            return f"mqtt://{self.host}:{self.port}/{self.topic}"
        what = f"coil={self.coil}" if self.coil is not None else f"register={self.register}"
        return f"modbus://{self.host}:{self.port}?unit={self.unit}&{what}"


def _int(url: str, key: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise UserError(f"--notify {url}: {key}={text} must be a whole number {lo}..{hi}")
    return value


def _flag(url: str, key: str, text: str) -> bool:
    if text not in ("0", "1", "true", "false", "yes", "no"):
        raise UserError(f"--notify {url}: {key}={text}: give 0 or 1")
    return text in ("1", "true", "yes")


def parse_notify_url(url: str, resolve: bool = True) -> NotifyTarget:
    """A NotifyTarget, or UserError naming what is wrong (scheme, host, port, topic, option)."""
    shown = str(url)
    parts = urllib.parse.urlsplit(shown.strip())
    scheme = parts.scheme.lower()
    if scheme not in OPTIONS:
        raise UserError(f"--notify {shown}: unknown scheme '{parts.scheme}'; use {EXAMPLES}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise UserError(f"--notify {shown}: the port must be a number 1..65535") from None
    if not host:
        raise UserError(f"--notify {shown}: no host; use {EXAMPLES}")
    query: Dict[str, str] = {}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        if key not in OPTIONS[scheme]:
            known = ", ".join(f"{k} ({v})" for k, v in OPTIONS[scheme].items())
            raise UserError(f"--notify {shown}: unknown option '{key}'; {scheme} takes {known}")
        query[key] = values[-1]
    t = NotifyTarget(scheme, host, port or (1883 if scheme == "mqtt" else 502))
    if port == 0:
        raise UserError(f"--notify {shown}: the port must be a number 1..65535")
    t.frames = _flag(shown, "frames", query["frames"]) if "frames" in query else False
    if "max_age" in query:
        try:
            t.max_age_s = float(query["max_age"])
        except ValueError:
            t.max_age_s = -1.0
        if not 0.05 <= t.max_age_s <= 86400:
            raise UserError(f"--notify {shown}: max_age={query['max_age']} must be seconds, 0.05..86400")
    if scheme == "mqtt":
        t.topic = parts.path.strip("/")
        if not t.topic or "+" in t.topic or "#" in shown or "//" in t.topic:
            raise UserError(f"--notify {shown}: give a topic without wildcards, such as mqtt://{host}:1883/line1/station3")
        t.username = urllib.parse.unquote(parts.username) if parts.username else None
        t.password = urllib.parse.unquote(parts.password) if parts.password else None
        t.client_id = query.get("client_id") or "ds2a-" + t.topic.replace("/", "-")
    else:
        if parts.path not in ("", "/"):
            raise UserError(f"--notify {shown}: a modbus URL has no path; use modbus://{host}:{t.port}?unit=1&coil=12")
        t.max_age_s = t.max_age_s if "max_age" in query else 2.0
        t.unit = _int(shown, "unit", query.get("unit", "1"), 0, 247)
        if ("coil" in query) == ("register" in query):
            raise UserError(f"--notify {shown}: give exactly one of coil=N (pulsed per FAIL) or register=N")
        if "coil" in query:
            t.coil = _int(shown, "coil", query["coil"], 0, 65535)
        else:
            t.register = _int(shown, "register", query["register"], 0, 65535)
        t.pulse_ms = _int(shown, "pulse_ms", query.get("pulse_ms", "200"), 10, 10000)
    if resolve:
        try:
            socket.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UserError(f"--notify {t.label}: cannot resolve host '{t.host}' ({exc}); check the name or "
                            "give an IP address") from None
    return t


# --- `--trigger` URLs: the line says which part is in view, the station answers (ds2a/notify/handshake.py) ---

TRIGGER_EXAMPLES = "mqtt://broker:1883/line1/station3 or modbus://plc:502?unit=1"
# Modbus register map (0-based addresses; deploy/README.md "Trigger and result handshake"): the PLC writes the
# trigger coil and the serial, the station writes busy/done and the result registers
MODBUS_MAP = {"trigger": 0, "busy": 1, "done": 2,  # coils
              "serial": 0, "result": 10, "reason": 11, "seq": 12, "echo": 13,  # holding registers
              "recipe": 4}  # with --recipes: the PLC writes the recipe number of the part (docs/RECIPES.md)
TRIGGER_OPTIONS = {
    "mqtt": {"client_id": "MQTT client id (default ds2a-trigger-PREFIX)"},
    "modbus": {"unit": "device id 0..247 (default 1)", "trigger": "coil the PLC sets when a part is in view (0)",
               "busy": "coil the station sets while judging (1)", "done": "coil the station sets with the result (2)",
               "serial": "first holding register of the part serial (0)", "serial_words": "1, 2 or 4 (default 2)",
               "result": "register for the result code (10)", "reason": "register for the reason code (11)",
               "seq": "register for the sequence counter (12)", "echo": "first register of the serial echo (13)",
               "recipe": "register for the recipe number, read with --recipes (4)",
               "poll_ms": "trigger poll period, 1..1000 (default 10)"},
}


@dataclass
class TriggerTarget:
    """One parsed --trigger URL (addresses are 0-based Modbus coil/holding-register numbers)."""

    scheme: str
    host: str
    port: int
    prefix: str = ""  # mqtt: PREFIX/trigger in, PREFIX/result out, PREFIX/status retained
    username: Optional[str] = None
    password: Optional[str] = field(default=None, repr=False)
    client_id: str = ""
    unit: int = 1
    coils: Dict[str, int] = field(default_factory=dict)  # trigger, busy, done
    registers: Dict[str, int] = field(default_factory=dict)  # serial, result, reason, seq, echo
    serial_words: int = 2
    poll_ms: int = 10

    @property
    def label(self) -> str:
        """The URL without its password, for logs and the run's stats."""
        if self.scheme == "mqtt":
            return f"mqtt://{self.host}:{self.port}/{self.prefix}"
        return f"modbus://{self.host}:{self.port}?unit={self.unit}"


def parse_trigger_url(url: str, resolve: bool = True) -> TriggerTarget:
    """A TriggerTarget, or UserError naming what is wrong (scheme, host, port, prefix, option, overlap)."""
    shown = str(url)
    parts = urllib.parse.urlsplit(shown.strip())
    scheme = parts.scheme.lower()
    if scheme not in TRIGGER_OPTIONS:
        raise UserError(f"--trigger {shown}: unknown scheme '{parts.scheme}'; use {TRIGGER_EXAMPLES}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise UserError(f"--trigger {shown}: the port must be a number 1..65535") from None
    if not host:
        raise UserError(f"--trigger {shown}: no host; use {TRIGGER_EXAMPLES}")
    if port == 0:
        raise UserError(f"--trigger {shown}: the port must be a number 1..65535")
    query: Dict[str, str] = {}
    for key, values in urllib.parse.parse_qs(parts.query, keep_blank_values=True).items():
        if key not in TRIGGER_OPTIONS[scheme]:
            known = ", ".join(f"{k} ({v})" for k, v in TRIGGER_OPTIONS[scheme].items())
            raise UserError(f"--trigger {shown}: unknown option '{key}'; {scheme} takes {known}")
        query[key] = values[-1]
    t = TriggerTarget(scheme, host, port or (1883 if scheme == "mqtt" else 502))
    where = f"--trigger {shown}"
    if scheme == "mqtt":
        t.prefix = parts.path.strip("/")
        if not t.prefix or "+" in t.prefix or "#" in shown or "//" in t.prefix:
            raise UserError(f"{where}: give a topic prefix without wildcards, such as mqtt://{host}:1883/line1/station3")
        t.username = urllib.parse.unquote(parts.username) if parts.username else None
        t.password = urllib.parse.unquote(parts.password) if parts.password else None
        t.client_id = query.get("client_id") or "ds2a-trigger-" + t.prefix.replace("/", "-")
    else:
        if parts.path not in ("", "/"):
            raise UserError(f"{where}: a modbus URL has no path; use modbus://{host}:{t.port}?unit=1")
        t.unit = _tint(where, "unit", query.get("unit", "1"), 0, 247)
        t.serial_words = _tint(where, "serial_words", query.get("serial_words", "2"), 1, 4)
        if t.serial_words == 3:
            raise UserError(f"{where}: serial_words=3: give 1 (16-bit), 2 (32-bit) or 4 (64-bit serials)")
        t.poll_ms = _tint(where, "poll_ms", query.get("poll_ms", "10"), 1, 1000)
        t.coils = {k: _tint(where, k, query.get(k, str(MODBUS_MAP[k])), 0, 65535) for k in ("trigger", "busy", "done")}
        t.registers = {k: _tint(where, k, query.get(k, str(MODBUS_MAP[k])), 0, 65535)
                       for k in ("serial", "result", "reason", "seq", "echo", "recipe")}
        _no_overlap(where, t, "recipe" in query)  # the recipe register is checked here when given, else by --recipes
    if resolve:
        try:
            socket.getaddrinfo(t.host, t.port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise UserError(f"--trigger {t.label}: cannot resolve host '{t.host}' ({exc}); check the name or "
                            "give an IP address") from None
    return t


def _no_overlap(where: str, t: TriggerTarget, recipe: bool = True) -> None:
    """Two roles on one coil or register would make the handshake read its own writes (`recipe` False: the
    recipe register, read only with --recipes, is left out)."""
    seen: Dict[int, str] = {}
    for name, addr in t.coils.items():
        if addr in seen:
            raise UserError(f"{where}: coils {seen[addr]} and {name} are both {addr}; give each its own coil")
        seen[addr] = name
    seen = {}
    spans = {"serial": t.serial_words, "echo": t.serial_words}
    for name, start in t.registers.items():
        if name == "recipe" and not recipe:
            continue
        for addr in range(start, start + spans.get(name, 1)):
            if addr > 65535:
                raise UserError(f"{where}: {name}={start} with serial_words={t.serial_words} runs past register 65535")
            if addr in seen:
                raise UserError(f"{where}: registers {seen[addr]} and {name} overlap at {addr}; move one of them "
                                f"(defaults: serial 0, result 10, reason 11, seq 12, echo 13, recipe 4)")
            seen[addr] = name


def _tint(where: str, key: str, text: str, lo: int, hi: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise UserError(f"{where}: {key}={text} must be a whole number {lo}..{hi}")
    return value
