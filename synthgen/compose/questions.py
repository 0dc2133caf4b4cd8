"""The questions of a scene (pure): from a scene record and a seed, every question of the chosen
tasks whose answer is the one correct answer; a question that would be ambiguous is not asked.

Each question is ``{"task", "category", "text", "answer", "targets"}``: ``text`` as asked,
``answer`` as trained, ``targets`` the indices into ``objects`` of the objects the answer refers
to, in the order of the answer (one for box and point tasks; every object of the name, in
reading order, for ``all`` and ``count``; none for ``absent``), ``category`` the category asked
about. Boxes and points are in the record's canvas pixels (:mod:`.questions_text`).

The tasks (:data:`TASKS`), each with its resolver:

1. ``name``: an object whose name is unique in the scene, PIN's prompt
   (:func:`synthgen.grounding.query_prompt`) -> its box. For the record's target with a plain
   referral this is the record's own ``prompt`` / ``answer``, byte for byte (an object with an
   absolute referral, ``apple at the left``, is asked for by its name here too).
2. ``referral``: an object whose referral has position words (checked unique by compose's
   resolver, :func:`synthgen.compose.referral.referred`), PIN's prompt -> its box: the record's
   text for such a target.
3. ``relation``: ``the cup left of the dog``: the anchor's name is unique and differs from the
   target's; the target satisfies the relation strictly (its box wholly left of the anchor's
   box), every other object of its name fails it even loosely (its centre not left of the
   anchor's centre); ``nearest``: the other objects of the name lie at least 1.5 times and a
   grid cell farther (centre distances).
4. ``attribute``: a colour that covers at least half of the target's opaque pixels and under
   a tenth of every other object of its name (``colors`` recorded for all of them; not a word
   of the name already); or a size
   (``the larger cup``) among 2+ objects of a name, its box 1.5 times (or a 1.5th of) each other.
5. ``all``: every box of a name, in reading order (top to bottom, then left to right).
6. ``absent``: a category recorded in the record's ``negatives`` (hard negatives drawn by compose
   from the bank, :func:`synthgen.compose.attributes.hard_negatives`) whose name and category
   are in no object -> ``There is no dog in the image.``
7. ``count``: how many objects of a name (every name present, and the first negative: 0).
8. ``region``: ``What is at [x1,y1,x2,y2]?`` with an object's box -> its name; asked when at
   least half of it is visible and no object of another name has a box of IoU >= 0.5 with it.
9. ``point``: an object whose name is unique, with a recorded ``point`` -> ``(x,y)``.

Names (``all``, ``count``) that two categories share (``bow`` of ``bow (weapon)`` and ``bow
(decoration)``) are not asked by those tasks. Each task draws its phrasings from its own random
stream of ``(seed, task)``, so the questions of a task do not depend on the other tasks chosen.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from synthgen.compose import questions_text as T
from synthgen.grounding import format_box, iou, query_prompt
from synthgen.schema import SceneObject, SceneRecord

TASKS = ("name", "referral", "relation", "attribute", "all", "absent", "count", "region", "point")
RELATIONS = ("left", "right", "above", "below", "nearest")
NEAREST_RATIO = 1.5
MIN_COLOR_SHARE = 0.5               # of the target's pixels
SIZE_RATIO = 1.5
REGION_MIN_VISIBLE = 0.5
REGION_MAX_IOU = 0.5


def parse_tasks(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"name,relation"`` (or a list) -> the tasks in :data:`TASKS` order; ValueError naming an
    unknown task."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    bad = [t for t in items if t not in TASKS]
    if bad:
        raise ValueError(f"unknown task {bad[0]!r} (the tasks: {', '.join(TASKS)})")
    if not items:
        raise ValueError(f"no task given (the tasks: {', '.join(TASKS)})")
    return tuple(t for t in TASKS if t in items)


def question(task: str, category: str, text: str, answer: str, targets: Sequence[int]) -> dict[str, Any]:
    return {"task": task, "category": category, "text": text, "answer": answer, "targets": [int(t) for t in targets]}


def _centre(b: Sequence[float]) -> tuple[float, float]:
    return (b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0


def _area(b: Sequence[float]) -> float:
    return float(b[2] - b[0]) * float(b[3] - b[1])


def reading_order(boxes: Sequence[Sequence[float]], indices: Sequence[int]) -> list[int]:
    """``indices`` sorted by their boxes' top, then left edge (then bottom, right, index)."""
    return sorted(indices, key=lambda i: (boxes[i][1], boxes[i][0], boxes[i][3], boxes[i][2], i))


