"""The object bank on disk, written so that a killed run never leaves it corrupt.

Layout of ``BANK/``:

- ``{slug}/{index:05d}.png``: kept RGBA cut-outs (``{slug}/_rejected/...`` with ``--keep-rejected``;
  without it a rejected cut-out leaves a thumbnail, ``{slug}/_rejected/{index:05d}.thumb.png``, its
  longer side at most 64 px: :func:`rejected_thumbnail`, the record's ``thumbnail``)
- ``_categories/{slug}.json``: one finished category (its stats and index records). A category is
  finished iff this file exists; it is written last, atomically, after the category's PNGs.
- ``index.jsonl``, ``render_stats.json``, ``LVIS_instance_pools.json``: rebuilt from the finished
  categories (atomically: temp file + rename), so they never hold duplicates or half lines.
- ``render_config.json``: the settings that determine the objects; a re-run must match them
  (:meth:`synthgen.storage.RunFolder.check_identity`).

Every file is written to a temporary name in the same folder and renamed into place (on an
object store, ``BANK`` an ``s3://`` URL: uploaded whole, the category's record after its PNGs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from synthgen import storage
from synthgen.bank.format import CATEGORIES_DIR
from synthgen.bank.format import INDEX_FILE as INDEX
from synthgen.bank.format import POOLS_FILE as POOLS
from synthgen.bank.format import RENDER_CONFIG_FILE as CONFIG
from synthgen.bank.format import RENDER_STATS_FILE as STATS
from synthgen.errors import UserError
from synthgen.storage import atomic_write


def quantiles(values: Iterable[float]) -> dict[str, float] | None:
    v = np.asarray([x for x in values if x is not None and not np.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return None
    q = np.quantile(v, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
    return {k: round(float(x), 4) for k, x in zip(("min", "p10", "p25", "median", "p75", "p90", "max"), q)} | {
        "mean": round(float(v.mean()), 4)}


REJECTED_THUMB_SIDE = 64   # px, the longer side of a rejected cut-out's thumbnail


def rejected_thumbnail(png: bytes, side: int = REJECTED_THUMB_SIDE) -> bytes | None:
    """A small RGBA PNG of a cut-out (longer side at most ``side``, never enlarged), kept for a
    rejected object whose full PNG is not: ``synthgen preview`` shows what the filter refused.
    None when ``png`` is not an image."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(io.BytesIO(png))
        im.load()
    except (OSError, ValueError, UnidentifiedImageError):
        return None
    with im:
        im = im.convert("RGBA")
        k = min(1.0, side / max(im.width, im.height))
        if k < 1.0:
            im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


class BankWriter:
    """Holds the finished categories of a bank and writes new ones (the caller holds the
    folder's lock: :class:`~synthgen.storage.RunFolder`)."""

    def __init__(self, root):
        self.root = storage.path(root)
        self.docs: dict[str, dict] = {}
        self._last_flush = 0.0
        if self.root.is_dir():
            self._load()

    def _load(self) -> None:
        d = self.root / CATEGORIES_DIR
        if not d.is_dir():
            return
        for f in sorted(d.glob("*.json")):
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
                self.docs[doc["slug"]] = doc
            except (OSError, ValueError, KeyError):
                continue  # unreadable: the category is rendered again

    # -- categories -----------------------------------------------------------------------------

    def finished(self) -> set[str]:
        """Raw names of finished categories."""
        return {doc["category"]["name"] for doc in self.docs.values()}

    def add_category(self, doc: dict, pngs: dict[str, bytes]) -> None:
        """Write the category's PNGs, then its record file (the 'finished' mark)."""
        for rel, data in pngs.items():
            atomic_write(self.root / rel, data)
        atomic_write(self.root / CATEGORIES_DIR / f"{doc['slug']}.json",
                     json.dumps(doc, ensure_ascii=False))
        self.docs[doc["slug"]] = doc

    # -- bank-level files -----------------------------------------------------------------------

    def flush(self, min_interval: float = 0.0) -> bool:
        """Rebuild ``index.jsonl``, ``render_stats.json`` and ``LVIS_instance_pools.json`` from the
        finished categories (at most every ``min_interval`` seconds)."""
        now = time.monotonic()
        if min_interval and now - self._last_flush < min_interval:
            return False
        docs = [self.docs[s] for s in sorted(self.docs)]
        lines = [json.dumps(r, ensure_ascii=False) for d in docs for r in d["records"]]
        atomic_write(self.root / INDEX, "".join(line + "\n" for line in lines))
        cats = {d["category"]["name"]: d["stats"] for d in docs}
        totals = {
            "categories": len(docs),
            "categories_kept": sum(1 for d in docs if d["stats"]["kept"] > 0),
            "categories_dropped": sum(1 for d in docs if d["stats"]["category_dropped"]),
            "generated": sum(d["stats"]["generated"] for d in docs),
            "kept": sum(d["stats"]["kept"] for d in docs),
            "seconds": round(sum(d["stats"]["seconds"] for d in docs), 3),
        }
        cfg_path = self.root / CONFIG
        config = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else None
        atomic_write(self.root / STATS, json.dumps(
            {"totals": totals, "config": config, "categories": cats}, indent=1, ensure_ascii=False))
        pools = {d["category"]["name"]: [r["path"] for r in d["records"] if r["kept"]]
                 for d in docs}
        atomic_write(self.root / POOLS, json.dumps({k: v for k, v in pools.items() if v},
                                                   ensure_ascii=False))
        self._last_flush = now
        return True


def read_index(bank: str | Path) -> list[dict]:
    """All records of a bank's ``index.jsonl``."""
    p = storage.path(bank) / INDEX
    if not p.is_file():
        raise UserError(f"not an object bank (no {INDEX}): {bank}")
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
