"""X-Paste's object filter (pure).

Per category: ``bar = min(min_clip, best_score - tolerance)`` where ``best_score`` is the best
CLIP score among the category's objects, so the category's best object always passes the score
test. An object is kept when its score is at least the bar and its mask's area fraction lies in
``[area_lo, area_hi]``. Then a category with fewer than ``min_per_category`` survivors is dropped
entirely (its survivors are rejected with reason ``category_too_small``). Nothing is deleted: every
object gets ``kept`` and ``reason``. Objects rejected before filtering (``nsfw_blacked_out``: the
generator's safety checker blacked the image out) keep that reason and take no part in the bar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

EMPTY_MASK = "empty_mask"
LOW_CLIP = "clip_below_bar"
AREA = "area_out_of_range"
SMALL_CATEGORY = "category_too_small"
NSFW = "nsfw_blacked_out"
REASONS = (NSFW, EMPTY_MASK, LOW_CLIP, AREA, SMALL_CATEGORY)


@dataclass(frozen=True)
class FilterConfig:
    min_clip: float = 21.0
    tolerance: float = 1.0
    area_lo: float = 0.05
    area_hi: float = 0.95
    min_per_category: int = 20


@dataclass
class FilterResult:
    kept: list[bool]
    reasons: list[str | None]
    bar: float | None
    category_dropped: bool

    @property
    def n_kept(self) -> int:
        return sum(self.kept)


def _valid(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def filter_category(scores: Sequence[float | None], areas: Sequence[float | None],
                    cfg: FilterConfig = FilterConfig(),
                    rejected: Sequence[str | None] | None = None) -> FilterResult:
    """Apply the rule to one category's objects (``None``/NaN score = no usable mask).
    ``rejected`` gives, per object, a reason it was already rejected for (or ``None``)."""
    if rejected is None:
        rejected = [None] * len(scores)
    if not (len(scores) == len(areas) == len(rejected)):
        raise ValueError("scores, areas and rejected must have the same length")
    valid = [s for s, r in zip(scores, rejected) if _valid(s) and not r]
    bar = min(cfg.min_clip, max(valid) - cfg.tolerance) if valid else None
    kept: list[bool] = []
    reasons: list[str | None] = []
    for s, a, pre in zip(scores, areas, rejected):
        if pre:
            reason = pre
        elif not _valid(s) or not _valid(a):
            reason = EMPTY_MASK
        elif s < bar:
            reason = LOW_CLIP
        elif not (cfg.area_lo <= a <= cfg.area_hi):
            reason = AREA
        else:
            reason = None
        kept.append(reason is None)
        reasons.append(reason)
    dropped = sum(kept) < cfg.min_per_category
    if dropped:
        reasons = [SMALL_CATEGORY if k else r for k, r in zip(kept, reasons)]
        kept = [False] * len(kept)
    return FilterResult(kept=kept, reasons=reasons, bar=bar, category_dropped=dropped)
