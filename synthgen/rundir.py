"""The run-folder layer shared by compose, render and train-pin.

* Atomic writes (:func:`atomic_write`, :func:`atomic_write_json`, :func:`atomic_write_with`):
  a hidden temporary beside the target, fsync, rename, so readers and a re-run after ``kill -9``
  never see a half-written file under its final name.
* :class:`RunFolder`: an output folder locked for the life of a run (``flock`` on
  :data:`~synthgen.schema.LOCK_FILE`: a second run on the same folder gets a one-line error; the
  lock file is removed when the run ends), cleared of the temporaries a killed writer left (safe
  only under the lock), with its settings identity (:meth:`RunFolder.check_identity`: a folder
  holding a run with other settings is refused, naming each difference).
* Done markers are files a stage writes last, atomically (compose: a shard's ``_stats.json``;
  render: ``_categories/{slug}.json``; train-pin: ``train_state.pt``): a unit of work is done
  iff its marker exists.

On an object store (``s3://...``, :mod:`synthgen.storage`) the same holds without rename: a file
is written to a local temporary and uploaded whole (one PUT, or a multipart upload that appears
only once complete), after the data it marks; the folder lock is a
:class:`~synthgen.storage.ObjectLock` (a conditional PUT, a heartbeat, a takeover of a dead
run's lock), and there are no temporaries under the prefix to clean.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

from synthgen import storage
from synthgen.errors import UserError
from synthgen.schema import LOCK_FILE

TMP_SUFFIX = ".synthgen-tmp"


# --- atomic writes -------------------------------------------------------------------------

def temp_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}{TMP_SUFFIX}")


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def mount_point(path: str | Path) -> str:
    """The mount point holding ``path`` (for messages about a full disk)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return str(p)


class DiskFullError(UserError):
    """No space left writing an output: one line, never retried (the previous state is intact)."""


def is_full(folder: str | Path) -> bool:
    """Whether the file system of ``folder`` has (almost) no space left."""
    import shutil

    try:
        du = shutil.disk_usage(folder)
    except OSError:
        return False
    return du.free < min(1 << 20, du.total // 200 + 1)


def disk_full(exc: BaseException, path: str | Path) -> DiskFullError:
    return DiskFullError(f"no space left on {mount_point(path)} writing {path}; free some space and "
                         "re-run the same command to resume")


def atomic_write_with(path: str | Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` (any writer: torch.save, safetensors, ...) then rename over ``path``.

    The file gets the mode a plain ``open`` would give (0666 less the umask), whatever the writer
    used; a full disk is a :class:`DiskFullError` and leaves the previous ``path`` untouched.
    A remote ``path``: ``write`` to a local temporary, uploaded whole."""
    if storage.is_remote(str(path)):
        _upload_with(str(path), write)
        return
    p = Path(path)
    tmp = temp_path(p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        write(str(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    except Exception as exc:
        # torch.save and safetensors report a full disk without an errno: a failed write on a
        # (nearly) full file system is one (checked before the partial temporary is removed)
        if (isinstance(exc, OSError) and exc.errno in FULL_DISK) or is_full(p.parent):
            raise disk_full(exc, p) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _upload_with(url: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a local temporary, then one whole upload (a full local disk: one line)."""
    import tempfile

    try:
        storage.with_local_file(url, write)
    except OSError as exc:
        if exc.errno in FULL_DISK or is_full(tempfile.gettempdir()):
            raise disk_full(exc, tempfile.gettempdir()) from None
        raise


def atomic_write(path: str | Path, data: bytes | str) -> None:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if storage.is_remote(str(path)):
        storage.path(str(path)).write_bytes(raw)  # one PUT: the old object or the new one
        return
    atomic_write_with(path, lambda t: Path(t).write_bytes(raw))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> int:
    """Delete temporaries left by a killed writer; returns how many. Call it only while holding
    the folder's lock: another live run's temporaries look the same. A remote folder has none
    (its objects are uploaded whole); the local temporaries of killed uploads are removed, and
    the unfinished multipart uploads of its objects are aborted."""
    if storage.is_remote(str(folder)):
        return storage.remove_stale_uploads() + storage.abort_multipart_uploads(str(folder), recursive)
    root = Path(folder)
    if not root.is_dir():
        return 0
    n = 0
    for p in (root.rglob if recursive else root.glob)(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        n += 1
    return n


# --- settings identity ---------------------------------------------------------------------

def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def identity_diff(old: dict, new: dict, labels: dict[str, str] | None = None,
                  keys: Iterable[str] | None = None) -> list[str]:
    """``"label old -> new"`` for every leaf (nested keys joined by dots) under ``keys`` (default:
    all of both) whose value differs; ``labels`` names top-level keys as the user knows them
    (options): ``--seed 0 -> 5``, ``compose settings (layout.o_max) 0.5 -> 0.2``."""
    labels = labels or {}
    a, b = _flat(old), _flat(new)
    names = sorted(set(a) | set(b))
    tops = list(keys) if keys is not None else list(dict.fromkeys(n.partition(".")[0] for n in names))
    out = []
    for top in tops:
        for n in names:
            if (n == top or n.startswith(top + ".")) and a.get(n) != b.get(n):
                rest = n[len(top) + 1:]
                label = (f"{labels[top]} ({rest})" if rest else labels[top]) if top in labels else n
                out.append(f"{label} {_show(a.get(n))} -> {_show(b.get(n))}")
    return out


def _show(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


# --- the folder ----------------------------------------------------------------------------

class RunFolder:
    """An output folder owned by one run while the ``with`` block lasts.

    ``stage`` names the command in messages (``compose``, ``render``, ``train-pin``);
    ``clean`` removes stale temporaries (recursively with ``"recursive"``) once the lock is held,
    and again at a clean exit (those of this run's writers that died, e.g. on a lost node).
    """

    def __init__(self, path: str | Path, stage: str, option: str = "--out",
                 clean: bool | str = True):
        self.raw = str(path)
        self.remote = storage.is_remote(self.raw)
        self.path = storage.path(self.raw) if self.raw.strip() else Path(path)
        self.stage = stage
        self.option = option
        self.clean = clean
        self._lock = None
        self._created = False

    def __enter__(self) -> "RunFolder":
        self.create()
        try:
            self.lock()
        except BaseException:
            self._remove_if_new()
            raise
        if self.clean:
            remove_stale_temps(self.path, recursive=self.clean == "recursive")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.clean and exc_type is None:
            # a writer of this run that died (a task of a lost node, retried elsewhere) leaves its
            # temporary: the lock is still held, so every temporary left now is stale
            remove_stale_temps(self.path, recursive=self.clean == "recursive")
        self.unlock()
        if exc_type is not None:
            self._remove_if_new()  # a run that failed before writing anything leaves no folder

    def _remove_if_new(self) -> None:
        if self._created and not self.remote:  # (a prefix with no objects does not exist)
            try:
                self.path.rmdir()  # only when empty
            except OSError:
                pass

    def create(self) -> None:
        if not self.raw.strip():
            raise UserError(f"{self.option} is empty")
        if self.remote:
            if self.path.is_file():
                raise UserError(f"{self.option} {self.path} exists and is not a folder")
            self._created = not self.path.exists()
            return
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"{self.option} {self.path} exists and is not a folder")
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{self.option} {self.path} cannot be created: {exc.strerror or exc}") from None

    def lock(self) -> None:
        """Take the folder's exclusive lock (non-blocking) or raise a one-line UserError.

        The lock file is unlinked on release; a run that opened it just before is detected by
        comparing the locked inode with the one at the path, and tries again. On an object store:
        :class:`~synthgen.storage.ObjectLock`."""
        if self.remote:
            lk = storage.ObjectLock(str(self.path / LOCK_FILE), self.stage, self.option)
            lk.acquire()
            self._lock = lk
            return
        import fcntl

        lock_path = self.path / LOCK_FILE
        for _ in range(20):
            f = open(lock_path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise UserError(f"another synthgen {self.stage} is using {self.path}; wait for it to "
                                f"finish or use another {self.option}") from None
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._lock = f
                f.seek(0)
                f.truncate()
                f.write(f"{os.getpid()}\n")
                f.flush()
                return
            f.close()  # the previous owner removed it between our open and flock
        raise UserError(f"cannot lock {lock_path}")

    def unlock(self) -> None:
        if self._lock is None:
            return
        if self.remote:
            lk, self._lock = self._lock, None
            lk.release()
            return
        try:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
        finally:
            self._lock.close()
            self._lock = None

    def check_identity(self, name: str, identity: dict, *, labels: dict[str, str] | None = None,
                       what: str = "options", record: bool = True, optional: tuple[str, ...] = ()) -> None:
        """Refuse a run whose identity differs from the one recorded in ``name`` (naming every
        difference); on a new run record it (unless ``record`` is off: then
        :meth:`record_identity` does it later, e.g. once every model has loaded). Keys in
        ``optional`` are compared only when the recorded identity has them (runs of an earlier
        synthgen)."""
        f = self.path / name
        ident = json.loads(json.dumps(identity))  # tuples -> lists, as stored
        if not f.exists():
            if record:
                atomic_write_json(f, ident)
            return
        try:
            old = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if not isinstance(old, dict):
            old = {}
        ident = {k: v for k, v in ident.items() if k in old or k not in optional}
        diff = identity_diff(old, ident, labels)
        if diff:
            raise UserError(f"{self.path} holds a {self.stage} run with other {what} "
                            f"({'; '.join(diff)}); use a new {self.option} folder, or remove that "
                            "one to start over")

    def record_identity(self, name: str, identity: dict) -> None:
        """Write ``identity`` to ``name`` unless the folder already records one."""
        if not (self.path / name).exists():
            atomic_write_json(self.path / name, identity)
