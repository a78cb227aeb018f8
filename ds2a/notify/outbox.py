"""A bounded outbox with retry: the loop hands a message over and never waits for the network.

One thread sends, oldest first. A failed send is retried with backoff (0.2 s doubling to
`max_retry_s`) until it succeeds or the message is older than `max_age_s` (a reject signal
that arrives after the part has left the ejector is worse than none). When the outbox is
full the oldest message is given up. Every message given up is counted, with its id, so
the run's records say which verdicts the line never got.
"""
from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Tuple

logger = logging.getLogger(__name__)


class NotDelivered(Exception):
    """The transport could not deliver now (not connected, no acknowledgement); retried."""


class Outbox:
    """`put(msg)` never blocks; `close(patience_s)` waits that long for the rest, then counts it undelivered."""

    KEEP_IDS = 100  # ids of undelivered messages kept for the records

    def __init__(self, send: Callable[[Dict[str, Any]], None], label: str, capacity: int = 1000,
                 max_age_s: float = 60.0, max_retry_s: float = 5.0) -> None:
        self.send, self.label, self.capacity = send, label, int(capacity)
        self.max_age_s, self.max_retry_s = float(max_age_s), float(max_retry_s)
        self._queue: Deque[Tuple[float, Dict[str, Any]]] = collections.deque()
        self._cond = threading.Condition()
        self._closing = False
        self._down_since: float = 0.0
        self.sent = 0
        self.undelivered = 0
        self.undelivered_ids: List[str] = []
        self.reasons: Dict[str, int] = {}  # why messages were given up: full, expired, shutdown
        self.last_error = ""
        self.outages = 0
        self._thread = threading.Thread(target=self._run, name=f"notify {label}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def put(self, msg: Dict[str, Any]) -> None:
        with self._cond:
            if self._closing:
                self._give_up([msg], "shutdown")
                return
            if len(self._queue) >= self.capacity:
                self._give_up([self._queue.popleft()[1]], "full")
            self._queue.append((time.monotonic(), msg))
            self._cond.notify()

    def _give_up(self, msgs: List[Dict[str, Any]], why: str) -> None:
        first = self.undelivered == 0
        self.undelivered += len(msgs)
        self.reasons[why] = self.reasons.get(why, 0) + len(msgs)
        room = self.KEEP_IDS - len(self.undelivered_ids)
        self.undelivered_ids += [str(m.get("id", "?")) for m in msgs[:max(room, 0)]]
        if first or self.undelivered % 100 == 0:
            logger.warning(f"warning: notify {self.label}: {self.undelivered} message(s) not delivered ({why}; "
                           f"{self.last_error or 'no error yet'}); inspection goes on, the records keep the count")

    def _run(self) -> None:
        backoff = 0.2
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait()
                if not self._queue or self._stop_now:
                    return
                t_put, msg = self._queue[0]
                if time.monotonic() - t_put > self.max_age_s:
                    self._queue.popleft()
                    self._give_up([msg], f"older than {self.max_age_s:g} s")
                    continue
            try:
                self.send(msg)
            except Exception as exc:  # noqa: BLE001 - any transport failure is retried, never raised into the loop
                self.last_error = str(exc) or type(exc).__name__
                if not self._down_since:
                    self._down_since = time.monotonic()
                    self.outages += 1
                    logger.warning(f"warning: notify {self.label}: {self.last_error}; retrying, inspection goes on")
                with self._cond:
                    if self._stop_now:
                        return
                    self._cond.wait(backoff)
                backoff = min(backoff * 2, self.max_retry_s)
                continue
            backoff = 0.2
            if self._down_since:
                logger.info(f"notify {self.label}: delivering again after {time.monotonic() - self._down_since:.1f} s")
                self._down_since = 0.0
            with self._cond:
                if self._queue and self._queue[0][1] is msg:
                    self._queue.popleft()
                self.sent += 1
                self._cond.notify_all()

    _stop_now = False

    def close(self, patience_s: float = 2.0) -> Dict[str, Any]:
        """Stop taking messages, give the rest `patience_s` to go out, count what is left; returns the stats."""
        deadline = time.monotonic() + patience_s
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            while self._queue and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(deadline - time.monotonic(), 0.001)))
            self._stop_now = True
            self._cond.notify_all()
        self._thread.join(timeout=10.0)  # a send in flight ends by its own timeout
        with self._cond:
            left = [m for _, m in self._queue]
            self._queue.clear()
            if left:
                self._give_up(left, "not sent by the end of the run")
        return self.stats()

    def stats(self) -> Dict[str, Any]:
        return {"target": self.label, "sent": self.sent, "undelivered": self.undelivered,
                "undelivered_why": dict(self.reasons), "undelivered_ids": list(self.undelivered_ids),
                "outages": self.outages, **({"last_error": self.last_error} if self.last_error else {})}