class _Scene:
    def __init__(self, rec: SceneRecord):
        self.rec = rec
        self.objs: tuple[SceneObject, ...] = rec.objects
        self.names = [o.name or o.category for o in rec.objects]
        self.boxes = [tuple(float(v) for v in o.box) for o in rec.objects]
        self.cell = rec.width / rec.grid if rec.grid else rec.width / 16.0

    def group(self, name: str) -> list[int]:
        return [i for i, n in enumerate(self.names) if n == name]

    def unique(self, i: int) -> bool:
        return self.names.count(self.names[i]) == 1

    def category_of(self, name: str) -> str | None:
        cats = {self.objs[i].category for i in self.group(name)}
        return cats.pop() if len(cats) == 1 else None

    def distinct_names(self) -> list[str]:
        return list(dict.fromkeys(self.names))


# --- resolvers: the objects a designation picks out -------------------------------------------

def holds(relation: str, box: Sequence[float], anchor: Sequence[float], strict: bool) -> bool:
    """Whether ``box`` lies ``relation`` of ``anchor``: ``strict`` wholly (no overlap along the
    axis), loosely by centres (what a reader could still take for it)."""
    (cx, cy), (ax, ay) = _centre(box), _centre(anchor)
    if relation == "left":
        return box[2] <= anchor[0] if strict else cx < ax
    if relation == "right":
        return box[0] >= anchor[2] if strict else cx > ax
    if relation == "above":
        return box[3] <= anchor[1] if strict else cy < ay
    if relation == "below":
        return box[1] >= anchor[3] if strict else cy > ay
    raise ValueError(f"unknown relation {relation!r}")


def relation_targets(s: _Scene, name: str, relation: str, anchor: int) -> list[int]:
    """The objects of ``name`` that "the {name} {relation} the {anchor}" designates; more than
    one (or none) means the question is not asked. An object that only loosely satisfies the
    relation counts as designated too (so it makes the question ambiguous)."""
    group = [i for i in s.group(name) if i != anchor]
    a = s.boxes[anchor]
    if relation == "nearest":
        if len(group) < 2:
            return []
        dist = {i: float(np.hypot(*np.subtract(_centre(s.boxes[i]), _centre(a)))) for i in group}
        best = min(group, key=lambda i: (dist[i], i))
        clear = all(dist[j] >= NEAREST_RATIO * dist[best] and dist[j] - dist[best] >= s.cell
                    for j in group if j != best)
        return [best] if clear else group
    strict = [i for i in group if holds(relation, s.boxes[i], a, True)]
    loose = [i for i in group if holds(relation, s.boxes[i], a, False)]   # strict ones among them
    if len(strict) == 1 and loose == strict:
        return strict
    return loose if len(loose) > 1 else []


def color_of(s: _Scene, i: int) -> str | None:
    """The colour that names object ``i`` among the objects of its name, or ``None``."""
    group = s.group(s.names[i])
    if any(s.objs[j].colors is None for j in group):
        return None
    colors = dict(s.objs[i].colors)
    for term, share in colors.items():
        if term in s.names[i].lower().split():
            continue                      # "red block" is not asked for as "the red red block"
        if share >= MIN_COLOR_SHARE and all(term not in dict(s.objs[j].colors) for j in group if j != i):
            return term
    return None


def size_of(s: _Scene, i: int) -> str | None:
    """``larger`` / ``smaller`` when object ``i`` is clearly the largest / smallest of its name."""
    others = [j for j in s.group(s.names[i]) if j != i]
    if not others:
        return None
    a = _area(s.boxes[i])
    if all(a >= SIZE_RATIO * _area(s.boxes[j]) for j in others):
        return "larger"
    if all(a * SIZE_RATIO <= _area(s.boxes[j]) for j in others):
        return "smaller"
    return None


def region_clear(s: _Scene, i: int) -> bool:
    return (s.objs[i].visible >= REGION_MIN_VISIBLE
            and all(iou(s.boxes[i], s.boxes[j]) < REGION_MAX_IOU
                    for j in range(len(s.objs)) if s.names[j] != s.names[i]))


