"""Where tasks run: a local or remote Ray cluster (default), or serially in this process.

Both executors take a picklable function and a list of argument tuples, call ``on_result`` as
each task finishes, and return the failures (``{task index: message}``) instead of raising, so
one failed shard never stops the others.
"""

from __future__ import annotations

import os
import traceback
from typing import Any, Callable, Sequence

OnResult = Callable[[int, Any], None]


def run_serial(fn: Callable, jobs: Sequence[tuple], on_result: OnResult,
               shared: dict | None = None) -> dict[int, str]:
    failures: dict[int, str] = {}
    for i, args in enumerate(jobs):
        try:
            res = fn(*args, **(shared or {}))
        except Exception as exc:  # noqa: BLE001 - reported per task
            failures[i] = f"{type(exc).__name__}: {exc}"
            if os.environ.get("SYNTHGEN_DEBUG"):
                traceback.print_exc()
            continue
        on_result(i, res)
    return failures


def ray_init(workers: int, address: str | None, object_store_mb: int = 256) -> bool:
    """Start (or connect to) Ray; returns True when this call started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kw: dict[str, Any] = dict(ignore_reinit_error=True, configure_logging=True,
                              logging_level="ERROR", log_to_driver=True)
    if address:
        ray.init(address=address, **kw)
    else:
        ray.init(num_cpus=workers, object_store_memory=object_store_mb << 20,
                 include_dashboard=False, **kw)
    return True


def run_ray(fn: Callable, jobs: Sequence[tuple], on_result: OnResult, *, workers: int,
            address: str | None = None, max_retries: int = 2, shared: dict | None = None) -> dict[int, str]:
    """Run ``fn(*args)`` per job as Ray tasks with retries. ``shared`` values are put in the
    object store once and passed by reference as extra keyword arguments."""
    import ray

    started = ray_init(workers, address)
    failures: dict[int, str] = {}
    try:
        # worker crashes are always retried; of the task's own errors only I/O errors (a flaky
        # network file system) are worth another try — a bad input fails the same way again
        remote = ray.remote(num_cpus=1, max_retries=max_retries, retry_exceptions=[OSError])(fn)
        shared_refs = {k: ray.put(v) for k, v in (shared or {}).items()}
        pending = {remote.remote(*args, **shared_refs): i for i, args in enumerate(jobs)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - RayTaskError and friends
                    cause = getattr(exc, "cause", None) or exc
                    failures[i] = f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
                    continue
                on_result(i, res)
    finally:
        if started:
            ray.shutdown()
    return failures
