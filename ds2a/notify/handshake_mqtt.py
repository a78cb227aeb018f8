"""The trigger handshake over MQTT (paho-mqtt): PREFIX/trigger in, PREFIX/result out, PREFIX/status retained.

In: one message per part on PREFIX/trigger, a JSON object {"part_id": "A123", "recipe": "..."} or the
part id as plain text (ds2a/notify/handshake.py parse_payload). Out: exactly one JSON result per
trigger on PREFIX/result at QoS 1 (Answer.message: seq, part_id, verdict PASS/FAIL/NONE, reasons,
cause, recipe, run, latency_ms), through the same outbox as `--notify` (ds2a/notify/outbox.py), so a
broker that is down never stalls inspection. PREFIX/status is retained: "online" once subscribed,
the last will "offline" when the station vanishes. A trigger is taken only once the subscription
is acknowledged, so the status says when the line may start sending.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any, Dict

from .handshake import Answer, TriggerLedger, parse_payload
from .mqtt import _paho
from .outbox import NotDelivered, Outbox
from .urls import TriggerTarget

logger = logging.getLogger(__name__)


class MqttTrigger:
    """Subscribes to PREFIX/trigger (QoS 1), publishes results and the station status."""

    def __init__(self, target: TriggerTarget, line: Any, timeout_s: float = 2.0) -> None:
        self.mqtt = _paho()
        self.target, self.line, self.timeout_s = target, line, timeout_s
        self.topics = {k: f"{target.prefix}/{k}" for k in ("trigger", "result", "status")}
        self.ledger: Any = None
        self.outbox = Outbox(self._send, f"trigger {target.label}", capacity=10000, max_age_s=60.0)
        self._subscribed = threading.Event()
        self.client: Any = None
        self._warn: Any = None
        self.recipe_by_number: Any = None  # unused: MQTT names the recipe in the payload

    def start(self, ledger: TriggerLedger) -> None:
        mqtt, t = self.mqtt, self.target
        self.ledger = ledger
        if hasattr(mqtt, "CallbackAPIVersion"):  # paho-mqtt 2.x
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=t.client_id)
        else:  # pragma: no cover - paho-mqtt 1.x
            self.client = mqtt.Client(client_id=t.client_id)
        if t.username:
            self.client.username_pw_set(t.username, t.password)
        self.client.will_set(self.topics["status"], self._status("offline", "connection lost"), qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a, **k: self._subscribed.clear()
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.connect_async(t.host, t.port, keepalive=10)
        self.client.loop_start()
        self._warn = threading.Timer(5.0, self._not_yet)
        self._warn.daemon = True
        self._warn.start()

    def _not_yet(self) -> None:
        if not self._subscribed.is_set():
            logger.warning(f"warning: trigger {self.target.label}: not subscribed to {self.topics['trigger']} after 5 s "
                           "(broker unreachable?); no trigger can arrive until it is, retrying")

    def _status(self, state: str, why: str = "") -> str:
        return json.dumps({"state": state, "t": round(time.time(), 3), "client_id": self.target.client_id,
                           **({"reason": why} if why else {})})

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, *_rest: Any) -> None:
        if not getattr(reason, "is_failure", reason != 0):
            client.subscribe(self.topics["trigger"], qos=1)

    def _on_subscribe(self, client: Any, *_rest: Any) -> None:
        client.publish(self.topics["status"], self._status("online"), qos=1, retain=True)
        self._subscribed.set()

    def _on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        """Runs on paho's network thread: parse and hand to the ledger, nothing slower."""
        try:
            part_id, recipe = parse_payload(msg.payload)
        except ValueError as exc:
            self.ledger.add(None, bad=str(exc))
            return
        self.ledger.add(part_id, recipe)

    def deliver(self, answer: Answer) -> None:
        self.outbox.put(answer.message(self.line.run_id))

    def _send(self, msg: Dict[str, Any]) -> None:
        if self.client is None or not self.client.is_connected():
            raise NotDelivered(f"not connected to the broker {self.target.host}:{self.target.port}")
        info = self.client.publish(self.topics["result"], json.dumps(msg), qos=1)
        try:
            info.wait_for_publish(self.timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise NotDelivered(f"publish to {self.topics['result']} failed: {exc}") from None
        if not info.is_published():
            raise NotDelivered(f"no acknowledgement from the broker within {self.timeout_s:g} s")

    def wait_ready(self, timeout_s: float) -> bool:
        """True once the subscription is acknowledged (tests and the benchmark wait for it)."""
        return self._subscribed.wait(timeout_s)

    def close(self, patience_s: float = 2.0) -> Dict[str, Any]:
        """Deliver the last answers (up to `patience_s`), say "offline" (retained), disconnect."""
        if self._warn is not None:
            self._warn.cancel()
        stats = self.outbox.close(patience_s)
        if self.client is not None:
            try:
                self.client.unsubscribe(self.topics["trigger"])
                if self.client.is_connected():
                    self.client.publish(self.topics["status"], self._status("offline", "stopped"), qos=1,
                                        retain=True).wait_for_publish(self.timeout_s)
                self.client.disconnect()
            except (RuntimeError, ValueError, OSError):
                pass
            self.client.loop_stop()
        return {"sent": stats["sent"], "undelivered": stats["undelivered"],
                **({"last_error": stats["last_error"]} if "last_error" in stats else {})}
