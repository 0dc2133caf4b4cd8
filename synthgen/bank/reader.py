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
alpha, unreadable, all transparent) are returned as :class:`~synthgen.images.Skip`;
:meth:`ObjectBank.survey` counts them (with the layout detected) for compose's line about the bank.

A bank may be a local folder or an object-store URL (``s3://bucket/objects``,
:mod:`synthgen.storage`), read by the same code: the index is read once, a tree listed once
(``find`` of its path), the pools' paths looked up in one listing of an object store
(:func:`~synthgen.storage.sizes`), and a cut-out read (one GET) when it is first used. Object
paths must stay inside the bank (or an extra root): checked when listing (lexically), and locally
again when a cut-out is read (a symlink leading out is refused).

Categories read from folder and file names are checked (a folder of banks is refused; names that
look like file names are warned about: :attr:`ObjectBank.warnings`), and a map may rename the
categories of any layout (``categories_map``, :mod:`.names`).

A prepared bank (``synthgen prepare-objects``, :mod:`.prepared`) is read as the bank it was made of,
its cut-outs read as raw pixels (a larger ``max_side`` than it was prepared at is refused).
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import numpy as np
from PIL import Image

from synthgen import storage
from synthgen.bank.format import INDEX_FILE, POOLS_FILE, BankEntry, read_bank_record
from synthgen.bank.names import (
    file_like_warning,
    flat_banks_warning,
    load_map,
    refuse_folder_of_banks,
    rename,
    shown,
)
from synthgen.bank.prepared import PreparedObjects, is_prepared
from synthgen.bank.vocabulary import is_vocabulary
from synthgen.errors import Skip, UserError
from synthgen.images import IMAGE_EXTS, decode  # JPEG/BMP objects: listed, counted as no_alpha
from synthgen.schema import clean_name


def _intern(name: str) -> str:
    return sys.intern(name)


@dataclass
class CutOut:
    """An RGBA cut-out cropped to its opaque extent, and the same pixels with premultiplied
    alpha (Pillow's ``RGBa``), which is what every resize of an RGBA image works on: kept so
    that a scene's resizes do not convert the cut-out again (the bytes are the same)."""

    rgba: np.ndarray          # (h, w, 4) uint8
    aspect: float             # width / height of the opaque extent at full resolution
    premultiplied: Image.Image = field(repr=False, default=None)  # type: ignore[assignment]
    extent: tuple[int, int] | None = None  # (w, h) of the opaque extent at full resolution

    def __post_init__(self) -> None:
        if self.premultiplied is None:
            self.premultiplied = Image.fromarray(self.rgba, "RGBA").convert("RGBa")

    @property
    def nbytes(self) -> int:
        return 2 * int(self.rgba.nbytes)


LAYOUTS = {"index": "synthgen bank (index.jsonl)", "xpaste-pools": f"X-Paste pools ({POOLS_FILE})"}
SURVEY_LIMIT = 500  # cut-outs decoded by :meth:`ObjectBank.survey`; a larger bank is sampled evenly


