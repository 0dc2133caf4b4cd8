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
  0644), so the same samples give the same bytes, to a temporary committed whole when complete
  (:class:`~synthgen.storage.Staged`: renamed locally, uploaded to an object store).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any, Iterator, Sequence

from synthgen import storage
from synthgen.errors import UserError


def is_stream(spec: str) -> bool:
    """A stream read with webdataset's ``gopen`` (``pipe:``, ``http(s)://``): never listed nor
    globbed, its length unknown. Not a local path, nor an fsspec URL."""
    url = "://" in spec or spec.startswith("pipe:")
    return url and not storage.is_remote(spec) and storage.scheme(spec) != "file"  # inherent: gopen's, not fsspec's


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
    if is_stream(spec):
        return _braces(spec)
    if not any(ch in spec for ch in "{*?["):
        return [spec]
    out: list[str] = []
    for pat in _braces(spec):
        out.extend(storage.glob(pat) if any(c in pat for c in "*?[") else [pat])
    return list(dict.fromkeys(out))


def find_shards(spec: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Shard files of a folder (its non-hidden ``*.tar``), a file, a pattern, a URL, or a list."""
    if isinstance(spec, (list, tuple)):
        return [s for item in spec for s in find_shards(item)]
    out: list[str] = []
    paths = expand(spec)
    kinds = storage.kinds(p for p in paths if not is_stream(p))  # (one listing per prefix)
    for p in paths:
        if is_stream(p):
            out.append(p)
        elif kinds.get(p) == "dir":
            out.extend(str(q) for q in sorted(storage.path(p).glob("*.tar")) if not q.name.startswith("."))
        elif kinds.get(p) == "file":
            out.append(str(storage.path(p)))
        else:
            raise UserError(f"shards not found: {p}")
    if not out:
        raise UserError(f"no .tar shards in {spec}")
    return out


def _open(url: str):
    if not is_stream(url) or os.path.exists(url):
        return storage.path(url).open_read()
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


def _check_end(url: str, tar: tarfile.TarFile, f) -> None:
    """A tar file or object (whose size is known, unlike a stream's or a FIFO's) must reach its
    end-of-archive marker (two zero blocks after the last member): Python's reader takes a file
    cut at a member boundary for a complete archive."""
    if is_stream(url) or not f.seekable():
        return
    size = f.seek(0, os.SEEK_END)
    if size < tar.offset + 2 * tarfile.BLOCKSIZE:
        raise tarfile.ReadError(f"the file ends at byte {size}, before the archive's "
                                "end marker: it is truncated")


def iter_samples(shards: Sequence[str], want: Sequence[str] | None = None) -> Iterator[dict[str, Any]]:
    """:func:`iter_tar` over several shards, in order."""
    for url in shards:
        yield from iter_tar(url, want)


def list_members(path: str, exts: frozenset[str] | set[str]) -> tuple[list[tuple[str, int, int]], str | None]:
    """``(name, data offset, size)`` of the members of a tar (a file or an object) whose suffix
    is in ``exts``, and the error that cut the listing short (None when the tar is whole). A
    damaged tar keeps the members before the damage, less the last one listed (it may itself be
    cut off)."""
    out: list[tuple[str, int, int]] = []
    try:  # (an object is read ahead in blocks: headers between small members come along)
        with storage.path(path).open_read(storage.LIST_BLOCK) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            for m in tf:
                if m.isfile() and Path(m.name).suffix.lower() in exts:
                    out.append((m.name, m.offset_data, m.size))
    except (tarfile.TarError, OSError) as exc:
        return out[:-1], str(exc)
    return out, None


def read_member(path: str, offset: int, size: int) -> bytes:
    return storage.path(path).read_range(offset, size)  # (of an object: one ranged GET)


class ShardWriter:
    """Write ``{key}.{ext}`` members into ``path`` (a path or URL) atomically: to a temporary
    committed whole on close (:class:`~synthgen.storage.Staged`). A full disk is a
    :class:`~synthgen.storage.DiskFullError` (one line, not retried), the temporary removed."""

    def __init__(self, path: str | os.PathLike):
        self.staged = storage.Staged(path)
        self._f = open(self.staged.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._f, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

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
            full = self.staged.full(exc)
            if full is not None:
                self.abort()
                raise full from None
            raise
        self.count += 1

    def close(self) -> None:
        try:
            self._tar.close()
            self._f.close()
            self.staged.commit()
        except BaseException as exc:
            full = self.staged.full(exc) if isinstance(exc, OSError) else None
            try:
                self._f.close()
            except OSError:
                pass
            self.staged.discard()
            if full is not None:
                raise full from None
            raise

    def abort(self) -> None:
        for close in (self._tar.close, self._f.close):
            try:
                close()
            except OSError:
                pass  # (a full disk: the end blocks cannot be written either)
        self.staged.discard()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
