"""One `--trigger` line for one run: the endpoint that talks to the line (MQTT: ds2a/notify/handshake_mqtt.py,
Modbus: handshake_modbus.py) around the TriggerLedger (ds2a/notify/handshake.py), fed the verdicts by the
Publisher. Kept apart from the ledger so the endpoints import the ledger and this module imports them."""
from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import UserError
from ..sources.trigger import TriggerSource
from .handshake import TriggerLedger
from .handshake_modbus import ModbusTrigger
from .handshake_mqtt import MqttTrigger
from .urls import TriggerTarget, parse_trigger_url

logger = logging.getLogger(__name__)


@dataclass
class TriggerLine:
    """One `--trigger` URL for one run: the ledger, the endpoint that talks to the line, and the
    Publisher observer that feeds it the verdicts (the way ds2a/notify/notifier.py is fed)."""

    target: TriggerTarget
    timeout_s: float
    records: Any = None
    endpoint: Any = None
    ledger: Optional[TriggerLedger] = None
    closed: bool = False
    stats_: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.target.scheme == "mqtt":
            self.endpoint = MqttTrigger(self.target, self)
        else:
            self.endpoint = ModbusTrigger(self.target)
        self.ledger = TriggerLedger(self.timeout_s, self.endpoint.deliver)

    @property
    def run_id(self) -> Optional[int]:
        return getattr(self.records, "run_id", None)

    def use_recipes(self, book: Any) -> None:
        """A trigger may name its part's recipe (MQTT payload `recipe`, Modbus `recipe` register: docs/RECIPES.md)."""
        assert self.ledger is not None
        self.ledger.recipes = book
        self.endpoint.recipe_by_number = book.by_number

    def source(self, camera: Any) -> TriggerSource:
        """The camera, driven by this line's triggers."""
        return TriggerSource(camera, self.ledger)

    def start(self, records: Any = None) -> None:
        """Connect and listen (after the model is warm, so no trigger waits on the warm-up)."""
        self.records = records
        self.endpoint.start(self.ledger)
        logger.info(f"trigger {self.target.label} (one frame per trigger; answer within {self.timeout_s:g} s, "
                    "NONE when a part cannot be judged)")

    def publish(self, res: Any, closed: List[Any]) -> None:
        """Publisher observer: each triggered frame's verdict answers its trigger; the end answers the rest."""
        if res is None:
            self.close()
            return
        trigger = getattr(res.frame, "trigger", None)
        if trigger is None or self.ledger is None:
            return
        conflict = getattr(res.frame, "id_conflict", None)
        recipe = getattr(res, "recipe", None)  # the recipe that judged it (--recipes), in the answer
        if conflict:  # the station judged a part, but not surely the one the line named: never PASS it
            self.ledger.answer(trigger, "NONE", [f"part id disagrees: {conflict}"], "id_mismatch", res.seq, recipe)
        elif res.inspected:
            self.ledger.answer(trigger, res.verdict, res.reasons, frame_seq=res.seq, recipe=recipe)
        else:
            self.ledger.answer(trigger, "NONE", res.reasons or ["no part in view"], _cause(res), res.seq, recipe)

    def close(self, patience_s: float = 2.0) -> Dict[str, Any]:
        """Answer what is open, give the answers `patience_s` to leave, keep the counts in the run's stats."""
        if self.closed:
            return self.stats_
        self.closed = True
        assert self.ledger is not None
        self.ledger.close()
        delivery = self.endpoint.close(patience_s)
        self.stats_ = {"target": self.target.label, **self.ledger.stats(), **delivery}
        if self.records is not None and hasattr(self.records, "extra"):
            self.records.extra["trigger"] = self.stats_
        c = self.stats_
        logger.info(f"trigger {self.target.label}: {c['triggers']} trigger(s), {c['PASS']} PASS, {c['FAIL']} FAIL, "
                    f"{c['NONE']} NONE; {c.get('undelivered', 0)} answer(s) undelivered")
        return self.stats_


def _cause(res: Any) -> str:
    """Why the loop did not judge a triggered frame (ds2a/inspect/loop.py InspectionLoop._inspect)."""
    if not res.reasons or not getattr(res, "in_view", True):
        return "no_part"
    if getattr(res, "unreadable", False):
        return "unreadable"
    if res.reasons[0].startswith("not inspected: the inspected region"):
        return "too_small"
    if res.reasons[0].startswith("not inspected: recipe "):  # the recipe it asked for is unknown or refused
        return "recipe"
    return "model"  # ModelUnavailable: a served model is away


def check_trigger(url: str, timeout_s: float) -> TriggerTarget:
    """The URL, the timeout and the client library, checked before the model and camera open."""
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and 0.05 <= timeout_s <= 3600):
        raise UserError(f"--trigger-timeout {timeout_s}: give seconds between 0.05 and 3600 (default 1)")
    target = parse_trigger_url(url)
    module = "paho" if target.scheme == "mqtt" else "pymodbus"
    if importlib.util.find_spec(module) is None:
        raise UserError(f"--trigger {target.scheme}:// needs the Python package {module}: pip install 'ds2a-edge[notify]'")
    return target