@dataclass(frozen=True)
class BankSurvey:
    """What a bank holds: its layout in words, its categories and cut-outs, and how many of them
    are unusable by reason (refused when listing: :attr:`ObjectBank.rejected`; or when decoded:
    the :class:`~synthgen.errors.Skip` of :meth:`ObjectBank.load`). A bank of more than ``limit``
    cut-outs is judged on an even sample (``checked`` < ``listed``)."""

    layout: str
    categories: int
    listed: int                     # cut-outs listed: usable-looking entries + refused ones
    checked: int                    # of which were looked at: the refused ones and the decoded ones
    unusable: dict[str, int] = field(default_factory=dict)  # reason -> count among the checked
    names: tuple[str, ...] = ()     # the categories, sorted
    warnings: tuple[str, ...] = ()  # about its names (:mod:`.names`): file names, a typo in the map

    @property
    def num_unusable(self) -> int:
        return sum(self.unusable.values())

    @property
    def usable_fraction(self) -> float:
        return 1.0 - self.num_unusable / self.checked if self.checked else 0.0

    def reasons(self) -> str:
        return ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in sorted(self.unusable.items(), key=lambda x: -x[1]))

    def counts(self) -> str:
        """``340 cut-outs (3 unusable: 2 no alpha, 1 unreadable)``."""
        of = f" of {self.checked} checked" if self.checked < self.listed else ""
        bad = f"{self.num_unusable} unusable{of}: {self.reasons()}" if self.unusable else f"all usable{of}"
        return f"{self.listed} cut-outs ({bad})"

    def line(self) -> str:
        """The line compose prints about the bank it read (its first categories by name), then a
        ``warning:`` line for each of :attr:`warnings`."""
        names = f" ({shown(self.names)})" if self.names else ""
        head = f"objects: {self.layout}, {self.categories} categories{names}, {self.counts()}"
        return "\n".join([head, *(f"warning: {w}" for w in self.warnings)])


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
        self.rejected: dict[str, dict[str, str]] = {}   # refused when reading: reason -> {id: why}
        self.warnings: list[str] = []                    # about its names (:mod:`.names`)
        self.roots: tuple[str, ...] = (root,)
        self.prepared: PreparedObjects | None = None     # read from a prepared bank (:mod:`.prepared`)
        self.notes: list[str] = []                       # the warnings of its listing

    def __len__(self) -> int:
        return len(self.entries)

    # -- reading ---------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, extra_roots: tuple[str, ...] = (), categories_map=None, **kw) -> "ObjectBank":
        """Read a bank (see the module doc). Object paths must lie inside the bank's folder, or
        inside one of ``extra_roots``; others are refused and listed in :attr:`rejected`.
        ``categories_map``: a ``--categories-map`` file (or its mapping) renaming categories
        (:mod:`.names`)."""
        p = storage.path(path)
        if not p.exists():
            raise UserError(f"object bank not found: {p}")
        prepared = None
        if p.is_file():
            if p.name == INDEX_FILE:
                layout, read, root, source = "index", _read_index, p.parent, str(p.parent)
            elif p.suffix == ".json":
                layout, read, root, source = "xpaste-pools", _read_pools, p.parent, str(p)
            else:
                raise UserError(f"object bank {p}: expected a folder, {INDEX_FILE} or {POOLS_FILE}")
            file = p
        elif (p / INDEX_FILE).exists():
            layout, read, root, source, file = "index", _read_index, p, str(p), p / INDEX_FILE
        elif (p / POOLS_FILE).exists():
            layout, read, root, source, file = "xpaste-pools", _read_pools, p, str(p), p / POOLS_FILE
        elif is_prepared(p):
            prepared = PreparedObjects.open(p)
            kw["max_side"] = prepared.check_side(kw.get("max_side"))
            layout, read, root, source, file = prepared.layout, prepared.fill, p, str(p), p
        else:
            layout, read, root, source, file = "tree", _read_tree, p, str(p), p
        mapping = (load_map(categories_map) if isinstance(categories_map, (str, Path)) and not is_vocabulary(categories_map)
                   else categories_map)  # (a vocabulary, lvis/coco/voc: looked up when listed, :mod:`.vocabulary`)
        bank = cls._read(layout, read, root, source, file, tuple(extra_roots), mapping, **kw)
        bank.prepared = prepared
        return bank

    @classmethod
    def _read(cls, layout: str, read, root, source: str, file, extra_roots: tuple[str, ...], mapping=None,
              **kw) -> "ObjectBank":
        """List the bank with its layout's reader (and rename its categories by ``mapping``);
        refuse one with no usable object; note what looks wrong with its names."""
        listing = _Listing(root, extra_roots)
        read(file, listing)
        if not listing.entries and listing.rejected:
            why = "; ".join(f"{len(v)} {k}" for k, v in listing.rejected.items())
            raise UserError(f"object bank {source}: no usable object ({why})")
        entries, mapped, notes = listing.entries, set(), list(listing.notes)
        if mapping is not None:
            entries, mapped, typo = rename(entries, layout, mapping)
            notes += [typo] if typo else []
        bank = cls(entries, source, layout, root=str(root), **kw)
        if layout == "tree":  # (categories read from file and folder names)
            odd = file_like_warning(bank.categories, mapped)
            notes += [odd] if odd else []
        bank.rejected = listing.rejected
        bank.roots = (str(root), *listing.extra)
        bank.warnings = notes
        bank.notes = list(listing.notes)
        return bank

    def path_of(self, i: int) -> str:
        return storage.join(self.root, self.entries[i].path)

    def load(self, i: int) -> CutOut | Skip:
        """Decoded cut-out ``i`` (cropped, downscaled) or a Skip; LRU-cached. A path that leaves
        the bank through a symlink is a Skip (``outside_bank``)."""
        hit = self._cache.get(i)
        if hit is not None:
            self._cache.move_to_end(i)
            return hit
        path = self.path_of(i)
        item: CutOut | Skip
        if self.prepared is not None:
            item = self._read_prepared(i)
        elif not storage.inside(path, self.roots, real=True):  # (listed: inside until links are followed)
            item = Skip("outside_bank", f"{self.entries[i].path} links outside the bank")
        else:
            try:
                item = load_cutout(storage.path(path).source(), self.max_side)
            except FileNotFoundError:  # (an object; a missing file is the decoder's Skip)
                item = Skip("missing", f"no such object: {path}")
        self._cache[i] = item
        self._cached_bytes += item.nbytes if isinstance(item, CutOut) else 64
        while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached_bytes -= old.nbytes if isinstance(old, CutOut) else 64
        return item

    def _read_prepared(self, i: int) -> CutOut | Skip:
        item = self.prepared.pixels(i)
        if isinstance(item, Skip):
            return item
        rgba, aspect, extent = item
        if max(rgba.shape[:2]) <= self.max_side:
            return CutOut(rgba, aspect, extent=extent)
        return _downscaled(Image.fromarray(rgba, "RGBA"), aspect, self.max_side, extent)

    def listing(self) -> list[tuple[str, str, int]]:
        """``(id, path, bytes)`` of each object (-1: missing): a run's input identity (one listing
        of an object store); a prepared bank's are those of its source's files."""
        if self.prepared is not None:
            return self.prepared.listing()
        size = storage.sizes(self.root)
        return [(e.id, e.path, size(storage.join(self.root, e.path))) for e in self.entries]

    def layout_words(self) -> str:
        """The layout that was detected, in words (a tree is told apart by where its PNGs lie)."""
        if self.prepared is not None:
            return f"prepared objects ({self.prepared.max_side} px) of a {self.prepared.manifest['layout_words']}"
        if self.layout in LAYOUTS:
            return LAYOUTS[self.layout]
        nested = any("/" in e.path for e in self.entries)
        loose = any("/" not in e.path for e in self.entries)
        if nested and loose:
            return "folder of category sub-folders and loose files (categories from file names)"
        return "folder of category sub-folders" if nested else "flat folder (categories from file names)"

    def survey(self, limit: int = SURVEY_LIMIT) -> BankSurvey:
        """Count the unusable cut-outs: those refused when listing, and those that :meth:`load`
        skips (decoding every cut-out, or ``limit`` of them spread evenly over a larger bank)."""
        n = len(self.entries)
        if self.prepared is not None:  # (every cut-out was read once when it was prepared)
            refused = sum(len(v) for v in self.rejected.values())
            return BankSurvey(self.layout_words(), len(self.categories), n + refused, n + refused,
                              dict(self.prepared.unusable()), tuple(self.categories), tuple(self.warnings))
        picks = range(n) if n <= limit else sorted({round(k * (n - 1) / (limit - 1)) for k in range(limit)})
        unusable = Counter({r: len(v) for r, v in self.rejected.items() if v})
        for i in picks:
            item = self.load(i)
            if isinstance(item, Skip):
                unusable[item.reason] += 1
        refused = sum(len(v) for v in self.rejected.values())
        return BankSurvey(self.layout_words(), len(self.categories), n + refused, len(picks) + refused,
                          dict(unusable), tuple(self.categories), tuple(self.warnings))

    def first_usable(self, limit: int | None = None) -> int | None:
        """Index of the first usable object (scanning at most ``limit``), or None."""
        for i in range(len(self.entries) if limit is None else min(limit, len(self.entries))):
            if isinstance(self.load(i), CutOut):
                return i
        return None


