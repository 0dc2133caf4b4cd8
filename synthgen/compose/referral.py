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

The text of a referral (``grammar``) either follows the authors' templates (``authors``:
``{pos} {name}``, ``{name} {pos}``, ``{name} on {pos}`` for every word, so ``below cup`` and
``cup on below``) or is a noun phrase that reads as English after the article of the prompt
``In the image is a|an {referral} located at`` (``grammatical``: ``cup on the left``, ``lower
cup``, ``cup in the middle``). The prompt's article is the authors' first-letter rule
(:func:`synthgen.grounding.article`, shared with evaluation), so the grammatical phrases are built
for it: names that take no indefinite article get a partitive (``pair of scissors``, ``portion of
hummus``), names whose first letter misleads the rule (``unicycle``, ``hourglass``) a modifier
first (``left-hand unicycle``). Only the text differs: the relation, and so the object a referral
designates, is the same in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from synthgen.grounding import article, overlap_ratio

# canonical relation -> surface words (the authors' synonyms)
RELATIVE_WORDS = {
    "left": ("left",),
    "right": ("right",),
    "top": ("top", "above"),
    "bottom": ("below",),
    "middle": ("middle", "center"),
    "front": ("before", "in front"),
    "behind": ("behind",),
}
ABSOLUTE_WORDS = {
    "left": ("left",),
    "right": ("right",),
    "top": ("top",),
    "bottom": ("bottom",),
    "middle": ("middle", "center"),
}
# the authors' templates (QUVA-Lab/PIN synthetic_dataloader.py), the same for every relation word
SPATIAL_TEMPLATES = ("{pos} {name}", "{name} {pos}", "{name} on {pos}")
ABSOLUTE_TEMPLATES = ("{pos} {name}", "{name} {pos}", "{name} on {pos}", "{name} at the {pos}")

GRAMMARS = ("grammatical", "authors")

# grammatical: per relation, noun phrases that follow "a|an" (the prompt's article); {name} is
# the name phrase (:func:`name_phrase`). Phrases that start with a modifier are listed last.
GRAMMATICAL_RELATIVE = {
    "left": ("{name} on the left", "{name} to the left", "left-hand {name}"),
    "right": ("{name} on the right", "{name} to the right", "right-hand {name}"),
    "top": ("{name} at the top", "{name} on top", "{name} higher up", "upper {name}"),
    "bottom": ("{name} at the bottom", "{name} below", "{name} lower down", "lower {name}"),
    "middle": ("{name} in the middle", "{name} in the center", "middle {name}", "central {name}"),
    "front": ("{name} in front", "{name} in the front", "front {name}"),
    "behind": ("{name} behind", "{name} at the back", "{name} in the back", "rear {name}"),
}
# absolute positions (image thirds) of a unique object: "an upper cup" would suggest another cup,
# so a modifier comes first only where the name cannot (ABSOLUTE_MODIFIER)
GRAMMATICAL_ABSOLUTE = {
    "left": ("{name} on the left", "{name} on the left side", "{name} at the left"),
    "right": ("{name} on the right", "{name} on the right side", "{name} at the right"),
    "top": ("{name} at the top", "{name} near the top"),
    "bottom": ("{name} at the bottom", "{name} near the bottom"),
    "middle": ("{name} in the middle", "{name} in the center"),
}
ABSOLUTE_MODIFIER = {"left": "left-hand {name}", "right": "right-hand {name}", "top": "upper {name}",
                     "bottom": "lower {name}", "middle": "central {name}"}

# names without a singular: "a scissors" is wrong, "a pair of scissors" right (also when the
# name ends in one of them: "sweat pants", "sunglasses")
PAIR_NOUNS = ("scissors", "trousers", "jeans", "glasses", "pliers", "tongs", "shorts", "pants",
              "binoculars", "goggles", "shears", "clippers", "spectacles", "tights", "pajamas",
              "pyjamas", "overalls", "suspenders", "underdrawers", "leggings", "headphones",
              "earphones", "earmuffs", "tweezers", "handcuffs", "underpants", "knickers", "slacks",
              "chopsticks", "underwear")
# mass nouns and plural names of things counted by the portion (LVIS names where known)
PARTITIVES = {
    "bread": "loaf of", "toast": "slice of", "french toast": "slice of", "asparagus": "bunch of",
    "celery": "stalk of", "garlic": "bulb of", "sushi": "piece of", "jewelry": "piece of",
    "chain mail": "piece of", "tinsel": "strand of", "money": "pile of",
}
MASS_NOUNS = ("applesauce", "butter", "coleslaw", "grits", "honey", "hummus", "jam", "salsa", "yogurt",
              "whipped cream", "sour cream", "shaving cream", "peanut butter", "milk", "chocolate milk",
              "soya milk", "orange juice", "fruit juice", "olive oil", "hot sauce", "tabasco sauce",
              "root beer", "spinach", "rice", "popcorn", "oatmeal", "ketchup", "mustard", "mayonnaise",
              "gravy", "cereal", "granola", "pasta", "spaghetti", "brussels sprouts", "french fries",
              "noodles", "cornflakes")
# the sound, not the letter, decides a|an: vowel letters read as "yu"/"w" and silent h
CONSONANT_SOUND_PREFIXES = ("uni", "uri", "use", "usu", "ute", "uku", "eu", "ewe", "one")
VOWEL_SOUND_PREFIXES = ("hour", "honest", "honor", "honour", "heir", "herb")


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


