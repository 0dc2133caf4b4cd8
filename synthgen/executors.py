"""Where work runs: Ray (a new local instance, or a cluster by address), or serially here.

:func:`ray_session` is the one way synthgen starts Ray, for every stage. Without an address it
starts a *new* local instance bound to loopback (``address="local"``, with
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` so every Ray process listens on 127.0.0.1) with
``workers`` CPUs and a capped object store; it never joins a cluster that happens to run on the
machine. With ``--ray-address`` it connects to that cluster (its resources are the cluster's).

Token authentication (Ray turns it on for every cluster started where a token exists, and a local
``ray.init`` writes one to ``~/.ray/auth_token``): a client that connects by an explicit address
does not turn it on by itself, so it was refused by such a cluster (``InvalidAuthToken``), while a
client in token mode cannot serve a cluster without authentication (its workers cannot fetch the
driver's objects). So synthgen first asks the head (a GCS call, milliseconds) whether it wants a
token, and connects in token mode only when it does, ``RAY_AUTH_MODE`` is unset and a token is at
hand (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``); an address where
nothing listens is a one-line error at once, not after Ray's minute of retries.

:func:`run_serial` and :func:`run_ray` take a picklable function and a list of argument tuples,
call ``on_result`` as each task finishes, and return the failures (``{task index: message}``)
instead of raising, so one failed shard never stops the others.

Progress within a task: a *generator* function yields how many of its items it has done so far
(an int, at points that depend only on its input: every k items, not every t seconds — a retried
Ray generator must yield the same number of values, and Ray hands the caller only those it has
not seen) and returns its result; ``on_progress(task index, done)`` is called with each. On Ray
it runs as a streaming generator task: no extra process, no actor; the driver waits on all the
tasks at once and takes each value as it arrives.

Ray's own console lines: the driver's "ray" logger is at ERROR (no "Started a local Ray
instance"), worker output still reaches the driver (``log_to_driver``: a print or a warning in a
task is shown, prefixed by Ray with the task's name and pid), and the lines that Ray's C++ core in
*this* process writes to the console are dropped while a session runs (:func:`_ray_console`):
they are copies of lines of the session's ``python-core-driver-*.log``, and not errors of the run
(e.g. Ray Data's actor pools always trigger ``core_worker.cc: Actor ... has constructor arguments
in the object store and max_restarts > 0``, ray-project/ray#57733). Everything else written there
is shown as it comes (tracebacks, warnings, Ray's ``(pid=...)`` lines of the workers), and a
task's failure never depends on any log: it comes back through ``ray.get`` and is reported as one
line per task. ``SYNTHGEN_RAY_CONSOLE=1`` keeps Ray's lines. (``RAY_BACKEND_LOG_LEVEL`` is not a
way out: every Ray process started with it prints a notice of it, which reaches the console as a
``(raylet)`` line, and it also drops the lines from Ray's log files.)
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import sys
import traceback
from typing import Any, Callable, Iterator, Sequence

from synthgen.errors import UserError, recover

OnResult = Callable[[int, Any], None]
OnProgress = Callable[[int, int], None]


def _drain(gen, on_tick: Callable[[int], None] | None) -> Any:
    """Run a progress generator to its end: each yield to ``on_tick``, the return value back."""
    while True:
        try:
            done = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_tick is not None:
            on_tick(done)


def _streamed(fn: Callable, *args, **kwargs):
    """A progress generator as a Ray streaming generator: ``("p", done)`` per progress value,
    then ``("r", result)``."""
    gen = fn(*args, **kwargs)
    while True:
        try:
            done = next(gen)
        except StopIteration as stop:
            yield ("r", stop.value)
            return
        yield ("p", done)


def _message(exc: BaseException) -> str:
    """One line for a failed task: a user error's own message, else type and last line."""
    err = recover(exc)
    if err is not None:
        return str(err)
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip()
    return f"{type(cause).__name__}: {text.splitlines()[-1] if text else ''}"


def shards_failed(failures: dict[int, str], names: Sequence[str]) -> UserError:
    """The one-line error of a run whose shards ``failures`` (index in ``names`` -> message) failed."""
    lines = "; ".join(f"{names[i]}: {msg}" for i, msg in sorted(failures.items()))
    rest = "the others are complete — " if len(failures) < len(names) else ""
    return UserError(f"{len(failures)} of {len(names)} shard(s) failed ({lines}); "
                     f"{rest}re-run the same command to retry the failed ones")


def run_serial(fn: Callable, jobs: Sequence[tuple], on_result: OnResult,
               shared: dict | None = None, on_progress: OnProgress | None = None) -> dict[int, str]:
    failures: dict[int, str] = {}
    streaming = inspect.isgeneratorfunction(fn)
    for i, args in enumerate(jobs):
        try:
            res = fn(*args, **(shared or {}))
            if streaming:
                res = _drain(res, (lambda done, i=i: on_progress(i, done)) if on_progress else None)
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


