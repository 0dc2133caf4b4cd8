"""Where work runs: one Ray start-up for every stage; errors carried back from other processes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synthgen.errors import CarriedError, ModelLoadError, UserError, recover
from synthgen.executors import run_serial

RAY = str(Path(sys.executable).with_name("ray"))


def _bad_shard(i: int) -> int:
    if i == 1:
        raise UserError(f"shard {i}: bad input")
    if i == 2:
        raise ValueError("a bug\nwith two lines")
    return i * 10


def test_recover_finds_the_user_error_in_wrappers():
    err = ModelLoadError("cannot load the model 'x'")
    try:
        try:
            raise err
        except ModelLoadError as inner:
            raise RuntimeError("stage failed") from inner
    except RuntimeError as outer:
        assert recover(outer) is err
    carried = CarriedError.of(err)
    back = recover(carried)
    assert type(back) is ModelLoadError and str(back) == str(err)
    assert recover(ValueError("x")) is None and recover(None) is None


def test_serial_executor_reports_failures_per_task():
    got = {}
    failures = run_serial(_bad_shard, [(0,), (1,), (2,), (3,)], lambda i, r: got.__setitem__(i, r))
    assert got == {0: 0, 3: 30}
    assert failures == {1: "shard 1: bad input", 2: "ValueError: with two lines"}


@pytest.mark.slow
def test_ray_tasks_carry_user_errors_back(monkeypatch):
    from synthgen.executors import run_ray

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    got = {}
    failures = run_ray(_bad_shard, [(0,), (1,), (2,)], lambda i, r: got.__setitem__(i, r), workers=1)
    assert got == {0: 0}
    assert failures == {1: "shard 1: bad input", 2: "ValueError: with two lines"}


LOCAL = """
import ray
from synthgen.executors import ray_session
with ray_session(1, None, object_store_mb=128):
    print(ray.get_runtime_context().gcs_address)
    print(sorted({n["NodeManagerAddress"] for n in ray.nodes()}))
    print(ray.cluster_resources().get("CPU"))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(RAY), reason="the ray CLI is not installed")
def test_a_local_run_never_joins_a_cluster_running_on_the_machine(tmp_path, cli_env, bank, backgrounds):
    env = dict(cli_env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    head = subprocess.run([RAY, "start", "--head", "--num-cpus", "3", "--disable-usage-stats",
                           "--include-dashboard=false", "--port", "6391"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert head.returncode == 0, head.stderr
    try:
        # without --ray-address: a new instance on loopback with the CPUs asked for (the running
        # 3-CPU cluster is not joined, and there is no "num_cpus must not be provided" crash)
        env_local = {k: v for k, v in cli_env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        r = subprocess.run([sys.executable, "-c", LOCAL], env=env_local, capture_output=True, text=True,
                           timeout=180)
        assert r.returncode == 0, r.stderr
        gcs, nodes, cpus = r.stdout.strip().splitlines()[-3:]
        assert gcs.startswith("127.0.0.1:") and not gcs.endswith(":6391")
        assert nodes == "['127.0.0.1']" and float(cpus) == 1.0
        out = tmp_path / "out"
        r = subprocess.run([sys.executable, "-m", "synthgen", "compose", "--objects", str(bank),
                            "--backgrounds", str(backgrounds), "--out", str(out), "-n", "4",
                            "--samples-per-shard", "2", "--workers", "1"],
                           env=env_local, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert len(list(out.glob("scenes-*.tar"))) == 2
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree("/tmp/ray/ray_current_cluster", ignore_errors=True)
        Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)


def _counting(n: int, fail_at: int | None = None):
    """A progress generator: yields 2, 4, ... items done, returns ``n * 10``."""
    for k in range(1, n + 1):
        if k == fail_at:
            raise UserError(f"item {k}: bad input")
        if k % 2 == 0:
            yield k
    return n * 10


def test_serial_executor_reports_the_progress_of_generator_tasks():
    got, ticks = {}, []
    failures = run_serial(_counting, [(5,), (4, 3)], lambda i, r: got.__setitem__(i, r),
                          on_progress=lambda i, done: ticks.append((i, done)))
    assert got == {0: 50} and failures == {1: "item 3: bad input"}
    assert ticks == [(0, 2), (0, 4), (1, 2)]


@pytest.mark.slow
def test_ray_generator_tasks_stream_their_progress(monkeypatch):
    from synthgen.executors import run_ray

    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    got, ticks = {}, []
    failures = run_ray(_counting, [(6,), (4, 3), (3,)], lambda i, r: got.__setitem__(i, r), workers=2,
                       on_progress=lambda i, done: ticks.append((i, done)))
    assert got == {0: 60, 2: 30} and failures == {1: "item 3: bad input"}
    assert [d for i, d in ticks if i == 0] == [2, 4, 6] and [d for i, d in ticks if i == 2] == [2]
    assert [d for i, d in ticks if i == 1] == [2]


def test_rays_cpp_log_lines_are_dropped_from_the_console_and_the_rest_kept(capfd):
    from synthgen.executors import _ray_console

    with _ray_console():
        os.write(2, b"[2026-12-01 13:03:46,003 E 4017 4017] core_worker.cc:2465: Actor with class name\n")
        os.write(2, b"a line of a library\n[2026-12-01 13:03:46,004 I 1 2] logging.cc:303: Set ray log\n")
        os.write(2, b"[2026-12-01 13:03:46,005 F 1 2] raylet.cc:1: a fatal one stays\n")
        print("through sys.stderr", file=sys.stderr)
    err = capfd.readouterr().err
    assert "core_worker.cc" not in err and "logging.cc" not in err
    assert "a line of a library\n" in err and "a fatal one stays" in err and "through sys.stderr\n" in err
