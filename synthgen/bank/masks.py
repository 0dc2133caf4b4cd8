"""Instance masks of COCO / LVIS annotations, both ways, without pycocotools (pure: numpy and Pillow):
decoded for ``bank-from-annotations``, encoded as RLE for ``export-coco``.

A ``segmentation`` is either polygons (``[[x1, y1, x2, y2, ...], ...]`` in pixel coordinates, each
filled, their union the mask) or run-length encoded (``{"size": [h, w], "counts": ...}``), the
counts either a list of run lengths (uncompressed RLE, as COCO's crowd annotations have it) or
COCO's compressed string. Runs go down the columns (column-major order), starting with a run of
zeros. The compressed string holds each count as a little-endian sequence of 5-bit groups, one
character per group (its value + 48), bit 0x20 set on every group but the last, the last group's
bit 0x10 the sign; from the third count on, a stored count is the difference to the count two
places before it.

Anything else (too few points, non-numbers, counts that do not add up to the image) is a
:class:`BadSegmentation` naming what is wrong; the caller counts it and goes on.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


class BadSegmentation(ValueError):
    """A segmentation that cannot be decoded (its message says why, in a few words)."""


def polygon_mask(polygons: Any, height: int, width: int) -> np.ndarray:
    """The union of filled ``polygons`` as a (height, width) bool mask."""
    from PIL import Image, ImageDraw

    if not isinstance(polygons, list) or not polygons:
        raise BadSegmentation("no polygon")
    canvas = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2:
            raise BadSegmentation("a polygon needs an even number of coordinates, at least 6")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in poly):
            raise BadSegmentation("a polygon coordinate is not a finite number")
        draw.polygon([(float(poly[i]), float(poly[i + 1])) for i in range(0, len(poly), 2)], fill=1, outline=1)
    return np.asarray(canvas, dtype=bool)


def rle_counts(mask: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE of a binary ``(h, w)`` mask: run lengths over the pixels in
    column-major order, alternating background and object, starting with background (a mask
    starting with an object pixel starts with a run of 0)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    ends = np.concatenate([change, [flat.size]])
    runs = np.diff(np.concatenate([[0], ends])).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def rle_string(counts: list[int]) -> str:
    """pycocotools' compressed form of RLE counts (the inverse of :func:`counts_from_string`): each
    count (from the third on, less the count two before it) in 5-bit groups, least significant
    first, 0x20 marking that more follow, offset by 48 into printable ASCII."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5  # arithmetic shift: a negative difference ends at -1
            more = x != -1 if ch & 0x10 else x != 0
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def rle_encode(mask: np.ndarray) -> dict:
    """A COCO RLE segmentation of a binary ``(h, w)`` mask (compressed counts)."""
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": rle_string(rle_counts(mask))}


def counts_from_string(text: str) -> list[int]:
    """The run lengths of a compressed RLE string (see the module doc)."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value = shift = 0
        while True:
            if pos >= len(text):
                raise BadSegmentation("the RLE string ends inside a count")
            group = ord(text[pos]) - 48
            if not 0 <= group < 64:
                raise BadSegmentation("the RLE string holds a character outside its alphabet")
            pos += 1
            value |= (group & 0x1F) << shift
            shift += 5
            if not group & 0x20:
                if group & 0x10:
                    value -= 1 << shift  # negative: sign-extend
                break
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def rle_mask(rle: Any, height: int, width: int) -> np.ndarray:
    """The (height, width) bool mask of an RLE dict (``counts`` a list or a compressed string)."""
    if not isinstance(rle, dict) or "counts" not in rle:
        raise BadSegmentation("an RLE needs counts")
    size = rle.get("size")
    if size is not None and (not isinstance(size, list) or [int(s) for s in size] != [height, width]):
        raise BadSegmentation(f"RLE size {size} is not the image's {[height, width]}")
    raw = rle["counts"]
    counts = counts_from_string(raw) if isinstance(raw, str) else raw
    if not isinstance(counts, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                               for c in counts):
        raise BadSegmentation("RLE counts must be non-negative integers")
    if sum(counts) != height * width:
        raise BadSegmentation(f"RLE counts add up to {sum(counts)}, not {height} x {width}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T


def decode(segmentation: Any, height: int, width: int) -> np.ndarray:
    """The mask of an annotation's ``segmentation`` (polygons or RLE); :class:`BadSegmentation`."""
    if isinstance(segmentation, dict):
        return rle_mask(segmentation, height, width)
    return polygon_mask(segmentation, height, width)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of ``mask`` (ties: the first in row order); empty stays empty.

    Rows are cut into runs of set pixels; runs of neighbouring rows that touch (diagonals
    included) are joined with a union-find, so the work grows with the number of runs (inside
    the mask's bounding box)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return mask.copy()
    if (rows[0], cols[0], rows[-1], cols[-1]) != (0, 0, mask.shape[0] - 1, mask.shape[1] - 1):
        out = np.zeros_like(mask, dtype=bool)
        box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        out[box] = largest_component(mask[box])
        return out
    runs: list[tuple[int, int, int]] = []          # (row, start, end) with end exclusive
    row_runs: list[list[int]] = []
    for y in range(mask.shape[0]):
        row = mask[y]
        edges = np.flatnonzero(np.diff(np.concatenate(([0], row.view(np.uint8), [0]))))
        ids = []
        for s, e in zip(edges[::2], edges[1::2]):
            ids.append(len(runs))
            runs.append((y, int(s), int(e)))
        row_runs.append(ids)
    if not runs:
        return mask.copy()
    parent = list(range(len(runs)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for y in range(1, len(row_runs)):
        above, here = row_runs[y - 1], row_runs[y]
        j = 0
        for i in here:
            _, s, e = runs[i]
            while j < len(above) and runs[above[j]][2] < s:  # ends before this run starts (no diagonal)
                j += 1
            k = j
            while k < len(above) and runs[above[k]][1] <= e:  # starts before this run ends (+1 diagonal)
                a, b = root(i), root(above[k])
                if a != b:
                    parent[max(a, b)] = min(a, b)
                k += 1
    sizes: dict[int, int] = {}
    for i, (_, s, e) in enumerate(runs):
        r = root(i)
        sizes[r] = sizes.get(r, 0) + e - s
    best = max(sizes, key=lambda r: (sizes[r], -r))
    out = np.zeros_like(mask, dtype=bool)
    for i, (y, s, e) in enumerate(runs):
        if root(i) == best:
            out[y, s:e] = True
    return out
