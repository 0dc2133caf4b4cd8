"""What a local Ray started by synthgen (:func:`synthgen.executors.start_ray`) must not leave
behind when its driver is stopped.

* ``kill -9`` of the driver: Ray's own fate-sharing ends the GCS, the raylet and the workers, but
  its dashboard and runtime-env agents notice the dead raylet at once and then wait a minute for
  the dead GCS (to report the raylet's death) before they exit. :func:`watch` starts a watchdog
  that kills them at once.
* Ctrl-C or SIGTERM (how schedulers stop a job) while ``ray.init`` runs would end it midway (for
  SIGTERM, Ray's own handler: ``sys.exit``), and a start-up cut short crashes in Ray's C++ (an
  abort 3 s later, from its failure handler's alarm, or a segfault). :func:`signals_held` holds
  them until Ray has started; the caller then stops as it would have, shutting Ray down.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

_WATCHDOG = r"""
import os, re, signal, sys, time

signal.signal(signal.SIGINT, signal.SIG_IGN)  # (a Ctrl-C of the terminal is the driver's)
sys.stdin.buffer.read()  # until the pipe's end: Ray shut down, or the driver died
mark, driver = sys.argv[1].encode(), sys.argv[2]
session = re.compile(r"/session_[^/]*_%s/" % driver)


def of_session(p):
    if mark in open(p + "environ", "rb").read().split(b"\0"):
        return True
    retitled = open(p + "cmdline", "rb").read().startswith(b"ray::")
    return retitled and any(session.search(os.readlink(p + "fd/" + f) + "/") for f in os.listdir(p + "fd"))


quiet, end = 0, time.time() + 30
while quiet < 3 and time.time() < end:
    quiet += 1
    for pid in [pid for pid in os.listdir("/proc") if pid.isdigit() and pid != driver]:
        try:
            if of_session(f"/proc/{pid}/"):
                os.kill(int(pid), signal.SIGKILL)
                quiet = 0
        except OSError:
            pass
    time.sleep(0.1)
"""
_watchdog: list = []


def watch() -> None:
    """Mark the local Ray about to start (its processes inherit ``SYNTHGEN_RAY_SESSION``) and start
    its watchdog (Linux). After ``kill -9`` of the driver, Ray's fate-sharing ends the GCS, raylet
    and workers, but its dashboard and runtime-env agents wait a minute for the dead GCS. The
    watchdog reads a pipe from the driver until its end (Ray shut down, or the driver died), then
    kills the session's processes until three looks in a row find none: those with the mark in
    their environment, and those Ray retitled (``ray::...``, which may overwrite the environment)
    holding a file in the session's folder (``session_..._{driver pid}``)."""
    import subprocess
    import uuid

    if not os.path.isdir("/proc/self"):
        return
    mark = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if k != "SYNTHGEN_RAY_SESSION"}
    with contextlib.suppress(OSError):
        _watchdog.append(subprocess.Popen(  # (silent: not holding the console filter's pipe, executors._ray_console)
            [sys.executable, "-c", _WATCHDOG, f"SYNTHGEN_RAY_SESSION={mark}", str(os.getpid())], env=env,
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        os.environ["SYNTHGEN_RAY_SESSION"] = mark  # (while Ray starts: see start_ray)


def unwatch() -> None:
    """Close the watchdog's pipe once Ray is shut down or failed to start: it kills what is left."""
    while _watchdog:
        dog = _watchdog.pop()
        with contextlib.suppress(Exception):
            dog.stdin.close()
            dog.wait(timeout=10)


@contextlib.contextmanager
def signals_held() -> Iterator[list]:
    """Ctrl-C and SIGTERM while Ray starts, where Python code handles them (SIGTERM: the CLI, as a
    Ctrl-C), are held until it has started (``ray.init`` then installs no SIGTERM handler of its
    own, and the 3 s abort alarm of Ray's C++ failure handler is cancelled): cut short, Ray's
    start-up crashes (an abort, a segfault). Yields the list of what was held, ``(handler,
    signal)``; the caller calls each once Ray has started (and shuts Ray down)."""
    import signal
    import threading

    held: list = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    before = {s: h for s, h in before.items() if callable(h)}
    if threading.current_thread() is not threading.main_thread() or not before:
        yield held
        return
    import ray._private.utils as ray_utils

    def hold(signum, frame) -> None:
        getattr(signal, "alarm", abs)(0)  # (Ray's C++ failure handler, if it saw a SIGTERM first, aborts in 3 s)
        held.append((before[signum], signum))

    own = getattr(ray_utils, "set_sigterm_handler", None)
    patch = own is not None and signal.SIGTERM in before
    for s in before:
        signal.signal(s, hold)
    if patch:
        ray_utils.set_sigterm_handler = lambda handler: None
    try:
        yield held
    finally:
        if patch:
            ray_utils.set_sigterm_handler = own
        for s, handler in before.items():
            signal.signal(s, handler)
