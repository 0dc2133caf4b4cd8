"""What a path string is, and where it lies: the rules every stage uses, for both kinds.

Every path argument of every stage may be a local path or an fsspec URL (``s3://bucket/prefix``,
``gs://``, ``hf://``, ...; ``file:///abs/path`` is a local path; ``http(s)://`` and ``pipe:`` are
webdataset's streams, not storage). A URL is normalised lexically (:func:`normalize`: ``.`` and
``..`` resolved, never climbing out of the bucket). The confinement rule (:func:`inside`) is the
same question for both kinds: a local path is compared after ``..`` is resolved (and, with
``real``, after following symlinks), a URL lexically (objects have no links); a local path is
never inside a URL root, nor a URL inside a local one.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Iterable

# schemes read by webdataset's gopen (streams only), not by fsspec
GOPEN_SCHEMES = ("http", "https", "pipe")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(spec: str | os.PathLike) -> str | None:
    m = _SCHEME.match(str(spec))
    return m.group(1).lower() if m else None


def localize(spec: str) -> str:
    """``file:///a/b`` -> ``/a/b``; anything else unchanged."""
    s = str(spec)
    return s[len("file://"):] if scheme(s) == "file" else s


def is_remote(spec: str | os.PathLike) -> bool:
    """An fsspec URL other than ``file://`` (``s3://``, ``gs://``, ``hf://``, ...). A
    :class:`pathlib.Path` is local whatever its text (``Path("s3://b")`` is ``s3:/b``)."""
    if isinstance(spec, Path):
        return False
    s = scheme(spec)
    return s is not None and s != "file" and s not in GOPEN_SCHEMES


def normalize(url: str | os.PathLike) -> str:
    """``scheme://bucket/key`` with the key normalised lexically: ``..`` never climbs out of the
    bucket (a leading one stays, and is never inside any prefix)."""
    url = str(url)
    sch = scheme(url)
    if sch is None:
        raise ValueError(f"not a URL: {url!r}")
    bucket, _, key = url[len(sch) + 3:].partition("/")
    key = posixpath.normpath(key) if key else ""
    key = "" if key == "." else key
    return f"{sch}://{bucket}/{key}" if key else f"{sch}://{bucket}"


def resolved(spec: str | os.PathLike) -> str:
    """What a run records for an input: the absolute local path (links followed), or the
    normalised URL."""
    return normalize(spec) if is_remote(spec) else str(Path(localize(str(spec))).resolve())


def absolute(spec: str | os.PathLike) -> str:
    """The absolute local path (links not followed), or the normalised URL."""
    return normalize(spec) if is_remote(spec) else os.path.abspath(localize(str(spec)))


def join(base: str | os.PathLike, rel: str) -> str:
    """``base/rel``. Under a URL ``..`` is resolved lexically and an absolute ``rel`` or a URL is
    returned as is (so a containment check refuses it); under a local folder,
    :func:`os.path.join`."""
    base = str(base)
    if not is_remote(base):
        return os.path.join(base, rel)
    if rel.startswith("/") or scheme(rel):
        return rel
    return normalize(base.rstrip("/") + "/" + rel)


def relative(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to the folder ``root``, lexically (``..`` where it lies outside), as
    :func:`os.path.relpath`; a path of the other kind is returned as is (:func:`join` with
    ``root`` gives it back)."""
    path, root = str(path), str(root)
    if is_remote(path) != is_remote(root):
        return path
    if not is_remote(path):
        return os.path.relpath(path, root)
    p, r = normalize(path), normalize(root)
    if scheme(p) != scheme(r):
        return p
    return posixpath.relpath(p.split("://", 1)[1], r.split("://", 1)[1])


def inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike], real: bool = False) -> bool:
    """Whether ``path`` lies inside one of ``roots`` (or is one): lexically (``..`` and absolute
    paths resolved), or with ``real`` after following symlinks too. A URL is inside a URL root
    only (lexically: objects have no links); a local path never inside a URL root."""
    if is_remote(path):
        prefixes = [normalize(r) for r in roots if is_remote(r)]
        return _under(normalize(path), prefixes, "/")
    norm = os.path.realpath if real else os.path.abspath
    return _under(norm(str(path)), [norm(str(r)) for r in roots if not is_remote(r)], os.sep)


def _under(p: str, roots: list[str], sep: str) -> bool:
    return any(p == r or p.startswith(r.rstrip(sep) + sep) for r in roots)


def overlap(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether folders ``a`` and ``b`` (paths or URLs) are the same or one holds the other
    (local folders after following symlinks)."""
    if is_remote(a) != is_remote(b):
        return False
    if not is_remote(a):
        a, b = os.path.realpath(localize(str(a))), os.path.realpath(localize(str(b)))
    return inside(a, [b]) or inside(b, [a])
