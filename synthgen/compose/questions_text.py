"""The English of the question tasks (pure): noun phrases, plurals and the phrasings of each task,
and the answer texts (:mod:`.questions` decides which questions are asked).

Names are asked for as the referrals ask for them (:func:`~synthgen.compose.referral.name_phrase`:
``pair of scissors``, ``portion of hummus``), with ``the`` before them, so a question never
depends on the prompt's first-letter article; where an article is needed it goes by sound
(:func:`~synthgen.compose.referral.indefinite_article`). Plurals (:func:`plural`) pluralise the
head noun: ``pairs of scissors``, ``teddy bears``, ``knives``, ``bows (weapon)``, ``sheep``.

Answers: a box is ``[x1,y1,x2,y2]`` (:func:`synthgen.grounding.format_box`), several boxes the same
separated by one space, a point ``(x,y)``, a count ``no cups`` / ``1 cup`` / ``3 cups``, an absent
object ``There is no dog in the image.``, a region ``a cup`` / ``an apple``.
"""

from __future__ import annotations

import re
from typing import Sequence

from synthgen.compose.referral import indefinite_article, name_phrase
from synthgen.grounding import format_box, parse_box

# plural forms that the rules below would get wrong
IRREGULAR = {"person": "people", "child": "children", "mouse": "mice", "goose": "geese", "tooth": "teeth",
             "foot": "feet", "ox": "oxen", "louse": "lice", "die": "dice", "cactus": "cacti",
             "fungus": "fungi", "index": "indices", "radius": "radii", "quiz": "quizzes"}
INVARIANT = ("sheep", "deer", "fish", "moose", "bison", "salmon", "trout", "shrimp", "squid", "aircraft",
             "series", "species", "cattle", "swine", "offspring", "hovercraft", "spacecraft", "watercraft")
F_TO_VES = ("knife", "leaf", "loaf", "shelf", "wolf", "calf", "half", "scarf", "wife", "life", "thief",
            "sheaf", "elf", "hoof")
O_TO_OES = ("potato", "tomato", "hero", "echo", "torpedo", "veto", "mosquito", "buffalo", "volcano", "mango")
MAN_NOT_MEN = ("human", "caiman", "shaman", "talisman", "ottoman", "dolman", "german", "doberman")


