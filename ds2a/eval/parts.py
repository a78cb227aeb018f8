"""Part-level verdicts on a labelled split: how many bad parts slip through, how many good ones are scrapped.

The inspection rules (`ds2a.inspect.rules`) judge the prediction and the ground-truth mask of every
image alike; the verdicts are grouped into parts exactly as `ds2a inspect` groups them (one image =
one part, its name the part id; `part: {by: frames, frames: N}` groups N consecutive images).
A part is *defective* when its ground truth fails the rules, an *escape* when it is defective but
its prediction passes, *overkill* when it is good but its prediction fails. Torch-free.

Regions are measured once per image at the smallest area any rule (or sweep value) can ask for,
so a sweep over a rule field re-judges stored regions instead of re-running the model. A sweep
changes the rules the predictions are judged with; the ground truth keeps the rules as given.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import UserError
from ..inspect.parts import PartTracker
from ..inspect.quantify import Defect, quantify
from ..inspect.rules import CLASS_KEYS, ClassRule, Rules, judge
from ..inspect.truth import IGNORE_INDEX, failing_classes

SWEEP_TOP = ("min_area_px", "mm_per_pixel")
INT_KEYS = ("max_count",)


@dataclass
class ImageRegions:
    """The measured regions of one image: of the prediction and of the ground truth."""

    name: str
    pred: List[Defect]
    truth: List[Defect]


@dataclass
class PartCollector:
    """Feed it (name, predicted class map, label mask) per image, in dataset order."""

    rules: Rules
    classes: Sequence[str]
    floor: float = 0.0  # smallest region kept (px); sweeps lower it
    images: List[ImageRegions] = field(default_factory=list)

    def add(self, name: str, pred: np.ndarray, mask: np.ndarray) -> None:
        if pred.shape[:2] != mask.shape[:2]:
            raise UserError(f"prediction for '{name}' is {pred.shape[:2]} but its mask is {mask.shape[:2]}; "
                            "predictions must be at the label size")
        truth = np.where(mask == IGNORE_INDEX, 0, mask).astype(np.uint8)  # unlabelled pixels are no defect
        size = mask.shape[:2]
        mmpp = self.rules.mm_per_pixel
        self.images.append(ImageRegions(
            name, quantify(pred.astype(np.uint8), self.classes, size, mmpp, self.floor),
            quantify(truth, self.classes, size, mmpp, self.floor)))

    def verdicts(self, pred_rules: Optional[Rules] = None) -> Dict[str, Any]:
        """Counts with the collector's rules; `pred_rules` judges the predictions instead (a sweep),
        while the ground truth keeps the rules as given: they define which parts are defective."""
        return part_verdicts(self.images, pred_rules or self.rules, self.classes, truth_rules=self.rules)


def part_verdicts(images: Sequence[ImageRegions], rules: Rules, classes: Sequence[str],
                  truth_rules: Optional[Rules] = None) -> Dict[str, Any]:
    """Parts total/defective/escapes/overkill, both rates, the classes behind them and the part ids.

    `rules` judge the predictions, `truth_rules` (default: the same) the ground truth."""
    truth_rules = truth_rules or rules
    both = (rules, truth_rules)
    trackers = (PartTracker(truth_rules, True, "the dataset"), PartTracker(truth_rules, True, "the dataset"))
    frame_classes: Dict[str, Tuple[set, set]] = {}
    closed: Tuple[list, list] = ([], [])
    for seq, img in enumerate(images):
        for k, defects in enumerate((img.pred, img.truth)):
            passed, reasons = judge(both[k], defects)
            closed[k].extend(trackers[k].feed(seq, img.name, passed, reasons, float(seq)))
        frame_classes[img.name] = (set(failing_classes(rules, img.pred, classes)),
                                   set(failing_classes(truth_rules, img.truth, classes)))
    for k in (0, 1):
        closed[k].extend(trackers[k].flush())
    by_class = {c: {"escapes": 0, "overkill": 0} for c in classes[1:]}
    escapes: List[str] = []
    overkill: List[str] = []
    defective = 0
    for pv, tv in zip(*closed):
        names = [img.name for img in images[pv.first_seq: pv.last_seq + 1]]
        pred_cls = set().union(*(frame_classes[n][0] for n in names))
        true_cls = set().union(*(frame_classes[n][1] for n in names))
        if not tv.passed:
            defective += 1
            if pv.passed:
                escapes.append(pv.part_id)
                for c in true_cls:
                    by_class.setdefault(c, {"escapes": 0, "overkill": 0})["escapes"] += 1
        elif not pv.passed:
            overkill.append(pv.part_id)
            for c in pred_cls:
                by_class.setdefault(c, {"escapes": 0, "overkill": 0})["overkill"] += 1
    total = len(closed[1])
    good = total - defective
    return {
        "total": total, "defective": defective, "good": good,
        "escapes": len(escapes), "overkill": len(overkill),
        "escape_rate": len(escapes) / defective if defective else float("nan"),
        "overkill_rate": len(overkill) / good if good else float("nan"),
        "by_class": by_class, "escaped_parts": escapes, "overkill_parts": overkill,
        "rules": rules.origin, "level": truth_rules.level,
    }


# ---------------------------------------------------------------- sweeps


def parse_sweep(spec: str, classes: Sequence[str]) -> Tuple[str, List[float]]:
    """'FIELD=V1,V2,...' -> (field, values). FIELD is a top-level number (min_area_px, mm_per_pixel),
    a class field for every defect class (max_count, max_area_px, ...), or CLASS.FIELD for one class."""
    if "=" not in spec:
        raise UserError(f"--sweep '{spec}' is not FIELD=V1,V2,... (example: --sweep min_area_px=16,32,64,128)")
    name, _, raw = spec.partition("=")
    name = name.strip()
    target = name.split(".", 1)[-1]
    if "." in name and name.split(".", 1)[0] not in classes[1:]:
        raise UserError(f"--sweep: '{name.split('.', 1)[0]}' is not a defect class; use one of "
                        f"{', '.join(classes[1:])} (or no class prefix for all classes)")
    valid = list(CLASS_KEYS) + ([] if "." in name else list(SWEEP_TOP))
    if target not in valid:
        raise UserError(f"--sweep: '{name}' is not a numeric rule field; use one of {', '.join(valid)} "
                        "(CLASS.FIELD for one class)")
    try:
        values = [float(v) for v in raw.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--sweep '{spec}': values must be numbers separated by commas") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise UserError(f"--sweep '{spec}': give one or more finite values >= 0")
    if target in INT_KEYS and any(v != int(v) for v in values):
        raise UserError(f"--sweep '{spec}': {target} takes whole numbers")
    if target == "mm_per_pixel" and any(v <= 0 for v in values):
        raise UserError(f"--sweep '{spec}': mm_per_pixel must be above 0")
    return name, values


def with_value(rules: Rules, name: str, value: float, classes: Sequence[str]) -> Rules:
    """A copy of `rules` with one field set (for every defect class unless CLASS.FIELD)."""
    out = copy.deepcopy(rules)
    out.origin = f"{rules.origin} with {name}={value:g}"
    if name in SWEEP_TOP:
        setattr(out, name, value)
        return out
    cls, _, key = name.rpartition(".")
    number: Any = int(value) if key in INT_KEYS else value
    for c in ([cls] if cls else list(classes[1:])):
        rule = out.classes.setdefault(c, ClassRule())
        setattr(rule, key, number)
    return out


def sweep(collector: PartCollector, name: str, values: Sequence[float]) -> List[Dict[str, Any]]:
    """One row per value: part counts and rates when the predictions are judged with that value.

    The ground truth keeps the rules as given (they are the specification of a defective part),
    so the rows trade escapes against overkill for one fixed set of defective parts."""
    rows = []
    for v in values:
        res = collector.verdicts(with_value(collector.rules, name, v, collector.classes))
        rows.append({name: v, **{k: res[k] for k in ("total", "defective", "escapes", "overkill",
                                                     "escape_rate", "overkill_rate")}})
    return rows


def format_parts(parts: Dict[str, Any]) -> str:
    """The lines a QA engineer reads: counts, rates and the classes behind them."""
    def pct(x: float) -> str:
        return "n/a" if isinstance(x, float) and math.isnan(x) else f"{100 * x:.1f} %"

    lines = [f"parts: {parts['total']} ({parts['defective']} defective by ground truth, {parts['good']} good); "
             f"rules: {parts['rules']}",
             f"escapes: {parts['escapes']} of {parts['defective']} defective parts passed ({pct(parts['escape_rate'])})",
             f"overkill: {parts['overkill']} of {parts['good']} good parts failed ({pct(parts['overkill_rate'])})"]
    causes = [f"{c} {v['escapes']}/{v['overkill']}" for c, v in parts["by_class"].items() if v["escapes"] or v["overkill"]]
    if causes:
        lines.append("by class (escapes/overkill): " + ", ".join(causes))
    return "\n".join(lines)


def format_sweep(rows: Sequence[Dict[str, Any]], name: str) -> str:
    """Markdown table of a sweep."""
    def pct(x: float) -> str:
        return "n/a" if isinstance(x, float) and math.isnan(x) else f"{100 * x:.1f}"

    out = [f"| {name} | escapes | escape % | overkill | overkill % |", "|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r[name]:g} | {r['escapes']}/{r['defective']} | {pct(r['escape_rate'])} | "
                   f"{r['overkill']}/{r['total'] - r['defective']} | {pct(r['overkill_rate'])} |")
    return "\n".join(out)


def plot_sweep(rows: Sequence[Dict[str, Any]], name: str, path: str) -> None:
    """Escape and overkill rate against the swept value (matplotlib, an optional dependency)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("the sweep plot needs matplotlib (pip install matplotlib); "
                        "the table is written without it when you drop the .png output") from None
    xs = [r[name] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(xs, [100 * r["escape_rate"] for r in rows], "o-", label="escape rate (defective parts passed)")
    ax.plot(xs, [100 * r["overkill_rate"] for r in rows], "s-", label="overkill rate (good parts failed)")
    ax.set_xlabel(name)
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_sweep(rows: Sequence[Dict[str, Any]], name: str, prefix: str, label: str = "--sweep-out") -> List[str]:
    """Write PREFIX.md (the table), PREFIX.csv and PREFIX.png (the plot) atomically; returns the paths."""
    import csv
    import io

    from ..outputs import atomic_path, atomic_write

    with atomic_write(f"{prefix}.md", label=label) as fh:
        fh.write(format_sweep(rows, name) + "\n")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(f"{prefix}.csv", label=label) as fh:
        fh.write(buf.getvalue())
    with atomic_path(f"{prefix}.png", label=label) as tmp:
        plot_sweep(rows, name, tmp)
    return [f"{prefix}.{ext}" for ext in ("md", "csv", "png")]
