"""The metric of each question task (``eval-pin --scenes SHARDS --tasks ...``; pure, no torch).

Answers are read with the parsers of :mod:`synthgen.compose.questions_text` (the formats the
model was trained on), always leniently (any ``[x1,y1,x2,y2]`` in the output):

- box tasks (``name``, ``referral``, ``relation``, ``attribute``, ``all``): the predicted boxes
  are matched one to one to the ground-truth boxes, **greedily by IoU** (the pair of highest IoU
  first, then the highest among the rest, ...; pairs of IoU 0 are not matched). Every
  ground-truth box and every extra predicted box is a *slot*; a slot's IoU is its pair's, 0 when
  unmatched. A task's mIoU is the mean slot IoU, P@0.5 the share of slots with IoU >= 0.5. A
  one-box task reads the first box of the output only (one slot per question); ``all`` reads
  every box, and also reports ``exact``: the share of questions with as many boxes as the truth,
  each matched at IoU >= 0.5.
- ``absent``, ``count``, ``region``: accuracy, exact match after normalisation: an absent answer
  is recognised by :func:`~synthgen.compose.questions_text.is_absent_answer`, a count read by
  :func:`~synthgen.compose.questions_text.parse_count`, a region's name compared lower-case without
  its article and final full stop.
- ``point``: accuracy of the point (:func:`~synthgen.compose.questions_text.parse_point`) lying
  on the target's visible pixels in the scene's mask (``{key}.mask.png``: shards composed with
  ``--masks``), else inside its box (``rule`` says which was used).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np

from synthgen.compose import questions_text as QT
from synthgen.grounding import iou

BOX_TASKS = ("name", "referral", "relation", "attribute", "all")
ACCURACY_TASKS = ("absent", "count", "region", "point")
THRESHOLD = 0.5


def match_boxes(gts: Sequence[Sequence[float]], preds: Sequence[Sequence[float]]) -> list[float]:
    """Slot IoUs of a one-to-one greedy matching by IoU: one per matched pair (in the order
    matched), then 0 for every unmatched ground-truth or predicted box; ``max(len(gts),
    len(preds))`` values (none when both are empty)."""
    pairs = sorted(((iou(p, g), gi, pi) for gi, g in enumerate(gts) for pi, p in enumerate(preds)),
                   key=lambda t: (-t[0], t[1], t[2]))
    used_g, used_p, out = set(), set(), []
    for v, gi, pi in pairs:
        if v <= 0 or gi in used_g or pi in used_p:
            continue
        used_g.add(gi)
        used_p.add(pi)
        out.append(float(v))
    return out + [0.0] * (max(len(gts), len(preds)) - len(out))


def normalise_name(text: str) -> str:
    """``" An apple."`` -> ``"apple"``: lower case, spaces collapsed, the article and a final
    full stop dropped."""
    t = re.sub(r"\s+", " ", text.strip().lower()).rstrip(".").strip()
    return re.sub(r"^(a|an|the) ", "", t)


def point_hit(point: Sequence[float], target: int, box: Sequence[float], mask: np.ndarray | None) -> bool:
    """Whether ``point`` lies on object ``target``: its pixels in ``mask`` (0 background, i+1
    object i), or without a mask inside ``box`` (x2/y2 exclusive)."""
    x, y = int(np.floor(point[0])), int(np.floor(point[1]))
    if mask is not None:
        return 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and int(mask[y, x]) == target + 1
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def score(task: str, answer: str, output: str, *, boxes: Sequence[Sequence[float]] = (),
          mask: np.ndarray | None = None) -> dict:
    """The score of one answer ``output`` to a question of ``task`` whose true answer is
    ``answer``: ``{"ious": [...], "parsed"}`` for box tasks, ``{"correct", "parsed"}`` for the
    others (``point`` also ``rule``). ``boxes``: the targets' boxes (``point``: the target's, with
    its index in ``mask`` given by the caller through :func:`point_hit`)."""
    if task in BOX_TASKS:
        preds = QT.parse_boxes(output)
        if task != "all":
            preds = preds[:1]
        return {"ious": match_boxes(QT.parse_boxes(answer), preds), "parsed": bool(preds)}
    if task == "absent":
        return {"correct": QT.is_absent_answer(output.strip()), "parsed": True}
    if task == "count":
        n = QT.parse_count(output.strip())
        return {"correct": n is not None and n == QT.parse_count(answer), "parsed": n is not None}
    if task == "region":
        return {"correct": normalise_name(output) == normalise_name(answer), "parsed": bool(output.strip())}
    raise ValueError(f"no scorer for task {task!r} here (point: score_point)")


def score_point(output: str, target: int, box: Sequence[float], mask: np.ndarray | None) -> dict:
    p = QT.parse_point(output)
    return {"correct": p is not None and point_hit(p, target, box, mask), "parsed": p is not None,
            "rule": "mask" if mask is not None else "box"}


def summarize_tasks(records: Iterable[dict], tasks: Sequence[str]) -> dict[str, dict]:
    """``{task: metrics}`` over scored records (``task`` + the fields of :func:`score`), in
    ``tasks`` order; a task without records has ``n`` 0."""
    by: dict[str, list[dict]] = {t: [] for t in tasks}
    for r in records:
        by.setdefault(r["task"], []).append(r)
    out = {}
    for task, rs in by.items():
        m: dict = {"n": len(rs), "unparsed": sum(not r["parsed"] for r in rs)}
        if task in BOX_TASKS:
            slots = [v for r in rs for v in r["ious"]]
            m.update({"metric": "mIoU", "slots": len(slots),
                      "miou": float(np.mean(slots)) if slots else None,
                      "p@0.5": float(np.mean([v >= THRESHOLD for v in slots])) if slots else None})
            if task == "all":
                m["exact"] = (float(np.mean([len(r["ious"]) == r["n_true"] and all(v >= THRESHOLD for v in r["ious"])
                                             for r in rs])) if rs else None)
        else:
            m.update({"metric": "accuracy", "accuracy": float(np.mean([r["correct"] for r in rs])) if rs else None})
            if task == "point":
                m["rule"] = {k: sum(r.get("rule") == k for r in rs) for k in ("mask", "box")}
        out[task] = m
    return out


def task_score(metrics: dict) -> float | None:
    """A task's score in :func:`summarize_tasks`' table: its mIoU or its accuracy (by ``metric``)."""
    return metrics.get("miou") if metrics["metric"] == "mIoU" else metrics.get("accuracy")
