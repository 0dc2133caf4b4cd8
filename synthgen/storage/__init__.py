"""Storage: local folders and object stores behind one set of path objects.

Every path argument of every stage may be a local path or an fsspec URL (``s3://bucket/prefix``,
``gs://``, ``hf://``, ...). :func:`path` gives a :class:`LocalPath` or a :class:`RemotePath`, which
answer the same methods (``exists``, ``find``, ``read_bytes``, ``read_range``, ``open_read``,
``source``, ...), so stage code does not ask which kind it holds. The modules:

* :mod:`~synthgen.storage.urls`: what a string is (:func:`scheme`, :func:`is_remote`,
  :func:`localize`, :func:`resolved`, :func:`join`) and where it lies (:func:`inside`,
  :func:`overlap`).
* :mod:`~synthgen.storage.local` and :mod:`~synthgen.storage.remote`: the two kinds of path, and
  what each kind lacks (symlinks, FIFOs and undecodable names locally; rename, links and
  ``flock`` on an object store) and what is done instead.
* :mod:`~synthgen.storage.paths`: questions about many paths at once, one listing on a store.
* :mod:`~synthgen.storage.objectlock`: the lock of a folder on an object store.
* :mod:`~synthgen.storage.folder`: atomic writes and the run folder, for both kinds.

Importing this package is light: fsspec and its backends are imported on first remote use.
"""

from synthgen.storage.folder import (
    FULL_DISK,
    TMP_SUFFIX,
    UPLOAD_PREFIX,
    DiskFullError,
    RunFolder,
    Staged,
    atomic_write,
    atomic_write_json,
    atomic_write_with,
    disk_full,
    identity_diff,
    is_full,
    remove_stale_temps,
    remove_stale_uploads,
    staging,
    temp_path,
)
from synthgen.storage.local import LocalPath
from synthgen.storage.objectlock import LOCK_TTL_ENV, ObjectLock, abort_multipart_uploads
from synthgen.storage.paths import glob, kinds, locate, output_file, path, save_or_explain, sizes
from synthgen.storage.remote import (
    LIST_BLOCK,
    STREAM_BLOCK,
    RemotePath,
    StorageError,
    check_lock,
    filesystem,
    guard,
)
from synthgen.storage.urls import absolute, inside, is_remote, join, localize, overlap, relative, resolved, scheme

__all__ = [
    "path", "LocalPath", "RemotePath",
    "scheme", "localize", "is_remote", "resolved", "absolute", "join", "relative", "inside", "overlap",
    "glob", "kinds", "locate", "sizes", "output_file", "save_or_explain",
    "StorageError", "guard", "filesystem", "check_lock", "LIST_BLOCK", "STREAM_BLOCK",
    "ObjectLock", "abort_multipart_uploads", "LOCK_TTL_ENV",
    "RunFolder", "Staged", "atomic_write", "atomic_write_json", "atomic_write_with", "staging",
    "temp_path", "remove_stale_temps", "remove_stale_uploads", "UPLOAD_PREFIX", "TMP_SUFFIX",
    "identity_diff", "DiskFullError", "FULL_DISK", "disk_full", "is_full",
]
