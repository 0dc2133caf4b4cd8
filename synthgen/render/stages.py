"""The three model stages of ``synthgen render``, as callable classes over batches of rows.

Each is a Ray Data ``map_batches`` stage (an actor pool: every model is loaded once per actor)
or, without Ray, a plain object called in this process. A batch is a dict of numpy columns:
``(category, display, index, seed, prompt)`` in, plus each stage's outputs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def report(counts, stage: str, batch: dict) -> None:
    """Count a batch done by ``stage`` (display only: :class:`StageCounts`, or an actor of it
    on Ray, whose call is sent and not waited for)."""
    if counts is None or not len(batch["seed"]):
        return
    add = counts.add
    (add.remote if hasattr(add, "remote") else add)(stage, len(batch["seed"]))


class StageCounts:
    """Images done per stage (a Ray actor in a Ray run)."""

    def __init__(self):
        self.done: dict[str, int] = {}

    def add(self, stage: str, n: int) -> None:
        self.done[stage] = self.done.get(stage, 0) + n

    def snapshot(self) -> dict[str, int]:
        return dict(self.done)


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


class GenerateStage:
    counts = None  # where batches are counted (display only: :func:`report`)

    def __init__(self, model: str, steps: int, guidance: float, size: int, threads: int | None = None,
                 counts=None):
        _set_threads(threads)
        self.counts = counts
        from synthgen.render.generate import Generator

        self.gen = Generator(model, steps=steps, guidance=guidance, size=size)

    def __call__(self, batch: dict) -> dict:
        out = dict(batch)
        images, reasons = self.gen([str(p) for p in batch["prompt"]], [int(s) for s in batch["seed"]])
        out["image"] = images
        out["gen_reason"] = np.array([r or "" for r in reasons])  # "" = not rejected
        report(self.counts, "generate", batch)
        return out


def rejection_reason(batch: dict, i: int) -> str | None:
    """Why the generator already rejected image ``i`` of ``batch`` (``None``: it did not)."""
    r = batch.get("gen_reason")
    return (str(r[i]) or None) if r is not None else None


class CutoutStage:
    counts = None  # where batches are counted (display only: :func:`report`)

    def __init__(self, cutout: Sequence[str], threads: int | None = None, counts=None,
                 providers: Sequence[str] | None = None):
        _set_threads(threads)
        self.counts = counts
        from synthgen.render.cutout import Cutter

        self.cutter = Cutter(list(cutout), providers=providers)

    def __call__(self, batch: dict) -> dict:
        from synthgen.render.cutout import Candidate

        images = list(batch["image"])
        todo = [i for i in range(len(images)) if not rejection_reason(batch, i)]  # no work on rejected ones
        cands = [[Candidate(b"", float("nan"), 0, 0)] * len(self.cutter.specs)] * len(images)
        for i, c in zip(todo, self.cutter([images[i] for i in todo]) if todo else []):
            cands[i] = c
        out = {k: v for k, v in batch.items() if k != "image"}
        for k in range(len(self.cutter.specs)):
            out[f"cand_png_{k}"] = np.array([c[k].png for c in cands], dtype=object)
            out[f"cand_area_{k}"] = np.array([c[k].area_fraction for c in cands], dtype=np.float64)
        report(self.counts, "cut-out", batch)
        return out


class ScoreStage:
    """Scores every candidate and keeps the best per image (X-Paste's ensemble choice)."""

    counts = None  # where batches are counted (display only: :func:`report`)

    def __init__(self, model: str, pretrained: str | None, n_candidates: int,
                 threads: int | None = None, counts=None):
        _set_threads(threads)
        self.counts = counts
        from synthgen.render.score import Scorer

        self.scorer = Scorer(model, pretrained)
        self.k = int(n_candidates)

    def __call__(self, batch: dict) -> dict:
        from synthgen.render.cutout import decode_png

        n = len(batch["seed"])
        names = [str(x) for x in batch["display"]]
        scores = np.full((n, self.k), np.nan, dtype=np.float64)
        todo = [(i, k) for i in range(n) for k in range(self.k) if len(batch[f"cand_png_{k}"][i])]
        if todo:
            imgs = [decode_png(batch[f"cand_png_{k}"][i]) for i, k in todo]
            vals = self.scorer(imgs, [names[i] for i, _ in todo])
            for (i, k), v in zip(todo, vals):
                scores[i, k] = float(v)
        out = {c: v for c, v in batch.items() if not c.startswith(("cand_png_", "cand_area_"))}
        best = np.full(n, -1, dtype=np.int64)
        for i in range(n):
            if not np.all(np.isnan(scores[i])):
                best[i] = int(np.nanargmax(scores[i]))
        out["best"] = best
        out["candidate_scores"] = scores
        out["clip_score"] = np.array([scores[i, b] if b >= 0 else np.nan for i, b in enumerate(best)])
        out["area_fraction"] = np.array([batch[f"cand_area_{b}"][i] if b >= 0 else np.nan
                                         for i, b in enumerate(best)], dtype=np.float64)
        out["png"] = np.array([batch[f"cand_png_{b}"][i] if b >= 0 else b"" for i, b in enumerate(best)],
                              dtype=object)
        report(self.counts, "CLIP score", batch)
        return out
