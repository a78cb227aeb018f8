"""The Publisher's observer that turns part verdicts (and optionally FAIL frames) into messages."""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, List

from .outbox import Outbox
from .urls import NotifyTarget, parse_notify_url

logger = logging.getLogger(__name__)


class Notifier:
    """`publish(res, closed_parts)` per frame (res None at the end of a run); `close()` once."""

    def __init__(self, target: NotifyTarget, transport: Any, records: Any = None, capacity: int = 1000) -> None:
        self.target, self.transport, self.records = target, transport, records
        self.all_verdicts = target.scheme == "mqtt"  # a PLC only needs the rejects
        self.outbox = Outbox(transport.send, target.label, capacity=capacity, max_age_s=target.max_age_s)
        self.count = 0
        self.started = time.time()

    def _id(self) -> str:
        self.count += 1
        run = getattr(self.records, "run_id", None)
        return f"{self.target.client_id or 'ds2a'}-{int(self.started)}-{run or 0}-{self.count}"

    def publish(self, res: Any, closed: List[Any]) -> None:
        for pv in closed:
            if self.target.frames and not self.all_verdicts:
                break  # modbus with frames=1: one signal per FAIL frame instead
            if pv.passed and not self.all_verdicts:
                continue
            self.outbox.put({"type": "part", "id": self._id(), "run": getattr(self.records, "run_id", None),
                             "part_id": pv.part_id, "level": pv.level, "verdict": pv.verdict,
                             "reasons": list(pv.reasons), "t": round(pv.t_end, 3), "first_seq": pv.first_seq,
                             "last_seq": pv.last_seq, "n_frames": pv.n_frames})
        if self.target.frames and res is not None and res.inspected and not res.passed:
            self.outbox.put({"type": "frame", "id": self._id(), "run": getattr(self.records, "run_id", None),
                             "seq": res.seq, "part_id": res.frame.part_id, "verdict": res.verdict,
                             "reasons": list(res.reasons), "t": round(res.frame.t_wall, 3),
                             "defects": [d.to_dict() for d in res.defects]})

    def close(self, patience_s: float = 2.0) -> Dict[str, Any]:
        """Give queued messages `patience_s`, then keep the counts (and undelivered ids) in the run's stats."""
        stats = self.outbox.close(patience_s)
        self.transport.close()
        if self.records is not None:
            self.records.extra.setdefault("notify", []).append(stats)
        logger.info(f"notify  {self.target.label}: {stats['sent']} sent, {stats['undelivered']} undelivered"
                    + (f" ({stats['last_error']})" if stats["undelivered"] and "last_error" in stats else ""))
        return stats


def open_notifier(url: str, records: Any = None) -> Notifier:
    """Parse (UserError on a bad URL), then connect in the background."""
    target = parse_notify_url(url)
    if target.scheme == "mqtt":
        from .mqtt import MqttTransport

        return Notifier(target, MqttTransport(target), records)
    from .modbus import ModbusTransport

    return Notifier(target, ModbusTransport(target), records)
