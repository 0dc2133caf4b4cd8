"""What compose records about an object for the question tasks (pure; numpy): the colour names of
its opaque pixels, a point inside its visible pixels, and absent categories (hard negatives).

* :func:`color_shares` names every pixel with one of :data:`COLOR_TERMS` (the eleven basic colour
  terms) by hue, saturation and value, and returns the share of each term that covers at least
  :data:`MIN_SHARE` of the pixels: ``{"red": 0.62, "white": 0.21}``. A colour question asks for a
  term only where it covers most of the target and almost none of the others (:mod:`.questions`).
* :func:`interior_point` is the visible pixel deepest inside the object's visible region (the
  last pixels left by repeated 3x3 erosion, the one nearest their mean), so a point answer lies
  well inside the mask, never on an edge where a pixel's owner is uncertain.
* :func:`hard_negatives` draws categories of the bank whose names are not in the scene, those
  that share a word or a part of a word with a present name first (``teacup`` for ``cup``,
  ``coffee table`` for ``table``): the near misses a grounding model must refuse.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np

# the eleven basic colour terms (Berlin & Kay), in the order ties are broken
COLOR_TERMS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray")
MIN_SHARE = 0.1            # terms covering less of an object are not recorded
# hue (degrees) upper bounds of the chromatic terms, in order around the circle
_HUES = ((15.0, "red"), (45.0, "orange"), (70.0, "yellow"), (170.0, "green"), (260.0, "blue"),
         (300.0, "purple"), (345.0, "pink"), (360.0, "red"))


def color_terms(rgb: np.ndarray) -> np.ndarray:
    """The index into :data:`COLOR_TERMS` of each pixel of ``rgb`` (``(..., 3)`` uint8)."""
    px = np.asarray(rgb, dtype=np.float64).reshape(-1, 3) / 255.0
    mx, mn = px.max(1), px.min(1)
    chroma = mx - mn
    sat = np.where(mx > 0, chroma / np.maximum(mx, 1e-9), 0.0)
    r, g, b = px[:, 0], px[:, 1], px[:, 2]
    safe = np.maximum(chroma, 1e-9)
    hue = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    hue = hue * 60.0
    out = np.zeros(len(px), dtype=np.int64)
    bounds = np.array([h for h, _ in _HUES])
    names = [COLOR_TERMS.index(n) for _, n in _HUES]
    out[:] = np.array(names)[np.minimum(np.searchsorted(bounds, hue, side="right"), len(names) - 1)]
    idx = COLOR_TERMS.index
    # light, weakly saturated reds and purples read as pink; dark oranges and reds as brown
    out[((hue < 15) | (hue >= 300)) & (sat < 0.5) & (mx > 0.7)] = idx("pink")
    out[(hue >= 10) & (hue < 45) & (mx < 0.8)] = idx("brown")
    grey = (sat < 0.18) | (chroma < 0.08)
    out[grey] = idx("gray")
    out[grey & (mx > 0.8)] = idx("white")
    out[(mx < 0.2) | (grey & (mx < 0.3))] = idx("black")
    return out.reshape(np.shape(rgb)[:-1])


def color_shares(rgb: np.ndarray) -> dict[str, float]:
    """``{term: share}`` of the pixels ``rgb`` (``(n, 3)`` uint8), the terms covering at least
    :data:`MIN_SHARE`, largest first (ties in :data:`COLOR_TERMS` order), shares to 3 decimals."""
    terms = color_terms(np.asarray(rgb).reshape(-1, 3))
    if terms.size == 0:
        return {}
    counts = np.bincount(terms, minlength=len(COLOR_TERMS)) / terms.size
    order = sorted(range(len(COLOR_TERMS)), key=lambda k: (-counts[k], k))
    return {COLOR_TERMS[k]: round(float(counts[k]), 3) for k in order if counts[k] >= MIN_SHARE}


def object_colors(rgba: np.ndarray, opaque: np.ndarray) -> dict[str, float]:
    """The colour shares of a fitted cut-out's own opaque pixels (its colours, occluded or not)."""
    return color_shares(np.asarray(rgba)[..., :3][np.asarray(opaque, dtype=bool)])


def interior_point(mask: np.ndarray) -> tuple[int, int] | None:
    """``(x, y)`` of a pixel of ``mask`` (2-D bool) deepest inside it, ``None`` when it is empty."""
    cur = np.asarray(mask, dtype=bool)
    if not cur.any():
        return None
    while True:
        pad = np.pad(cur, 1, constant_values=False)
        eroded = cur.copy()
        for dy in (0, 1, 2):
            for dx in (0, 1, 2):
                eroded &= pad[dy:dy + cur.shape[0], dx:dx + cur.shape[1]]
        if not eroded.any():
            break
        cur = eroded
    ys, xs = np.nonzero(cur)
    my, mx = ys.mean(), xs.mean()
    k = int(np.argmin((ys - my) ** 2 + (xs - mx) ** 2))   # first of the nearest, in row-major order
    return int(xs[k]), int(ys[k])


@lru_cache(maxsize=8192)
def _words(name: str) -> frozenset[str]:
    return frozenset(w for w in name.lower().replace("(", " ").replace(")", " ").replace("_", " ").split() if len(w) > 2)


def close_names(a: str, b: str) -> bool:
    """Whether two names look alike: a shared word, or one's word inside the other's (cup/teacup)."""
    wa, wb = _words(a), _words(b)
    return bool(wa & wb) or any(x in y or y in x for x in wa for y in wb if min(len(x), len(y)) >= 3)


def hard_negatives(rng: np.random.Generator, present: Sequence[tuple[str, str]],
                   vocabulary: Sequence[tuple[str, str]], k: int = 3) -> list[tuple[str, str]]:
    """Up to ``k`` ``(category, name)`` pairs of ``vocabulary`` absent from the scene (neither the
    category nor the name of any ``present`` pair), names close to a present one first (at most
    ``k - 1`` of those, so a plain negative is drawn too where the bank has one)."""
    cats = {c for c, _ in present}
    names = {n.lower() for _, n in present}
    seen: set[str] = set()
    pool = []
    for c, n in vocabulary:
        if c in cats or n.lower() in names or n.lower() in seen:
            continue
        seen.add(n.lower())
        pool.append((c, n))
    near = [any(close_names(n, m) for _, m in present) for _, n in pool]
    close = [p for p, c in zip(pool, near) if c]
    far = [p for p, c in zip(pool, near) if not c]
    out = []
    for group, limit in ((close, max(k - 1, 1)), (far, k)):
        take = min(limit, len(group), k - len(out))
        if take > 0:
            out += [group[i] for i in sorted(rng.choice(len(group), size=take, replace=False).tolist())]
    return out
