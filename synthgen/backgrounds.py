"""Background sources: a folder of images (recursive) or WebDataset shards.

The listing is made once, sorted, and is what a sample's random draw indexes into, so the same
inputs give the same scenes on any number of workers. A listed item is a plain string: a file
path, or ``tar_path::member::offset::size`` for an image inside a tar, read by seeking.
"""

from __future__ import annotations

import glob
import tarfile
from pathlib import Path

from synthgen.errors import UserError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
_SEP = "::"


def _expand(spec: str) -> list[Path]:
    """Paths of a path / glob / brace pattern (``bg-{000..009}.tar``)."""
    if not str(spec).strip():
        raise UserError("an empty path was given")
    if any(ch in spec for ch in "{*?["):
        from braceexpand import UnbalancedBracesError, braceexpand

        paths: list[str] = []
        try:
            for pat in braceexpand(spec):
                paths.extend(sorted(glob.glob(pat)) if any(c in pat for c in "*?[") else [pat])
        except UnbalancedBracesError as exc:
            raise UserError(f"bad pattern {spec!r}: {exc}") from None
        return [Path(p) for p in paths]
    return [Path(spec)]


def list_backgrounds(spec: str) -> list[str]:
    """All usable-looking background items of ``spec`` (folder, tar file(s), or pattern)."""
    if not str(spec).strip():
        raise UserError("--backgrounds is empty")
    items: list[str] = []
    tars: list[Path] = []
    for p in _expand(spec):
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
    import sys

    out: list[str] = []
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in IMAGE_EXTS:
                    out.append(_SEP.join((str(path), m.name, str(m.offset_data), str(m.size))))
    except (tarfile.TarError, OSError) as exc:
        if not out:
            raise UserError(f"backgrounds: cannot read shard {path}: {exc}") from None
        print(f"warning: backgrounds: shard {path} is damaged ({exc}); using its first "
              f"{len(out)} images", file=sys.stderr)
        out = out[:-1]  # the last listed member may itself be cut off
    return out


def read_background(item: str) -> bytes | str:
    """Bytes of a tar member, or the path of a plain file (decoded by the caller)."""
    if _SEP not in item:
        return item
    tar, _member, offset, size = item.rsplit(_SEP, 3)
    with open(tar, "rb") as f:
        f.seek(int(offset))
        return f.read(int(size))


def display_name(item: str) -> str:
    if _SEP in item:
        tar, member, _, _ = item.rsplit(_SEP, 3)
        return f"{tar}:{member}"
    return item
