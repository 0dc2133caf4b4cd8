"""The object bank's format, written once: what render writes and compose reads.

A bank is a folder with ``index.jsonl`` (one object per line: :func:`bank_record`; what compose
keeps of it: :class:`BankEntry`) and the RGBA PNGs it names (:func:`object_file`), finished
categories marked by ``_categories/{slug}.json``, the run's settings and totals beside them.
Compose also reads two layouts that are not written here: a plain tree ``<category>/*.png`` and
X-Paste's ``LVIS_instance_pools.json`` (:mod:`.reader`); and any of them prepared once
(``synthgen prepare-objects``: raw pixels in shards, :mod:`.prepared`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.errors import UserError
from synthgen.schema import clean_name, unlocked

INDEX_FILE = "index.jsonl"
POOLS_FILE = "LVIS_instance_pools.json"        # X-Paste's {category: [png paths]}
CATEGORIES_DIR = "_categories"                  # {slug}.json marks a finished category
RENDER_STATS_FILE = "render_stats.json"
RENDER_CONFIG_FILE = "render_config.json"
REJECTED_DIR = "_rejected"

# a prepared bank (``synthgen prepare-objects``, :mod:`.prepared`): the cut-outs decoded once
PREPARED_FORMAT = "synthgen.prepared-objects/1"
PREPARED_IDENTITY = "prepared-objects.json"     # the source and settings (a folder of other ones is refused)
PREPARED_INDEX = "objects.jsonl"                # one line per object, in the bank's order
PREPARED_PREFIX = "objects"                     # objects-NNNNNN.rgba, objects-NNNNNN_stats.json


def pixels_name(shard: int) -> str:
    """A prepared bank's shard ``shard``: its cut-outs' raw RGBA bytes, one after the other."""
    return f"{PREPARED_PREFIX}-{int(shard):06d}.rgba"


def object_id(slug: str, index: int) -> str:
    return f"{slug}/{int(index):05d}"


def object_file(slug: str, index: int, kept: bool = True) -> str:
    """Path of an object's PNG relative to the bank root."""
    return f"{slug}/{int(index):05d}.png" if kept else f"{slug}/{REJECTED_DIR}/{int(index):05d}.png"


def thumbnail_file(slug: str, index: int) -> str:
    """Path of a rejected object's small thumbnail (its full PNG not kept) relative to the bank root."""
    return f"{slug}/{REJECTED_DIR}/{int(index):05d}.thumb.png"


def bank_record(*, id: str, category: str, category_id: int | None, path: str | None,
                width: int | None, height: int | None, kept: bool, reason: str | None,
                **meta: Any) -> dict[str, Any]:
    """One line of ``index.jsonl``: the fields compose reads first, then free metadata. Lines
    with ``kept: false`` are rejected objects (kept for inspection, never pasted): ``reason`` says
    why; ``path`` is their full PNG with ``--keep-rejected``, else null, and then ``thumbnail``
    (optional, absent in banks of earlier synthgen) is a small PNG of the cut-out
    (:func:`thumbnail_file`, longer side <= 64 px) for ``synthgen preview``."""
    return {"id": id, "category": category, "category_id": category_id, "path": path,
            "width": width, "height": height, "kept": bool(kept), "reason": reason, **meta}


@dataclass(frozen=True, slots=True)
class BankEntry:
    """One usable object of a bank (kept small: a bank can hold a million of them)."""

    id: str
    category: str      # display name (interned by the reader)
    category_id: int | None
    path: str          # PNG path relative to the bank root


def read_bank_record(rec: Any, where: str) -> BankEntry | None:
    """The entry of one ``index.jsonl`` record (None for a rejected object); UserError when the
    record is malformed."""
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object")
    if rec.get("kept", True) is False:
        return None
    missing = [k for k in ("id", "category", "path") if rec.get(k) is None]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)}")
    cid = rec.get("category_id")
    if cid is not None:
        try:
            cid = int(cid)
        except (TypeError, ValueError):
            raise UserError(f"{where}: category_id must be an integer or null (got {cid!r})") from None
    return BankEntry(str(rec["id"]), clean_name(str(rec["category"])), cid, str(rec["path"]))


def is_bank(spec: str | Path) -> bool:
    """A folder (a path or a URL) that is an object bank, not scene shards: an index.jsonl
    (render), an X-Paste pools file, a prepared bank, or images and no .tar."""
    from synthgen import storage
    from synthgen.images import IMAGE_EXTS

    p = storage.path(spec)
    if not p.is_dir():
        return False
    if (p / INDEX_FILE).is_file() or (p / POOLS_FILE).is_file() or (p / PREPARED_IDENTITY).is_file():
        return True
    if any(p.glob("*.tar")):
        return False
    return any(Path(f).suffix.lower() in IMAGE_EXTS for f in p.find())


def bank_done(out: Path) -> bool:
    """A rendered bank is complete: its totals, written when every category is."""
    return unlocked(out, RENDER_STATS_FILE)
