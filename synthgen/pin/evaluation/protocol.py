"""The evaluation protocol's maths (pure): answer parsing, ground-truth boxes on the canvas, size
buckets, baselines, metrics, and the options that choose between the authors' rules and ours.

Defaults follow the PIN authors' evaluation code (QUVA-Lab/PIN ``eval_dloaders/``,
``utils/grid_codec.py``, ``trainer.py``); every other rule is an option, recorded in
``metrics.json`` (:meth:`EvalProtocol.record`) so that numbers say how they were made.

* Parsing (``parse``): ``strict`` is ``GridCodec.decode``: the first `` [a,b,c,d]`` (with the
  space before the bracket) whose four values are grid-line names (:func:`grid_line_names`),
  ``a``/``b`` not the last line, ``c``/``d`` not the first, ``a < c`` and ``b < d``; the box is
  the lines' indices times ``ceil(canvas / grid)`` (far corner capped at the canvas). ``lenient``
  is :func:`synthgen.grounding.parse_box`: the first bracketed four numbers anywhere, corners
  reordered. An answer either rule rejects counts as the one-cell box at the origin.
* Ground-truth boxes (``gt_boxes``): ``authors`` scales and truncates as their loaders do
  (:func:`coco_box_on_canvas`, :func:`voc_box_on_canvas`); ``exact`` scales the box as floats.
* Size buckets are measured on the ground-truth boxes on the canvas, COCO's thresholds scaled by
  ``canvas / 224`` (medium: area in ``[(32s)^2, (96s)^2)``, large: ``>= (96s)^2``).
* Baselines: ``random`` is the paper's (a ground-truth box of another image of the same set,
  :class:`OtherImageBoxes`); ``uniform`` draws corners uniformly on the grid lines; ``native`` asks
  the VLM (PIN off) with its own grounding prompt (:mod:`synthgen.pin.models.native` reads the box);
  ``in-context`` shows OpenFlamingo (PIN off) ``shots`` context images of the set with their boxes
  (:mod:`.incontext`), ``repeats`` times (:func:`summarize_repeats`: mean +- std).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Callable, Hashable, Iterable, Sequence

import numpy as np

from synthgen.errors import UserError
from synthgen.grounding import area, parse_box

BUCKETS = ("small", "medium", "large")

ARTICLES = ("auto", "a")
NAMES = ("strip", "raw")
CROWD = ("query", "skip")
GT_BOXES = ("authors", "exact")
PARSERS = ("strict", "lenient")
# random: a GT box of another image (the paper's); uniform: a grid box; prior: the best constant box
# of the other half of the set; raw: the run's VLM without PIN, PIN's prompt; native: the VLM's own
# grounding output (PaliGemma, Qwen2.5-VL); in-context: OpenFlamingo without PIN, shown K context images
# of the set with their boxes before the query (:mod:`.incontext`)
BASELINES = ("random", "uniform", "prior", "raw", "native", "in-context")
MODEL_BASELINES = ("raw", "native", "in-context")  # the VLM answers (generation settings apply)
REFCOCO_SENTENCES = ("last", "all")


# --- options -------------------------------------------------------------------------------

@dataclass
class EvalProtocol:
    """How eval-pin turns a set into queries and answers into boxes (the authors' by default)."""

    article: str = "auto"            # a/an by the first letter | "a" always
    names: str = "strip"             # COCO-format names: "bow_(weapon)" -> "bow" | raw: "bow (weapon)"
    crowd: str = "query"             # COCO iscrowd annotations: queried | skip: counted, not queried
    gt_boxes: str = "authors"        # scaled and truncated as the authors' loaders | exact floats
    parse: str = "strict"            # GridCodec.decode | lenient: any [a,b,c,d]
    baseline: str | None = None      # None: the model | random: GT box of another image | uniform
    max_objects: int = 3             # images with 1..N annotated objects
    refcoco_sentences: str = "last"  # one query per ref (last sentence, raw) | all: each sentence
    seed: int = 0                    # of the baselines
    num_beams: int = 3
    max_new_tokens: int = 12
    shots: int = 2                   # in-context: context images per query
    repeats: int = 10                # in-context: draws of the contexts (seeds (seed, r))

    def problems(self) -> list[str]:
        out = []
        for flag, value, allowed in (("--article", self.article, ARTICLES), ("--names", self.names, NAMES),
                                     ("--crowd", self.crowd, CROWD), ("--gt-boxes", self.gt_boxes, GT_BOXES),
                                     ("--parse", self.parse, PARSERS),
                                     ("--refcoco-sentences", self.refcoco_sentences, REFCOCO_SENTENCES)):
            if value not in allowed:
                out.append(f"{flag} must be one of {', '.join(allowed)} (got {value!r})")
        if self.baseline is not None and self.baseline not in BASELINES:
            out.append(f"--baseline must be one of {', '.join(BASELINES)} (got {self.baseline!r})")
        for flag, value in (("--max-objects", self.max_objects), ("--num-beams", self.num_beams),
                            ("--max-new-tokens", self.max_new_tokens), ("--shots", self.shots),
                            ("--repeats", self.repeats)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                out.append(f"{flag} must be an integer >= 1 (got {value!r})")
        return out

    @property
    def art(self) -> str | None:
        """The article to force (None: a/an by the first letter)."""
        return None if self.article == "auto" else self.article

    def record(self, kind: str, canvas: int, grid: int) -> dict:
        """The options that shaped the numbers of a ``kind`` set (``coco-json``, ``voc``,
        ``refcoco``), for ``metrics.json``; options that do not apply to the kind are left out."""
        d = asdict(self)
        if kind != "coco-json":
            d.pop("names")
            d.pop("crowd")
        if kind != "refcoco":
            d.pop("refcoco_sentences")
        else:
            d.pop("max_objects")
        if self.baseline not in (None, *MODEL_BASELINES):  # no model: the generation settings played no part
            d.pop("num_beams")
            d.pop("max_new_tokens")
        if self.baseline != "in-context":
            d.pop("shots")
            d.pop("repeats")
        return {"set_kind": kind, **d, "canvas": canvas, "grid": grid}

    def label(self, kind: str) -> str:
        """The name of what is scored, for the output folder: ``model`` or ``random-baseline``
        (``uniform-baseline``, ``native-baseline``; ``in-context-baseline+shots-K`` always names K),
        then every choice that differs from the authors' protocol and applies to ``kind``, e.g.
        ``model+parse-lenient+article-a``."""
        who = f"{self.baseline}-baseline" if self.baseline else "model"
        if self.baseline == "in-context":
            who += f"+shots-{self.shots}" + (f"+repeats-{self.repeats}" if self.repeats != 10 else "")
        default = EvalProtocol()
        rec, base = self.record(kind, 0, 0), default.record(kind, 0, 0)
        changed = [f"{k.replace('_', '-')}-{v}" for k, v in rec.items()
                   if k not in ("set_kind", "canvas", "grid", "baseline") and k in base and v != base[k]
                   and not (k == "seed" and not self.baseline)]
        return "+".join([who, *changed])

    def summary_line(self, kind: str, canvas: int, grid: int) -> str:
        """:meth:`record` as one ``key=value`` line (the CLI prints it under the table)."""
        return " ".join(f"{k}={'model' if k == 'baseline' and v is None else v}"
                        for k, v in self.record(kind, canvas, grid).items())


# --- names ---------------------------------------------------------------------------------

def class_name(raw: str, names: str = "strip") -> str:
    """A category name as queried. ``strip`` (the authors' LVIS rule, applied to every COCO-format
    set): ``_`` -> space, then everything from the first `` (`` on is dropped
    (``bow_(weapon)`` -> ``bow``); ``raw`` keeps the qualifier (``bow (weapon)``). Both collapse
    runs of white space (no LVIS/COCO name has any); the result may be empty (a bad category)."""
    text = raw.replace("_", " ")
    if names == "strip":
        text = text.split(" (")[0]
    return " ".join(text.split())


# --- ground-truth boxes on the canvas ------------------------------------------------------

def coco_box_on_canvas(xywh: Sequence[float], width: float, height: float, canvas: int,
                       rule: str = "authors") -> list[float]:
    """A COCO ``[x, y, w, h]`` box of a ``width`` x ``height`` image on the square canvas.

    ``authors`` (their ``Resize`` + ``coco_get_bboxes``, also RefCOCO's ``Resize`` +
    ``get_bboxes``): ``x, y, w, h`` are each scaled by their axis ratio and truncated with
    ``int()``, then ``[x, y, min(x + w, canvas - 1), min(y + h, canvas - 1)]``. ``exact``: the
    corners ``x, y, x + w, y + h`` scaled as floats."""
    x, y, w, h = xywh
    if rule == "exact":
        sx, sy = canvas / width, canvas / height
        return [x * sx, y * sy, (x + w) * sx, (y + h) * sy]
    if rule != "authors":
        raise ValueError(f"unknown ground-truth box rule {rule!r}")
    rw, rh = canvas / width, canvas / height
    x, y, w, h = int(x * rw), int(y * rh), int(w * rw), int(h * rh)
    return [float(x), float(y), float(min(x + w, canvas - 1)), float(min(y + h, canvas - 1))]


def voc_box_on_canvas(box: Sequence[float], width: float, height: float, canvas: int,
                      rule: str = "authors") -> list[float]:
    """A VOC ``xmin, ymin, xmax, ymax`` box (1-based pixel indices, ``xmax`` inclusive) of a
    ``width`` x ``height`` image on the square canvas.

    ``authors`` (their ``voc_dataset_utils.Resize`` + ``voc_get_bboxes``): each value truncated
    to an integer, scaled by its axis ratio, truncated again and clipped to ``[1, canvas]``; the
    result is used as a continuous box. ``exact``: the pixels' extent ``[xmin - 1, ymin - 1, xmax,
    ymax]`` scaled as floats."""
    x1, y1, x2, y2 = box
    if rule == "exact":
        sx, sy = canvas / width, canvas / height
        return [(x1 - 1) * sx, (y1 - 1) * sy, x2 * sx, y2 * sy]
    if rule != "authors":
        raise ValueError(f"unknown ground-truth box rule {rule!r}")
    rw, rh = canvas / width, canvas / height

    def one(v: float, ratio: float) -> float:
        return float(min(max(int(int(v) * ratio), 1), canvas))

    return [one(x1, rw), one(y1, rh), one(x2, rw), one(y2, rh)]


# --- answers -------------------------------------------------------------------------------

def grid_line_names(canvas: int, grid: int) -> list[str]:
    """The text of the ``grid + 1`` grid lines, ``canvas * i / grid`` (the authors'
    ``range_max_value`` is the canvas, 224): as an integer when integral, else with one decimal
    when that is exact, else two (``GridCodec._generate_numbers``)."""
    out = []
    for i in range(grid + 1):
        v = (canvas * i) / grid
        if v == int(v):
            out.append(str(int(v)))
        elif int(v * 10) == v * 10:
            out.append(f"{v:.1f}")
        else:
            out.append(f"{v:.2f}")
    return out


_STRICT_RE = re.compile(r" \[(.+?),(.+?),(.+?),(.+?)\]")


def strict_cell(canvas: int, grid: int) -> int:
    """The cell side the authors' decoder multiplies line indices by: ``ceil(canvas / grid)``."""
    return int(math.ceil(canvas / grid))


def parse_box_strict(text: str, canvas: int, grid: int) -> list[float] | None:
    """``GridCodec.decode``'s box for ``text``, or None where it falls back to the origin cell.

    The first match of `` \\[(.+?),(.+?),(.+?),(.+?)\\]`` (a space before the bracket; values
    taken verbatim, so `` [0, 14,28,42]`` fails on `` 14``); ``x1``/``y1`` must name a grid line
    other than the last, ``x2``/``y2`` one other than the first, with ``x1 < x2`` and
    ``y1 < y2`` as line indices. The box is ``[i1 c, j1 c, min(i2 c, canvas), min(j2 c,
    canvas)]`` with ``c = ceil(canvas / grid)``, as their ``gc_to_bboxes_default_image_size``."""
    m = _STRICT_RE.search(text)
    if m is None:
        return None
    names = grid_line_names(canvas, grid)
    index = {n: i for i, n in enumerate(names)}
    x1, y1, x2, y2 = m.groups()
    if x1 not in names[:-1] or y1 not in names[:-1] or x2 not in names[1:] or y2 not in names[1:]:
        return None
    i1, j1, i2, j2 = index[x1], index[y1], index[x2], index[y2]
    if i1 >= i2 or j1 >= j2:
        return None
    c = strict_cell(canvas, grid)
    return [float(i1 * c), float(j1 * c), float(min(i2 * c, canvas)), float(min(j2 * c, canvas))]


def one_cell_box(canvas: int, grid: int, rule: str = "lenient") -> list[float]:
    """The box an unparseable answer counts as: the cell at the origin (``strict``: the authors'
    ``ceil(canvas / grid)`` side, capped at the canvas; ``lenient``: ``canvas / grid``)."""
    c = min(strict_cell(canvas, grid), canvas) if rule == "strict" else canvas / grid
    return [0.0, 0.0, float(c), float(c)]


def box_from_text(text: str, canvas: int, grid: int, rule: str = "lenient") -> tuple[list[float], bool]:
    """The predicted box and whether ``rule`` (``strict`` | ``lenient``) parsed it (else the
    one-cell box at the origin)."""
    if rule == "strict":
        box = parse_box_strict(text, canvas, grid)
    elif rule == "lenient":
        box = parse_box(text)
    else:
        raise ValueError(f"unknown parse rule {rule!r}")
    if box is None:
        return one_cell_box(canvas, grid, rule), False
    return box, True


def parsed_by(text: str, canvas: int, grid: int) -> dict[str, bool]:
    """Whether each rule accepts ``text`` (both are reported, whichever one scores)."""
    return {"strict": parse_box_strict(text, canvas, grid) is not None, "lenient": parse_box(text) is not None}


# --- buckets, baselines, metrics -----------------------------------------------------------

def size_bucket(box: Sequence[float], canvas: int) -> str:
    """COCO size bucket of a box already scaled to the canvas, thresholds scaled by canvas/224."""
    s = canvas / 224.0
    a = area(box)
    if a < (32 * s) ** 2:
        return "small"
    if a < (96 * s) ** 2:
        return "medium"
    return "large"


def uniform_box(rng: np.random.Generator, canvas: int, grid: int) -> list[float]:
    """``uniform`` baseline: corners drawn uniformly on the grid lines, non-empty."""
    cell = canvas / grid
    xs = np.sort(rng.choice(grid + 1, size=2, replace=False)) * cell
    ys = np.sort(rng.choice(grid + 1, size=2, replace=False)) * cell
    return [float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1])]


