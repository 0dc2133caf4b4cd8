"""Background sources: a folder of images (recursive) or WebDataset shards.

The listing is made once, sorted, and is what a sample's random draw indexes into, so the same
inputs give the same scenes on any number of workers. A listed item is a plain string: a file
path, or ``tar_path::member::offset::size`` for an image inside a tar, read by seeking.
"""

from __future__ import annotations

import sys
from pathlib import Path

from synthgen.errors import UserError
from synthgen.images import IMAGE_EXTS
from synthgen.shards import expand, list_members, read_member

_SEP = "::"


def list_backgrounds(spec: str) -> list[str]:
    """All usable-looking background items of ``spec`` (folder, tar file(s), or pattern)."""
    if not str(spec).strip():
        raise UserError("--backgrounds is empty")
    items: list[str] = []
    tars: list[Path] = []
    for p in map(Path, expand(spec)):
        if not p.exists():
            raise UserError(f"backgrounds not found: {p}")
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file():
                    suf = f.suffix.lower()
                    if suf in IMAGE_EXTS:
                        items.append(str(f))
                    elif suf == ".tar":
                        tars.append(f)
        elif p.suffix.lower() == ".tar":
            tars.append(p)
        elif p.suffix.lower() in IMAGE_EXTS:
            items.append(str(p))
        else:
            raise UserError(f"backgrounds: {p} is neither a folder, an image nor a .tar shard")
    for t in sorted(set(tars)):
        items.extend(_list_tar(t))
    items = sorted(set(items))
    if not items:
        raise UserError(f"backgrounds: no images (jpg/png/webp/...) or WebDataset shards in {spec}")
    return items


def _list_tar(path: Path) -> list[str]:
    """Image members of a tar; a truncated tar keeps the members before the damage (warned)."""
    members, err = list_members(str(path), IMAGE_EXTS)
    if err is not None:
        if not members:
            raise UserError(f"backgrounds: cannot read shard {path}: {err}")
        print(f"warning: backgrounds: shard {path} is damaged ({err}); using its first "
              f"{len(members)} images", file=sys.stderr)
    return [_SEP.join((str(path), name, str(offset), str(size))) for name, offset, size in members]


def read_background(item: str) -> bytes | str:
    """Bytes of a tar member, or the path of a plain file (decoded by the caller)."""
    if _SEP not in item:
        return item
    tar, _member, offset, size = item.rsplit(_SEP, 3)
    return read_member(tar, int(offset), int(size))


def display_name(item: str) -> str:
    if _SEP in item:
        tar, member, _, _ = item.rsplit(_SEP, 3)
        return f"{tar}:{member}"
    return item
