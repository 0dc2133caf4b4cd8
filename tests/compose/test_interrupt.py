"""What an interrupted compose leaves (issue 19, item 11): Ctrl-C or SIGTERM ends it with one line
and status 130, its hidden temporaries and its lock removed, and a re-run finishes with the bytes
of an uninterrupted run; ``kill -9`` of a driver that started a local Ray leaves no process of that
Ray session behind (its dashboard and runtime-env agents used to stay a minute)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthgen.schema import LOCK_FILE
from tests.helpers import make_backgrounds, make_index_bank


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return make_index_bank(root / "bank"), make_backgrounds(root / "bg")


@pytest.fixture(scope="module")
def env():
    return dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0",
                PYTHONPATH=str(Path(__file__).resolve().parents[2]))


def _args(inputs, out, n=240, *extra):
    return [sys.executable, "-m", "synthgen", "compose", "--objects", str(inputs[0]), "--backgrounds",
            str(inputs[1]), "-n", str(n), "--samples-per-shard", "12", "--masks", "--out", str(out), *extra]


def _outputs(folder: Path) -> dict[str, bytes]:
    """The scene shards and their indexes (the stats hold timings)."""
    return {p.name: p.read_bytes() for p in sorted(folder.glob("scenes-*")) if not p.name.endswith("_stats.json")}


def _wait(cond, timeout: float, proc=None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def reference(inputs, env, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "out"
    r = subprocess.run(_args(inputs, out, 240, "--executor", "serial"), env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return _outputs(out)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupt_removes_the_runs_temporaries_and_a_rerun_gives_the_same_bytes(inputs, env, reference,
                                                                                     tmp_path, sig):
    out = tmp_path / "out"
    cmd = _args(inputs, out, 240, "--executor", "serial")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # a shard done and the next one being written (its hidden temporary exists)
        started = _wait(lambda: list(out.glob("*_stats.json")) and list(out.glob(".scenes-*.synthgen-tmp")), 120,
                        proc)
        assert started, proc.communicate()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if "━" not in ln and not ln.startswith(("objects:", "backgr"))]
    assert lines == ["interrupted: finished work is kept; re-run the same command to resume"], err
    assert not list(out.glob("*.synthgen-tmp")) and not (out / LOCK_FILE).exists(), sorted(os.listdir(out))
    done = len(list(out.glob("*_stats.json")))
    assert 1 <= done < 20, "the run must be stopped in the middle"
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert _outputs(out) == reference
    assert not list(out.glob("*.synthgen-tmp"))


# --- a local Ray after kill -9 of its driver ------------------------------------------------

def _session_processes(driver: int) -> dict[int, bytes]:
    """Processes of the Ray session the driver ``driver`` started (``session_..._{pid}``: each
    holds a file in it, or names it), and its watchdog: pid -> command line."""
    session = re.compile(rf"/session_[^/]*_{driver}(/|$)")
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) in (os.getpid(), driver):
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
            args = cmdline.split(b"\0")
            if b"SYNTHGEN_RAY_SESSION=" in cmdline and str(driver).encode() in args:
                found[int(d.name)] = cmdline  # the watchdog of that driver
            elif session.search(cmdline.decode(errors="replace")) or any(
                    session.search(os.readlink(f)) for f in (d / "fd").iterdir()):
                found[int(d.name)] = cmdline
        except OSError:
            continue
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_kill_9_of_the_driver_leaves_no_process_of_its_ray_session(inputs, env, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_args(inputs, out, 2400, "--executor", "ray", "--workers", "2"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    leftovers: dict[int, bytes] = {}
    try:
        # Ray is up and its tasks run: every process of the session has started
        assert _wait(lambda: list(out.glob("*_stats.json")), 240, proc), "compose did not start"
        before = _session_processes(proc.pid)
        assert any(c.startswith(b"ray::") for c in before.values()), before  # (the check sees Ray's processes)
        assert sum(b"Agent" in c for c in before.values()) == 2, before  # the dashboard and runtime-env agents
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait(lambda: not _session_processes(proc.pid), 20)
        leftovers = _session_processes(proc.pid)
        assert leftovers == {}, "left 20 s after kill -9: " + ", ".join(
            c.split(b"\0")[0].decode(errors="replace") for c in leftovers.values())
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in {**leftovers, **_session_processes(proc.pid)}:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads /proc")
def test_a_finished_ray_run_leaves_no_process(inputs, env, tmp_path):
    proc = subprocess.Popen(_args(inputs, tmp_path / "out", 24, "--executor", "ray", "--workers", "2"), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    try:
        assert _wait(lambda: not _session_processes(proc.pid), 10), _session_processes(proc.pid)
    finally:
        for pid in _session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)
