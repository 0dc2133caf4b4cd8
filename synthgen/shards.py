"""WebDataset shards for every stage: finding them, reading them, writing them.

* Specs (:func:`expand`, :func:`find_shards`): a path, a folder (its ``*.tar``), a glob, a brace
  pattern (``scenes-{000000..000099}.tar``), a URL (``pipe:``, ``http://``, ... read with
  webdataset's ``gopen``), or a list of those. An object-store URL (``s3://``, ``gs://``,
  ``hf://``: :mod:`synthgen.storage`) is all of these too: a prefix (its ``*.tar``), a glob, a
  brace pattern; its tars are streamed, its members read by byte range.
* Reading: :func:`iter_tar` streams the samples ``{"__key__", "__url__", ext: bytes}`` of one tar
  in file order (a sample is the run of members sharing a key: the path up to the first dot of the
  base name); :func:`list_members` and :func:`read_member` give random access by offset.
* Writing: :class:`ShardWriter` writes members with fixed metadata (mtime 0, uid/gid 0, mode
  0644), so the same samples give the same bytes, under a hidden temporary name renamed when
  complete.
"""

from __future__ import annotations

import glob
import io
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from synthgen import storage
from synthgen.errors import UserError
from synthgen.rundir import FULL_DISK, disk_full, is_full, temp_path


def is_url(spec: str) -> bool:
    return "://" in spec or spec.startswith("pipe:")


def _braces(spec: str) -> list[str]:
    from braceexpand import UnbalancedBracesError, braceexpand

    try:
        return list(braceexpand(spec))
    except UnbalancedBracesError as exc:
        raise UserError(f"bad pattern {spec!r}: {exc}") from None


def expand(spec: str | os.PathLike) -> list[str]:
    """The paths (or URLs) of a path / glob / brace pattern, in pattern order, without duplicates."""
    spec = storage.localize(str(spec))
    if not spec.strip():
        raise UserError("an empty path was given")
    if storage.is_remote(spec):
        if not any(ch in spec for ch in "{*?["):
            return [spec]
        out: list[str] = []
        for pat in _braces(spec):
            out.extend(_remote_glob(pat) if any(c in pat for c in "*?[") else [pat])
        return list(dict.fromkeys(out))
    if is_url(spec):
        return _braces(spec)
    if not any(ch in spec for ch in "{*?["):
        return [spec]
    out: list[str] = []
    for pat in _braces(spec):
        out.extend(sorted(glob.glob(pat)) if any(c in pat for c in "*?[") else [pat])
    return list(dict.fromkeys(out))


def _remote_glob(pattern: str) -> list[str]:
    fs, p = storage.filesystem(pattern)
    with storage.guard(pattern, "list"):
        names = fs.glob(p)
    return sorted(f"{storage.scheme(pattern)}://{n}" for n in names)


def _remote_kinds(urls: list[str]) -> dict[str, str]:
    """``url -> "file" | "dir"`` for the URLs that exist, listing each parent prefix once."""
    out: dict[str, str] = {}
    by_parent: dict[str, list[str]] = {}
    for u in urls:
        by_parent.setdefault(str(storage.RemotePath(u).parent), []).append(str(storage.RemotePath(u)))
    for parent, kids in by_parent.items():
        if len(kids) == 1:
            rp = storage.RemotePath(kids[0])
            kind = "dir" if rp.is_dir() else "file" if rp.is_file() else None
            if kind:
                out[kids[0]] = kind
            continue
        fs, p = storage.filesystem(parent)
        try:
            with storage.guard(parent, "list"):
                listing = fs.ls(p, detail=True)
        except FileNotFoundError:
            continue
        sch = storage.scheme(parent)
        kinds = {f"{sch}://{e['name'].rstrip('/')}": "dir" if e.get("type") == "directory" else "file" for e in listing}
        out.update({k: kinds[k] for k in kids if k in kinds})
    return out


