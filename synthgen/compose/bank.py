"""Object bank reader: the cut-outs that compose pastes.

Three layouts are read by the same :class:`ObjectBank`:

* a synthgen bank: a folder with ``index.jsonl`` (one object per line: ``id``, ``category``,
  ``category_id`` (may be null), ``path`` (PNG relative to the folder), ``width``, ``height``,
  free metadata; lines with ``"kept": false`` are rejected objects and are ignored);
* a plain tree ``<category>/*.png`` (loose PNGs in the folder: category from the file name);
* X-Paste's ``LVIS_instance_pools.json`` (``{category: [png paths]}``), given as the file or
  as a folder holding it; ``bow_(weapon)`` becomes ``bow (weapon)``.

Only the index is held in memory; pixels are decoded on demand and kept in a small LRU cache
bounded in bytes, so a worker's memory does not grow with the bank. Cut-outs are cropped to
their alpha bounding box and downscaled to at most ``max_side`` pixels. Unusable objects (no
alpha, unreadable, all transparent) are returned as :class:`~synthgen.images.Skip`.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from synthgen.errors import Skip, UserError
from synthgen.images import IMAGE_EXTS, decode  # JPEG/BMP objects: listed, counted as no_alpha
from synthgen.schema import INDEX_FILE, POOLS_FILE, BankEntry, clean_name, read_bank_record


def _intern(name: str) -> str:
    return sys.intern(name)


@dataclass
class CutOut:
    """An RGBA cut-out cropped to its opaque extent."""

    rgba: np.ndarray          # (h, w, 4) uint8
    aspect: float             # width / height of the opaque extent at full resolution

    @property
    def nbytes(self) -> int:
        return int(self.rgba.nbytes)


class ObjectBank:
    def __init__(self, entries: list[BankEntry], source: str, layout: str,
                 max_side: int = 448, cache_bytes: int = 128 << 20, root: str = ""):
        if not entries:
            raise UserError(f"object bank {source} holds no objects")
        self.entries = sorted(entries, key=lambda e: e.id)
        ids = [e.id for e in self.entries]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise UserError(f"object bank {source}: duplicate object id {dup!r}")
        self.source = source
        self.root = root
        self.layout = layout
        self.max_side = max_side
        self.cache_bytes = cache_bytes
        cats: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            cats.setdefault(e.category, []).append(i)
        self.categories = sorted(cats)
        self.by_category = [cats[c] for c in self.categories]
        self._cache: OrderedDict[int, CutOut | Skip] = OrderedDict()
        self._cached_bytes = 0

    def __len__(self) -> int:
        return len(self.entries)

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, **kw) -> "ObjectBank":
        p = Path(path)
        if not p.exists():
            raise UserError(f"object bank not found: {p}")
        if p.is_file():
            if p.name == INDEX_FILE:
                return cls(_read_index(p), str(p.parent), "index", root=str(p.parent), **kw)
            if p.suffix == ".json":
                return cls(_read_pools(p), str(p), "xpaste-pools", root=str(p.parent), **kw)
            raise UserError(f"object bank {p}: expected a folder, {INDEX_FILE} or {POOLS_FILE}")
        if (p / INDEX_FILE).exists():
            return cls(_read_index(p / INDEX_FILE), str(p), "index", root=str(p), **kw)
        if (p / POOLS_FILE).exists():
            return cls(_read_pools(p / POOLS_FILE), str(p), "xpaste-pools", root=str(p), **kw)
        return cls(_read_tree(p), str(p), "tree", root=str(p), **kw)

    def path_of(self, i: int) -> str:
        return os.path.join(self.root, self.entries[i].path)

    def load(self, i: int) -> CutOut | Skip:
        """Decoded cut-out ``i`` (cropped, downscaled) or a Skip; LRU-cached."""
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        item = load_cutout(self.path_of(i), self.max_side)
        self._cache[i] = item
        self._cached_bytes += item.nbytes if isinstance(item, CutOut) else 64
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes if isinstance(old, CutOut) else 64
        return item

    def first_usable(self, limit: int | None = None) -> int | None:
        """Index of the first usable object (scanning at most ``limit``), or None."""
        for i in range(len(self.entries) if limit is None else min(limit, len(self.entries))):
            if isinstance(self.load(i), CutOut):
                return i
        return None


def load_cutout(path: str, max_side: int) -> CutOut | Skip:
    img = decode(path, keep_alpha=True)
    if isinstance(img, Skip):
        return img
    alpha = np.asarray(img.getchannel("A"))
    ys, xs = np.nonzero(alpha >= 128)
    if len(ys) == 0:
        return Skip("transparent", "no pixel with alpha >= 128")
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    img = img.crop((x1, y1, x2, y2))
    aspect = (x2 - x1) / (y2 - y1)
    if max(img.size) > max_side:
        s = max_side / max(img.size)
        img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))),
                         Image.Resampling.LANCZOS, reducing_gap=3.0)
    return CutOut(np.array(img, dtype=np.uint8), aspect)


def _read_index(index: Path) -> list[BankEntry]:
    out = []
    with open(index, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{index}:{ln}: not valid JSON ({exc.msg})") from None
            e = read_bank_record(rec, f"{index}:{ln}")
            if e is not None:
                out.append(BankEntry(e.id, _intern(e.category), e.category_id, e.path))
    return out


def _resolve_pool_path(raw: str, root: Path) -> str:
    p = Path(raw)
    if p.is_absolute() and p.exists():
        return str(p)
    if not p.is_absolute() and (root / p).exists():
        return str(root / p)
    # X-Paste stores absolute paths of the authors' machine; keep the part after "images/"
    tail = raw.split("images/")[-1].lstrip("/")
    for cand in (root / "images" / tail, root / tail):
        if cand.exists():
            return str(cand)
    return str(root / p) if not p.is_absolute() else str(p)


def _read_pools(pools: Path) -> list[BankEntry]:
    try:
        data = json.loads(pools.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{pools}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise UserError(f"{pools}: expected {{category: [png paths]}} as in X-Paste's {POOLS_FILE}")
    root = pools.parent
    out = []
    for key in sorted(data):
        for j, raw in enumerate(data[key]):
            out.append(BankEntry(f"{key}/{j:06d}", _intern(clean_name(key)), None,
                                 os.path.relpath(_resolve_pool_path(str(raw), root), root)))
    return out


def _stem_category(stem: str) -> str:
    return clean_name(re.sub(r"[_\-.\s]*\d+$", "", stem) or stem)


def _read_tree(root: Path) -> list[BankEntry]:
    """``<category>/*.png`` (recursive below each category), plus loose PNGs directly in ``root``
    whose category is the file name without a trailing number (``apple_02.png`` -> ``apple``)."""
    out = []
    for f in sorted(root.iterdir()):
        if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
            out.append(BankEntry(f.name, _intern(_stem_category(f.stem)), None, f.name))
    for d in sorted(x for x in root.iterdir() if x.is_dir()):
        for f in sorted(d.rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTS:
                rel = f.relative_to(root).as_posix()
                out.append(BankEntry(rel, _intern(clean_name(d.name)), None, rel))
    return out
