"""Local files: :class:`LocalPath`, a :class:`pathlib.Path` with the methods a
:class:`~synthgen.storage.remote.RemotePath` has and ``Path`` lacks, so that stage code calls the
same methods on either kind (``find``, ``size``, ``read_range``, ``open_read``, ``source``,
``scan``).

What a local folder has and an object store does not, and how it is guarded here: symlinks (a
listing follows symlinked files but never enters a symlinked folder; :meth:`LocalPath.scan`
skips a symlink that leads out of the folder), FIFOs and devices (:func:`regular_file`: reading
one would block forever or never end), and file names that are not valid UTF-8 (skipped, as
they would reach the scene json as lone surrogates).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PosixPath
from typing import BinaryIO, Callable

from synthgen.errors import Skip


def regular_file(path: str | os.PathLike) -> Skip | None:
    """None when ``path`` is a regular file (symlinks followed); else why it cannot be read
    (missing, a FIFO, a device, a folder...): reading a FIFO would block forever."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return Skip("missing", f"no such file: {path}")
    except OSError as exc:
        return Skip("unreadable", f"{type(exc).__name__}: {exc}"[:200])
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "a socket")
        return Skip("not_a_file", f"{path} is {kind}, not a regular file")
    return None


class LocalPath(PosixPath):
    """A local path (``pathlib.PosixPath``) that also answers what a ``RemotePath`` answers."""

    __slots__ = ()
    remote = False

    def size(self) -> int:
        return os.stat(self).st_size

    def write_problem(self) -> str | None:
        """Why a file cannot be written here (a folder, under a file, no permission), or None."""
        if self.is_dir():
            return "is a folder"
        parent = Path(os.path.abspath(self)).parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            return f"lies under {parent}, which is a file"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"cannot be written: no permission to write in {parent}"
        return None

    def find(self) -> dict[str, int]:
        """Every regular file below this folder, recursively (symlinked files followed, symlinked
        folders not entered): path -> size, sorted by path."""
        found = {}
        for dirpath, _dirs, names in os.walk(self):
            for name in names:
                f = os.path.join(dirpath, name)
                try:
                    st = os.stat(f)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found[f] = st.st_size
        return dict(sorted(found.items()))

    def scan(self, keep: Callable[[str], bool]) -> tuple[dict[str, int], list[tuple[str, Skip]]]:
        """The files below this folder whose path passes ``keep`` (recursively, in sorted walk
        order, never entering a symlinked folder): ``({path: size}, [(path, Skip)])``. Skipped: a
        name that is not valid UTF-8, a symlink resolving outside this folder, anything but a
        regular file (a FIFO, a device, a dangling link)."""
        files: dict[str, int] = {}
        skipped: list[tuple[str, Skip]] = []
        real_root = os.path.realpath(self)
        for dirpath, dirnames, filenames in os.walk(self, followlinks=False):
            dirnames.sort()
            for name in sorted(filenames):
                f = os.path.join(dirpath, name)
                if keep(f):
                    bad = self._unusable(f, real_root)
                    if bad is None:
                        files[f] = os.path.getsize(f)
                    else:
                        skipped.append((f, bad))
        return files, skipped

    def _unusable(self, f: str, real_root: str) -> Skip | None:
        try:
            f.encode("utf-8")
        except UnicodeEncodeError:
            return Skip("non_utf8", "the file name is not valid UTF-8")
        real = os.path.realpath(f)
        if os.path.islink(f) and not (real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)):
            return Skip("outside_folder", f"a symlink to {real}, outside {self}")
        return regular_file(f)

    def read_range(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset``."""
        with open(self, "rb") as f:
            f.seek(int(offset))
            return f.read(int(size))

    def open_read(self, block_size: int | None = None) -> BinaryIO:
        """The file, opened for reading (``block_size`` is for object stores: the OS reads
        ahead)."""
        return open(self, "rb")

    def ranges(self) -> FileRanges:
        """A reader of byte ranges that keeps the file open: each read is one ``os.pread``."""
        return FileRanges(str(self))

    def source(self) -> str:
        """What a decoder is given: the path itself (the decoder checks that it is a regular file
        and reads it)."""
        return str(self)



class FileRanges:
    """Byte ranges of one local file, each one ``os.pread`` on a descriptor opened on first use
    (again in a forked or unpickled process: a descriptor is never shipped)."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None
        self._pid = 0

    def read(self, offset: int, size: int) -> bytes:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        data = os.pread(self._fd, int(size), int(offset))
        if len(data) != size:
            raise OSError(f"{self.path}: {len(data)} of {size} bytes at offset {offset} (truncated?)")
        return data

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_fd": None, "_pid": 0}

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass
