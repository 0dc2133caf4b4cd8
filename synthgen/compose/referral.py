"""Referral rules (pure): the name an object is asked for by, so that it names exactly one object.

A referral is a category name, optionally with a position word. The position word is added only
where the category repeats in the scene (PIN's positional referral for RefCOCO):

* ``front`` / ``behind`` (paste order) when the boxes of the same category overlap by more
  than ``depth_overlap`` (0.75, measured as ``max(inter/area_a, inter/area_b)``);
* ``middle`` / ``center`` for the object lying strictly between two others on both axes;
* otherwise ``left`` / ``right`` or ``top`` | ``above`` / ``below`` along the axis of the
  largest centre difference.

:func:`referred` is the independent resolver: it applies a referral to a scene and returns
the objects it designates. A generated referral is only used if it resolves to exactly its
object; otherwise another valid word is used, and if none exists the scene must be resampled.
With ``absolute_p`` an object whose category is unique may get an absolute position from the
image thirds (``{name} at the left``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from synthgen.grounding import overlap_ratio

# canonical relation -> surface words (the authors' synonyms)
RELATIVE_WORDS = {
    "left": ("left",),
    "right": ("right",),
    "top": ("top", "above"),
    "bottom": ("below",),
    "middle": ("middle", "center"),
    "front": ("in front",),
    "behind": ("behind",),
}
ABSOLUTE_WORDS = {
    "left": ("left",),
    "right": ("right",),
    "top": ("top",),
    "bottom": ("bottom",),
    "middle": ("middle", "center"),
}
SPATIAL_TEMPLATES = ("{pos} {name}", "{name} {pos}", "{name} on {pos}")
DEPTH_TEMPLATES = ("{name} {pos}",)
ABSOLUTE_TEMPLATES = ("{pos} {name}", "{name} {pos}", "{name} on {pos}", "{name} at the {pos}")


@dataclass(frozen=True)
class Referral:
    name: str
    kind: str = "plain"         # plain | relative | absolute
    relation: str | None = None  # canonical relation (keys of RELATIVE_WORDS / ABSOLUTE_WORDS)
    text: str = ""

    def __post_init__(self):
        if not self.text:
            object.__setattr__(self, "text", self.name)


def _centre(b: Sequence[float]) -> tuple[float, float]:
    return (b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0


def _relative_members(relation: str, group: list[int], boxes: Sequence[Sequence[float]],
                      margin: float, depth_overlap: float) -> list[int]:
    """Objects of ``group`` (same category, paste order) that ``relation`` designates."""
    cx = {i: _centre(boxes[i])[0] for i in group}
    cy = {i: _centre(boxes[i])[1] for i in group}

    def extreme(vals: dict[int, float], smallest: bool) -> list[int]:
        out = []
        for i in group:
            others = [vals[j] for j in group if j != i]
            if smallest and all(vals[i] + margin <= v for v in others):
                out.append(i)
            if not smallest and all(vals[i] - margin >= v for v in others):
                out.append(i)
        return out

    if relation == "left":
        return extreme(cx, True)
    if relation == "right":
        return extreme(cx, False)
    if relation == "top":
        return extreme(cy, True)
    if relation == "bottom":
        return extreme(cy, False)
    if relation == "middle":
        if len(group) != 3:
            return []
        out = []
        for i in group:
            a, b = [j for j in group if j != i]
            between_x = min(cx[a], cx[b]) + margin <= cx[i] <= max(cx[a], cx[b]) - margin
            between_y = min(cy[a], cy[b]) + margin <= cy[i] <= max(cy[a], cy[b]) - margin
            if between_x and between_y:
                out.append(i)
        return out
    if relation in ("front", "behind"):
        # depth words need every same-category box to overlap the chosen one strongly
        pick = group[-1] if relation == "front" else group[0]
        if all(overlap_ratio(boxes[pick], boxes[j]) > depth_overlap for j in group if j != pick):
            return [pick]
        return []
    raise ValueError(f"unknown relation {relation!r}")


def thirds_position(box: Sequence[float], width: float, height: float) -> str:
    """Absolute position from the image thirds (the authors' ``infer_object_position``)."""
    cx, cy = _centre(box)
    h = min(2, int(cx / (width / 3.0)))
    v = min(2, int(cy / (height / 3.0)))
    if h == 1 and v == 1:
        return "middle"
    if h == 2:
        return "right"
    if h == 0:
        return "left"
    return "bottom" if v == 2 else "top"


def referred(ref: Referral, names: Sequence[str], boxes: Sequence[Sequence[float]], *,
             width: float, height: float, margin: float, depth_overlap: float = 0.75) -> list[int]:
    """Indices of the objects that ``ref`` designates in a scene (objects in paste order)."""
    group = [i for i, n in enumerate(names) if n == ref.name]
    if ref.kind == "plain":
        return group
    if ref.kind == "relative":
        return _relative_members(ref.relation, group, boxes, margin, depth_overlap) if len(group) > 1 else []
    if ref.kind == "absolute":
        return [i for i in group if thirds_position(boxes[i], width, height) == ref.relation]
    raise ValueError(f"unknown referral kind {ref.kind!r}")


def preferred_relation(target: int, group: list[int], boxes: Sequence[Sequence[float]],
                       depth_overlap: float) -> str:
    """The authors' choice of relation word for ``target`` among its same-category ``group``."""
    tx, ty = _centre(boxes[target])
    others = [j for j in group if j != target]
    for j in others:
        if overlap_ratio(boxes[target], boxes[j]) > depth_overlap:
            return "front" if target > j else "behind"
    if len(others) == 2:
        xs = sorted(_centre(boxes[j])[0] for j in others)
        ys = sorted(_centre(boxes[j])[1] for j in others)
        if xs[0] < tx < xs[1] and ys[0] < ty < ys[1]:
            return "middle"
    dx = max((tx - _centre(boxes[j])[0] for j in others), key=abs)
    dy = max((ty - _centre(boxes[j])[1] for j in others), key=abs)
    if abs(dx) > abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


def _render(rng: np.random.Generator, name: str, words: Sequence[str], templates: Sequence[str]) -> str:
    word = words[int(rng.integers(len(words)))]
    tmpl = templates[int(rng.integers(len(templates)))]
    return tmpl.format(pos=word, name=name)


def make_referral(rng: np.random.Generator, target: int, names: Sequence[str],
                  boxes: Sequence[Sequence[float]], *, width: float, height: float, margin: float,
                  absolute_p: float = 0.0, depth_overlap: float = 0.75) -> Referral | None:
    """A referral that designates exactly ``target``, or ``None`` if the rules allow none."""
    name = names[target]
    group = [i for i, n in enumerate(names) if n == name]
    kw = dict(width=width, height=height, margin=margin, depth_overlap=depth_overlap)
    if len(group) == 1:
        ref = Referral(name)
        if absolute_p > 0 and rng.random() < absolute_p:
            rel = thirds_position(boxes[target], width, height)
            ref = Referral(name, "absolute", rel, _render(rng, name, ABSOLUTE_WORDS[rel], ABSOLUTE_TEMPLATES))
        return ref if referred(ref, names, boxes, **kw) == [target] else None
    first = preferred_relation(target, group, boxes, depth_overlap)
    order = [first] + [r for r in RELATIVE_WORDS if r != first]
    for rel in order:
        cand = Referral(name, "relative", rel)
        if referred(cand, names, boxes, **kw) == [target]:
            tmpls = DEPTH_TEMPLATES if rel in ("front", "behind") else SPATIAL_TEMPLATES
            return Referral(name, "relative", rel, _render(rng, name, RELATIVE_WORDS[rel], tmpls))
    return None
