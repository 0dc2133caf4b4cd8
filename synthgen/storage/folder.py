"""The run-folder layer shared by compose, render and train-pin, for local folders and object-store
prefixes alike.

* Atomic writes (:func:`atomic_write`, :func:`atomic_write_json`, :func:`atomic_write_with`,
  :class:`Staged`): readers and a re-run after ``kill -9`` never see a half-written file under
  its final name. Locally: a hidden temporary beside the target (:func:`temp_path`), fsync,
  rename. On an object store, which has no rename: a local temporary (``TMPDIR``,
  :func:`upload_temp`) uploaded whole (one PUT, or a multipart upload that appears only once
  complete), or bytes already in memory in one PUT. A full disk is a one-line
  :class:`DiskFullError` and leaves the previous file untouched.
* :class:`RunFolder`: an output folder locked for the life of a run (locally ``flock`` on
  :data:`~synthgen.schema.LOCK_FILE`, the lock file removed when the run ends; on an object store
  an :class:`~synthgen.storage.objectlock.ObjectLock`: a second run gets a one-line error),
  cleared of the temporaries a killed writer left (safe only under the lock: local hidden
  temporaries; for a prefix the local temporaries of dead uploads and its unfinished multipart
  uploads), with its settings identity (:meth:`RunFolder.check_identity`: a folder holding a run
  with other settings is refused, naming each difference).
* Done markers are files a stage writes last, atomically, after the data they mark (compose: a
  shard's ``_stats.json``; render: ``_categories/{slug}.json``; train-pin: ``train_state.pt``): a
  unit of work is done iff its marker exists.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from synthgen.errors import UserError
from synthgen.schema import LOCK_FILE
from synthgen.storage.objectlock import ObjectLock, abort_multipart_uploads, alive
from synthgen.storage.paths import path as as_path

TMP_SUFFIX = ".synthgen-tmp"
UPLOAD_PREFIX = "synthgen-upload-"
FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


# --- full disks ----------------------------------------------------------------------------

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


# --- temporaries ---------------------------------------------------------------------------

def temp_path(path: str | Path) -> Path:
    """The hidden temporary a local file is written to before it is renamed over ``path``."""
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}{TMP_SUFFIX}")


def upload_temp(target: str) -> Path:
    """A local temporary for an object being written (``TMPDIR``), named by this process so
    that :func:`remove_stale_uploads` can tell a killed writer's from a live one's."""
    base = os.path.basename(str(target)) or "object"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-", suffix=f"-{base[:60]}{TMP_SUFFIX}")
    except OSError as exc:
        if exc.errno in FULL_DISK:
            raise disk_full(exc, tempfile.gettempdir()) from None
        raise
    os.close(fd)
    return Path(tmp)


def remove_stale_uploads() -> int:
    """Remove the local temporaries of uploads whose process is gone (a killed run's)."""
    n = 0
    for f in Path(tempfile.gettempdir()).glob(f"{UPLOAD_PREFIX}*{TMP_SUFFIX}"):
        try:
            pid = int(f.name[len(UPLOAD_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if not alive(pid):
            f.unlink(missing_ok=True)
            n += 1
    return n


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> int:
    """Delete temporaries left by a killed writer; returns how many. Call it only while holding
    the folder's lock: another live run's temporaries look the same. A remote folder has none
    (its objects are uploaded whole); the local temporaries of killed uploads are removed, and
    the unfinished multipart uploads of its objects are aborted."""
    root = as_path(folder)
    if root.remote:
        return remove_stale_uploads() + abort_multipart_uploads(str(root), recursive)
    if not root.is_dir():
        return 0
    n = 0
    for p in (root.rglob if recursive else root.glob)(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        n += 1
    return n


# --- atomic writes -------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class Staged:
    """A file written whole to a local temporary (:attr:`tmp`), then committed as ``target``
    (a path or URL): renamed over it locally, uploaded on an object store. The committed file
    gets the mode a plain ``open`` would give (0666 less the umask), whatever the writer used."""

    def __init__(self, target: str | os.PathLike):
        self.target = as_path(target)
        self.tmp = upload_temp(str(self.target)) if self.target.remote else temp_path(self.target)

    def commit(self) -> None:
        os.chmod(self.tmp, 0o666 & ~_umask())
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if self.target.remote:
            self.target.upload(self.tmp)  # whole: visible only when complete
            self.discard()
        else:
            os.replace(self.tmp, self.target)

    def discard(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def full(self, exc: BaseException) -> DiskFullError | None:
        """The one-line error of a write that failed for want of space (an errno saying so, or
        any failure on a (nearly) full file system: torch.save and safetensors report one without
        an errno); None otherwise. Ask before :meth:`discard` frees the space."""
        if isinstance(exc, UserError):
            return None
        if (isinstance(exc, OSError) and exc.errno in FULL_DISK) or is_full(self.tmp.parent):
            return disk_full(exc, self.tmp if self.target.remote else self.target)
        return None


@contextlib.contextmanager
def staging(path: str | os.PathLike) -> Iterator[Staged]:
    """A :class:`Staged` for ``path`` that the block writes and commits; a failure for want of
    space is a :class:`DiskFullError`, and the temporary is removed however the block ends (the
    previous ``path`` untouched unless committed)."""
    staged = Staged(path)
    try:
        yield staged
    except Exception as exc:
        full = staged.full(exc)
        if full is not None:
            raise full from None
        raise
    finally:
        staged.discard()


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` (any writer: torch.save, safetensors, ...), then commit it as
    ``path`` (:func:`staging`)."""
    with staging(path) as staged:
        staged.target.parent.mkdir(parents=True, exist_ok=True)
        write(str(staged.tmp))
        staged.commit()


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    target = as_path(path)
    if target.remote:
        target.write_bytes(raw)  # one PUT: the old object or the new one
        return
    atomic_write_with(target, lambda t: Path(t).write_bytes(raw))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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

class FileLock:
    """``flock`` on a local folder's lock file (non-blocking). The lock file is unlinked on
    release; a run that opened it just before is detected by comparing the locked inode with the
    one at the path, and tries again."""

    def __init__(self, folder: Path, stage: str, option: str):
        self.folder, self.stage, self.option = folder, stage, option
        self.path = folder / LOCK_FILE
        self._f = None

    def acquire(self) -> None:
        import fcntl

        for _ in range(20):
            f = open(self.path, "a+")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                raise UserError(f"another synthgen {self.stage} is using {self.folder}; wait for it to "
                                f"finish or use another {self.option}") from None
            try:
                same = os.fstat(f.fileno()).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._f = f
                f.seek(0)
                f.truncate()
                f.write(f"{os.getpid()}\n")
                f.flush()
                return
            f.close()  # the previous owner removed it between our open and flock
        raise UserError(f"cannot lock {self.path}")

    def release(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        finally:
            self._f.close()


class RunFolder:
    """An output folder (a path or URL) owned by one run while the ``with`` block lasts.

    ``stage`` names the command in messages (``compose``, ``render``, ``train-pin``);
    ``clean`` removes stale temporaries (recursively with ``"recursive"``) once the lock is held,
    and again at a clean exit (those of this run's writers that died, e.g. on a lost node).
    """

    def __init__(self, path: str | os.PathLike, stage: str, option: str = "--out",
                 clean: bool | str = True):
        self.raw = str(path)
        self.path = as_path(self.raw if self.raw.strip() else path)
        self.stage = stage
        self.option = option
        self.clean = clean
        self._lock: FileLock | ObjectLock | None = None
        self._created = False

    def __enter__(self) -> RunFolder:
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
        try:
            if self.clean and (exc_type is None or not self.path.remote):
                # the lock is still held, so every temporary left now is stale: one a writer of this
                # run left when it died (a task of a lost node, retried elsewhere), or, on Ctrl-C,
                # SIGTERM or an error, one this run was writing (on an object store those are local
                # files, and a multipart upload cut short is aborted by the next run)
                remove_stale_temps(self.path, recursive=self.clean == "recursive")
        finally:
            self.unlock()
            if exc_type is not None:
                self._remove_if_new()  # a run that failed before writing anything leaves no folder

    def _remove_if_new(self) -> None:
        if self._created:
            try:
                self.path.rmdir()  # only when empty (a prefix with no objects does not exist)
            except OSError:
                pass

    def create(self) -> None:
        if not self.raw.strip():
            raise UserError(f"{self.option} is empty")
        existed = self.path.exists()
        if existed and not self.path.is_dir():
            raise UserError(f"{self.option} {self.path} exists and is not a folder")
        self._created = not existed
        try:
            self.path.mkdir(parents=True, exist_ok=True)  # (a prefix exists once written under)
        except OSError as exc:
            raise UserError(f"{self.option} {self.path} cannot be created: {exc.strerror or exc}") from None

    def lock(self) -> None:
        """Take the folder's exclusive lock (non-blocking) or raise a one-line UserError: a
        :class:`FileLock`, or on an object store an :class:`ObjectLock`."""
        lk = (ObjectLock(str(self.path / LOCK_FILE), self.stage, self.option) if self.path.remote
              else FileLock(self.path, self.stage, self.option))
        lk.acquire()
        self._lock = lk

    def unlock(self) -> None:
        lk, self._lock = self._lock, None
        if lk is not None:
            lk.release()

    def names(self) -> set[str]:
        """The names in the folder, from one listing (done markers are looked up in it rather than
        with a request each)."""
        return {p.name for p in self.path.iterdir()} if self.path.exists() else set()

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
