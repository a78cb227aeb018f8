"""The line's reject signal: each part verdict sent to MQTT or a Modbus TCP PLC as it is decided.

`open_notifier(url)` checks the URL at start (a typo fails before the camera opens); sending
goes through a bounded outbox on its own thread, so a broker or PLC that is down never slows
inspection (ds2a/notify/outbox.py).
"""
from __future__ import annotations

from .notifier import Notifier, open_notifier
from .urls import NotifyTarget, parse_notify_url

__all__ = ["Notifier", "NotifyTarget", "open_notifier", "parse_notify_url"]
