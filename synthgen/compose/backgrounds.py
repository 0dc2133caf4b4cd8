"""Background sources: a folder of images (recursive) or WebDataset shards.

The listing is made once, sorted, and is what a sample's random draw indexes into, so the same
inputs give the same scenes on any number of workers. A listed item is a plain string: a file
path or an object's URL (``s3://bucket/bg/...``), or ``tar_path::member::offset::size`` for an
image inside a tar, read by seeking (one ranged GET of an object). A folder is listed by its path's
``scan`` (:mod:`synthgen.storage`: locally skipping what cannot be read, with the reason; on an
object store one listing), whose sizes are kept for the run's input identity.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from synthgen import storage
from synthgen.errors import Skip, UserError
from synthgen.images import IMAGE_EXTS
from synthgen.shards import expand, list_members, read_member

_SEP = "::"


@dataclass
class BackgroundListing:
    """The usable-looking background items of a spec, and what was left out (reason ->
    {name: detail}): symlinks leading out of a background folder, special files (FIFOs,
    devices), names that are not valid UTF-8."""

    items: list[str]
    skipped: dict[str, dict[str, str]] = field(default_factory=dict)
    roots: list[str] = field(default_factory=list)   # the folders and files the spec names

    def skip(self, reason: str, name: str, detail: str) -> None:
        self.skipped.setdefault(reason, {})[name.encode("utf-8", "backslashreplace").decode()] = detail


# sizes of the files and objects seen when listing (the run's input identity: no request per item)
_SIZES: dict[str, int] = {}


def _suffix(name: str) -> str:
    return PurePosixPath(name).suffix.lower()


def _wanted(name: str) -> bool:
    return _suffix(name) in IMAGE_EXTS or _suffix(name) == ".tar"


def _scan(root, listing: BackgroundListing, tars: list[str]) -> None:
    """Image files and tars under the folder ``root`` (a path object), recursively; what cannot
    be read is skipped with its reason."""
    files, skipped = root.scan(_wanted)
    for name, why in skipped:
        listing.skip(why.reason, name, why.detail)
    for name, size in files.items():
        _SIZES[name] = size
        (tars.append(name) if _suffix(name) == ".tar" else listing.items.append(name))


def list_backgrounds(spec: str) -> BackgroundListing:
    """All usable-looking background items of ``spec`` (folder, tar file(s), or pattern)."""
    if not str(spec).strip():
        raise UserError("--backgrounds is empty")
    listing = BackgroundListing(items=[])
    tars: list[str] = []
    for raw in expand(spec):
        p = storage.path(raw)
        if not p.exists():
            raise UserError(f"backgrounds not found: {p}")
        listing.roots.append(str(p))
        if p.is_dir():
            _scan(p, listing, tars)
        elif p.suffix.lower() == ".tar":
            tars.append(str(p))
        elif p.suffix.lower() in IMAGE_EXTS:
            listing.items.append(str(p))
        else:
            raise UserError(f"backgrounds: {p} is neither a folder, an image nor a .tar shard")
    for t in sorted(set(tars)):
        listing.items.extend(_list_tar(t))
    listing.items = sorted(set(listing.items))
    if not listing.items:
        extra = f" ({'; '.join(f'{len(v)} {k}' for k, v in listing.skipped.items())})" if listing.skipped else ""
        raise UserError(f"backgrounds: no images (jpg/png/webp/...) or WebDataset shards in {spec}{extra}")
    return listing


def _list_tar(path: str) -> list[str]:
    """Image members of a tar; a truncated tar keeps the members before the damage (warned). A
    shard of scenes (images that already hold objects, with their scene records) is refused."""
    members, err = list_members(str(path), set(IMAGE_EXTS) | {".json"})
    records = [m for m in members if m[0].lower().endswith(".json")]
    if records and _is_scene_record(path, records[0]):
        raise UserError(f"backgrounds: {path} is a shard of composed scenes (images that already hold objects); "
                        "give background images without objects (e.g. BG-20k), or a prepare-backgrounds folder")
    members = [m for m in members if not m[0].lower().endswith(".json")]
    if err is not None:
        if not members:
            raise UserError(f"backgrounds: cannot read shard {path}: {err}")
        print(f"warning: backgrounds: shard {path} is damaged ({err}); using its first "
              f"{len(members)} images", file=sys.stderr)
    return [_SEP.join((str(path), name, str(offset), str(size))) for name, offset, size in members]


def _is_scene_record(path: str, member: tuple[str, int, int]) -> bool:
    import json

    from synthgen.schema import SCENE_SCHEMAS

    name, offset, size = member
    if size > 1 << 20:
        return False
    try:
        rec = json.loads(storage.path(path).read_range(offset, size))
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and rec.get("schema") in SCENE_SCHEMAS


def first_usable_background(items: list[str], size: int, min_side: int, limit: int = 200) -> tuple[int, dict]:
    """``(index of the first background that decodes, {reason: count} of those before it)``;
    index -1 when none of the first ``limit`` does (checked before any work, as the bank is)."""
    from synthgen.images import decode

    reasons: dict[str, int] = {}
    for i, item in enumerate(items[:limit]):
        img = decode(read_background(item), draft_to=size, min_side=min_side)
        if not isinstance(img, Skip):
            return i, reasons
        reasons[img.reason] = reasons.get(img.reason, 0) + 1
    return -1, reasons


def read_background(item: str) -> bytes | str:
    """Bytes of a tar member, or the path of a plain file (decoded by the caller); a remote
    object's bytes."""
    if _SEP not in item:
        try:
            return storage.path(item).source()
        except FileNotFoundError:  # (an object; a missing file is the decoder's Skip)
            return b""  # (decoded as unreadable: skipped and counted)
    tar, _member, offset, size = item.rsplit(_SEP, 3)
    return read_member(tar, int(offset), int(size))


def item_size(item: str) -> int:
    """Bytes of a listed background (a file's size, or a tar member's)."""
    if _SEP in item:
        return int(item.rsplit(_SEP, 1)[1])
    if item not in _SIZES:
        try:
            _SIZES[item] = storage.path(item).size()
        except OSError:  # (missing)
            return -1
    return _SIZES[item]


def display_name(item: str) -> str:
    if _SEP in item:
        tar, member, _, _ = item.rsplit(_SEP, 3)
        return f"{tar}:{member}"
    return item
