"""Remote storage: the one place that knows about fsspec.

Every path argument of every stage may be a local path or an fsspec URL (``s3://bucket/prefix``,
``gs://``, ``hf://``, ...; ``file:///abs/path`` is a local path). :func:`path` turns a string into
a :class:`pathlib.Path` (local: today's code paths, unchanged) or a :class:`RemotePath`, which has
the few ``Path`` methods the stages use (``/``, ``name``, ``exists``, ``read_bytes``, ``glob``...)
and reads and writes objects whole. fsspec and its backends (s3fs, gcsfs, huggingface_hub) are
imported on first use.

What object stores lack, and what is done instead:

* no rename: an object is written whole (a local temporary, then one PUT, or a multipart upload
  that becomes visible only when it completes), so a reader never sees a partial object under its
  final name; done markers are written after the data they mark (see :mod:`synthgen.rundir`).
* no temporaries to remove after a kill, but a killed multipart upload leaves stored parts:
  :func:`abort_multipart_uploads` aborts those of a folder whenever its lock is taken and at a
  clean exit, as local temporaries are removed.
* no ``flock``: :class:`ObjectLock`, a lock object created by a conditional PUT
  (``If-None-Match: *``: exactly one of two runs creates it), renewed by a heartbeat that is
  itself a compare-and-swap (``If-Match`` on its ETag), and taken over (again by ``If-Match``)
  once its holder is known dead (same host, pid gone) or its heartbeat is older than the TTL on
  the server's clock. S3 only; other schemes get an advisory lock and a printed note.
* errors: a missing bucket, refused or missing credentials, access denied and an unreachable
  endpoint are :class:`StorageError` (a one-line :class:`~synthgen.errors.UserError`); retries
  and timeouts are bounded (:data:`S3_DEFAULTS`, overridable with fsspec's ``FSSPEC_S3_*``).

The endpoint and credentials are botocore's: ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``,
or ``FSSPEC_S3_ENDPOINT_URL``), ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or
``AWS_PROFILE``, ``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from synthgen.errors import UserError

# schemes read by webdataset's gopen (streams only), not by fsspec
GOPEN_SCHEMES = ("http", "https", "pipe")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

# bounded retries and timeouts: a missing endpoint fails in seconds, never hangs
S3_DEFAULTS: dict[str, Any] = {
    "use_listings_cache": False,  # another process (a Ray worker, a second run) writes the prefix
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 60,
                      "retries": {"max_attempts": 3, "mode": "standard"}},
}
STREAM_BLOCK = 8 << 20   # read-ahead of a streamed tar
LIST_BLOCK = 1 << 20     # read-ahead when listing a tar's members
UPLOAD_PREFIX = "synthgen-upload-"
TMP_SUFFIX = ".synthgen-tmp"


class StorageError(UserError):
    """Storage that cannot be used (bucket, credentials, permissions, endpoint): one line. Never
    taken for a damaged input: a stream that gets one stops instead of skipping the shard."""


# --- what a string is ------------------------------------------------------------------------

def scheme(spec: str | os.PathLike) -> str | None:
    m = _SCHEME.match(str(spec))
    return m.group(1).lower() if m else None


def localize(spec: str) -> str:
    """``file:///a/b`` -> ``/a/b``; anything else unchanged."""
    s = str(spec)
    return s[len("file://"):] if scheme(s) == "file" else s


def is_remote(spec: str | os.PathLike) -> bool:
    """An fsspec URL other than ``file://`` (``s3://``, ``gs://``, ``hf://``, ...)."""
    s = scheme(spec) if isinstance(spec, str) or isinstance(spec, RemotePath) else None
    return s is not None and s != "file" and s not in GOPEN_SCHEMES


def path(spec: "str | os.PathLike | RemotePath") -> "Path | RemotePath":
    """A :class:`RemotePath` for a remote URL, else a :class:`pathlib.Path` (``file://`` stripped)."""
    if isinstance(spec, RemotePath):
        return spec
    if isinstance(spec, Path):
        return spec
    s = str(spec)
    return RemotePath(s) if is_remote(s) else Path(localize(s))


def resolved(spec: str) -> str:
    """What a run records for an input: the absolute local path, or the normalised URL."""
    p = path(spec)
    return str(p) if isinstance(p, RemotePath) else str(Path(p).resolve())


