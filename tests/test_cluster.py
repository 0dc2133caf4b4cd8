"""Stages on a real two-node Ray cluster on loopback (``--ray-address``): the same bytes as a
local run, a node lost mid-run costs nothing, and token authentication as ``ray start`` sets it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster import LoopbackCluster

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))


def _tars(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("scenes-*.tar"))}


def _compose(bank, backgrounds, out, env, *extra, n=40, per=4, wait=True):
    cmd = [sys.executable, "-m", "synthgen", "compose", "--objects", str(bank), "--backgrounds",
           str(backgrounds), "--out", str(out), "-n", str(n), "--samples-per-shard", str(per),
           "--size", "448", "--masks", *extra]
    if not wait:
        return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, env=env, text=True, capture_output=True, timeout=600)


def _keys(folder: Path) -> list[str]:
    import webdataset as wds

    ds = wds.WebDataset([str(p) for p in sorted(folder.glob("scenes-*.tar"))], shardshuffle=False)
    return [s["__key__"] for s in ds]


@pytest.fixture
def env(cli_env):
    return dict(cli_env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")


def test_compose_on_a_cluster_gives_the_local_bytes_and_survives_a_lost_node(bank, backgrounds, tmp_path,
                                                                             env):
    local = tmp_path / "local"
    r = _compose(bank, backgrounds, local, env, "--workers", "2")
    assert r.returncode == 0, r.stderr
    with LoopbackCluster(env) as cluster:
        assert cluster.address.startswith("127.0.0.1:")
        whole = tmp_path / "cluster"
        r = _compose(bank, backgrounds, whole, env, "--ray-address", cluster.address)
        assert r.returncode == 0, r.stderr
        assert _tars(whole) == _tars(local)

        # lose the worker node once the run is under way: its tasks run again on the head
        lost = tmp_path / "lost"
        proc = _compose(bank, backgrounds, lost, env, "--ray-address", cluster.address, n=80, wait=False)
        deadline = time.time() + 300
        while not list(lost.glob("scenes-*_stats.json")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the node could be lost"
        done_at_kill = len(list(lost.glob("scenes-*_stats.json")))
        cluster.kill_worker()
        assert done_at_kill < 20  # shards were still to run (some of them on the lost node)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    full = tmp_path / "full"
    r = _compose(bank, backgrounds, full, env, "--workers", "2", n=80)
    assert r.returncode == 0, r.stderr
    assert _tars(lost) == _tars(full)  # same bytes, every shard once
    keys = _keys(lost)
    assert keys == sorted(set(keys)) and len(keys) == 80
    assert not [p for p in lost.iterdir() if p.name.startswith(".")]  # no half-written shard left
    manifest = json.loads((lost / "manifest.json").read_text())
    assert manifest["totals"]["samples"] == 80


@pytest.mark.skipif(not os.path.exists(RAY), reason="the ray CLI is not installed")
def test_token_authentication_as_ray_start_sets_it(bank, backgrounds, tmp_path, env):
    head_home, client_home = tmp_path / "head", tmp_path / "client"
    head_home.mkdir()
    client_home.mkdir()
    head_env = dict(env, HOME=str(head_home))
    head_env.pop("RAY_AUTH_MODE", None)
    r = subprocess.run([RAY, "get-auth-token", "--generate"], env=head_env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    token = head_home / ".ray" / "auth_token"
    assert token.is_file()
    r = subprocess.run([RAY, "start", "--head", "--port", "6393", "--num-cpus", "1", "--disable-usage-stats",
                        "--include-dashboard=false"], env=head_env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        client = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
        client["HOME"] = str(client_home)  # no ~/.ray/auth_token of its own
        address = "127.0.0.1:6393"
        t0 = time.time()
        r = _compose(bank, backgrounds, tmp_path / "a", client, "--ray-address", address, n=8)
        assert r.returncode == 2 and time.time() - t0 < 60
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith(f"error: cannot connect to the Ray cluster at {address}: it wants an "
                               "authentication token") and "RAY_AUTH_TOKEN_PATH" in last
        assert "Traceback" not in r.stderr

        r = _compose(bank, backgrounds, tmp_path / "b", dict(client, RAY_AUTH_TOKEN="0" * 32),
                     "--ray-address", address, n=8)
        assert r.returncode == 2 and "the token from RAY_AUTH_TOKEN was refused" in r.stderr

        r = _compose(bank, backgrounds, tmp_path / "c", dict(client, RAY_AUTH_TOKEN_PATH=str(token)),
                     "--ray-address", address, n=8)
        assert r.returncode == 0, r.stderr
        assert len(list((tmp_path / "c").glob("scenes-*.tar"))) == 2

        # nothing listening: a one-line error at once, not Ray's minute of retries
        t0 = time.time()
        r = _compose(bank, backgrounds, tmp_path / "d", client, "--ray-address", "127.0.0.1:6394", n=8)
        assert r.returncode == 2 and "nothing answers there" in r.stderr and time.time() - t0 < 30
    finally:
        subprocess.run([RAY, "stop", "--force"], env=head_env, capture_output=True, timeout=120)
        shutil.rmtree("/tmp/ray/ray_current_cluster", ignore_errors=True)
        Path("/tmp/ray/ray_current_cluster").unlink(missing_ok=True)


def test_render_on_a_cluster_gives_the_local_bank(tmp_path, env, monkeypatch):
    from synthgen.demo.tiny_render import build_tiny_models

    monkeypatch.setenv("REMBG_HOME", str(tmp_path / "rembg"))  # where the tiny cut-out net goes
    monkeypatch.delenv("U2NET_HOME", raising=False)
    tiny = build_tiny_models(tmp_path / "models")
    env = dict(env, REMBG_HOME=str(tmp_path / "rembg"))  # ... and where the nodes' workers find it
    env.pop("U2NET_HOME", None)
    names = tmp_path / "names.txt"
    names.write_text("cat\nbow_(weapon)\n")

    def render(out, *extra):
        cmd = [sys.executable, "-m", "synthgen", "render", "--categories", str(names), "--out", str(out),
               "--per-category", "2", "--batch-size", "2", "--min-per-category", "1", *tiny.as_cli_args(),
               *extra]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout + r.stderr
        index = (out / "index.jsonl").read_text()
        return index, {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*.png"))}

    local = render(tmp_path / "local", "--workers", "2", "--object-store-mb", "200")
    with LoopbackCluster(env) as cluster:
        remote = render(tmp_path / "remote", "--ray-address", cluster.address)
    assert len(local[1]) >= 2 and remote == local
