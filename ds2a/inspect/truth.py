"""Escapes and overkill while inspecting a source that knows its parts' ground truth (`demo://`).

The same judgement `ds2a eval --rules` makes on a labelled split (ds2a/eval/parts.py), made live:
each closed part's label mask is judged with the station's rules and compared with the model's
verdict. Torch-free.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .quantify import Defect, quantify
from .rules import Rules, judge

IGNORE_INDEX = 255  # unlabelled pixels in a mask: never a defect
logger = logging.getLogger(__name__)


def min_floor(rules: Rules, extra: Sequence[float] = ()) -> float:
    """The smallest region any class rule (or sweep value) can count."""
    values = [rules.min_area_px] + [r.min_area_px for r in rules.classes.values() if r.min_area_px is not None]
    return float(min(list(values) + [float(v) for v in extra]))


def failing_classes(rules: Rules, defects: Sequence[Defect], classes: Sequence[str]) -> List[str]:
    """Classes whose own rule fails (rules are per class, so this splits the verdict exactly)."""
    return [c for c in classes if not judge(rules, [d for d in defects if d.class_name == c])[0]]


TruthFn = Callable[[str], Optional[Tuple[np.ndarray, Tuple[int, int]]]]


class TruthTally:
    """Escapes and overkill while `ds2a inspect` runs on a source that knows its parts' ground truth.

    A Publisher observer: for each closed part it judges the part's label mask with the same rules
    (measured at the size the model's region had) and compares with the model's verdict. Escapes and
    overkill are logged as they happen; the running totals go into the records (the run's stats),
    so `ds2a report` shows them too.
    """

    def __init__(self, rules: Rules, classes: Sequence[str], truth: TruthFn, records: Any = None) -> None:
        self.rules, self.classes, self.truth = rules, list(classes), truth
        self.records = records
        self.floor = min_floor(rules)
        self.total = self.defective = 0
        self.not_judged = 0  # NONE parts (not inspected): neither escapes nor overkill
        self.escaped: List[str] = []
        self.overkilled: List[str] = []
        self.by_class = {c: {"escapes": 0, "overkill": 0} for c in self.classes[1:]}

    def publish(self, res: Any, closed: List[Any]) -> None:
        for pv in closed:
            self.add(pv)
        if res is None:  # the end of the run: the final totals go into the run's stats
            self.finish()

    def add(self, pv: Any) -> None:
        got = self.truth(pv.part_id) if pv.part_id else None
        if got is None:
            return
        if getattr(pv, "verdict", "") == "NONE":  # the model never judged it: no escape, no overkill
            self.not_judged += 1
            if self.records is not None:
                self.records.extra["truth"] = self.summary()
            return
        mask, size = got
        defects = quantify(np.where(mask == IGNORE_INDEX, 0, mask).astype(np.uint8), self.classes, size,
                           self.rules.mm_per_pixel, self.floor)
        good = judge(self.rules, defects)[0]
        self.total += 1
        self.defective += not good
        if self.records is not None:
            self.records.extra["truth"] = self.summary()
        if good == pv.passed:
            return
        if good:  # the model failed a good part
            self.overkilled.append(pv.part_id)
            causes = sorted({r.split(":")[0] for r in pv.reasons})
            kind = "overkill"
        else:
            self.escaped.append(pv.part_id)
            causes = failing_classes(self.rules, defects, self.classes)
            kind = "escapes"
        for c in causes:
            self.by_class.setdefault(c, {"escapes": 0, "overkill": 0})[kind] += 1
        what = "ESCAPE: defective part passed" if kind == "escapes" else "OVERKILL: good part failed"
        logger.info(f"truth   {what}: {pv.part_id} ({', '.join(causes) or '?'})")
        if self.records is not None:
            self.records.extra["truth"] = self.summary()

    def summary(self) -> Dict[str, Any]:
        good = self.total - self.defective
        return {"total": self.total, "defective": self.defective, "good": good, "not_judged": self.not_judged,
                "escapes": len(self.escaped), "overkill": len(self.overkilled),
                "escape_rate": len(self.escaped) / self.defective if self.defective else None,
                "overkill_rate": len(self.overkilled) / good if good else None,
                "by_class": self.by_class, "escaped_parts": self.escaped[-100:],
                "overkill_parts": self.overkilled[-100:], "rules": self.rules.origin}

    def finish(self) -> None:
        if self.records is not None:
            self.records.extra["truth"] = self.summary()
