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
