"""The trigger handshake over Modbus TCP (pymodbus): the PLC is the server, the station polls it.

One part at a time, in the usual order (register map and codes in deploy/README.md):
  1. the PLC writes the part serial (holding registers `serial`, high word first), with --recipes the recipe
     number (register `recipe`: 1 = the first of the sorted recipe names, 0 = keep; docs/RECIPES.md), and
     sets the trigger coil;
  2. the station sees the trigger (polled every `poll_ms`), reads the serial and sets `busy`;
  3. with the answer it writes `result` (1 PASS, 2 FAIL, 3 NONE), `reason` (0, or why NONE), `seq`
     (the trigger's number, modulo 65536) and `echo` (the serial it judged), then clears busy, sets `done`;
  4. the PLC reads the result and clears the trigger coil;
  5. the station sees the trigger cleared and clears `done`: ready for the next part.
All Modbus traffic runs on one thread; the loop only hands answers over. A PLC that cannot be
reached is retried (the state survives a reconnect), logged once per outage and counted.
"""
from __future__ import annotations

import inspect
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from ..errors import UserError
from .handshake import CAUSES, RESULT_CODES, Answer, TriggerLedger
from .urls import TriggerTarget

logger = logging.getLogger(__name__)


def serial_text(words: List[int]) -> str:
    """The part id of a serial held in 16-bit registers, high word first: its decimal number."""
    value = 0
    for w in words:
        value = (value << 16) | (int(w) & 0xFFFF)
    return str(value)


def contiguous(values: Dict[int, int]) -> List[Tuple[int, List[int]]]:
    """{address: value} as (start, values) runs of neighbouring addresses: one write per run."""
    runs: List[Tuple[int, List[int]]] = []
    for addr in sorted(values):
        if runs and runs[-1][0] + len(runs[-1][1]) == addr:
            runs[-1][1].append(values[addr])
        else:
            runs.append((addr, [values[addr]]))
    return runs


