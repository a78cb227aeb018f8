"""MQTT transport (paho-mqtt): QoS 1 per message, a retained station status, a last will.

Topics under the URL's path BASE: BASE/part (one JSON message per part verdict), BASE/frame
(FAIL frames, with ?frames=1) and BASE/status (retained: "online" while connected; the
broker publishes the last will "offline" if the station vanishes without saying goodbye).
Delivery is at least once: every message carries an `id` for consumers that de-duplicate.
"""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Dict

from ..errors import UserError
from .outbox import NotDelivered
from .urls import NotifyTarget


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError:
        raise UserError("--notify mqtt:// needs paho-mqtt: pip install 'ds2a-edge[notify]' (or pip install "
                        "paho-mqtt)") from None
    return mqtt


class MqttTransport:
    """Connects in the background (a broker that is down at start is retried, not fatal)."""

    def __init__(self, target: NotifyTarget, timeout_s: float = 2.0, keepalive_s: int = 10) -> None:
        mqtt = _paho()
        self.target, self.timeout_s = target, timeout_s
        self.status_topic = f"{target.topic}/status"
        self._connected = threading.Event()
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=target.client_id)
        else:  # pragma: no cover - paho-mqtt 1.x
            self.client = mqtt.Client(client_id=target.client_id)
        if target.username:
            self.client.username_pw_set(target.username, target.password)
        self.client.will_set(self.status_topic, self._status("offline", "connection lost"), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *a, **k: self._connected.clear()
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.connect_async(target.host, target.port, keepalive=keepalive_s)
        self.client.loop_start()

    def _status(self, state: str, why: str = "") -> str:
        return json.dumps({"state": state, "t": round(time.time(), 3), "client_id": self.target.client_id,
                           **({"reason": why} if why else {})})

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, *_rest: Any) -> None:
        if getattr(reason, "is_failure", reason != 0):
            return
        client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        self._connected.set()

    def send(self, msg: Dict[str, Any]) -> None:
        if not self._connected.is_set():
            raise NotDelivered(f"not connected to the broker {self.target.host}:{self.target.port}")
        topic = f"{self.target.topic}/{msg.get('type', 'part')}"
        info = self.client.publish(topic, json.dumps(msg), qos=1)
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise NotDelivered(f"publish to {topic} failed: {exc}") from None
        if not info.is_published():
            raise NotDelivered(f"no acknowledgement from the broker within {self.timeout_s:g} s")

    def close(self) -> None:
        """Say goodbye (retained status "offline", stopped), then disconnect: no last will is sent."""
        try:
            if self._connected.is_set():
                self.client.publish(self.status_topic, self._status("offline", "stopped"), qos=1,
                                    retain=True).wait_for_publish(self.timeout_s)
            self.client.disconnect()
        except (RuntimeError, ValueError, OSError):
            pass
        self.client.loop_stop()
