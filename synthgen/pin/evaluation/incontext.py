"""The paper's in-context baseline (Table 1, "2 / 5 / 10 context"): OpenFlamingo without PIN, shown
``K`` images of the evaluation set with their boxes before the query.

For each query, ``K`` other images of the set (never the queried one, all different) are drawn
uniformly, and one annotated object of each; each becomes a context chunk in OpenFlamingo's
interleaved format, the text PIN is trained on::

    <image>In the image is a cat located at [28,0,84,56].<|endofchunk|>   (x K)
    <image>In the image is a dog located at                               (the query)

The context boxes are the ground-truth boxes on the canvas snapped to the nearest grid lines
(:func:`context_answer`), the answers the model is trained to give and the strict parser reads.
Draws come from ``numpy.random.default_rng([seed, repeat])``, one draw per query in query order,
so a repeat is the same whatever the batch size. :func:`~.protocol.summarize_repeats` turns the
repeats into mean +- std. Pure but for :class:`InContext`'s model calls (torch imported there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Sequence

import numpy as np

from synthgen.errors import UserError
from synthgen.grounding import format_box


@dataclass(frozen=True)
class Context:
    """One context chunk: an image of the set, one of its objects' text and answer box text."""

    image_id: Hashable
    file_name: str
    text: str
    answer: str


def context_answer(box: Sequence[float], canvas: int, grid: int) -> str:
    """A ground-truth box on the canvas as a training answer: each side moved to the nearest grid
    line (at least one cell wide and high), written as :func:`~synthgen.grounding.format_box`."""
    cell = canvas / grid

    def line(v: float, lo: int, hi: int) -> int:
        return int(min(max(round(v / cell), lo), hi))

    x1, y1 = line(box[0], 0, grid - 1), line(box[1], 0, grid - 1)
    x2, y2 = line(box[2], x1 + 1, grid), line(box[3], y1 + 1, grid)
    return format_box([x1 * cell, y1 * cell, x2 * cell, y2 * cell])


class ContextPool:
    """The set's images and their objects, to draw contexts from. ``entries`` is ``(image id,
    file name, query text, ground-truth box on the canvas)`` per object."""

    def __init__(self, entries: Iterable[tuple[Hashable, str, str, Sequence[float]]], canvas: int, grid: int):
        objects: dict[Hashable, list[Context]] = {}
        for key, fn, text, box in entries:
            objects.setdefault(key, []).append(Context(key, fn, text, context_answer(box, canvas, grid)))
        self.keys = list(objects)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.objects = objects
        self.bad: set[Hashable] = set()  # images that could not be read: never drawn again

    def usable(self, query: Hashable) -> int:
        """How many images a query on ``query`` may draw its contexts from."""
        return len(self.keys) - len(self.bad | {query} & set(self.keys))

    def draw(self, rng: np.random.Generator, query: Hashable, k: int) -> list[Context]:
        """``k`` contexts on ``k`` different images other than ``query`` (and the bad ones), one
        object of each, uniformly. ValueError if the set has too few images."""
        if self.usable(query) < k:
            raise ValueError(f"{k} context images are needed besides the queried one, the set has "
                             f"{self.usable(query)}")
        skip = self.index.get(query)
        n = len(self.keys) - (skip is not None)
        while True:
            picks = rng.choice(n, size=k, replace=False)
            keys = [self.keys[int(i) + (skip is not None and int(i) >= skip)] for i in picks]
            if not any(key in self.bad for key in keys):
                break
        return [self.objects[key][int(rng.integers(len(self.objects[key])))] for key in keys]