class ModbusTrigger:
    """Polls the trigger coil and writes the answers, on its own thread."""

    def __init__(self, target: TriggerTarget, timeout_s: float = 1.0) -> None:
        try:
            from pymodbus.client import ModbusTcpClient
        except ImportError:
            raise UserError("--trigger modbus:// needs pymodbus: pip install 'ds2a-edge[notify]' (or pip install "
                            "pymodbus)") from None
        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)  # outages are reported here, once each
        self.target = target
        self.client = ModbusTcpClient(target.host, port=target.port, timeout=timeout_s, retries=0)
        params = inspect.signature(self.client.write_coil).parameters  # pymodbus renamed slave= to device_id=
        self._unit = {("device_id" if "device_id" in params else "slave"): target.unit}
        self.ledger: Optional[TriggerLedger] = None
        self._cond = threading.Condition()
        self._answers: Dict[int, Answer] = {}
        self._closing = False
        self._stop_now = False
        self.state = "idle"  # idle -> busy -> done -> idle
        self._current: Any = None
        self.recipe_by_number: Any = None  # with --recipes: number -> recipe name (None for 0, keep)
        self.sent = 0
        self.outages = 0
        self.last_error = ""
        self._down_since = 0.0
        self._thread = threading.Thread(target=self._run, name=f"trigger {target.label}", daemon=True)

    def start(self, ledger: TriggerLedger) -> None:
        self.ledger = ledger
        self._thread.start()

    def deliver(self, answer: Answer) -> None:
        with self._cond:
            self._answers[answer.trigger.seq] = answer
            self._cond.notify_all()

    # -- Modbus calls ---------------------------------------------------------------------
    def _ok(self, reply: Any, what: str) -> Any:
        if reply is None or reply.isError():
            raise ConnectionError(f"PLC refused {what}: {reply}")
        return reply

    def _coil(self, name: str, value: bool) -> None:
        self._ok(self.client.write_coil(self.target.coils[name], value, **self._unit), f"{name} coil")

    def _trigger_set(self) -> bool:
        addr = self.target.coils["trigger"]
        return bool(self._ok(self.client.read_coils(addr, count=1, **self._unit), "reading the trigger coil").bits[0])

    def _write_answer(self, a: Answer) -> None:
        """Result registers first (in contiguous runs), then busy off and done on: done means the result is there."""
        r, t = self.target.registers, a.trigger
        echo = list(t.serial) if t.serial else [0] * self.target.serial_words
        values = {r["result"]: RESULT_CODES[a.verdict], r["reason"]: CAUSES[a.cause], r["seq"]: t.seq % 65536}
        values.update({r["echo"] + i: int(w) for i, w in enumerate(echo)})
        for start, run in contiguous(values):
            self._ok(self.client.write_registers(start, run, **self._unit), f"result registers at {start}")
        busy, done = self.target.coils["busy"], self.target.coils["done"]
        if done == busy + 1:
            self._ok(self.client.write_coils(busy, [False, True], **self._unit), "busy/done coils")
        else:
            self._coil("busy", False)
            self._coil("done", True)

    # -- the handshake --------------------------------------------------------------------
    def _step(self) -> None:
        """One turn of the state machine; raises on a Modbus failure (the caller reconnects)."""
        t = self.target
        if self.state == "idle":
            if not self._trigger_set():
                self._sleep()
                return
            words = list(self._ok(self.client.read_holding_registers(t.registers["serial"], count=t.serial_words,
                                                                     **self._unit), "reading the serial").registers)
            recipe = None
            if self.recipe_by_number is not None:  # read with the serial: the recipe of this part
                number = self._ok(self.client.read_holding_registers(t.registers["recipe"], count=1, **self._unit),
                                  "reading the recipe number").registers[0]
                recipe = self.recipe_by_number(int(number))
            self._coil("busy", True)
            assert self.ledger is not None
            self._current = self.ledger.add(serial_text(words), recipe, serial=words)
            self.state = "busy"
        elif self.state == "busy":
            with self._cond:
                answer = self._answers.pop(self._current.seq, None)
                if answer is None:
                    self._cond.wait(t.poll_ms / 1000.0)
                    return
            try:
                self._write_answer(answer)
            except BaseException:
                with self._cond:  # written on the next try, after the reconnect
                    self._answers[answer.trigger.seq] = answer
                raise
            self.sent += 1
            self.state = "done"
        elif self.state == "done":
            if self._trigger_set():
                self._sleep()
                return
            self._coil("done", False)
            self.state = "idle"

    def _sleep(self) -> None:
        """One poll period (while closing too: the last handshake is finished at the PLC's pace)."""
        with self._cond:
            self._cond.wait(self.target.poll_ms / 1000.0)

    def _run(self) -> None:
        backoff = 0.2
        fresh = True
        while not self._stop_now:
            if self._closing and self.state == "idle":
                break  # nothing left to answer, and the last handshake is complete
            try:
                if not self.client.connected and not self.client.connect():
                    raise ConnectionError(f"cannot connect to the PLC {self.target.host}:{self.target.port}")
                if fresh:  # a clean handshake: nothing busy or done from an earlier run
                    self._coil("busy", False)
                    self._coil("done", False)
                    fresh = False
                self._step()
                if self._down_since:
                    logger.info(f"trigger {self.target.label}: PLC reachable again after "
                                f"{time.monotonic() - self._down_since:.1f} s")
                    self._down_since = 0.0
                backoff = 0.2
            except Exception as exc:  # noqa: BLE001 - ConnectionException, OSError, refusals: retried
                self.client.close()
                self.last_error = str(exc) or type(exc).__name__
                if not self._down_since:
                    self._down_since = time.monotonic()
                    self.outages += 1
                    logger.warning(f"warning: trigger {self.target.label}: {self.last_error}; retrying (triggers "
                                   "cannot be seen meanwhile)")
                with self._cond:
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, 2.0)

    def close(self, patience_s: float = 2.0) -> Dict[str, Any]:
        """Write the answer in flight (up to `patience_s`), then stop; returns the delivery counts."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=patience_s)
            self._stop_now = True
            self._thread.join(timeout=5.0)
        self.client.close()
        undelivered = 1 if self.state == "busy" else 0  # an answer the PLC never got
        return {"sent": self.sent, "undelivered": undelivered, "outages": self.outages,
                **({"last_error": self.last_error} if self.last_error else {})}
