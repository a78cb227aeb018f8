"""Part verdicts: frames grouped into parts (by the source's part ids or N consecutive frames), judged once.

This is the one place where a part's verdict is made (docs/ARCHITECTURE.md, "Invariants"):
- every frame of a part that reaches the station belongs to exactly one part, and each part is
  closed exactly once: on its last frame (N frames), on the first frame of the next part or on a
  frame with no part in view (part ids), or at the end of the run;
- a part is PASS only when every one of its frames was inspected and passed; a part with a
  failing frame is FAIL; a part with a frame that was not inspected (model unavailable, an
  unreadable image, a region too small for any defect to count) and no failing frame is NONE;
- with recipes (ds2a/inspect/recipes.py) every part is judged by one recipe, which it names: a frame
  judged by another recipe than the open part's closes that part first (the loop changes recipes only
  where no part is open, so this is a guard, not the rule).
Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional

from ..errors import UserError

if TYPE_CHECKING:  # rules.py re-exports this module's names: no import back at run time
    from .rules import Rules

VERDICTS = ("PASS", "FAIL", "NONE")


@dataclass
class PartVerdict:
    """The verdict of one part (or one frame when rules.level is 'frame').

    `passed` is True only for PASS; `none` marks a part that was not fully inspected and had no
    failing frame (verdict NONE, never a pass); `uninspected` counts its frames that were not inspected.
    """

    part_id: str
    level: str
    passed: bool
    reasons: List[str]
    first_seq: int
    last_seq: int
    n_frames: int
    t_start: float
    t_end: float
    none: bool = False
    uninspected: int = 0
    recipe: Optional[str] = None  # the recipe that judged every frame of the part (--recipes); None without
    recipe_sha256: Optional[str] = None  # sha256 of its recipe, rules and model files (ds2a/inspect/recipes.py)

    def __post_init__(self) -> None:
        if self.passed and (self.none or self.uninspected):
            raise ValueError(f"part {self.part_id}: PASS with {self.uninspected} frame(s) not inspected")

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "NONE" if self.none else "FAIL"


def stamp(pv: PartVerdict, active: Any) -> PartVerdict:
    """Name the recipe (a ds2a.inspect.recipes.Active, or None) that judged the part."""
    if active is not None:
        pv.recipe, pv.recipe_sha256 = active.name, active.sha256
    return pv


class PartTracker:
    """Groups frame verdicts into parts: by the source's part ids, or N consecutive frames.

    `recipes` (a RecipeBook, set by the run) says which recipe judged each frame (by its seq); a part
    takes its grouping rules from that recipe and is stamped with it when it closes."""

    def __init__(self, rules: "Rules", source_gives_parts: bool, source: str = "this source",
                 recipes: Any = None) -> None:
        self.source_gives_parts, self.recipes = source_gives_parts, recipes
        self._active: Any = None
        self._use(rules, source)
        self._open: Optional[PartVerdict] = None
        self._failed = False  # the open part has a failing frame
        self._count = 0  # parts of N frames opened so far (their ids)

    def _use(self, rules: "Rules", source: str = "this source") -> None:
        self.rules = rules
        self.by = rules.part_by
        source_gives_parts = self.source_gives_parts
        if self.by == "source" and rules.level == "part" and not source_gives_parts:
            # every frame would wait for a part id that never comes: FAIL frames, no part verdict
            raise UserError(f"rules file {rules.origin}: part.by is 'source' but {source} gives no part ids "
                            "(only demo:// and image folders do); use `part: {by: frames, frames: N}` to group "
                            "N consecutive frames per part, or `by: auto`")
        if self.by == "auto":
            self.by = "source" if source_gives_parts else "frames"

    def feed(self, seq: int, part_id: Optional[str], passed: bool, reasons: List[str], t: float,
             inspected: bool = True) -> List[PartVerdict]:
        """Add one frame with a part in view; returns the parts this frame closed (zero, one, or two).

        `inspected` False: the frame was not judged (its `passed` is ignored): its part cannot PASS."""
        failed = inspected and not passed
        closed: List[PartVerdict] = []
        active = self.recipes.recipe_for(seq) if self.recipes is not None else None
        if active is not None and active is not self._active:  # another recipe judges from this frame on
            closed += self.flush()  # the open part was judged by the recipe before: it closes as it is
            self._active = active
            self._use(active.rules)
        if self.rules.level == "frame":
            return closed + [stamp(PartVerdict(part_id or f"frame-{seq:06d}", "frame", inspected and passed,
                                               list(reasons), seq, seq, 1, t, t, none=not inspected,
                                               uninspected=int(not inspected)), self._active)]
        if self.by == "frames":  # N consecutive frames: a new part (and id) once the last one has closed
            part_id = (self._open.part_id if self._open is not None else f"part-{self._count:06d}")
            self._count += int(self._open is None)
        cur = self._open
        if cur is not None and cur.part_id != part_id:
            closed += self.flush()
            cur = None
        if part_id is None:
            return closed
        if cur is None:
            self._open = cur = PartVerdict(part_id, "part", False, [], seq, seq, 0, t, t)  # judged in flush()
            self._failed = False
        self._failed = self._failed or failed
        cur.uninspected += int(not inspected)
        cur.reasons += [r for r in reasons if r not in cur.reasons]
        cur.last_seq, cur.t_end = seq, t
        cur.n_frames += 1
        if self.by == "frames" and cur.n_frames >= self.rules.part_frames:
            closed += self.flush()
        return closed

    def feed_gap(self) -> List[PartVerdict]:
        """A frame with no part in view: ends the open part on this frame (when parts come from the source)."""
        return self.flush() if self.by == "source" else []

    def flush(self) -> List[PartVerdict]:
        """Close the open part (at the end of the run it may be incomplete): its verdict is made here."""
        cur, self._open = self._open, None
        if cur is None:
            return []
        cur.passed = not self._failed and cur.uninspected == 0
        cur.none = not self._failed and cur.uninspected > 0
        return [stamp(cur, self._active)]
