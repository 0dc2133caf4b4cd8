"""Atomic file writes: write a hidden temporary file beside the target, fsync, rename.

Readers (and a re-run after ``kill -9``) never see a half-written file under its final name;
leftover temporaries all end in :data:`TMP_SUFFIX` so :func:`remove_stale_temps` can clear them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

TMP_SUFFIX = ".synthgen-tmp"


def temp_path(path: str | Path) -> Path:
    p = Path(path)
    return p.with_name(f".{p.name}.{os.getpid()}{TMP_SUFFIX}")


def atomic_write_with(path: str | Path, write: Callable[[str], None]) -> None:
    """``write(tmp_path)`` (any writer: torch.save, safetensors, ...) then rename over ``path``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(p)
    try:
        write(str(tmp))
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, data: bytes | str) -> None:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    atomic_write_with(path, lambda t: Path(t).write_bytes(raw))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def remove_stale_temps(folder: str | Path, recursive: bool = False) -> int:
    """Delete temporaries left by a killed writer; returns how many."""
    root = Path(folder)
    if not root.is_dir():
        return 0
    n = 0
    for p in (root.rglob if recursive else root.glob)(f".*{TMP_SUFFIX}"):
        p.unlink(missing_ok=True)
        n += 1
    return n