def _token_at_hand() -> str | None:
    """Where the token for a cluster comes from (None when there is none)."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "RAY_AUTH_TOKEN"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and os.path.isfile(path):
        return path
    default = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")
    return default if os.path.isfile(default) else None


def _token_mode() -> None:
    """Token mode for this process (and the Ray processes it starts), as ``address="auto"`` does."""
    os.environ["RAY_AUTH_MODE"] = "token"
    try:  # the driver's config was read at import: refresh it
        from ray._raylet import Config

        Config.initialize("")
    except (ImportError, AttributeError):
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _chain(exc: BaseException | None) -> str:
    """The text of ``exc`` and of the errors behind it (Ray wraps the authentication error)."""
    parts = []
    while exc is not None and len(parts) < 8:
        parts.append(f"{type(exc).__name__} {exc}")
        exc = exc.__cause__ or exc.__context__
    return " ".join(parts)


def _probe(address: str) -> str:
    """What the head at ``address`` (``HOST:PORT``) says to a client without a token, quickly:
    "open", "token" (it wants one) or "unknown"; a :class:`UserError` when nothing answers."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return "unknown"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise UserError(f"cannot connect to the Ray cluster at {address}: nothing answers there "
                        f"({exc.strerror or exc}); give the head's HOST:PORT as printed by "
                        "`ray start --head` (port 6379 unless set)") from None
    try:
        from ray._raylet import GcsClient
    except ImportError:
        return "unknown"
    try:
        GcsClient(address=address)
    except Exception as exc:  # noqa: BLE001 - AuthenticationError, RpcError
        return "token" if "auth" in _chain(exc).lower() else "unknown"
    return "open"


def _connect(address: str, kw: dict[str, Any]) -> None:
    """``ray.init(address)``, in token mode when the cluster wants a token (see the module doc)."""
    import ray

    source = None
    if _probe(address) == "token" and os.environ.get("RAY_AUTH_MODE") is None:
        source = _token_at_hand()
        if source is None:
            raise UserError(f"cannot connect to the Ray cluster at {address}: it wants an "
                            f"authentication token; {AUTH_HINT}")
        _token_mode()
        if _probe(address) == "token":  # fail now, not after Ray's retries
            raise UserError(f"cannot connect to the Ray cluster at {address}: the token from {source} "
                            f"was refused: is it this cluster's? {AUTH_HINT}")
    try:
        ray.init(address=address, **kw)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, AuthenticationError, RuntimeError...
        why = _first_line(exc)
        if "auth" in _chain(exc).lower():
            why += (f"; the token from {source} was refused: is it this cluster's? " if source else "; ") + AUTH_HINT
        raise UserError(f"cannot connect to the Ray cluster at {address}: {why}") from None


AUTH_HINT = ("give the head's token (`ray start` turns token authentication on): "
             "RAY_AUTH_TOKEN_PATH=FILE (a copy of the head's ~/.ray/auth_token), RAY_AUTH_TOKEN=TOKEN, "
             "or copy it to ~/.ray/auth_token")


RAY_LOG_LINE = re.compile(rb"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [TDIWE] \d+ \d+\] \S+\.cc:\d+: ")


def _forward(read_fd: int, out_fd: int) -> None:
    """Copy lines from ``read_fd`` to ``out_fd`` until its end, less Ray's C++ log lines."""
    with os.fdopen(read_fd, "rb", buffering=0) as src:
        pending = b""
        while True:
            chunk = src.read(65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not RAY_LOG_LINE.match(line))
            if out:
                os.write(out_fd, out)
        if pending and not RAY_LOG_LINE.match(pending):
            os.write(out_fd, pending)


@contextlib.contextmanager
def _ray_console() -> Iterator[None]:
    """Drop the lines of Ray's C++ log format (``[DATE TIME LEVEL PID TID] FILE.cc:LINE: ...``;
    fatal ones are kept) that this process writes to file descriptor 2 in the block, where Ray's
    C++ logging writes. Python's ``sys.stderr`` writes to the console directly meanwhile (a
    progress bar still sees a terminal); other writes to descriptor 2 pass through a pipe."""
    if os.environ.get("SYNTHGEN_RAY_CONSOLE") or not hasattr(os, "pipe"):
        yield
        return
    import threading

    try:
        sys.stderr.flush()
        real = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    read_fd, write_fd = os.pipe()
    thread = threading.Thread(target=_forward, args=(read_fd, real), name="ray-console", daemon=True)
    thread.start()
    old_stderr = sys.stderr
    console = os.fdopen(os.dup(real), "w", buffering=1, encoding=getattr(old_stderr, "encoding", None) or "utf-8",
                        errors=getattr(old_stderr, "errors", None) or "backslashreplace")
    os.dup2(write_fd, 2)
    os.close(write_fd)
    sys.stderr = console
    try:
        yield
    finally:
        sys.stderr = old_stderr
        console.close()
        os.dup2(real, 2)  # (closes the pipe's last write end: the thread sees its end)
        thread.join(timeout=5)
        os.close(real)