def plural_word(word: str) -> str:
    """The plural of one (lower-case or capitalised) English noun."""
    low = word.lower()
    if low in IRREGULAR:
        return word[0] + IRREGULAR[low][1:]
    if low in INVARIANT:
        return word
    if low.endswith("man") and low not in MAN_NOT_MEN:
        return word[:-3] + word[-3] + "en"
    if low in F_TO_VES:
        return word[:-2] + "ves" if low.endswith("fe") else word[:-1] + "ves"
    if low in O_TO_OES:
        return word + "es"
    if re.search(r"[^aeiou]y$", low):
        return word[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", low):
        return word + "es"
    return word + "s"


def plural(phrase: str) -> str:
    """The plural of a noun phrase: its head noun (the last word before `` of `` or a qualifier
    in parentheses) pluralised: ``pair of scissors`` -> ``pairs of scissors``."""
    head, sep, rest = phrase.partition(" of ")
    if not sep:
        head, sep, rest = phrase.partition(" (")
    words = head.split(" ")
    words[-1] = plural_word(words[-1])
    return " ".join(words) + sep + rest


def singular_phrase(name: str) -> str:
    """The phrase ``the`` or ``a|an`` goes before (``pair of scissors``)."""
    return name_phrase(name)


def plural_phrase(name: str) -> str:
    return plural(name_phrase(name))


def with_article(name: str) -> str:
    """``a cup``, ``an apple``, ``a pair of scissors``, ``an hourglass`` (by sound)."""
    phrase = name_phrase(name)
    return f"{indefinite_article(phrase)} {phrase}"


# --- phrasings -----------------------------------------------------------------------------

# a box for one designated object; {ref} is a noun phrase without article ("cup left of the dog")
BOX = ("Where is the {ref}?", "Find the {ref}.", "Locate the {ref}.", "Give the box of the {ref}.",
       "In the image the {ref} is located at")
ALL = ("Where are all the {plural}?", "Find every {one}.", "Locate all {plural}.",
       "In the image the {plural} are located at", "Give the boxes of all {plural}.")
COUNT = ("How many {plural} are there?", "How many {plural} are in the image?", "Count the {plural}.",
         "What is the number of {plural} in the image?")
ABSENT = BOX + ("In the image is {a} {one} located at",)
REGION = ("What is at {box}?", "What is the object at {box}?", "Name the object at {box}.",
          "Which object is in the box {box}?", "What does the box {box} contain?")
POINT = ("Point to the {ref}.", "Point at the {ref}.", "Where is the {ref}? Answer with a point.",
         "Give a point on the {ref}.")

# relation -> noun-phrase templates ({t}: the target's phrase, {a}: the anchor's)
RELATION = {
    "left": ("{t} to the left of the {a}", "{t} left of the {a}", "{t} on the left of the {a}"),
    "right": ("{t} to the right of the {a}", "{t} right of the {a}", "{t} on the right of the {a}"),
    "above": ("{t} above the {a}", "{t} over the {a}", "{t} higher than the {a}"),
    "below": ("{t} below the {a}", "{t} under the {a}", "{t} beneath the {a}", "{t} lower than the {a}"),
    "nearest": ("{t} nearest the {a}", "{t} nearest to the {a}", "{t} closest to the {a}"),
}
COLOR = ("{c} {t}", "{t} that is {c}", "{c}-colored {t}")
SIZE = {  # (comparison, how many of the name) -> templates
    ("larger", 2): ("larger {t}", "bigger {t}", "larger of the two {ts}", "bigger of the two {ts}"),
    ("smaller", 2): ("smaller {t}", "smaller of the two {ts}"),
    ("larger", 3): ("largest {t}", "biggest {t}", "largest of the {ts}"),
    ("smaller", 3): ("smallest {t}", "smallest of the {ts}"),
}
ABSENT_ANSWER = "There is no {one} in the image."


def pick(rng, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]


def relation_phrase(rng, relation: str, target: str, anchor: str) -> str:
    return pick(rng, RELATION[relation]).format(t=name_phrase(target), a=name_phrase(anchor))


def color_phrase(rng, color: str, target: str) -> str:
    return pick(rng, COLOR).format(c=color, t=name_phrase(target))


def size_phrase(rng, comparison: str, n: int, target: str) -> str:
    return pick(rng, SIZE[(comparison, min(n, 3))]).format(t=name_phrase(target), ts=plural_phrase(target))


def box_question(rng, ref: str) -> str:
    return pick(rng, BOX).format(ref=ref)


def all_question(rng, name: str) -> str:
    return pick(rng, ALL).format(plural=plural_phrase(name), one=name_phrase(name))


def count_question(rng, name: str) -> str:
    return pick(rng, COUNT).format(plural=plural_phrase(name))


def absent_question(rng, name: str) -> str:
    phrase = name_phrase(name)
    return pick(rng, ABSENT).format(ref=phrase, one=phrase, a=indefinite_article(phrase))


def region_question(rng, box: Sequence[float]) -> str:
    return pick(rng, REGION).format(box=format_box(box))


def point_question(rng, name: str) -> str:
    return pick(rng, POINT).format(ref=name_phrase(name))


# --- answers -------------------------------------------------------------------------------

def format_boxes(boxes: Sequence[Sequence[float]]) -> str:
    """Several boxes: ``[x1,y1,x2,y2] [x1,y1,x2,y2]``."""
    return " ".join(format_box(b) for b in boxes)


def parse_boxes(text: str) -> list[list[float]]:
    """Every box in ``text``, in order (corners reordered as :func:`parse_box` does)."""
    out = []
    for m in re.finditer(r"\[[^\[\]]*\]", text):
        box = parse_box(m.group(0))
        if box is not None:
            out.append(box)
    return out


def format_point(point: Sequence[float]) -> str:
    return "(" + ",".join(str(int(round(v))) for v in point) + ")"


def parse_point(text: str) -> tuple[float, float] | None:
    m = re.search(r"\(\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\)", text)
    return None if m is None else (float(m.group(1)), float(m.group(2)))


def count_answer(n: int, name: str) -> str:
    if n == 0:
        return f"no {plural_phrase(name)}"
    return f"{n} {name_phrase(name) if n == 1 else plural_phrase(name)}"


def parse_count(text: str) -> int | None:
    m = re.match(r"\s*(no|\d+)\b", text)
    return None if m is None else (0 if m.group(1) == "no" else int(m.group(1)))


def absent_answer(name: str) -> str:
    return ABSENT_ANSWER.format(one=name_phrase(name))


def is_absent_answer(text: str) -> bool:
    return text.startswith("There is no ") and not parse_boxes(text)


def region_answer(name: str) -> str:
    return with_article(name)
