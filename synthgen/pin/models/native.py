"""Boxes in the VLMs' own grounding answers (``eval-pin --baseline native``). Pure: no I/O.

- PaliGemma (``detect {name}``): ``<locY1><locX1><locY2><locX2> {name}`` with ``<loc0000>``..
  ``<loc1023>``, each the coordinate over 1024 bins of the image side (y before x, big_vision's
  order); several objects are separated by `` ; ``: the first one is taken.
- Qwen2.5-VL (its grounding prompt asks for JSON): ``[{"bbox_2d": [x1, y1, x2, y2], "label": ...}]``
  (usually in a ```` ```json ```` fence), absolute pixels of the image the model was given: the
  canvas, as PIN's adapters pin its resolution to it. The first ``bbox_2d`` is taken.

Both return ``[x1, y1, x2, y2]`` on the canvas (corners ordered, clipped to it) or None.
"""

from __future__ import annotations

import re

_LOC4 = re.compile(r"<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>\s*<loc(\d{4})>")
_NUM = r"\s*(-?\d+(?:\.\d+)?)\s*"
_BBOX_2D = re.compile(r"[\"']bbox_2d[\"']\s*:\s*\[" + ",".join([_NUM] * 4) + r"\]")


def _ordered(x1: float, y1: float, x2: float, y2: float, canvas: int) -> list[float]:
    def clip(v: float) -> float:
        return float(min(max(v, 0.0), canvas))

    return [clip(min(x1, x2)), clip(min(y1, y2)), clip(max(x1, x2)), clip(max(y1, y2))]


def loc_tokens_to_box(text: str, canvas: int, bins: int = 1024) -> list[float] | None:
    """The first ``<locY1><locX1><locY2><locX2>`` of a PaliGemma answer as a canvas box."""
    m = _LOC4.search(text)
    if m is None:
        return None
    y1, x1, y2, x2 = (int(g) * canvas / bins for g in m.groups())
    return _ordered(x1, y1, x2, y2, canvas)


def bbox_2d_to_box(text: str, canvas: int) -> list[float] | None:
    """The first ``"bbox_2d": [x1, y1, x2, y2]`` of a Qwen2.5-VL answer as a canvas box."""
    m = _BBOX_2D.search(text)
    if m is None:
        return None
    x1, y1, x2, y2 = (float(g) for g in m.groups())
    return _ordered(x1, y1, x2, y2, canvas)
