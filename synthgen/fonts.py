"""The font of the pictures synthgen draws (``preview``): DejaVu Sans where it is installed (the
system's, else the copy matplotlib ships), else Pillow's own; text cut or wrapped to a width."""

from __future__ import annotations

import importlib.util
import os
from functools import lru_cache


@lru_cache(maxsize=1)
def font_file() -> str | None:
    """DejaVu Sans (it has the arrows, ticks and squares of the captions), or None."""
    spec = importlib.util.find_spec("matplotlib")
    shipped = [os.path.join(p, "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
               for p in (spec.submodule_search_locations or [])] if spec else []
    for path in ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", *shipped]:
        if os.path.isfile(path):
            return path
    return None


def font(size: int):
    """``(font, unicode)``: a font of ``size`` px and whether it draws ``→ ✓ ✗ ■``."""
    from PIL import ImageFont

    path = font_file()
    if path:
        return ImageFont.truetype(path, size), True
    try:
        return ImageFont.load_default(size=size), False
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default(), False


def fit_text(draw, text: str, font, max_width: int) -> str:
    """``text``, cut with an ellipsis so that it is at most ``max_width`` px wide."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return text + "…"


def wrap_text(draw, text: str, font, max_width: int) -> list[str]:
    """``text`` in lines of at most ``max_width`` px, broken at spaces (a word too long for a
    line is cut)."""
    lines: list[str] = []
    cur = ""
    for word in text.split(" "):
        trial = f"{cur} {word}" if cur else word
        if draw.textlength(trial, font=font) <= max_width:
            cur = trial
            continue
        if cur:
            lines.append(cur)
        cur = fit_text(draw, word, font, max_width)
    if cur:
        lines.append(cur)
    return lines
