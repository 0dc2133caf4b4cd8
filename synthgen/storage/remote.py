"""Object stores: the one place that knows about fsspec.

A :class:`RemotePath` is a URL with the methods stage code calls on a path (those of
:class:`pathlib.Path` the stages use, and those :class:`~synthgen.storage.local.LocalPath` adds:
``find``, ``size``, ``read_range``, ``open_read``, ``source``); objects are read and written
whole. fsspec and its backends (s3fs, gcsfs, huggingface_hub) are imported on first use.

What object stores lack, and what is done instead:

* no rename: an object is written whole (:meth:`RemotePath.write_bytes`: one PUT;
  :meth:`RemotePath.upload`: one PUT, or a multipart upload that becomes visible only when it
  completes), so a reader never sees a partial object under its final name.
* no links, FIFOs or devices: containment is checked lexically (:mod:`synthgen.storage.urls`).
* errors: a missing bucket, refused or missing credentials, access denied and an unreachable
  endpoint are :class:`StorageError` (a one-line :class:`~synthgen.errors.UserError`); retries
  and timeouts are bounded (:data:`S3_DEFAULTS`, overridable with fsspec's ``FSSPEC_S3_*``).
* no ``flock``: the folder lock is :class:`~synthgen.storage.objectlock.ObjectLock`; every write
  and removal checks first that this process has not lost the lock of a folder holding it
  (:func:`check_lock`).

The endpoint and credentials are botocore's: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``,
or ``FSSPEC_S3_ENDPOINT_URL``), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or
``AWS_PROFILE``, ``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import threading
from typing import Any, Iterator

from synthgen.errors import UserError
from synthgen.storage.urls import normalize, scheme

# bounded retries and timeouts: a missing endpoint fails in seconds, never hangs
S3_DEFAULTS: dict[str, Any] = {
    "use_listings_cache": False,  # another process (a Ray worker, a second run) writes the prefix
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                      "retries": {"max_attempts": 3, "mode": "standard"}},
}
STREAM_BLOCK = 8 << 20   # read-ahead of a streamed tar
LIST_BLOCK = 1 << 20     # read-ahead when listing a tar's members


class StorageError(UserError):
    """Storage that cannot be used (bucket, credentials, permissions, endpoint): one line. Never
    taken for a damaged input: a stream that gets one stops instead of skipping the shard."""


# --- file systems ----------------------------------------------------------------------------

_FS: dict[tuple[str, int], Any] = {}
_PROBED: set[tuple[str, str, int]] = set()
_LOCK = threading.Lock()

_PACKAGES = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "hf": "huggingface_hub",
             "az": "adlfs", "abfs": "adlfs"}


def filesystem(url: str):
    """``(fsspec filesystem, path without the scheme)`` of a URL; the bucket is probed once per
    process, so a missing bucket or refused credentials are one line before any work."""
    sch = scheme(url) or "file"
    key = (sch, os.getpid())
    fs = _FS.get(key)
    if fs is None:
        with _LOCK:
            fs = _FS.get(key)
            if fs is None:
                fs = _FS[key] = _make_fs(sch, url)
    p = fs._strip_protocol(url)
    if sch in ("s3", "s3a"):
        bucket = p.split("/", 1)[0]
        probe = (sch, bucket, os.getpid())
        if probe not in _PROBED:
            _probe_bucket(fs, bucket, url)
            _PROBED.add(probe)
    return fs, p


def _make_fs(sch: str, url: str):
    try:
        import fsspec
        import fsspec.config
    except ImportError:
        raise StorageError(f"{url}: remote paths need fsspec; install synthgen[remote]") from None
    opts: dict[str, Any] = dict(S3_DEFAULTS) if sch in ("s3", "s3a") else {}
    opts.update(fsspec.config.conf.get(sch, {}))  # FSSPEC_S3_* settings win over these defaults
    try:
        return fsspec.filesystem(sch, **opts)
    except ImportError:
        pkg = _PACKAGES.get(sch, f"the fsspec backend of {sch}://")
        how = "install synthgen[remote]" if pkg == "s3fs" else f"`pip install {pkg}`"
        raise StorageError(f"{url}: {sch}:// paths need {pkg}; {how}") from None
    except ValueError as exc:
        raise StorageError(f"{url}: unknown storage scheme {sch}:// ({exc})") from None


def _probe_bucket(fs, bucket: str, url: str) -> None:
    """One small listing: names a missing bucket, bad credentials or an unreachable endpoint."""
    with guard(url, "reach"):
        fs.call_s3("list_objects_v2", Bucket=bucket, MaxKeys=1)


# --- errors ----------------------------------------------------------------------------------

def _endpoint(url: str) -> str:
    fs = _FS.get((scheme(url) or "", os.getpid()))
    ep = None
    try:
        ep = fs.s3.meta.endpoint_url if fs is not None and getattr(fs, "_s3", None) is not None else None
    except Exception:  # noqa: BLE001 - only for the message
        ep = None
    return ep or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default endpoint"


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a failed request (``NoSuchBucket``, ``PreconditionFailed``, ...)."""
    for e in (exc, exc.__cause__, exc.__context__):
        resp = getattr(e, "response", None)
        if isinstance(resp, dict):
            return (resp.get("Error") or {}).get("Code") or str((resp.get("ResponseMetadata") or {}).get("HTTPStatusCode", ""))
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