def load_cutout(path: str | bytes, max_side: int) -> CutOut | Skip:
    img = decode(path, keep_alpha=True)
    if isinstance(img, Skip):
        return img
    alpha = np.asarray(img.getchannel("A"))
    ys, xs = np.nonzero(alpha >= 128)
    if len(ys) == 0:
        return Skip("transparent", "no pixel with alpha >= 128")
    x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return _downscaled(img.crop((x1, y1, x2, y2)), (x2 - x1) / (y2 - y1), max_side)


def _downscaled(img: Image.Image, aspect: float, max_side: int, extent: tuple[int, int] | None = None) -> CutOut:
    """The cut-out of ``img`` (already cropped; ``extent``: its size at full resolution, when
    ``img`` is a smaller copy), shrunk so its longer side is at most ``max_side``: the size is
    that of the full-resolution extent shrunk once."""
    w0, h0 = extent or img.size
    if max(w0, h0) > max_side:
        s = max_side / max(w0, h0)
        size = (max(1, round(w0 * s)), max(1, round(h0 * s)))
        if size != img.size:
            img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return CutOut(np.array(img, dtype=np.uint8), aspect, img.convert("RGBa"), (w0, h0))


class _Listing:
    """Entries of a bank being read, and the ones refused (reason -> {name: detail}).

    Refused: a path that is absolute or climbs out of the bank (``../../etc/passwd``) unless it
    lies in an allowed extra root, and names that are not valid UTF-8 (lone surrogates from
    undecodable file names or ``\\udcxx`` escapes would reach the scene json)."""

    def __init__(self, root, extra_roots: tuple[str, ...] = ()):
        self.root = root
        self.extra = tuple(storage.absolute(r) for r in extra_roots)
        self.entries: list[BankEntry] = []
        self.rejected: dict[str, dict[str, str]] = {}
        self.notes: list[str] = []  # warnings about the names read

    def reject(self, reason: str, name: str, detail: str) -> None:
        self.rejected.setdefault(reason, {})[_printable(name)] = detail

    def add(self, id: str, category: str, category_id: int | None, path: str) -> None:
        if not (_utf8(id) and _utf8(category) and _utf8(path)):
            self.reject("non_utf8", id, "a name or path that is not valid UTF-8")
            return
        if not storage.inside(storage.join(self.root, path), (str(self.root), *self.extra)):
            self.reject("outside_bank", id, f"path {path!r} is outside the bank {self.root}")
            return
        self.entries.append(BankEntry(id, _intern(category), category_id, path))


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _read_index(index, listing: _Listing) -> None:
    with io.BytesIO(index.read_bytes()) as f:
        for ln, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                listing.reject("non_utf8", f"{INDEX_FILE}:{ln}", "the line is not valid UTF-8")
                continue
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{index}:{ln}: not valid JSON ({exc.msg})") from None
            e = read_bank_record(rec, f"{index}:{ln}")
            if e is not None:
                listing.add(e.id, e.category, e.category_id, e.path)


