"""Layout maths of the composition function C (pure: numpy only, no I/O).

Everything is in whole grid cells. A box is ``(c1, r1, c2, r2)`` in cells with ``c2``/``r2``
exclusive, so in canvas pixels it is ``cells * cell_size`` and lies on grid lines.

For a scene of ``n`` objects the longer side ``L`` of each object spans
``round(s_min[n-1]*G) + 1 .. round(s_max[n-1]*G)`` cells, as in the authors' code (which draws
``s = randint(gmin, gmax - 1)`` and pastes ``s + 1`` cells): 6-16 / 4-16 / 3-16 cells for
n = 1 / 2 / 3 at G = 16, full-canvas objects included. The shorter side follows the cut-out's
aspect ratio (at least one cell; the authors add one cell to it as well, which distorts it). A position is valid
when the box lies inside the canvas and ``sum_j max(inter/area_new, inter/area_j) <= o_max``
over the already placed boxes. Unlike the authors' code, a new box may also not leave any
earlier box with less than ``min_visible`` of its cells uncovered, and when no valid position
exists after ``size_retries`` sizes the object is dropped (never pasted against the rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Sequence

import numpy as np

from synthgen.compose.config import LayoutParams

CellBox = tuple[int, int, int, int]

DROP_NO_POSITION = "no_position"


@dataclass
class Layout:
    """Result of placing the objects of one scene."""

    boxes: list[CellBox] = field(default_factory=list)  # in paste order
    placed: list[int] = field(default_factory=list)     # index of the input object of each box
    dropped: list[tuple[int, str]] = field(default_factory=list)  # (input index, reason)


def draw_count(rng: np.random.Generator, p: LayoutParams) -> int:
    """Number of objects n: uniform in 1..a_max, or a_max with ``fixed_count``."""
    return p.a_max if p.fixed_count else int(rng.integers(1, p.a_max + 1))


def long_side_range(n: int, p: LayoutParams) -> tuple[int, int]:
    """``[lo, hi)`` range of the longer side in cells for a scene of ``n`` objects: the
    authors' ``round(s_min*G) + 1 .. round(s_max*G)`` (see the module doc), within the grid."""
    lo = min(int(round(p.s_min[n - 1] * p.grid)) + 1, p.grid)
    hi = min(int(round(p.s_max[n - 1] * p.grid)) + 1, p.grid + 1)
    return lo, max(hi, lo + 1)


def box_shape(long_side: int, aspect: float) -> tuple[int, int]:
    """(width, height) in cells for a longer side and an aspect ratio width/height."""
    if aspect >= 1.0:
        return long_side, max(1, int(round(long_side / aspect)))
    return max(1, int(round(long_side * aspect))), long_side


def aspect_error(shape: tuple[int, int], aspect: float) -> float:
    """Relative change of the aspect ratio caused by rounding to whole cells."""
    w, h = shape
    return abs((w / h) / aspect - 1.0)


@lru_cache(maxsize=65536)
def size_candidates(n: int, aspect: float, p: LayoutParams) -> np.ndarray:
    """Longer sides allowed for this object: those whose grid rounding keeps the aspect within
    ``max_aspect_error``; if none does, the ones with the smallest error. (A pure function of
    its arguments, memoised: a bank has a few thousand aspect ratios; the array is read-only.)"""
    out = _size_candidates(n, aspect, p)
    out.flags.writeable = False
    return out


def _size_candidates(n: int, aspect: float, p: LayoutParams) -> np.ndarray:
    lo, hi = long_side_range(n, p)
    sides = np.arange(lo, hi)
    errs = np.array([aspect_error(box_shape(int(s), aspect), aspect) for s in sides])
    ok = sides[errs <= p.max_aspect_error + 1e-12]
    if ok.size:
        return ok
    return sides[errs <= errs.min() + 1e-12]


def _window_sums(mask: np.ndarray, w: int, h: int) -> np.ndarray:
    """Sum of ``mask`` over every ``h x w`` window fully inside it: shape (G-h+1, G-w+1)."""
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    ii[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    return ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]


def _overlaps(box: CellBox, w: int, h: int, grid: int) -> np.ndarray:
    """Cells shared by ``box`` and every ``h x w`` window inside the grid, shape (G-h+1, G-w+1):
    the window sums of the box's mask, as the product of the overlaps along each axis."""
    x = np.arange(grid - w + 1)
    y = np.arange(grid - h + 1)
    ox = np.maximum(np.minimum(x + w, box[2]) - np.maximum(x, box[0]), 0)
    oy = np.maximum(np.minimum(y + h, box[3]) - np.maximum(y, box[1]), 0)
    return oy[:, None] * ox[None, :]


def _rect_mask(box: CellBox, grid: int) -> np.ndarray:
    m = np.zeros((grid, grid), dtype=bool)
    m[box[1]:box[3], box[0]:box[2]] = True
    return m


def box_area(box: CellBox) -> int:
    return (box[2] - box[0]) * (box[3] - box[1])


def valid_positions(shape: tuple[int, int], boxes: Sequence[CellBox], p: LayoutParams,
                    uncovered: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Boolean map (rows = top cell, cols = left cell) of positions where a ``shape`` box obeys
    the overlap rule against ``boxes`` and leaves each earlier box ``min_visible`` uncovered."""
    w, h = shape
    g = p.grid
    ok = np.ones((g - h + 1, g - w + 1), dtype=bool)
    if not boxes:
        return ok
    area_new = w * h
    total = np.zeros(ok.shape, dtype=np.float64)
    if uncovered is None:
        uncovered = visible_cells(boxes, g)
    for box, unc in zip(boxes, uncovered):
        inter = _overlaps(box, w, h, g)
        a = box_area(box)
        total += np.maximum(inter / area_new, inter / a)
        still = unc.sum() - _window_sums(unc, w, h)
        ok &= still >= p.min_visible * a - 1e-9
    ok &= total <= p.o_max + 1e-9
    return ok


def visible_cells(boxes: Sequence[CellBox], grid: int) -> list[np.ndarray]:
    """For each box, the boolean map of its cells not covered by any later box."""
    out = []
    for i, box in enumerate(boxes):
        m = _rect_mask(box, grid)
        for later in boxes[i + 1:]:
            m &= ~_rect_mask(later, grid)
        out.append(m)
    return out


def place_objects(rng: np.random.Generator, aspects: Sequence[float], p: LayoutParams) -> Layout:
    """Place objects with the given aspect ratios (width/height) in order; see module doc."""
    n = len(aspects)
    layout = Layout()
    uncovered: list[np.ndarray] = []
    for idx, aspect in enumerate(aspects):
        cands = size_candidates(n, float(aspect), p)
        chosen = None
        for _ in range(p.size_retries):
            shape = box_shape(int(cands[rng.integers(len(cands))]), float(aspect))
            ok = valid_positions(shape, layout.boxes, p, uncovered)
            ys, xs = np.nonzero(ok)
            if len(ys):
                k = int(rng.integers(len(ys)))
                x, y = int(xs[k]), int(ys[k])
                chosen = (x, y, x + shape[0], y + shape[1])
                break
        if chosen is None:
            layout.dropped.append((idx, DROP_NO_POSITION))
            continue
        new = _rect_mask(chosen, p.grid)
        uncovered = [u & ~new for u in uncovered] + [new]
        layout.boxes.append(chosen)
        layout.placed.append(idx)
    return layout


def cells_to_pixels(box: CellBox, cell: int) -> list[int]:
    return [int(v) * cell for v in box]
