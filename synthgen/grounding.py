"""Grounding text and box maths (pure), shared by compose, training and evaluation.

Boxes are ``[x1, y1, x2, y2]`` in canvas pixels with ``x2``/``y2`` exclusive. The answer text
is ``[x1,y1,x2,y2]`` (integers, no spaces), the format of the PIN authors' code. The query is
:data:`PROMPT` (``In the image is {a|an} {name} located at``): :func:`query_prompt` is the whole
string, :func:`prompt_parts` the same cut at the name, for models that tokenise it in parts.
"""

from __future__ import annotations

import re
from typing import Sequence

Box = Sequence[float]

_BOX_RE = re.compile(r"\[\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*,\s*(-?\d+(?:\.\d+)?)\s*\]")


def format_box(box: Box) -> str:
    """``[x1,y1,x2,y2]`` with integer coordinates and no spaces."""
    return "[" + ",".join(str(int(round(v))) for v in box) + "]"


def parse_box(text: str) -> list[float] | None:
    """First ``[a,b,c,d]`` in ``text`` as floats (corners reordered), or ``None`` if absent."""
    m = _BOX_RE.search(text)
    if m is None:
        return None
    x1, y1, x2, y2 = (float(g) for g in m.groups())
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def intersection(a: Box, b: Box) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return max(0.0, w) * max(0.0, h)


def iou(a: Box, b: Box) -> float:
    inter = intersection(a, b)
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def overlap_ratio(a: Box, b: Box) -> float:
    """``max(inter/area(a), inter/area(b))``: the overlap measure of the composition function."""
    inter = intersection(a, b)
    if inter <= 0:
        return 0.0
    return max(inter / area(a), inter / area(b))


def scale_box(box: Box, sx: float, sy: float) -> list[float]:
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def article(word: str) -> str:
    """``a`` or ``an`` by the first letter, as the authors' text constructor does."""
    return "an" if word[:1].lower() in "aeiou" else "a"


PROMPT = "In the image is {article} {name} located at"


def prompt_parts(referral: str, art: str | None = None) -> list[str]:
    """:func:`query_prompt` cut at word boundaries: prefix, `` {referral}``, suffix.

    Tokenising the parts separately gives the same tokens as the whole string with byte-level
    BPE (words carry their leading space) and tells where the name is, for the optional name loss.
    """
    head, tail = PROMPT.split(" {name}")
    return [head.format(article=art or article(referral)), f" {referral}", tail]


def query_prompt(referral: str, art: str | None = None) -> str:
    """The prompt part of the training / evaluation text: everything before the box. ``art``
    forces the article (default: a/an by the first letter)."""
    return "".join(prompt_parts(referral, art))