def _resolve_pool(raw: str, root: str, roots: tuple[str, ...], size: Callable[[str], int]) -> str:
    """A pools entry as a path relative to the bank root, looked for only inside ``roots``
    (``size``: :func:`~synthgen.storage.sizes` of the bank, -1 for what is missing). X-Paste
    stores absolute paths of the authors' machine: those are re-rooted by the part after
    ``images/`` (``ROOT/images/TAIL`` or ``ROOT/TAIL``)."""
    def found(rel: str) -> bool:
        return size(storage.join(root, rel)) >= 0

    if storage.inside(raw, roots) if raw.startswith("/") else found(raw):
        return storage.relative(storage.join(root, raw), root)
    tail = raw.split("images/")[-1].lstrip("/")
    for cand in (f"images/{tail}", tail):
        if found(cand):
            return storage.relative(storage.join(root, cand), root)
    return storage.relative(storage.join(root, raw), root)  # missing (or outside): refused or skipped later


def _read_pools(pools, listing: _Listing) -> None:
    try:
        data = json.loads(pools.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{pools}: not valid UTF-8 JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise UserError(f"{pools}: expected {{category: [png paths]}} as in X-Paste's {POOLS_FILE}")
    root = str(pools.parent)
    roots, size = (root, *listing.extra), storage.sizes(root)  # (a store: one listing)
    for key in sorted(data):
        for j, raw in enumerate(data[key]):
            listing.add(f"{key}/{j:06d}", clean_name(key), None, _resolve_pool(str(raw), root, roots, size))


def _stem_category(stem: str) -> str:
    return clean_name(re.sub(r"[_\-.\s]*\d+$", "", stem) or stem)


def _read_tree(root, listing: _Listing) -> None:
    """``<category>/*.png``, plus loose PNGs directly in ``root`` whose category is the file name
    without a trailing number (``apple_02.png`` -> ``apple``); from one recursive listing. A
    category folder that holds folders of images or a bank's index is refused (a folder of banks,
    :mod:`.names`)."""
    loose, nested, marks = [], [], []
    prefix = str(root).rstrip("/") + "/"
    for name in root.find():
        rel = PurePosixPath(name[len(prefix):])
        if rel.suffix.lower() in IMAGE_EXTS:
            (nested if len(rel.parts) > 1 else loose).append(rel)
        elif rel.name in (INDEX_FILE, POOLS_FILE):
            marks.append(rel)
    refuse_folder_of_banks(root, nested, marks)
    if not loose and (note := flat_banks_warning(root, nested)):
        listing.notes.append(note)
    for rel in sorted(loose):
        listing.add(rel.name, _stem_category(rel.stem), None, rel.name)
    for rel in sorted(nested, key=lambda r: (r.parts[0], str(r))):
        listing.add(str(rel), clean_name(rel.parts[0]), None, str(rel))
