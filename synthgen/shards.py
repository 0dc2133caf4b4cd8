"""WebDataset shard I/O: deterministic, atomic tar writing and plain reading.

Tars are written member by member with fixed metadata (mtime 0, uid/gid 0, mode 0644), so the
same samples give the same bytes. A shard is written under a hidden temporary name and renamed
when complete; its ``*_stats.json`` is written (atomically) after the rename and marks it done.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from synthgen.atomic import temp_path

SHARD_PREFIX = "scenes"


def shard_name(i: int) -> str:
    return f"{SHARD_PREFIX}-{i:06d}.tar"


def stats_name(i: int) -> str:
    return f"{SHARD_PREFIX}-{i:06d}_stats.json"


class ShardWriter:
    """Write ``{key}.{ext}`` members into ``path`` atomically (temp file + rename on close)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = temp_path(self.path)
        self._f = open(self.tmp, "wb")
        self._tar = tarfile.open(fileobj=self._f, mode="w", format=tarfile.USTAR_FORMAT)
        self.count = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.count += 1

    def close(self) -> None:
        try:
            self._tar.close()
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self._f.close()
            self.tmp.unlink(missing_ok=True)
            raise

    def abort(self) -> None:
        try:
            self._tar.close()
            self._f.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def find_shards(spec: str | Path) -> list[Path]:
    """Shard files of a folder (``*.tar``), a single tar, or a brace/glob pattern."""
    from synthgen.backgrounds import _expand
    from synthgen.errors import UserError

    out: list[Path] = []
    for p in _expand(str(spec)):
        if p.is_dir():
            out.extend(sorted(q for q in p.glob("*.tar") if not q.name.startswith(".")))
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"shards not found: {p}")
    if not out:
        raise UserError(f"no .tar shards in {spec}")
    return out


def iter_samples(shards: Iterable[Path], want: tuple[str, ...] = ("jpg", "json")) -> Iterator[dict[str, Any]]:
    """Samples ``{"__key__", ext: bytes}`` of WebDataset tars, in order, reading only ``want``."""
    for shard in shards:
        try:
            yield from _iter_tar(shard, want)
        except (tarfile.TarError, OSError) as exc:
            from synthgen.errors import UserError

            raise UserError(f"cannot read shard {shard}: {exc}") from None


def _iter_tar(shard: Path, want: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    with tarfile.open(shard, "r:") as tf:
        cur: dict[str, Any] = {}
        for m in tf:
            if not m.isfile():
                continue
            base = m.name.rsplit("/", 1)[-1]
            key, _, ext = base.partition(".")
            if cur and cur["__key__"] != key:
                yield cur
                cur = {}
            if not cur:
                cur = {"__key__": key, "__shard__": str(shard)}
            if ext in want:
                cur[ext] = tf.extractfile(m).read()
        if cur:
            yield cur
