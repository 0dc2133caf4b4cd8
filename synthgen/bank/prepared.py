"""A prepared object bank: every cut-out decoded once, read back with one positioned read.

A real bank holds tens of thousands of 512-px PNGs; compose pastes them at most at the canvas
size, and decoding, cropping and downscaling one costs far more than the rest of its scene. A
prepared bank (``synthgen prepare-objects``, :mod:`synthgen.compose.prepare_objects`) holds the
cut-outs exactly as :meth:`ObjectBank.load <synthgen.bank.reader.ObjectBank.load>` makes them at
``max_side`` (cropped to their opaque extent, downscaled with the same resampling), so a scene
composed from it has the same bytes as one composed from the source bank at that canvas.

The folder:

* ``objects-NNNNNN.rgba`` (:func:`~.format.pixels_name`): the cut-outs' straight RGBA pixels,
  uncompressed ``uint8`` rows, one cut-out after the other (written whole, then committed);
* ``objects-NNNNNN_stats.json``: the marker of a finished shard, with its objects' rows;
* ``objects.jsonl`` (:data:`~.format.PREPARED_INDEX`): one line per object of the source bank,
  in its order (``id``, ``category``, ``category_id``, ``path`` as the source names them,
  ``bytes`` of the source file; then ``shard``, ``offset``, ``width``, ``height``, ``aspect``,
  ``extent`` (the opaque extent's size at full resolution, which a smaller canvas shrinks to);
  or ``skip`` and ``detail`` for an unusable one, as the source's ``load`` says);
* ``manifest.json``: the format tag, the source (path, layout, listing digest), ``max_side``,
  counts, categories, the unusable cut-outs by reason (count, examples) and the ones refused when
  listing (so :meth:`ObjectBank.survey` counts them without decoding anything), the shards;
* ``prepared-objects.json``: the identity of the source and settings.

Reading a cut-out is one ``os.pread`` of ``width * height * 4`` bytes (one ranged GET on an
object store) and ``np.frombuffer``: only the index is held in memory, never a shard. Only the
straight pixels are stored: the premultiplied image compose resizes is made from them (Pillow's
``RGBA -> RGBa``, exact), while the straight ones cannot be recovered from premultiplied bytes.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import Any, Iterable, Iterator

import numpy as np

from synthgen import storage
from synthgen.bank.format import (
    PREPARED_FORMAT,
    PREPARED_IDENTITY,
    PREPARED_INDEX,
    PREPARED_PREFIX,
    BankEntry,
    pixels_name,
)
from synthgen.errors import Skip, UserError
from synthgen.schema import MANIFEST_FILE, scenes_done, stats_name

PROGRESS_EVERY = 16  # cut-outs between two progress reports of a shard task


def shard_stats(shard: int) -> str:
    return stats_name(shard, PREPARED_PREFIX)


def is_prepared(folder) -> bool:
    """Whether ``folder`` (a path object) is a prepared bank, finished or not."""
    return (folder / PREPARED_IDENTITY).is_file()


class PreparedObjects:
    """The index of a finished prepared bank, and its cut-outs' pixels on demand."""

    def __init__(self, folder: str, manifest: dict[str, Any], rows: Iterable[dict[str, Any]]):
        self.folder = folder
        self.manifest = manifest
        self.max_side = int(manifest["max_side"])
        self.layout = str(manifest["layout"])
        self.source = str(manifest["source"])
        self.source_root = str(manifest["source_root"])
        self.rejected: dict[str, dict[str, str]] = {r: dict(v) for r, v in manifest["rejected"].items()}
        self.notes: list[str] = list(manifest.get("notes", []))
        self.shards = list(manifest["shards"])
        self.entries: list[BankEntry] = []
        self.sizes: list[int] = []
        self.skips: dict[int, Skip] = {}
        where = []  # (shard, offset, width, height, extent w, extent h) per object; -1s for a skip
        aspects = []
        for i, r in enumerate(rows):  # (one row at a time: a bank's index is never held as dicts)
            self.entries.append(BankEntry(r["id"], _intern(r["category"]), r["category_id"], r["path"]))
            self.sizes.append(int(r["bytes"]))
            if "skip" in r:
                self.skips[i] = Skip(r["skip"], r["detail"])
                where.append((-1, -1, 0, 0, 0, 0))
                aspects.append(0.0)
            else:
                where.append((r["shard"], r["offset"], r["width"], r["height"], *r["extent"]))
                aspects.append(r["aspect"])
        table = np.array(where, np.int64).reshape(-1, 6)
        self._shard, self._offset = table[:, 0].astype(np.int32), table[:, 1].copy()
        self._wh, self._extent = table[:, 2:4].astype(np.int32), table[:, 4:6].astype(np.int32)
        self._aspect = np.array(aspects, np.float64)
        self._readers: dict[int, Any] = {}

    @classmethod
    def open(cls, folder) -> PreparedObjects:
        """Read a prepared bank's manifest and index; UserError when it is not finished."""
        p = storage.path(folder)
        if not scenes_done(p):
            raise UserError(f"object bank {p} is a prepare-objects folder that is not finished (or is being "
                            "written now): finish it by running its `synthgen prepare-objects` again")
        manifest = json.loads((p / MANIFEST_FILE).read_text())
        if manifest.get("format") != PREPARED_FORMAT:
            raise UserError(f"object bank {p}: {MANIFEST_FILE} is not a prepared bank's "
                            f"(format {manifest.get('format')!r}, expected {PREPARED_FORMAT!r})")
        with io.BytesIO((p / PREPARED_INDEX).read_bytes()) as f:  # (a line at a time: no list of lines)
            return cls(str(p), manifest, (json.loads(line) for line in f if line.strip()))

    def fill(self, _file, listing) -> None:
        """What a layout's reader does (:mod:`.reader`): the entries, refused ones and notes."""
        listing.entries.extend(self.entries)
        for reason, names in self.rejected.items():
            listing.rejected.setdefault(reason, {}).update(names)
        listing.notes.extend(self.notes)

    def check_side(self, max_side: int | None) -> int:
        """The ``max_side`` a bank read from here gets: refused when larger than the prepared one
        (the pixels to make it are gone)."""
        if max_side is None:
            return self.max_side
        if max_side > self.max_side:
            raise UserError(f"object bank {self.folder} was prepared at --size {self.max_side}, smaller than the "
                            f"canvas {max_side}: prepare it again with `synthgen prepare-objects {self.source} "
                            f"--size {max_side} --out DIR`, or compose from {self.source}")
        return int(max_side)

    def pixels(self, i: int) -> tuple[np.ndarray, float, tuple[int, int]] | Skip:
        """``(rgba (h, w, 4) uint8 read-only, aspect, (w, h) of the opaque extent at full
        resolution)`` of object ``i``, or its Skip."""
        skip = self.skips.get(i)
        if skip is not None:
            return skip
        s = int(self._shard[i])
        w, h = (int(v) for v in self._wh[i])
        reader = self._readers.get(s)
        if reader is None:
            reader = self._readers[s] = storage.path(storage.join(self.folder, self.shards[s])).ranges()
        data = reader.read(int(self._offset[i]), w * h * 4)
        ew, eh = (int(v) for v in self._extent[i])
        return np.frombuffer(data, np.uint8).reshape(h, w, 4), float(self._aspect[i]), (ew, eh)

    def unusable(self) -> Counter:
        """Unusable cut-outs by reason: refused when listing, or skipped when read."""
        out = Counter({r: len(v) for r, v in self.rejected.items() if v})
        out.update(s.reason for s in self.skips.values())
        return out

    def listing(self) -> list[tuple[str, str, int]]:
        """``(id, path, bytes)`` of each object as its source file was (a run's input identity)."""
        return [(e.id, e.path, n) for e, n in zip(self.entries, self.sizes)]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_readers": {}}


