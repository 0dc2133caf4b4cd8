"""A finished category of ``synthgen render``: its index records and statistics.

Rows come back from the model stages one image at a time (:func:`unpack`); when a category has
all its objects, :func:`finish_category` applies the filter and builds what the bank writer
stores: one :func:`~synthgen.bank.format.bank_record` per object (kept or rejected, with its scores)
and the PNGs of the kept ones (and rejected ones with ``--keep-rejected``, else their thumbnails).
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict
from typing import Iterator, Sequence

from synthgen.bank.format import bank_record, object_file, object_id, thumbnail_file
from synthgen.bank.writer import quantiles, rejected_thumbnail
from synthgen.render.categories import Category
from synthgen.render.config import SCHEDULER, RenderConfig
from synthgen.render.filter import REASONS, filter_category
from synthgen.render.stages import rejection_reason


def finish_category(cat: Category, rows: list[dict], cfg: RenderConfig, seconds: float
                    ) -> tuple[dict, dict[str, bytes]]:
    """``(category document, {relative path: PNG bytes})`` of one category's rows."""
    rows = sorted(rows, key=lambda r: r["index"])
    res = filter_category([r["clip_score"] for r in rows], [r["area_fraction"] for r in rows],
                          cfg.filter, rejected=[r.get("gen_reason") for r in rows])
    slug = cat.slug
    records, pngs = [], {}
    gen_meta = {"model": cfg.sd_model, "steps": cfg.steps, "guidance": cfg.guidance,
                "size": cfg.size, "scheduler": SCHEDULER}
    for r, kept, reason in zip(rows, res.kept, res.reasons):
        idx = int(r["index"])
        png = r["png"]
        path = thumb = None
        if png and (kept or cfg.keep_rejected):
            path = object_file(slug, idx, kept)
            pngs[path] = png
        elif png and (small := rejected_thumbnail(png)) is not None:  # rejected: a thumbnail, for preview
            thumb = thumbnail_file(slug, idx)
            pngs[thumb] = small
        score = r["clip_score"]
        area = r["area_fraction"]
        records.append(bank_record(
            id=object_id(slug, idx), category=cat.display, category_id=cat.id, path=path,
            width=r["width"], height=r["height"], kept=kept, reason=reason,
            **({"thumbnail": thumb} if thumb else {}),
            index=idx, seed=int(r["seed"]), prompt=r["prompt"],
            lvis_name=cat.name,
            clip_score=None if score is None or math.isnan(score) else round(float(score), 4),
            clip_bar=None if res.bar is None else round(float(res.bar), 4),
            area_fraction=None if area is None or math.isnan(area) else round(float(area), 6),
            cutout_session=r["cutout_session"],
            candidate_scores={s: (None if math.isnan(v) else round(float(v), 4))
                              for s, v in zip(cfg.cutout, r["candidate_scores"])},
            generator=gen_meta,
            clip_model={"model": cfg.clip_model, "pretrained": cfg.clip_pretrained}))

    rejected = {k: 0 for k in REASONS}
    for reason in res.reasons:
        if reason:
            rejected[reason] += 1
    stats = {
        "category": cat.display, "category_id": cat.id, "slug": slug,
        "generated": len(rows), "kept": res.n_kept,
        "rejected": {k: v for k, v in rejected.items() if v},
        "category_dropped": res.category_dropped,
        "clip_bar": None if res.bar is None else round(float(res.bar), 4),
        "clip": quantiles(r["clip_score"] for r in rows),
        "area_fraction": quantiles(r["area_fraction"] for r in rows),
        "seconds": round(seconds, 3),
    }
    doc = {"slug": slug, "category": asdict(cat), "stats": stats, "records": records}
    return doc, pngs


def unpack(batch: dict, specs: Sequence[str]) -> Iterator[dict]:
    """One row per image of a scored batch (the best candidate's PNG, size, scores)."""
    from PIL import Image

    for i in range(len(batch["seed"])):
        b = int(batch["best"][i])
        png = bytes(batch["png"][i]) if b >= 0 else b""
        w = h = None
        if png:
            with Image.open(io.BytesIO(png)) as im:
                w, h = im.size
        yield {"category": str(batch["category"][i]), "index": int(batch["index"][i]),
               "seed": int(batch["seed"][i]), "prompt": str(batch["prompt"][i]),
               "png": png, "width": w, "height": h,
               "gen_reason": rejection_reason(batch, i),
               "clip_score": float(batch["clip_score"][i]),
               "area_fraction": float(batch["area_fraction"][i]),
               "cutout_session": specs[b] if b >= 0 else None,
               "candidate_scores": [float(x) for x in batch["candidate_scores"][i]]}