def negatives(s: _Scene) -> list[tuple[str, str]]:
    """The record's negatives that are truly absent (neither category nor name present)."""
    cats = {o.category for o in s.objs}
    names = {n.lower() for n in s.names}
    return [(c, n) for c, n in (s.rec.negatives or ()) if c not in cats and n.lower() not in names]


# --- the tasks -------------------------------------------------------------------------------

def _name(s: _Scene, rng) -> list[dict]:
    return [question("name", o.category, query_prompt(s.names[i]), format_box(o.box), [i])
            for i, o in enumerate(s.objs) if s.unique(i)]


def _referral(s: _Scene, rng) -> list[dict]:
    return [question("referral", o.category, query_prompt(o.referral), format_box(o.box), [i])
            for i, o in enumerate(s.objs) if o.referral != s.names[i]]


def _relation(s: _Scene, rng) -> list[dict]:
    out = []
    for i, o in enumerate(s.objs):
        found = [(a, rel) for a in range(len(s.objs)) if s.unique(a) and s.names[a] != s.names[i]
                 for rel in RELATIONS if relation_targets(s, s.names[i], rel, a) == [i]]
        if found:
            a, rel = found[int(rng.integers(len(found)))]
            ref = T.relation_phrase(rng, rel, s.names[i], s.names[a])
            out.append(question("relation", o.category, T.box_question(rng, ref), format_box(o.box), [i]))
    return out


def _attribute(s: _Scene, rng) -> list[dict]:
    out = []
    for i, o in enumerate(s.objs):
        options = [(kind, word) for kind, word in (("color", color_of(s, i)), ("size", size_of(s, i))) if word]
        if options:
            kind, word = options[int(rng.integers(len(options)))]
            name = s.names[i]
            ref = (T.color_phrase(rng, word, name) if kind == "color"
                   else T.size_phrase(rng, word, len(s.group(name)), name))
            out.append(question("attribute", o.category, T.box_question(rng, ref), format_box(o.box), [i]))
    return out


def _all(s: _Scene, rng) -> list[dict]:
    out = []
    for name in s.distinct_names():
        cat = s.category_of(name)
        if cat is not None:
            order = reading_order(s.boxes, s.group(name))
            out.append(question("all", cat, T.all_question(rng, name),
                                T.format_boxes([s.objs[i].box for i in order]), order))
    return out


def _absent(s: _Scene, rng) -> list[dict]:
    return [question("absent", c, T.absent_question(rng, n), T.absent_answer(n), []) for c, n in negatives(s)]


def _count(s: _Scene, rng) -> list[dict]:
    out = []
    for name in s.distinct_names():
        cat = s.category_of(name)
        if cat is not None:
            order = reading_order(s.boxes, s.group(name))
            out.append(question("count", cat, T.count_question(rng, name), T.count_answer(len(order), name), order))
    for c, n in negatives(s)[:1]:
        out.append(question("count", c, T.count_question(rng, n), T.count_answer(0, n), []))
    return out


def _region(s: _Scene, rng) -> list[dict]:
    return [question("region", o.category, T.region_question(rng, o.box), T.region_answer(s.names[i]), [i])
            for i, o in enumerate(s.objs) if region_clear(s, i)]


def _point(s: _Scene, rng) -> list[dict]:
    return [question("point", o.category, T.point_question(rng, s.names[i]), T.format_point(o.point), [i])
            for i, o in enumerate(s.objs) if s.unique(i) and o.point is not None]


_MAKERS = {"name": _name, "referral": _referral, "relation": _relation, "attribute": _attribute, "all": _all,
           "absent": _absent, "count": _count, "region": _region, "point": _point}


def task_rng(seed: int, task: str) -> np.random.Generator:
    """The random stream of one task's phrasings in a scene."""
    return np.random.default_rng([int(seed) & ((1 << 64) - 1), TASKS.index(task), 0x9E57])


def scene_questions(record: SceneRecord, tasks: str | Iterable[str] = TASKS, seed: int | None = None) -> list[dict]:
    """The questions of ``record`` for ``tasks`` (in :data:`TASKS` order), phrasings drawn from
    ``seed`` (default: the record's seed). Tasks that need fields the record lacks (``colors``,
    ``point``, ``negatives``: older records) ask only what the record supports."""
    chosen = parse_tasks(tasks)
    s = _Scene(record)
    base = record.seed if seed is None else seed
    return [q for task in chosen for q in _MAKERS[task](s, task_rng(base, task))]