def _base(name: str) -> str:
    return name.split(" (")[0].strip().lower()


def name_phrase(name: str) -> str:
    """The name as a singular noun phrase that takes ``a|an``: ``scissors`` -> ``pair of scissors``,
    ``hummus`` -> ``portion of hummus``, ``bread`` -> ``loaf of bread``, others unchanged."""
    base = _base(name)
    if base in PARTITIVES:
        return f"{PARTITIVES[base]} {name}"
    if base in MASS_NOUNS:
        return f"portion of {name}"
    last = base.split()[-1] if base else base
    if any(last == w or (last.endswith(w) and len(last) > len(w)) for w in PAIR_NOUNS):
        return f"pair of {name}"
    return name


def indefinite_article(phrase: str) -> str:
    """``a`` or ``an`` by the sound of the phrase's first word (``a unicycle``, ``an hourglass``)."""
    w = phrase.lower()
    if w.startswith(VOWEL_SOUND_PREFIXES):
        return "an"
    if w.startswith(CONSONANT_SOUND_PREFIXES):
        return "a"
    return "an" if w[:1] in "aeiou" else "a"


def grammatical_templates(kind: str, relation: str, name: str) -> tuple[str, ...]:
    """The grammatical phrases (``{name}`` unfilled) that ``name`` may get for a relation: those
    where the prompt's first-letter article is the one the phrase's sound asks for."""
    phrase = name_phrase(name)
    name_first_ok = article(phrase) == indefinite_article(phrase)  # the prompt's article is right
    if kind == "relative":
        tmpls = GRAMMATICAL_RELATIVE[relation]
        return tmpls if name_first_ok else tuple(t for t in tmpls if not t.startswith("{name}"))
    if kind == "absolute":
        return GRAMMATICAL_ABSOLUTE[relation] if name_first_ok else (ABSOLUTE_MODIFIER[relation],)
    raise ValueError(f"unknown referral kind {kind!r}")


def _grammatical(rng: np.random.Generator, kind: str, relation: str, name: str) -> str:
    tmpls = grammatical_templates(kind, relation, name)
    return tmpls[int(rng.integers(len(tmpls)))].format(name=name_phrase(name))


def referral_texts(kind: str, relation: str, name: str, grammar: str) -> set[str]:
    """Every text ``grammar`` may give a referral of ``kind``/``relation`` to ``name``."""
    if grammar == "grammatical":
        return {t.format(name=name_phrase(name)) for t in grammatical_templates(kind, relation, name)}
    if grammar != "authors":
        raise ValueError(f"unknown referral grammar {grammar!r}")
    words, tmpls = ((ABSOLUTE_WORDS[relation], ABSOLUTE_TEMPLATES) if kind == "absolute"
                    else (RELATIVE_WORDS[relation], SPATIAL_TEMPLATES))
    return {t.format(pos=w, name=name) for w in words for t in tmpls}


def relation_of(text: str, name: str) -> str | None:
    """The relation a referral text of either grammar names for ``name`` (None: the plain name
    or a text neither grammar writes). Used to count referrals by relation in scene shards."""
    for grammar in GRAMMARS:
        for kind, rels in (("relative", RELATIVE_WORDS), ("absolute", ABSOLUTE_WORDS)):
            for rel in rels:
                if text in referral_texts(kind, rel, name, grammar):
                    return rel
    return None


def make_referral(rng: np.random.Generator, target: int, names: Sequence[str],
                  boxes: Sequence[Sequence[float]], *, width: float, height: float, margin: float,
                  absolute_p: float = 0.0, depth_overlap: float = 0.75,
                  grammar: str = "grammatical") -> Referral | None:
    """A referral that designates exactly ``target``, or ``None`` if the rules allow none; its
    text in ``grammar`` (``grammatical`` or the ``authors``' templates, drawn from ``rng``)."""
    if grammar not in GRAMMARS:
        raise ValueError(f"unknown referral grammar {grammar!r}")
    name = names[target]
    group = [i for i, n in enumerate(names) if n == name]
    kw = dict(width=width, height=height, margin=margin, depth_overlap=depth_overlap)
    if len(group) == 1:
        ref = Referral(name)
        if absolute_p > 0 and rng.random() < absolute_p:
            rel = thirds_position(boxes[target], width, height)
            text = (_grammatical(rng, "absolute", rel, name) if grammar == "grammatical"
                    else _render(rng, name, ABSOLUTE_WORDS[rel], ABSOLUTE_TEMPLATES))
            ref = Referral(name, "absolute", rel, text)
        return ref if referred(ref, names, boxes, **kw) == [target] else None
    first = preferred_relation(target, group, boxes, depth_overlap)
    order = [first] + [r for r in RELATIVE_WORDS if r != first]
    for rel in order:
        cand = Referral(name, "relative", rel)
        if referred(cand, names, boxes, **kw) == [target]:
            if grammar == "grammatical":
                return Referral(name, "relative", rel, _grammatical(rng, "relative", rel, name))
            return Referral(name, "relative", rel, _render(rng, name, RELATIVE_WORDS[rel], SPATIAL_TEMPLATES))
    return None
