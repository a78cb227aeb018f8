"""Inspection driven by the line (`ds2a inspect --trigger URL`): the parts are the triggers.

Each trigger is one part of one frame (ds2a/sources/trigger.py), so its verdict is decided by
that frame and closed at once: the records, `--notify` and the page get the part under the id
the line gave, without waiting for the next part to arrive. The answer to the line goes out
through ds2a/notify/handshake.py.
"""
from __future__ import annotations

from typing import Any, List, Optional

from .parts import PartVerdict, stamp
from .rules import Rules


class TriggerParts:
    """A PartTracker for triggered runs: one frame, one part, closed as soon as it is judged."""

    by = "trigger"

    def __init__(self, rules: Rules, recipes: Any = None) -> None:
        self.rules, self.recipes = rules, recipes  # recipes: which recipe judged each frame (ds2a/inspect/recipes.py)

    def feed(self, seq: int, part_id: Optional[str], passed: bool, reasons: List[str], t: float,
             inspected: bool = True) -> List[PartVerdict]:
        """The triggered frame is the part: PASS only when it was inspected and passed, NONE when not inspected."""
        pv = PartVerdict(part_id or f"frame-{seq:06d}", "part", inspected and passed, list(reasons), seq, seq, 1,
                         t, t, none=not inspected, uninspected=int(not inspected))
        return [stamp(pv, self.recipes.recipe_for(seq) if self.recipes is not None else None)]

    def feed_gap(self) -> List[PartVerdict]:
        return []  # the part locator saw no part in the triggered frame: the line is answered NONE (no_part)

    def flush(self) -> List[PartVerdict]:
        return []


def check_trigger_option(options: Any) -> Any:
    """`--trigger` checked before the model opens (URL, timeout, client library); None without it."""
    if not options.trigger:
        return None
    from ..notify.trigger_line import check_trigger

    target = check_trigger(options.trigger, options.trigger_timeout)
    if getattr(options, "recipes", None) and target.scheme == "modbus":  # the recipe register is read: no overlap
        from ..notify.urls import _no_overlap

        _no_overlap(f"--trigger {target.label}", target)
    return target


def open_trigger_line(target: Any, options: Any) -> Any:
    """The line for a checked target: nothing connects before `start()`."""
    from ..notify.trigger_line import TriggerLine

    return TriggerLine(target, options.trigger_timeout)
