"""Ctrl-C and SIGTERM (how schedulers stop jobs) in train-pin: the step in progress ends, a
checkpoint of it is saved and named, and --resume continues from it (issue 19, item 6)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.pin.fixtures import write_shards

CANVAS = 56


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    return build_tiny_blip2(tmp_path_factory.mktemp("vlm") / "tiny-blip2", image_size=CANVAS, lm_steps=0)


def _steps_logged(log) -> int:
    try:
        return sum(1 for line in log.read_text().splitlines() if '"loss"' in line)
    except FileNotFoundError:
        return 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_step_in_progress_and_resume_continues(blip2, tmp_path, sig):
    write_shards(tmp_path / "s", 16, canvas=CANVAS, grid=8, per_shard=8)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "synthgen", "train-pin", str(tmp_path / "s"), "--vlm", "blip2", "--model",
           str(blip2), "--out", str(run), "--steps", "100000", "--batch-size", "2", "--loader-workers", "1",
           "--save-every", "1000", "--log-every", "1", "--hidden", "8,8", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        end = time.monotonic() + 240
        while _steps_logged(run / "log.jsonl") < 3 and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    name = signal.Signals(sig).name
    line = [x for x in err.splitlines() if x.startswith("interrupted:")]
    assert len(line) == 1 and f"{name} at step" in line[0] and "--resume" in line[0], err
    step = int(line[0].split(" at step ")[1].split(":")[0])
    assert step >= 3  # (steps 1..save_every-1 used to be lost)
    assert json.loads((run / "pin.json").read_text())["step"] == step
    assert f"the checkpoint of step {step} is in {run}" in line[0]
    # --resume continues from that checkpoint
    done = subprocess.run([*cmd[:cmd.index("--steps") + 1], str(step + 2), *cmd[cmd.index("--steps") + 2:],
                           "--resume"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming {run} at step {step}" in done.stdout + done.stderr
    assert json.loads((run / "pin.json").read_text())["step"] == step + 2


def test_ctrl_c_message_names_the_command_way_to_go_on():
    from synthgen.cli import _interrupted

    assert _interrupted("train-pin").endswith("re-run the same command with --resume to continue")
    assert "train-pin" not in _interrupted("compose") and _interrupted("compose").endswith("to resume")