_CRED_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
               "InvalidClientTokenId", "AuthorizationHeaderMalformed", "TokenRefreshRequired"}
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "403", "Forbidden"}


def translate(exc: BaseException, url: str, op: str = "use") -> StorageError | None:
    """The one-line StorageError of a storage failure, or None when ``exc`` is not one (a missing
    object is a FileNotFoundError, left to the caller)."""
    if isinstance(exc, UserError):
        return None
    names = {type(e).__name__ for e in _chain(exc)}
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    if names & {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"}:
        return StorageError(f"no credentials for {url}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                            "(or AWS_PROFILE)")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ClientConnectorError", "ServerDisconnectedError", "ReadTimeoutError", "FSTimeoutError",
                "TimeoutError", "ConnectionRefusedError", "gaierror"}:
        return StorageError(f"cannot reach the storage endpoint {_endpoint(url)} for {url} "
                            f"({type(exc).__name__}); check AWS_ENDPOINT_URL and the network")
    code = error_code(exc)
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or isinstance(exc, FileExistsError):
        return None  # a conditional request that did not hold: the caller's answer, not a failure
    if code == "NoSuchBucket":
        return StorageError(f"bucket {bucket!r} does not exist ({url}); create it or fix the URL")
    if code in _CRED_CODES:
        return StorageError(f"the storage endpoint refused the credentials for {url} ({code}); check "
                            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)")
    if code in _DENIED_CODES or (isinstance(exc, PermissionError) and code is None):
        return StorageError(f"access denied to {url} ({code or 'PermissionError'}); the credentials "
                            "lack permission for it")
    if isinstance(exc, FileNotFoundError):
        return None
    if isinstance(exc, (OSError, ValueError)) or "botocore" in type(exc).__module__ or "aiohttp" in type(exc).__module__:
        msg = " ".join(str(exc).split())[:200]
        return StorageError(f"cannot {op} {url}: {type(exc).__name__}: {msg}")
    return None


@contextlib.contextmanager
def guard(url: str, op: str = "use"):
    """Storage failures inside the block become one-line :class:`StorageError`\\ s."""
    try:
        yield
    except Exception as exc:
        err = translate(exc, url, op)
        if err is None:
            raise
        raise err from None


# --- the locks this process holds --------------------------------------------------------------

_HELD: dict[str, Any] = {}  # folder URL -> its ObjectLock (which says whether it was ``lost``)


def hold(folder: str, lock: Any) -> None:
    """Record that this process holds ``folder``'s lock (:func:`check_lock` asks it)."""
    _HELD[folder] = lock


def let_go(folder: str) -> None:
    _HELD.pop(folder, None)


def check_lock(url: str) -> None:
    """Refuse to write under a prefix whose lock this process held and lost (another run took it
    over after this one's heartbeat stopped for longer than the TTL)."""
    for prefix, lk in list(_HELD.items()):
        if lk.lost and (url == prefix or url.startswith(prefix.rstrip("/") + "/")):
            raise StorageError(f"lost the lock of {prefix}: {lk.lost}; stopped before writing {url}. "
                               "Only one run may write a folder: check what else uses it, then re-run")


# --- remote paths ----------------------------------------------------------------------------

class RemotePath:
    """A URL with the path methods the stages use. Objects are read and written whole; folders
    are key prefixes (``mkdir`` does nothing, an empty folder does not exist). There is no
    ``__fspath__``: handing one to ``open`` is an error, never a local file named ``s3:``."""

    __slots__ = ("url",)
    remote = True

    def __init__(self, url: str | RemotePath):
        self.url = normalize(url)

    # -- names ----------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: RemotePath) -> bool:
        return self.url < other.url

    def __truediv__(self, other) -> RemotePath:
        return RemotePath(self.url.rstrip("/") + "/" + str(other).lstrip("/"))

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]

    @property
    def name(self) -> str:
        return posixpath.basename(self.url.split("://", 1)[1])

    @property
    def suffix(self) -> str:
        return posixpath.splitext(self.name)[1]

    @property
    def stem(self) -> str:
        return posixpath.splitext(self.name)[0] if self.name else ""

    @property
    def parent(self) -> RemotePath:
        rest = self.url.split("://", 1)[1]
        return RemotePath(f"{self.scheme}://{posixpath.dirname(rest)}") if "/" in rest else self

    def with_name(self, name: str) -> RemotePath:
        return self.parent / name

    def with_suffix(self, suffix: str) -> RemotePath:
        return self.parent / (self.stem + suffix)

    def relative_to(self, other: RemotePath) -> str:
        base = str(other).rstrip("/") + "/"
        if not self.url.startswith(base):
            raise ValueError(f"{self} is not inside {other}")
        return self.url[len(base):]

    def resolve(self) -> RemotePath:
        return self

    # -- the store ------------------------------------------------------------------------
    def _fs(self):
        return filesystem(self.url)

    def _ask(self, method: str, op: str = "look up", **kw):
        """``fs.method(path, **kw)``, its failures one line."""
        fs, p = self._fs()
        with guard(self.url, op):
            return getattr(fs, method)(p, **kw)

    def exists(self) -> bool:
        return bool(self._ask("exists"))

    def is_file(self) -> bool:
        return bool(self._ask("isfile"))

    def write_problem(self) -> str | None:
        """Why an object cannot be written here (a folder: objects under this prefix), or None."""
        return "is a folder" if self.is_dir() else None

    def is_dir(self) -> bool:
        return bool(self._ask("isdir"))

    def size(self) -> int:
        return int(self._ask("size"))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing: a prefix exists once an object is written under it."""

    def rmdir(self) -> None:
        """Nothing: a prefix with no objects does not exist."""

    def iterdir(self) -> list[RemotePath]:
        """The objects and sub-prefixes directly under this prefix, sorted."""
        p = self._fs()[1]
        names = self._ask("ls", "list", detail=False)
        return sorted(RemotePath(f"{self.scheme}://{n}") for n in names if n.rstrip("/") != p.rstrip("/"))

    def glob(self, pattern: str) -> list[RemotePath]:
        fs, p = self._fs()
        with guard(self.url, "list"):
            names = fs.glob(p.rstrip("/") + "/" + pattern)
        return sorted(RemotePath(f"{self.scheme}://{n}") for n in names)

    def find(self) -> dict[str, int]:
        """Every object under this prefix (recursively): URL -> size, sorted by URL; one listing."""
        found = self._ask("find", "list", detail=True)
        return {f"{self.scheme}://{k}": int(v.get("size") or 0)
                for k, v in sorted(found.items()) if v.get("type", "file") == "file"}

    def scan(self, keep) -> tuple[dict[str, int], list]:
        """The objects under this prefix whose name passes ``keep``: ``({url: size}, [])`` from one
        listing (objects have no links or FIFOs to skip; hidden names, such as a lock, are left
        out)."""
        files = {}
        for url, size in self.find().items():
            rel = url[len(self.url) + 1:]
            if not any(part.startswith(".") for part in rel.split("/")) and keep(url):
                files[url] = size
        return files, []

    def read_bytes(self) -> bytes:
        return self._ask("cat_file", "read")

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def read_range(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset``: one ranged GET."""
        return self._ask("cat_file", "read", start=int(offset), end=int(offset) + int(size))

    def ranges(self) -> ObjectRanges:
        """A reader of byte ranges (``read(offset, size)``: one ranged GET each)."""
        return ObjectRanges(self)

    def open_read(self, block_size: int = STREAM_BLOCK):
        """A seekable binary file reading ahead ``block_size`` bytes a request."""
        return self._ask("open", "open", mode="rb", block_size=block_size, cache_type="readahead")

    def source(self) -> bytes:
        """What a decoder is given: the object's bytes (one GET)."""
        return self.read_bytes()

    def write_bytes(self, data: bytes) -> None:
        """The object, whole (one PUT): readers see the old object or the new one, never a part."""
        check_lock(self.url)
        fs, p = self._fs()
        with guard(self.url, "write"):
            fs.pipe_file(p, bytes(data))

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def upload(self, local: str | os.PathLike) -> None:
        """A local file as this object, whole (one PUT, or a multipart upload that appears only
        once complete)."""
        check_lock(self.url)
        fs, p = self._fs()
        with guard(self.url, "write"):
            fs.put_file(os.fspath(local), p)

    def unlink(self, missing_ok: bool = False) -> None:
        check_lock(self.url)  # a removal is a write
        try:
            self._ask("rm_file", "remove")
        except FileNotFoundError:
            if not missing_ok:
                raise


class ObjectRanges:
    """Byte ranges of one object (what :class:`~synthgen.storage.local.FileRanges` is locally)."""

    def __init__(self, path: RemotePath):
        self.path = path

    def read(self, offset: int, size: int) -> bytes:
        data = self.path.read_range(offset, size)
        if len(data) != size:
            raise OSError(f"{self.path}: {len(data)} of {size} bytes at offset {offset} (truncated?)")
        return data

    def close(self) -> None:
        pass