class OtherImageBoxes:
    """The paper's ``random`` baseline: for a query on image ``k``, a ground-truth box (on the
    canvas) drawn uniformly from the boxes of the set's *other* images.

    ``pool`` is ``(image key, box)`` per object of the set; each draw uses ``rng`` once."""

    def __init__(self, pool: Iterable[tuple[Hashable, Sequence[float]]]):
        by_image: dict[Hashable, list[list[float]]] = {}
        for key, box in pool:
            by_image.setdefault(key, []).append([float(v) for v in box])
        self.boxes: list[list[float]] = []
        self.span: dict[Hashable, tuple[int, int]] = {}  # image -> [start, end) in boxes
        for key, boxes in by_image.items():
            self.span[key] = (len(self.boxes), len(self.boxes) + len(boxes))
            self.boxes += boxes

    @property
    def images(self) -> int:
        return len(self.span)

    def draw(self, rng: np.random.Generator, image: Hashable) -> list[float]:
        start, end = self.span.get(image, (0, 0))
        n = len(self.boxes) - (end - start)
        if n <= 0:
            raise ValueError("the random baseline needs ground-truth boxes of at least two images")
        i = int(rng.integers(n))
        return list(self.boxes[i if i < start else i + (end - start)])


def grid_boxes(canvas: int, grid: int) -> np.ndarray:
    """Every non-empty box with its corners on the grid lines, ``[C, 4]`` in canvas pixels."""
    lines = np.arange(grid + 1) * (canvas / grid)
    lo, hi = np.triu_indices(grid + 1, k=1)      # every pair of lines, lower first
    xi, yi = np.meshgrid(np.arange(len(lo)), np.arange(len(lo)), indexing="ij")
    xi, yi = xi.ravel(), yi.ravel()
    return np.stack([lines[lo[xi]], lines[lo[yi]], lines[hi[xi]], lines[hi[yi]]], 1)


