"""Modbus TCP transport (pymodbus): per FAIL, pulse a coil or set a holding register to the FAIL count.

A register that counts FAILs (1, 2, 3, ... modulo 65536) changes on every FAIL, so a PLC that
polls it never merges two rejects into one edge, as it could with a fixed value.
"""
from __future__ import annotations

import inspect
import logging
import time
from typing import Any, Dict

from ..errors import UserError
from .outbox import NotDelivered
from .urls import NotifyTarget


class ModbusTransport:
    """One TCP connection, reopened on the next send after a failure."""

    def __init__(self, target: NotifyTarget, timeout_s: float = 1.0) -> None:
        try:
            from pymodbus.client import ModbusTcpClient
        except ImportError:
            raise UserError("--notify modbus:// needs pymodbus: pip install 'ds2a-edge[notify]' (or pip install "
                            "pymodbus)") from None
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # failures are reported by the outbox, once
        self.target = target
        self.client = ModbusTcpClient(target.host, port=target.port, timeout=timeout_s, retries=0)
        params = inspect.signature(self.client.write_coil).parameters  # pymodbus renamed slave= to device_id=
        self._unit = {("device_id" if "device_id" in params else "slave"): target.unit}
        self.fails = 0

    def _check(self, reply: Any, what: str) -> None:
        if reply is None or reply.isError():
            raise NotDelivered(f"PLC refused {what}: {reply}")

    def send(self, msg: Dict[str, Any]) -> None:
        t = self.target
        try:
            if not self.client.connected and not self.client.connect():
                raise NotDelivered(f"cannot connect to the PLC {t.host}:{t.port}")
            if t.coil is not None:
                self._check(self.client.write_coil(t.coil, True, **self._unit), f"coil {t.coil} on")
                time.sleep(t.pulse_ms / 1000.0)
                self._check(self.client.write_coil(t.coil, False, **self._unit), f"coil {t.coil} off")
            else:
                value = (self.fails + 1) % 65536
                self._check(self.client.write_register(t.register, value, **self._unit), f"register {t.register}")
                self.fails += 1
        except NotDelivered:
            self.client.close()
            raise
        except Exception as exc:  # noqa: BLE001 - pymodbus raises ConnectionException, OSError, ...
            self.client.close()
            raise NotDelivered(f"{t.host}:{t.port}: {exc}") from None

    def close(self) -> None:
        self.client.close()