def find_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard files of a folder (its non-hidden ``*.tar``), a file, a pattern, a URL, or a list."""
    if isinstance(spec, (list, tuple)):
        return [s for item in spec for s in find_shards(item)]
    out: list[str] = []
    paths = expand(spec)
    kinds = _remote_kinds([p for p in paths if storage.is_remote(p)])
    for p in paths:
        if storage.is_remote(p):
            kind = kinds.get(str(storage.RemotePath(p)))
            if kind == "dir":
                out.extend(str(q) for q in storage.RemotePath(p).glob("*.tar") if not q.name.startswith("."))
            elif kind == "file":
                out.append(str(storage.RemotePath(p)))
            else:
                raise UserError(f"shards not found: {p}")
        elif is_url(p):
            out.append(p)
        elif os.path.isdir(p):
            out.extend(str(q) for q in sorted(Path(p).glob("*.tar")) if not q.name.startswith("."))
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise UserError(f"shards not found: {p}")
    if not out:
        raise UserError(f"no .tar shards in {spec}")
    return out


def _open(url: str):
    if storage.is_remote(url):
        return storage.RemotePath(url).open_read()
    if os.path.exists(url) or not is_url(url):
        return open(url, "rb")
    from webdataset.gopen import gopen

    return gopen(url, "rb")


def sample_key(member_name: str) -> tuple[str, str] | None:
    """``(key, ext)`` of a tar member (``a/b/000001.mask.png`` -> ``a/b/000001``, ``mask.png``);
    None for hidden files."""
    d, base = os.path.split(member_name)
    if base.startswith("."):
        return None
    key, _, ext = base.partition(".")
    return (f"{d}/{key}" if d else key), ext


def iter_tar(url: str, want: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """Samples of one tar in file order, with the bytes of the extensions in ``want`` (all when
    None). A tar that cannot be read is a UserError naming it."""
    current: dict[str, Any] | None = None
    try:
        with _open(url) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                kx = sample_key(m.name)
                if kx is None:
                    continue
                key, ext = kx
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": url}
                if want is None or ext in want:
                    data = tar.extractfile(m).read()
                    if len(data) != m.size:  # a streamed tar cut short reads short, silently
                        raise tarfile.ReadError(f"member {m.name} is cut short ({len(data)} of "
                                                f"{m.size} bytes): the file is truncated")
                    current[ext] = data
            _check_end(url, tar, f)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"cannot read shard {url}: {exc}") from None
    if current is not None:
        yield current


def _check_end(url: str, tar: tarfile.TarFile, f=None) -> None:
    """A local tar (or an object, whose size is known) must reach its end-of-archive marker (two
    zero blocks after the last member): Python's reader takes a file cut at a member boundary
    for a complete archive."""
    if storage.is_remote(url):
        size = getattr(f, "size", None)
    elif is_url(url) or not os.path.isfile(url):
        return
    else:
        size = os.path.getsize(url)
    if size is not None and size < tar.offset + 2 * tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"the file ends at byte {size}, before the archive's "
                                "end marker: it is truncated")


def iter_samples(shards: Sequence[str], want: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """:func:`iter_tar` over several shards, in order."""
    for url in shards:
        yield from iter_tar(url, want)


def list_members(path: str, exts: frozenset[str] | set[str]) -> tuple[list[tuple[str, int, int]], str | None]:
    """``(name, data offset, size)`` of the members of a local tar whose suffix is in ``exts``,
    and the error that cut the listing short (None when the tar is whole). A damaged tar keeps
    the members before the damage, less the last one listed (it may itself be cut off)."""
    out: list[tuple[str, int, int]] = []
    if storage.is_remote(path):  # read ahead in blocks: headers between small members come along
        try:
            with storage.RemotePath(path).open_read(storage.LIST_BLOCK) as f, tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if m.isfile() and Path(m.name).suffix.lower() in exts:
                        out.append((m.name, m.offset_data, m.size))
        except (tarfile.TarError, OSError) as exc:
            return out[:-1], str(exc)
        return out, None
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in exts:
                    out.append((m.name, m.offset_data, m.size))
    except (tarfile.TarError, OSError) as exc:
        return out[:-1], str(exc)
    return out, None


def read_member(path: str, offset: int, size: int) -> bytes:
    if storage.is_remote(path):
        return storage.read_range(path, offset, size)  # one ranged GET
    with open(path, "rb") as f:
        f.seek(int(offset))
        return f.read(int(size))


class ShardWriter:
    """Write ``{key}.{ext}`` members into ``path`` atomically (temp file + rename on close; for an
    object-store URL a local temporary uploaded whole on close). A full disk is a
    :class:`~synthgen.rundir.DiskFullError` (one line, not retried), the temporary removed."""

    def __init__(self, path: str | Path):
        self.remote = storage.is_remote(str(path))
        self.url = str(path)
        if self.remote:
            self.tmp = Path(storage.local_temp(self.url))
            self.path = self.tmp.parent / "upload"  # (where a full disk is looked for)
        else:
            self.path = Path(path)
            self.tmp = temp_path(self.path)
        self._f = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._f, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def _full(self, exc: OSError) -> bool:
        return exc.errno in FULL_DISK or is_full(self.path.parent)

    def write(self, key: str, members: dict[str, bytes]) -> None:
        try:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                info.mtime = 0
                info.mode = 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                self._tar.addfile(info, io.BytesIO(data))
        except OSError as exc:
            if self._full(exc):
                self.abort()
                raise disk_full(exc, self.tmp if self.remote else self.path) from None
            raise
        self.count += 1

    def close(self) -> None:
        try:
            self._tar.close()
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            if self.remote:
                storage.RemotePath(self.url).upload(self.tmp)  # whole: visible only when complete
                self.tmp.unlink(missing_ok=True)
            else:
                os.replace(self.tmp, self.path)
        except BaseException as exc:
            full = isinstance(exc, OSError) and self._full(exc)
            try:
                self._f.close()
            except OSError:
                pass
            self.tmp.unlink(missing_ok=True)
            if full:
                raise disk_full(exc, self.tmp if self.remote else self.path) from None
            raise

    def abort(self) -> None:
        for close in (self._tar.close, self._f.close):
            try:
                close()
            except OSError:
                pass  # (a full disk: the end blocks cannot be written either)
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