def best_constant_box(gts: Sequence[Sequence[float]], canvas: int, grid: int) -> list[float]:
    """The grid box with the highest mean IoU over the boxes ``gts`` (the first on a tie)."""
    cand = grid_boxes(canvas, grid)
    g = np.asarray(gts, dtype=np.float64)
    area_c = (cand[:, 2] - cand[:, 0]) * (cand[:, 3] - cand[:, 1])
    area_g = np.clip(g[:, 2] - g[:, 0], 0, None) * np.clip(g[:, 3] - g[:, 1], 0, None)
    total = np.zeros(len(cand))
    for start in range(0, len(g), 256):  # (candidates x a chunk of boxes at a time)
        b = g[start:start + 256]
        w = np.clip(np.minimum(cand[:, None, 2], b[None, :, 2]) - np.maximum(cand[:, None, 0], b[None, :, 0]), 0, None)
        h = np.clip(np.minimum(cand[:, None, 3], b[None, :, 3]) - np.maximum(cand[:, None, 1], b[None, :, 1]), 0, None)
        inter = w * h
        union = area_c[:, None] + area_g[None, start:start + 256] - inter
        total += np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0).sum(1)
    return [float(v) for v in cand[int(np.argmax(total))]]


class PriorBox:
    """The ``prior`` baseline: where objects usually are. The set's images are split in two halves
    (a permutation drawn from ``seed``); a query on one half gets the constant grid box with the
    best mean IoU over the other half's ground-truth boxes (cross-fitted: never fitted on the
    image it answers). A method that does not beat it has learned the layout of the set, not
    where the named object is."""

    def __init__(self, pool: Iterable[tuple[Hashable, Sequence[float]]], canvas: int, grid: int, seed: int = 0):
        by_image: dict[Hashable, list[list[float]]] = {}
        for key, box in pool:
            by_image.setdefault(key, []).append([float(v) for v in box])
        if len(by_image) < 2:
            raise ValueError("the prior baseline needs ground-truth boxes of at least two images")
        keys = sorted(by_image, key=str)
        order = np.random.default_rng(seed).permutation(len(keys))
        self.half = {keys[i]: int(j >= len(keys) // 2) for j, i in enumerate(order)}
        boxes = [[b for k, bs in by_image.items() if self.half[k] == h for b in bs] for h in (0, 1)]
        self.boxes = [best_constant_box(boxes[1 - h], canvas, grid) for h in (0, 1)]  # fitted on the other half

    def box(self, image: Hashable) -> list[float]:
        return list(self.boxes[self.half.get(image, 0)])


def summarize(records: Iterable[dict], threshold: float = 0.3) -> dict:
    """n, mIoU overall and per bucket (``miou_M``, ``miou_L``, ``miou_S``, pooled over the
    queries), unparseable count (by the rule used), how many answers each parse rule rejected
    (``rejected``, over the records that carry model output) and P@threshold, from records with
    ``iou``, ``bucket`` and ``parsed`` (and ``parsed_strict`` / ``parsed_lenient``)."""
    recs = list(records)
    out: dict = {"n": len(recs)}
    ious = [r["iou"] for r in recs]
    out["miou"] = float(np.mean(ious)) if ious else float("nan")
    for name, tag in (("small", "S"), ("medium", "M"), ("large", "L")):
        b = [r["iou"] for r in recs if r.get("bucket") == name]
        out[f"n_{tag}"] = len(b)
        out[f"miou_{tag}"] = float(np.mean(b)) if b else float("nan")
    out["unparseable"] = sum(1 for r in recs if not r.get("parsed", True))
    out["rejected"] = {rule: sum(1 for r in recs if not r.get(f"parsed_{rule}", True)) for rule in PARSERS}
    out[f"p@{threshold}"] = float(np.mean([i >= threshold for i in ious])) if ious else float("nan")
    return out


def baseline_boxes(proto: EvalProtocol, pool: Iterable[tuple[object, list[float]]], canvas: int, grid: int,
                   set_name: str) -> Callable[[dict], list[float]] | None:
    """The baseline's box for a query's fields (None: the model answers). ``random`` draws a
    ground-truth box of another image of ``pool`` (every object of the set's kept images),
    ``uniform`` a grid box; both from ``seed``, one draw per scored query in order (``native``:
    None too, the VLM answers its own way; ``raw`` and ``in-context``: the VLM answers too)."""
    if proto.baseline in (None, *MODEL_BASELINES):
        return None
    rng = np.random.default_rng(proto.seed)
    if proto.baseline == "uniform":
        return lambda _fields: uniform_box(rng, canvas, grid)
    if proto.baseline == "prior":
        try:
            prior = PriorBox(pool, canvas, grid, proto.seed)
        except ValueError:
            raise UserError(f"{set_name}: --baseline prior fits a box on one half of the images and scores the "
                            "other half: it needs ground-truth boxes of at least two images") from None
        return lambda fields: prior.box(fields["image_id"])
    boxes = OtherImageBoxes(pool)
    if boxes.images < 2:
        raise UserError(f"{set_name}: --baseline random draws ground-truth boxes of other images, "
                        f"but only {boxes.images} image has objects; use --baseline uniform")
    return lambda fields: boxes.draw(rng, fields["image_id"])


def summarize_repeats(records: Sequence[dict], threshold: float = 0.3) -> dict:
    """:func:`summarize` of records that carry a ``repeat`` (the in-context baseline's draws of
    the contexts), else of the records as they are. Over repeats: each number is the mean of the
    repeats' (``n``: queries per repeat), the scores (``miou*``, ``p@*``) also get ``KEY_std`` (the
    population std over the repeats), ``repeats`` holds each repeat's summary and ``query_iou_std``
    the std of the per-query IoUs pooled over every repeat."""
    if not records or "repeat" not in records[0]:
        return summarize(records, threshold)
    by: dict[int, list[dict]] = {}
    for r in records:
        by.setdefault(int(r["repeat"]), []).append(r)
    per = [summarize(by[k], threshold) for k in sorted(by)]
    out: dict = {}
    for key, first in per[0].items():
        if isinstance(first, dict):
            out[key] = {k: float(np.mean([p[key][k] for p in per])) for k in first}
            continue
        values = np.asarray([p[key] for p in per], dtype=np.float64)
        out[key] = int(first) if key == "n" or key.startswith("n_") else float(np.mean(values))
        if key.startswith(("miou", "p@")):
            out[f"{key}_std"] = float(np.std(values))
    out["repeats"] = [{"repeat": k, **p} for k, p in zip(sorted(by), per)]
    out["query_iou_std"] = float(np.std([r["iou"] for r in records]))
    return out
