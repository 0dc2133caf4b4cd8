"""Where work runs: Ray (a new local instance, or a cluster by address), or serially here.

:func:`ray_session` is the one way synthgen starts Ray, for every stage. Without an address it
starts a *new* local instance bound to loopback (``address="local"``, with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` so every Ray process listens on 127.0.0.1) with
``workers`` CPUs and a capped object store; it never joins a cluster that happens to run on the
machine. With ``--ray-address`` it connects to that cluster (its resources are the cluster's).

:func:`run_serial` and :func:`run_ray` take a picklable function and a list of argument tuples,
call ``on_result`` as each task finishes, and return the failures (``{task index: message}``)
instead of raising, so one failed shard never stops the others.
"""

from __future__ import annotations

import contextlib
import logging
import os
import traceback
from typing import Any, Callable, Iterator, Sequence

from synthgen.errors import UserError, recover

OnResult = Callable[[int, Any], None]


def _message(exc: BaseException) -> str:
    """One line for a failed task: a user error's own message, else type and last line."""
    err = recover(exc)
    if err is not None:
        return str(err)
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}"


def run_serial(fn: Callable, jobs: Sequence[tuple], on_result: OnResult,
               shared: dict | None = None) -> dict[int, str]:
    failures: dict[int, str] = {}
    for i, args in enumerate(jobs):
        try:
            res = fn(*args, **(shared or {}))
        except Exception as exc:  # noqa: BLE001 - reported per task
            failures[i] = _message(exc)
            if os.environ.get("SYNTHGEN_DEBUG"):
                traceback.print_exc()
            continue
        on_result(i, res)
    return failures


def _loopback() -> None:
    """Make a local Ray listen on 127.0.0.1 only: the driver reads
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when ray is imported (so the value is also set on the
    already imported constant), the Ray processes it starts read it from the environment. A user
    who set the variable keeps their choice."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"].lower() in ("1", "true")
    except (ImportError, AttributeError):  # another Ray layout: the environment still applies
        pass


def start_ray(workers: int | None, address: str | None, object_store_mb: int = 256) -> bool:
    """Start a local Ray or connect to ``address``; returns True when this call started or joined
    it (and must shut it down), False when Ray was already initialised in this process."""
    import ray

    if ray.is_initialized():
        return False
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kw: dict[str, Any] = dict(configure_logging=True, logging_level=logging.ERROR, log_to_driver=True)
    if address:
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot connect to the Ray cluster at {address}: "
                            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc}") from None
        return True
    _loopback()
    ray.init(address="local", num_cpus=workers or os.cpu_count() or 1,
             object_store_memory=object_store_mb << 20, include_dashboard=False, **kw)
    return True


@contextlib.contextmanager
def ray_session(workers: int | None, address: str | None, object_store_mb: int = 256) -> Iterator[None]:
    """Ray for the ``with`` block (see :func:`start_ray`), shut down after when this started it."""
    import ray

    started = start_ray(workers, address, object_store_mb)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def run_ray(fn: Callable, jobs: Sequence[tuple], on_result: OnResult, *, workers: int | None = None,
            address: str | None = None, max_retries: int = 2, shared: dict | None = None) -> dict[int, str]:
    """Run ``fn(*args)`` per job as Ray tasks with retries. ``shared`` values are put in the
    object store once and passed by reference as extra keyword arguments."""
    import ray

    failures: dict[int, str] = {}
    with ray_session(workers, address):
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
                    failures[i] = _message(exc)
                    continue
                on_result(i, res)
    return failures