def join(base: str, rel: str) -> str:
    """``base/rel`` for a URL, with ``..`` resolved lexically; an absolute ``rel`` or a URL is
    returned as is (so a containment check refuses it)."""
    if rel.startswith("/") or scheme(rel):
        return rel
    return str(RemotePath(base.rstrip("/") + "/" + rel))


def inside(p: str, roots: Iterable[str]) -> bool:
    """Whether URL ``p`` lies inside one of the URL ``roots`` (lexically: objects have no links)."""
    u = str(RemotePath(p)) if is_remote(p) else None
    if u is None:
        return False
    for r in roots:
        if not is_remote(r):
            continue
        r = str(RemotePath(r))
        if u == r or u.startswith(r.rstrip("/") + "/"):
            return True
    return False


def overlap(a: str, b: str) -> bool:
    """Whether folders ``a`` and ``b`` (paths or URLs) are the same or one holds the other."""
    if is_remote(a) != is_remote(b):
        return False
    if is_remote(a):
        return inside(a, [b]) or inside(b, [a])
    from synthgen.bank.reader import inside as local_inside

    ra, rb = os.path.realpath(localize(a)), os.path.realpath(localize(b))
    return local_inside(ra, [rb]) or local_inside(rb, [ra])


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


def _endpoint(url: str) -> str:
    fs = _FS.get((scheme(url) or "", os.getpid()))
    ep = None
    try:
        ep = fs.s3.meta.endpoint_url if fs is not None and getattr(fs, "_s3", None) is not None else None
    except Exception:  # noqa: BLE001 - only for the message
        ep = None
    return ep or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the default endpoint"


def _client_code(exc: BaseException) -> str | None:
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
    code = _client_code(exc)
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


# --- remote paths ----------------------------------------------------------------------------

