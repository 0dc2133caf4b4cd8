"""The run-folder layer: locks across processes, stale temporaries, settings identity."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from synthgen.errors import UserError
from synthgen.schema import LOCK_FILE
from synthgen.storage import RunFolder, atomic_write, identity_diff, remove_stale_temps, temp_path

HOLD = """
import sys, time
from synthgen.storage import RunFolder
with RunFolder(sys.argv[1], "compose"):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def _holder(folder, cli_env):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=cli_env, text=True,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_run_on_a_locked_folder_is_refused_and_the_lock_file_goes(tmp_path, cli_env):
    out = tmp_path / "out"
    holder = _holder(out, cli_env)
    try:
        assert (out / LOCK_FILE).exists()
        with pytest.raises(UserError, match=f"another synthgen render is using {out}"):
            with RunFolder(out, "render"):
                pass
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0 and not (out / LOCK_FILE).exists()
    with RunFolder(out, "render") as f:  # free again
        assert (out / LOCK_FILE).exists() and f.path == out
    assert not (out / LOCK_FILE).exists()


def test_a_killed_holder_leaves_a_lock_file_that_does_not_block(tmp_path, cli_env):
    out = tmp_path / "out"
    holder = _holder(out, cli_env)
    holder.kill()
    holder.wait()
    assert (out / LOCK_FILE).exists()  # kill -9: no clean-up, but the kernel dropped the flock
    with RunFolder(out, "compose"):
        pass
    assert not (out / LOCK_FILE).exists()


def test_stale_temporaries_are_removed_only_by_the_lock_holder(tmp_path, cli_env):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").mkdir()
    stale = temp_path(out / "scenes-000000.tar")
    stale.write_bytes(b"half")
    deep = temp_path(out / "sub" / "x.png")
    deep.write_bytes(b"half")
    holder = _holder(out, cli_env)  # (the holder cleaned the top level when it locked)
    stale.write_bytes(b"the holder's own temporary")
    try:
        with pytest.raises(UserError):
            with RunFolder(out, "compose"):
                pass
        assert stale.exists() and deep.exists()  # a refused run deletes nothing
    finally:
        holder.communicate("\n", timeout=30)
    with RunFolder(out, "render", clean="recursive"):
        assert not stale.exists() and not deep.exists()
    assert remove_stale_temps(tmp_path / "missing") == 0


def test_folder_errors_are_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        with RunFolder(tmp_path / "file", "compose"):
            pass
    with pytest.raises(UserError, match="cannot be created"):
        with RunFolder(tmp_path / "file" / "sub", "compose"):
            pass
    with pytest.raises(UserError, match="--out is empty"):
        with RunFolder("", "compose"):
            pass


def test_identity_is_recorded_then_enforced(tmp_path):
    ident = {"num_samples": 10, "params": {"layout": {"a_max": 3}, "seed": 0}, "name": "x"}
    with RunFolder(tmp_path / "o", "compose") as f:
        f.check_identity("run.json", ident)
    assert json.loads((tmp_path / "o" / "run.json").read_text()) == ident
    with RunFolder(tmp_path / "o", "compose") as f:
        f.check_identity("run.json", dict(ident))  # the same: fine
        changed = {"num_samples": 12, "params": {"layout": {"a_max": 2}, "seed": 0}, "name": "y"}
        with pytest.raises(UserError) as exc:
            f.check_identity("run.json", changed)
    msg = str(exc.value)
    for part in ("num_samples 10 -> 12", "params.layout.a_max 3 -> 2", "name 'x' -> 'y'"):
        assert part in msg, msg
    assert "seed" not in msg and "other options" in msg
    with RunFolder(tmp_path / "p", "render") as f:
        f.check_identity("cfg.json", ident, record=False)
        assert not (tmp_path / "p" / "cfg.json").exists()
        f.record_identity("cfg.json", ident)
        f.record_identity("cfg.json", {"other": 1})  # never overwrites
    assert json.loads((tmp_path / "p" / "cfg.json").read_text()) == ident


def test_identity_diff_labels_and_keys():
    assert identity_diff({"seed": 0, "lr": 1}, {"seed": 5, "lr": 1}, {"seed": "--seed"}) == ["--seed 0 -> 5"]
    assert identity_diff({"a": 1, "b": 2}, {"a": 2, "b": 3}, keys=["b"]) == ["b 2 -> 3"]


def test_atomic_write_leaves_no_temporary(tmp_path):
    atomic_write(tmp_path / "a" / "f.json", "{}")
    assert (tmp_path / "a" / "f.json").read_text() == "{}"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["f.json"]


def test_a_clean_exit_removes_the_temporaries_of_writers_that_died(tmp_path):
    from synthgen.storage import RunFolder, temp_path

    out = tmp_path / "out"
    with RunFolder(out, "compose"):
        dead = temp_path(out / "scenes-000003.tar")   # a task of a lost node, retried elsewhere
        dead.write_bytes(b"half a shard")
        (out / "scenes-000003.tar").write_bytes(b"the retried shard")
    assert not dead.exists() and (out / "scenes-000003.tar").read_bytes() == b"the retried shard"
    try:
        with RunFolder(out, "compose"):
            dead.write_bytes(b"half a shard")
            raise KeyboardInterrupt
    except KeyboardInterrupt:
        pass
    assert not dead.exists()  # an interrupted run removes its own temporaries as it stops (issue 19, item 11)