def start_ray(workers: int | None, address: str | None, object_store_mb: int = 256) -> bool:
    """Start a local Ray or connect to ``address``; returns True when this call started or joined
    it (and must shut it down), False when Ray was already initialised in this process. A local
    Ray is watched (:func:`synthgen.raywatch.watch`): ``kill -9`` of this process leaves none of
    its processes; a Ctrl-C or SIGTERM while Ray starts acts once it has (:mod:`synthgen.raywatch`)."""
    import ray

    from synthgen.raywatch import signals_held, unwatch, watch

    if ray.is_initialized():
        return False
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kw: dict[str, Any] = dict(configure_logging=True, logging_level=logging.ERROR, log_to_driver=True)
    try:
        with signals_held() as held:
            if address:
                _connect(address, kw)
            else:
                _loopback()
                watch()
                ray.init(address="local", num_cpus=workers or os.cpu_count() or 1,
                         object_store_memory=object_store_mb << 20, include_dashboard=False, **kw)
        for handler, signum in held:  # (now that Ray has started: it is shut down below)
            handler(signum, None)
    except BaseException:
        with contextlib.suppress(Exception):
            ray.shutdown()  # (what it started; the watchdog kills what is left)
        unwatch()
        raise
    finally:
        os.environ.pop("SYNTHGEN_RAY_SESSION", None)
    return True


@contextlib.contextmanager
def ray_session(workers: int | None, address: str | None, object_store_mb: int = 256) -> Iterator[None]:
    """Ray for the ``with`` block (see :func:`start_ray`), shut down after when this started it."""
    import ray

    if ray.is_initialized():  # (someone else's session: as it is)
        yield
        return
    mode = os.environ.get("RAY_AUTH_MODE")  # a local ray.init turns token mode on for the process
    with _ray_console():
        started = start_ray(workers, address, object_store_mb)
        try:
            yield
        finally:
            if started:
                try:
                    ray.shutdown()
                finally:
                    from synthgen.raywatch import unwatch

                    unwatch()
                if mode is None:  # a later --ray-address starts afresh
                    os.environ.pop("RAY_AUTH_MODE", None)
                else:
                    os.environ["RAY_AUTH_MODE"] = mode


def run_ray(fn: Callable, jobs: Sequence[tuple], on_result: OnResult, *, workers: int | None = None,
            address: str | None = None, max_retries: int = 2, shared: dict | None = None,
            on_progress: OnProgress | None = None) -> dict[int, str]:
    """Run ``fn(*args)`` per job as Ray tasks with retries. ``shared`` values are put in the
    object store once and passed by reference as extra keyword arguments. A generator ``fn``
    reports progress (see the module doc) to ``on_progress``."""
    import ray

    failures: dict[int, str] = {}
    streaming = inspect.isgeneratorfunction(fn)
    with ray_session(workers, address):
        # worker crashes are always retried; of the task's own errors only I/O errors (a flaky
        # network file system) are worth another try — a bad input fails the same way again
        opts = dict(num_cpus=1, max_retries=max_retries, retry_exceptions=[OSError])
        shared_refs = {k: ray.put(v) for k, v in (shared or {}).items()}
        if streaming:
            remote = ray.remote(num_returns="streaming", **opts)(_streamed)
            pending = {remote.remote(fn, *args, **shared_refs): i for i, args in enumerate(jobs)}
        else:
            remote = ray.remote(**opts)(fn)
            pending = {remote.remote(*args, **shared_refs): i for i, args in enumerate(jobs)}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                if not streaming:
                    i = pending.pop(ref)
                    try:
                        res = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - RayTaskError and friends
                        failures[i] = _message(exc)
                        continue
                    on_result(i, res)
                    continue
                i = pending[ref]
                try:  # a ready generator: its next value (or its end) is there
                    kind, value = ray.get(next(ref))
                except StopIteration:
                    pending.pop(ref)  # (after its result, below)
                    continue
                except Exception as exc:  # noqa: BLE001 - RayTaskError and friends
                    pending.pop(ref)
                    failures[i] = _message(exc)
                    continue
                if kind == "p":
                    if on_progress is not None:
                        on_progress(i, value)
                else:
                    pending.pop(ref)
                    on_result(i, value)
    return failures


EXECUTORS = ("auto", "ray", "serial")


def check_executor(executor: str) -> None:
    if executor not in EXECUTORS:
        raise UserError(f"--executor must be one of {', '.join(EXECUTORS)} (got {executor!r})")


def in_process(executor: str, workers: int | None, address: str | None, jobs: int) -> bool:
    """Whether work runs in this process rather than on Ray: ``serial``; or ``auto`` where Ray
    cannot help, with no cluster address and one job or one worker to run it (Ray's start-up,
    seconds, would exceed the work of a small local run). The bytes are the same either way."""
    check_executor(executor)
    if executor != "auto":
        return executor == "serial"
    return address is None and (jobs <= 1 or workers == 1)
