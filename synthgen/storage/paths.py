"""Path objects, and the questions asked of many paths at once.

:func:`path` turns a string into a :class:`~synthgen.storage.local.LocalPath` or a
:class:`~synthgen.storage.remote.RemotePath`; stage code then calls the same methods on either.
The functions here answer for a batch of paths what a request per path would answer on an object
store, in one listing instead (:func:`sizes`, :func:`kinds`), and a local file system a stat
each; :func:`locate` finds a file that must stay inside a folder, checked before any request on
an object store and after following links locally.
"""

from __future__ import annotations

import glob as _glob
import os
from typing import Callable, Iterable

from synthgen.storage.local import LocalPath
from synthgen.storage.remote import RemotePath, filesystem, guard
from synthgen.storage.urls import inside, is_remote, join, localize, scheme

AnyPath = LocalPath | RemotePath


def path(spec: str | os.PathLike | AnyPath) -> AnyPath:
    """A :class:`RemotePath` for a remote URL, else a :class:`LocalPath` (``file://`` stripped)."""
    if isinstance(spec, (LocalPath, RemotePath)):
        return spec
    if isinstance(spec, os.PathLike):
        return LocalPath(spec)
    s = str(spec)
    return RemotePath(s) if is_remote(s) else LocalPath(localize(s))


def glob(pattern: str) -> list[str]:
    """The paths (or URLs) matching a glob pattern, sorted."""
    if not is_remote(pattern):
        return sorted(_glob.glob(pattern))
    fs, p = filesystem(pattern)
    with guard(pattern, "list"):
        names = fs.glob(p)
    return sorted(f"{scheme(pattern)}://{n}" for n in names)


def sizes(root: str | os.PathLike | AnyPath) -> Callable[[str], int]:
    """``size(p)``: the bytes of the file ``p`` (a path or URL, usually under ``root``), -1 when
    there is none. Locally a stat each (links followed; a folder has a size too); on an object
    store from one listing of ``root``, not a request per object (-1 for objects elsewhere)."""
    root = path(root)
    if root.remote:
        found = root.find()
        return lambda p: found.get(str(p), -1)
    return _stat_size


def _stat_size(p: str) -> int:
    try:
        return os.stat(p).st_size
    except OSError:
        return -1


def kinds(specs: Iterable[str]) -> dict[str, str]:
    """``spec -> "file" | "dir"`` for those of ``specs`` that exist. URLs sharing a parent prefix
    are answered by one listing of it."""
    out: dict[str, str] = {}
    by_parent: dict[str, list[str]] = {}
    for s in specs:
        if is_remote(s):
            by_parent.setdefault(str(RemotePath(s).parent), []).append(s)
        elif os.path.isdir(s):
            out[s] = "dir"
        elif os.path.isfile(s):
            out[s] = "file"
    for parent, kids in by_parent.items():
        out.update(_remote_kinds(parent, kids))
    return out


def _remote_kinds(parent: str, kids: list[str]) -> dict[str, str]:
    if len(kids) == 1:
        p = RemotePath(kids[0])
        kind = "dir" if p.is_dir() else "file" if p.is_file() else None
        return {kids[0]: kind} if kind else {}
    fs, p = filesystem(parent)
    try:
        with guard(parent, "list"):
            listing = fs.ls(p, detail=True)
    except FileNotFoundError:
        return {}
    sch = scheme(parent)
    found = {f"{sch}://{e['name'].rstrip('/')}": "dir" if e.get("type") == "directory" else "file" for e in listing}
    return {k: found[str(RemotePath(k))] for k in kids if str(RemotePath(k)) in found}


def locate(root: str | os.PathLike | AnyPath, rel: str) -> AnyPath | None:
    """The file ``rel`` under the folder ``root``, or None when there is none. PermissionError
    when it lies outside ``root``: on an object store checked lexically before any request,
    locally after following its links (only once it is found)."""
    root = path(root)
    if root.remote:
        url = join(root, rel)
        if not inside(url, [root]):
            raise PermissionError(f"{rel} resolves outside {root}")
        found = path(url)
    else:
        found = root / rel
    if not found.is_file():
        return None
    if not inside(found, [root], real=True):
        raise PermissionError(f"{rel} resolves outside {root}")
    return found


def output_file(spec: str | os.PathLike, flag: str, suffixes: Iterable[str]) -> AnyPath:
    """The path of a file a command will write, checked before any work: its name ends in one of
    ``suffixes`` (what it is written as), it is not a folder, and (locally) its folder can be made
    and written. A :class:`UserError` names ``flag`` otherwise."""
    from synthgen.errors import UserError

    p = path(spec)
    allowed = tuple(suffixes)
    if p.suffix.lower() not in allowed:
        raise UserError(f"{flag} {spec}: give a file name ending in {' or '.join(allowed)} (what is written there)")
    problem = p.write_problem()
    if problem:
        raise UserError(f"{flag} {spec} {problem}")
    return p


def save_or_explain(output, save) -> None:
    """Run ``save`` (which writes the file ``output``), its folder made first; a file that cannot
    be written is a one-line error."""
    from pathlib import Path

    from synthgen.errors import UserError

    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        save()
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None


# -- statistics ------------------------------------------------------------------------------------
