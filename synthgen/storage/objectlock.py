"""The lock of a run folder on an object store, and what a killed writer leaves there.

An object store has no ``flock``. :class:`ObjectLock` is a lock object created by a conditional
PUT (``If-None-Match: *``: exactly one of two runs creates it), renewed by a heartbeat that is
itself a compare-and-swap (``If-Match`` on its ETag), and taken over (again by ``If-Match``) once
its holder is known dead (same host, pid gone) or its heartbeat is older than the TTL on the
server's clock. S3 only; other schemes get an advisory lock and a printed note. A run that loses
its lock (its heartbeat stopped for longer than the TTL and another run took it over) writes
nothing more under the folder (:func:`~synthgen.storage.remote.check_lock`).

A killed writer leaves no temporaries under a prefix (objects are uploaded whole), but a killed
multipart upload leaves stored parts: :func:`abort_multipart_uploads` aborts those of a folder
whenever its lock is taken and at a clean exit, as local temporaries are removed.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from synthgen.errors import UserError
from synthgen.storage.remote import RemotePath, StorageError, error_code, filesystem, guard, hold, let_go
from synthgen.storage.urls import scheme

LOCK_TTL_ENV = "SYNTHGEN_LOCK_TTL"
DEFAULT_LOCK_TTL = 120.0


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


def alive(pid: int) -> bool:
    """Whether process ``pid`` (of this machine) is running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _http_date(text: str) -> float:
    from email.utils import parsedate_to_datetime

    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return time.time()


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
            if error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict") or isinstance(exc, FileExistsError):
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
        if same_machine and not alive(holder["pid"]):
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
        hold(self.folder, self)

    def _start(self) -> None:
        hold(self.folder, self)
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
        let_go(self.folder)
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
                if error_code(exc) == "PreconditionFailed":
                    return  # no longer ours: leave it to its new holder
            seen = self._head()  # an endpoint without conditional deletes: delete it if still ours
            if seen is not None and seen[0] == self.etag:
                with guard(self.url, "unlock"):
                    fs.call_s3("delete_object", Bucket=bucket, Key=key)
        except Exception as exc:  # noqa: BLE001 - never hide the run's own outcome
            print(f"warning: could not remove the lock {self.url} ({exc}); the next run takes it over "
                  f"{self.ttl:.0f} s after its last heartbeat", file=sys.stderr)


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