class InContext:
    """An OpenFlamingo adapter (PIN detached) that answers each query after ``shots`` contexts
    drawn from ``pool``; ``load(file name)`` gives a context image as uint8 ``[3, canvas,
    canvas]`` (None: unreadable, then another is drawn). Stands in for the adapter in
    :func:`~synthgen.pin.evaluation.evaluate.generate_boxes`, which passes each query's image id."""

    takes_image_ids = True

    def __init__(self, adapter, pool: ContextPool, load: Callable[[str], object], shots: int, seed: int,
                 cache: int = 512):
        self.adapter, self.pool, self._load, self.shots, self.seed = adapter, pool, load, shots, seed
        self._cache: dict[str, object] = {}
        self._cache_size = cache
        self.start(0)

    def start(self, repeat: int) -> None:
        """Begin repeat ``repeat``: its draws come from ``default_rng([seed, repeat])``."""
        self.rng = np.random.default_rng([self.seed, repeat])
        self.drawn: list[list[Context]] = []  # each query's contexts, in query order

    def image(self, fn: str):
        if fn not in self._cache:
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[fn] = self._load(fn)
        return self._cache[fn]

    def contexts(self, query: Hashable) -> tuple[list[Context], list]:
        """The next draw for a query on image ``query``, and its context images."""
        while True:
            ctx = self.pool.draw(self.rng, query, self.shots)
            pixels = [self.image(c.file_name) for c in ctx]
            bad = {c.image_id for c, px in zip(ctx, pixels) if px is None}
            if not bad:
                return ctx, pixels
            self.pool.bad |= bad

    def inputs(self, pixels, referrals: Sequence[str], image_ids: Sequence[Hashable], art: str | None = None):
        """What the model is given: uint8 images ``[B, shots + 1, 3, H, W]`` (the query last), the
        left-padded ids and attention mask, and each query's contexts."""
        import torch

        codec = self.adapter.codec
        seqs, images, drawn = [], [], []
        for px, ref, key in zip(pixels, referrals, image_ids):
            ctx, ctx_px = self.contexts(key)
            ids: list[int] = []
            for c in ctx:
                ids += codec.encode(c.text, c.answer, art=art)[0]
            ids += codec.encode(ref, art=art)[0]
            seqs.append((ids, ids))
            images.append(torch.stack([*ctx_px, px]))
            drawn.append(ctx)
        enc = codec.collate(seqs, left_pad=True)
        return torch.stack(images), enc["input_ids"], enc["attention_mask"], drawn

    def generate(self, pixels, referrals: Sequence[str], *, image_ids: Sequence[Hashable], num_beams: int = 3,
                 max_new_tokens: int = 12, art: str | None = None) -> list[str]:
        """The answers after the contexts (as :meth:`PixelsTextAdapter.generate
        <synthgen.pin.models.adapters.base.PixelsTextAdapter.generate>`: the continuation, special
        tokens left out)."""
        import torch

        a = self.adapter
        images, ids, mask, drawn = self.inputs(pixels, referrals, image_ids, art)
        window = context_window(a.model)
        if window is not None and ids.shape[1] + max_new_tokens > window:
            raise UserError(f"--shots {self.shots}: the prompt is {ids.shape[1]} tokens and up to {max_new_tokens} "
                            f"more are generated, past the language model's {window}-token context; use fewer --shots")
        b, t = images.shape[:2]
        vision = a.preprocess(images.flatten(0, 1)).reshape(b, t, *images.shape[2:])
        ids = ids.to(a.device)
        with torch.no_grad():
            out = a.model.generate(vision, ids, attention_mask=mask.to(a.device), num_beams=num_beams,
                                   max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=a.codec.pad_id,
                                   **a.generate_options())
        if out.shape[1] >= ids.shape[1] and torch.equal(out[:, : ids.shape[1]], ids):
            out = out[:, ids.shape[1]:]
        self.drawn += drawn
        return [a.codec.decode(o) for o in out]


def context_window(model) -> int | None:
    """The number of tokens the OpenFlamingo's language model takes (None where it does not say)."""
    cfg = getattr(getattr(model, "lang_encoder", None), "config", None)
    for name in ("max_seq_len", "max_position_embeddings", "n_positions"):
        v = getattr(cfg, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def context_fields(ctx: Sequence[Context]) -> list[dict]:
    """A query's contexts as ``preds.jsonl`` keeps them."""
    return [{"image_id": c.image_id, "query": c.text, "answer": c.answer} for c in ctx]


def in_context(adapter, entries: Iterable[tuple[Hashable, str, str, Sequence[float]]], load: Callable[[str], object],
               *, shots: int, seed: int, canvas: int, grid: int, set_name: str) -> InContext:
    """:class:`InContext` over the set's objects ``entries`` (see :class:`ContextPool`); a set
    with too few images for ``shots`` contexts besides the query is refused in one line."""
    if getattr(adapter, "name", None) != "openflamingo":
        raise UserError(f"--baseline in-context: in-context learning is OpenFlamingo's, not {adapter.name}'s")
    pool = ContextPool(entries, canvas, grid)
    if len(pool.keys) <= shots:
        raise UserError(f"{set_name}: --shots {shots} draws {shots} context images besides the queried one, "
                        f"but the set has {len(pool.keys)} image(s) with objects; use fewer --shots")
    return InContext(adapter, pool, load, shots, seed)


def score_repeats(score: Callable[[int], list[dict]], ctx: InContext, repeats: int) -> list[dict]:
    """``score(repeat)`` once per repeat (its draws from ``(seed, repeat)``), each record with its
    ``repeat`` and its ``context`` (:func:`context_fields`)."""
    records: list[dict] = []
    for r in range(repeats):
        ctx.start(r)
        recs = score(r)
        if len(recs) != len(ctx.drawn):
            raise RuntimeError(f"{len(recs)} records but {len(ctx.drawn)} context draws")
        records += [{**rec, "repeat": r, "context": context_fields(c)} for rec, c in zip(recs, ctx.drawn)]
    return records