def _intern(name: str) -> str:
    import sys

    return sys.intern(name)


def write_shard(bank, items: range, shard: int, out) -> Iterator[int]:
    """Write the cut-outs ``items`` of the source ``bank`` (an ObjectBank read at the prepared
    ``max_side``) into shard ``shard`` of the folder ``out``, whole; yields the cut-outs done
    every :data:`PROGRESS_EVERY`, returns their index rows (without ``bytes``)."""
    rows: list[dict[str, Any]] = []
    with storage.staging(storage.path(out) / pixels_name(shard)) as staged:
        with open(staged.tmp, "wb") as f:
            offset = 0
            for n, i in enumerate(items, 1):
                e = bank.entries[i]
                row: dict[str, Any] = {"id": e.id, "category": e.category, "category_id": e.category_id,
                                       "path": e.path}
                item = bank.load(i)
                if isinstance(item, Skip):
                    row.update(skip=item.reason, detail=item.detail)
                else:
                    data = np.ascontiguousarray(item.rgba, dtype=np.uint8).tobytes()
                    f.write(data)
                    h, w = item.rgba.shape[:2]
                    row.update(shard=shard, offset=offset, width=int(w), height=int(h), aspect=float(item.aspect),
                               extent=[int(v) for v in item.extent or (w, h)])
                    offset += len(data)
                rows.append(row)
                if n % PROGRESS_EVERY == 0:
                    yield n
        staged.commit()
    return rows


def finish(out, ident: dict[str, Any], n_shards: int, bank, listing: list[tuple[str, str, int]]) -> dict[str, Any]:
    """Join the shards' rows into the index (with the source files' sizes), then write the
    manifest (the folder's "done"); the manifest."""
    from synthgen.storage import atomic_write, atomic_write_json

    out = storage.path(out)
    rows: list[dict[str, Any]] = []
    for s in range(n_shards):
        rows.extend(json.loads((out / shard_stats(s)).read_text())["objects"])
    if [r["id"] for r in rows] != [e.id for e in bank.entries]:
        raise UserError(f"{out}: the shards do not hold the bank's objects in its order; remove the folder and "
                        "prepare it again")
    skipped: dict[str, list[str]] = {}
    for r, (_, _, size) in zip(rows, listing):
        r["bytes"] = size
        if "skip" in r:
            skipped.setdefault(r["skip"], []).append(r["id"])
    for reason, names in bank.rejected.items():
        skipped.setdefault(reason, []).extend(names)
    atomic_write(out / PREPARED_INDEX, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    usable = sum("skip" not in r for r in rows)
    manifest = {**ident, "source_root": str(bank.root), "layout_words": bank.layout_words(),
                "objects": len(rows), "usable": usable, "categories": list(bank.categories),
                "unusable": {r: {"count": len(v), "examples": sorted(v)[:20]} for r, v in sorted(skipped.items())},
                "rejected": bank.rejected, "notes": list(bank.notes),
                "bytes": sum(r.get("width", 0) * r.get("height", 0) * 4 for r in rows),
                "shards": [pixels_name(s) for s in range(n_shards)]}
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest
