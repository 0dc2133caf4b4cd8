"""The evaluation protocol's maths (pure): answer parsing, size buckets, baselines, metrics.

The authors' rules: an answer without a parseable box counts as the one-cell box at the origin
(and is counted as unparseable); size buckets are measured on boxes already scaled to the
canvas, with COCO's thresholds scaled by ``canvas / 224`` (medium: area in
``[(32s)^2, (96s)^2)``, large: ``>= (96s)^2``).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from synthgen.grounding import area, parse_box

BUCKETS = ("small", "medium", "large")


def one_cell_box(canvas: int, grid: int) -> list[float]:
    c = canvas / grid
    return [0.0, 0.0, c, c]


def box_from_text(text: str, canvas: int, grid: int) -> tuple[list[float], bool]:
    """The predicted box and whether it was parseable (else the one-cell box at the origin)."""
    box = parse_box(text)
    if box is None:
        return one_cell_box(canvas, grid), False
    return box, True


def size_bucket(box: Sequence[float], canvas: int) -> str:
    """COCO size bucket of a box already scaled to the canvas, thresholds scaled by canvas/224."""
    s = canvas / 224.0
    a = area(box)
    if a < (32 * s) ** 2:
        return "small"
    if a < (96 * s) ** 2:
        return "medium"
    return "large"


def random_box(rng: np.random.Generator, canvas: int, grid: int) -> list[float]:
    """Random-box baseline: corners drawn uniformly on the grid lines, non-empty."""
    cell = canvas / grid
    xs = np.sort(rng.choice(grid + 1, size=2, replace=False)) * cell
    ys = np.sort(rng.choice(grid + 1, size=2, replace=False)) * cell
    return [float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1])]


def summarize(records: Iterable[dict], threshold: float = 0.3) -> dict:
    """n, mIoU overall and per bucket (``miou_M``, ``miou_L``, ``miou_S``), unparseable count,
    and P@threshold, from records with ``iou``, ``bucket`` and ``parsed``."""
    recs = list(records)
    out: dict = {"n": len(recs)}
    ious = [r["iou"] for r in recs]
    out["miou"] = float(np.mean(ious)) if ious else float("nan")
    for name, tag in (("small", "S"), ("medium", "M"), ("large", "L")):
        b = [r["iou"] for r in recs if r.get("bucket") == name]
        out[f"n_{tag}"] = len(b)
        out[f"miou_{tag}"] = float(np.mean(b)) if b else float("nan")
    out["unparseable"] = sum(1 for r in recs if not r.get("parsed", True))
    out[f"p@{threshold}"] = float(np.mean([i >= threshold for i in ious])) if ious else float("nan")
    return out