class RemotePath:
    """A URL with the ``pathlib.Path`` methods the stages use. Objects are read and written whole;
    folders are key prefixes (``mkdir`` does nothing, an empty folder does not exist). There is no
    ``__fspath__``: handing one to ``open`` is an error, never a local file named ``s3:``."""

    __slots__ = ("url",)

    def __init__(self, url: str):
        url = str(url)
        sch = scheme(url)
        if sch is None:
            raise ValueError(f"not a URL: {url!r}")
        bucket, _, key = url[len(sch) + 3:].partition("/")
        key = posixpath.normpath(key) if key else ""  # ``..`` never climbs out of the bucket:
        key = "" if key == "." else key                # a leading one stays (and is never inside)
        self.url = f"{sch}://{bucket}/{key}" if key else f"{sch}://{bucket}"

    # -- names ----------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"RemotePath({self.url!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, RemotePath) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    def __lt__(self, other: "RemotePath") -> bool:
        return self.url < other.url

    def __truediv__(self, other) -> "RemotePath":
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
    def parent(self) -> "RemotePath":
        rest = self.url.split("://", 1)[1]
        return RemotePath(f"{self.scheme}://{posixpath.dirname(rest)}") if "/" in rest else self

    def with_name(self, name: str) -> "RemotePath":
        return self.parent / name

    def with_suffix(self, suffix: str) -> "RemotePath":
        return self.parent / (self.stem + suffix)

    def relative_to(self, other: "RemotePath") -> str:
        base = str(other).rstrip("/") + "/"
        if not self.url.startswith(base):
            raise ValueError(f"{self} is not inside {other}")
        return self.url[len(base):]

    def resolve(self) -> "RemotePath":
        return self

    # -- the store ------------------------------------------------------------------------
    def _fs(self):
        return filesystem(self.url)

    def exists(self) -> bool:
        fs, p = self._fs()
        with guard(self.url, "look up"):
            return bool(fs.exists(p))

    def is_file(self) -> bool:
        fs, p = self._fs()
        with guard(self.url, "look up"):
            return bool(fs.isfile(p))

    def is_dir(self) -> bool:
        fs, p = self._fs()
        with guard(self.url, "look up"):
            return bool(fs.isdir(p))

    def size(self) -> int:
        fs, p = self._fs()
        with guard(self.url, "look up"):
            return int(fs.size(p))

    def mkdir(self, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing: a prefix exists once an object is written under it."""

    def iterdir(self) -> list["RemotePath"]:
        """The objects and sub-prefixes directly under this prefix, sorted."""
        fs, p = self._fs()
        with guard(self.url, "list"):
            names = fs.ls(p, detail=False)
        return sorted(RemotePath(f"{self.scheme}://{n}") for n in names if n.rstrip("/") != p.rstrip("/"))

    def glob(self, pattern: str) -> list["RemotePath"]:
        fs, p = self._fs()
        with guard(self.url, "list"):
            names = fs.glob(p.rstrip("/") + "/" + pattern)
        return sorted(RemotePath(f"{self.scheme}://{n}") for n in names)

    def find(self) -> dict[str, int]:
        """Every object under this prefix (recursively): URL -> size, sorted by URL."""
        fs, p = self._fs()
        with guard(self.url, "list"):
            found = fs.find(p, detail=True)
        return {f"{self.scheme}://{k}": int(v.get("size") or 0)
                for k, v in sorted(found.items()) if v.get("type", "file") == "file"}

    def read_bytes(self) -> bytes:
        fs, p = self._fs()
        with guard(self.url, "read"):
            return fs.cat_file(p)

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def read_range(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset``: one ranged GET."""
        fs, p = self._fs()
        with guard(self.url, "read"):
            return fs.cat_file(p, start=int(offset), end=int(offset) + int(size))

    def open_read(self, block_size: int = STREAM_BLOCK):
        """A seekable binary file reading ahead ``block_size`` bytes a request."""
        fs, p = self._fs()
        with guard(self.url, "open"):
            return fs.open(p, "rb", block_size=block_size, cache_type="readahead")

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
        fs, p = self._fs()
        try:
            with guard(self.url, "remove"):
                fs.rm_file(p)
        except FileNotFoundError:
            if not missing_ok:
                raise


def read_range(spec: str, offset: int, size: int) -> bytes:
    return RemotePath(spec).read_range(offset, size)


def local_temp(target: str) -> str:
    """A local temporary for an object being written (``TMPDIR``), named by this process so
    that :func:`remove_stale_uploads` can tell a killed writer's from a live one's."""
    base = posixpath.basename(str(target)) or "object"
    fd, tmp = tempfile.mkstemp(prefix=f"{UPLOAD_PREFIX}{os.getpid()}-", suffix=f"-{base[:60]}{TMP_SUFFIX}")
    os.close(fd)
    return tmp


def remove_stale_uploads() -> int:
    """Remove the local temporaries of uploads whose process is gone (a killed run's)."""
    n = 0
    root = Path(tempfile.gettempdir())
    for f in root.glob(f"{UPLOAD_PREFIX}*{TMP_SUFFIX}"):
        try:
            pid = int(f.name[len(UPLOAD_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if not _alive(pid):
            f.unlink(missing_ok=True)
            n += 1
    return n


def abort_multipart_uploads(folder: str, recursive: bool = False) -> int:
    """Abort the unfinished multipart uploads of objects in ``folder`` (S3; others have none):
    a writer killed during a large upload leaves its parts on the server, invisible in listings
    but stored (and billed) until aborted. ``recursive`` also those in sub-folders. Call it only
    while holding the folder's lock (a live run's upload looks the same); returns how many."""
    if scheme(folder) not in ("s3", "s3a"):
        return 0
    fs, p = filesystem(folder)
    bucket, _, key = p.rstrip("/").partition("/")
    prefix = f"{key}/" if key else ""
    n = 0
    marker: dict[str, str] = {}
    try:
        while True:
            with guard(folder, "list the unfinished uploads of"):
                page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **marker)
            for up in page.get("Uploads", []):
                if not recursive and "/" in up["Key"][len(prefix):]:
                    continue
                try:
                    with guard(folder, "abort an unfinished upload in"):
                        fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                except FileNotFoundError:
                    continue  # (aborted meanwhile)
                n += 1
            if not page.get("IsTruncated"):
                return n
            marker = {"KeyMarker": page["NextKeyMarker"], "UploadIdMarker": page["NextUploadIdMarker"]}
    except StorageError as exc:  # e.g. a policy without s3:ListBucketMultipartUploads: not fatal
        print(f"warning: {exc}; the parts of uploads killed mid-way may stay stored (a bucket "
              "lifecycle rule AbortIncompleteMultipartUpload removes them)", file=sys.stderr)
        return n


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- the folder lock ---------------------------------------------------------------------------

LOCK_TTL_ENV = "SYNTHGEN_LOCK_TTL"
DEFAULT_LOCK_TTL = 120.0
_HELD: dict[str, "ObjectLock"] = {}


def lock_ttl() -> float:
    try:
        return max(1.0, float(os.environ.get(LOCK_TTL_ENV, DEFAULT_LOCK_TTL)))
    except ValueError:
        return DEFAULT_LOCK_TTL


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def check_lock(url: str) -> None:
    """Refuse to write under a prefix whose lock this process held and lost (another run took it
    over after this one's heartbeat stopped for longer than the TTL)."""
    for prefix, lk in list(_HELD.items()):
        if lk.lost and (url == prefix or url.startswith(prefix.rstrip("/") + "/")):
            raise StorageError(f"lost the lock of {prefix}: {lk.lost}; stopped before writing {url}. "
                               "Only one run may write a folder: check what else uses it, then re-run")


class ObjectLock:
    """The lock object ``url`` of a run folder on an object store (see the module doc).

    ``acquire`` creates it with ``If-None-Match: *`` or takes over a dead holder's with
    ``If-Match``; a daemon thread renews it every TTL/4 with ``If-Match`` on its last ETag (a
    failed swap means another run took it over: :attr:`lost` is set and every later write under
    the folder from this process is refused); ``release`` deletes it if it is still ours."""

    def __init__(self, url: str, stage: str, option: str = "--out", ttl: float | None = None):
        self.url, self.stage, self.option = str(RemotePath(url)), stage, option
        self.folder = str(RemotePath(url).parent)
        self.ttl = float(ttl if ttl is not None else lock_ttl())
        self.etag: str | None = None
        self.lost: str | None = None
        self.atomic = scheme(url) in ("s3", "s3a")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.info = {"synthgen_lock": 1, "stage": stage, "run_id": uuid.uuid4().hex, "host": socket.gethostname(),
                     "boot_id": _boot_id(), "pid": os.getpid(), "ttl_s": self.ttl,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "beat": 0}

    # -- S3 conditional requests ------------------------------------------------------------
    def _bucket_key(self) -> tuple[Any, str, str]:
        fs, p = filesystem(self.url)
        bucket, _, key = p.partition("/")
        return fs, bucket, key

    def _put(self, **cond) -> str | None:
        """PUT the lock body under ``cond``; its ETag, or None when the condition failed."""
        fs, bucket, key = self._bucket_key()
        body = json.dumps(self.info).encode()
        meta = {"synthgen-lock": json.dumps(self.info)}
        try:
            with guard(self.url, "lock"):
                return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=body, Metadata=meta,
                                  ContentType="application/json", **cond)["ETag"]
        except (FileExistsError, OSError) as exc:
            if _client_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict") or isinstance(exc, FileExistsError):
                return None
            raise

    def _head(self) -> tuple[str, float, dict] | None:
        """``(etag, age in seconds on the server's clock, holder)`` of the lock object, or None.
        One HEAD: the holder is in the object's metadata, the age is the response's ``Date``
        less the object's ``Last-Modified`` (both the server's clock: no skew between hosts)."""
        fs, bucket, key = self._bucket_key()
        try:
            with guard(self.url, "lock"):
                h = fs.call_s3("head_object", Bucket=bucket, Key=key)
        except FileNotFoundError:
            return None
        date = (h.get("ResponseMetadata") or {}).get("HTTPHeaders", {}).get("date")
        now = _http_date(date) if date else time.time()
        age = max(0.0, now - h["LastModified"].timestamp())
        try:
            holder = json.loads((h.get("Metadata") or {}).get("synthgen-lock", "{}"))
        except ValueError:
            holder = {}
        return h["ETag"], age, holder if isinstance(holder, dict) else {}

    # -- the protocol -------------------------------------------------------------------------
    def acquire(self) -> None:
        if not self.atomic:
            self._acquire_advisory()
            return
        for _ in range(5):
            self.etag = self._put(IfNoneMatch="*")
            if self.etag is not None:
                break
            seen = self._head()
            if seen is None:
                continue  # released between our two requests: try again
            etag, age, holder = seen
            why = self._stale(age, holder)
            if why is None:
                raise UserError(self._busy(age, holder))
            self.etag = self._put(IfMatch=etag)
            if self.etag is None:
                raise UserError(self._busy(0.0, holder))  # another run took it over first
            print(f"note: took over the lock {self.url} of a {holder.get('stage', 'synthgen')} run that "
                  f"stopped ({why})", file=sys.stderr)
            break
        else:
            raise UserError(f"cannot lock {self.url}: it keeps changing")
        self._start()

    def _stale(self, age: float, holder: dict) -> str | None:
        """Why the holder is known to be gone, or None while it may be alive."""
        same_machine = (holder.get("host") == self.info["host"] and holder.get("boot_id") == self.info["boot_id"]
                        and isinstance(holder.get("pid"), int))
        if same_machine and not _alive(holder["pid"]):
            return f"pid {holder['pid']} on this machine is gone"
        ttl = float(holder.get("ttl_s") or self.ttl)
        if age > ttl:
            return f"no heartbeat for {age:.0f} s > its {ttl:.0f} s TTL"
        return None

    def _busy(self, age: float, holder: dict) -> str:
        who = (f"run {str(holder.get('run_id', '?'))[:8]} pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
               f"heartbeat {age:.0f} s ago")
        ttl = float(holder.get("ttl_s") or self.ttl)
        return (f"another synthgen {holder.get('stage', self.stage)} is using {self.folder} ({who}); wait for it "
                f"to finish or use another {self.option} (a killed run's lock is taken over {ttl:.0f} s after "
                "its last heartbeat)")

    def _acquire_advisory(self) -> None:
        p = RemotePath(self.url)
        if p.exists():
            try:
                holder = json.loads(p.read_text())
            except (ValueError, UnicodeDecodeError):
                holder = {}
            raise UserError(self._busy(0.0, holder if isinstance(holder, dict) else {}))
        p.write_bytes(json.dumps(self.info).encode())
        print(f"note: {self.folder} is on {p.scheme}://, which has no conditional writes synthgen uses: "
              "its lock is advisory (two runs started at the same moment could both proceed)", file=sys.stderr)
        _HELD[self.folder] = self

    def _start(self) -> None:
        _HELD[self.folder] = self
        self._thread = threading.Thread(target=self._beat, name=f"synthgen-lock {self.url}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        period = max(0.2, self.ttl / 4)
        while not self._stop.wait(period):
            self.info["beat"] += 1
            try:
                etag = self._put(IfMatch=self.etag)
            except Exception:  # noqa: BLE001 - a network hiccup: try again next period
                continue
            if etag is None:
                self.lost = "another run took it over"
                print(f"warning: lost the lock {self.url} (another run took it over after this one's "
                      f"heartbeat stopped for more than {self.ttl:.0f} s); this run writes nothing more there",
                      file=sys.stderr)
                return
            self.etag = etag

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        _HELD.pop(self.folder, None)
        if self.lost:
            return
        if not self.atomic:
            RemotePath(self.url).unlink(missing_ok=True)
            return
        try:
            fs, bucket, key = self._bucket_key()
            try:
                with guard(self.url, "unlock"):
                    fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=self.etag)
                return
            except OSError as exc:
                if _client_code(exc) == "PreconditionFailed":
                    return  # no longer ours: leave it to its new holder
            seen = self._head()  # an endpoint without conditional deletes: delete it if still ours
            if seen is not None and seen[0] == self.etag:
                with guard(self.url, "unlock"):
                    fs.call_s3("delete_object", Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - never hide the run's own outcome
            print(f"warning: could not remove the lock {self.url} ({exc}); the next run takes it over "
                  f"{self.ttl:.0f} s after its last heartbeat", file=sys.stderr)


def _http_date(text: str) -> float:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return time.time()


def with_local_file(url: str, write: Callable[[str], None]) -> None:
    """``write(tmp)`` to a local temporary, then upload it whole as ``url``; the temporary is
    always removed."""
    tmp = local_temp(url)
    try:
        write(tmp)
        RemotePath(url).upload(tmp)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
