"""Background sources: a folder of images (recursive) or WebDataset shards.

The listing is made once, sorted, and is what a sample's random draw indexes into, so the same
inputs give the same scenes on any number of workers. A listed item is a plain string: a file
path, or ``tar_path::member::offset::size`` for an image inside a tar, read by seeking. On an
object store (``s3://bucket/bg/``) a listed item is the object's URL, or a member of a remote tar
read by one ranged GET; the listing's sizes come from the same listing requests.
"""

from __future__ import annotations

import os
import posixpath
import sys
from dataclasses import dataclass, field
from pathlib import Path

from synthgen import storage
from synthgen.errors import UserError
from synthgen.images import IMAGE_EXTS, regular_file
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


def _walk_folder(root: Path, listing: BackgroundListing, tars: list[Path]) -> None:
    """Image files and tars under ``root`` (recursively, not following symlinked folders); a
    symlinked file is used only when it resolves inside ``root``."""
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            f = Path(dirpath, name)
            suf = f.suffix.lower()
            if suf not in IMAGE_EXTS and suf != ".tar":
                continue
            shown = str(f)
            try:
                shown.encode("utf-8")
            except UnicodeEncodeError:
                listing.skip("non_utf8", shown, "the file name is not valid UTF-8")
                continue
            real = os.path.realpath(f)
            if f.is_symlink() and not (real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)):
                listing.skip("outside_folder", shown, f"a symlink to {real}, outside {root}")
                continue
            bad = regular_file(f)
            if bad is not None:
                listing.skip(bad.reason, shown, bad.detail)
                continue
            (tars.append(f) if suf == ".tar" else listing.items.append(shown))


# sizes of remote objects seen when listing (for the run's input identity: no HEAD per item)
_SIZES: dict[str, int] = {}


def _walk_remote(root: storage.RemotePath, listing: BackgroundListing, tars: list) -> None:
    """Image objects and tars under a prefix, recursively (object stores have no links or FIFOs;
    hidden names, such as a lock, are left out)."""
    for url, size in root.find().items():
        rel = url[len(str(root)) + 1:]
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        suf = posixpath.splitext(url)[1].lower()
        if suf not in IMAGE_EXTS and suf != ".tar":
            continue
        _SIZES[url] = size
        (tars.append(url) if suf == ".tar" else listing.items.append(url))


def list_backgrounds(spec: str) -> BackgroundListing:
    """All usable-looking background items of ``spec`` (folder, tar file(s), or pattern)."""
    if not str(spec).strip():
        raise UserError("--backgrounds is empty")
    listing = BackgroundListing(items=[])
    tars: list = []
    for raw in expand(spec):
        if storage.is_remote(raw):
            rp = storage.RemotePath(raw)
            listing.roots.append(str(rp))
            if rp.suffix.lower() in IMAGE_EXTS | {".tar"} and rp.is_file():
                (tars.append(str(rp)) if rp.suffix.lower() == ".tar" else listing.items.append(str(rp)))
            elif rp.is_dir():
                _walk_remote(rp, listing, tars)
            elif rp.is_file():
                raise UserError(f"backgrounds: {rp} is neither a folder, an image nor a .tar shard")
            else:
                raise UserError(f"backgrounds not found: {rp}")
            continue
        p = Path(raw)
        if not p.exists():
            raise UserError(f"backgrounds not found: {p}")
        listing.roots.append(str(p))
        if p.is_dir():
            _walk_folder(p, listing, tars)
        elif p.suffix.lower() == ".tar":
            tars.append(p)
        elif p.suffix.lower() in IMAGE_EXTS:
            listing.items.append(str(p))
        else:
            raise UserError(f"backgrounds: {p} is neither a folder, an image nor a .tar shard")
    local_tars = sorted({t for t in tars if not isinstance(t, str)})
    for t in local_tars + sorted({t for t in tars if isinstance(t, str)}):
        listing.items.extend(_list_tar(t))
    listing.items = sorted(set(listing.items))
    if not listing.items:
        extra = f" ({'; '.join(f'{len(v)} {k}' for k, v in listing.skipped.items())})" if listing.skipped else ""
        raise UserError(f"backgrounds: no images (jpg/png/webp/...) or WebDataset shards in {spec}{extra}")
    return listing


def _list_tar(path: Path | str) -> list[str]:
    """Image members of a tar; a truncated tar keeps the members before the damage (warned)."""
    members, err = list_members(str(path), IMAGE_EXTS)
    if err is not None:
        if not members:
            raise UserError(f"backgrounds: cannot read shard {path}: {err}")
        print(f"warning: backgrounds: shard {path} is damaged ({err}); using its first "
              f"{len(members)} images", file=sys.stderr)
    return [_SEP.join((str(path), name, str(offset), str(size))) for name, offset, size in members]


def read_background(item: str) -> bytes | str:
    """Bytes of a tar member, or the path of a plain file (decoded by the caller); a remote
    object's bytes."""
    if _SEP not in item:
        if storage.is_remote(item):
            try:
                return storage.RemotePath(item).read_bytes()
            except FileNotFoundError:
                return b""  # (decoded as unreadable: skipped and counted)
        return item
    tar, _member, offset, size = item.rsplit(_SEP, 3)
    return read_member(tar, int(offset), int(size))


def item_size(item: str) -> int:
    """Bytes of a listed background (a file's size, or a tar member's)."""
    if _SEP in item:
        return int(item.rsplit(_SEP, 1)[1])
    if storage.is_remote(item):
        if item not in _SIZES:
            try:
                _SIZES[item] = storage.RemotePath(item).size()
            except FileNotFoundError:
                return -1
        return _SIZES[item]
    try:
        return os.stat(item).st_size
    except OSError:
        return -1


def display_name(item: str) -> str:
    if _SEP in item:
        tar, member, _, _ = item.rsplit(_SEP, 3)
        return f"{tar}:{member}"
    return item
