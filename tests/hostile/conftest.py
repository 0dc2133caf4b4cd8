"""Fixtures of the hostile-input suite: a tiny BLIP-2, clean shards, a trained run, and helpers
to run synthgen as a user would (one line on stderr, exit 2, never a traceback)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

CANVAS, GRID = 112, 8


def run_cli(args, env, timeout=300):
    """``python -m synthgen ARGS``; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "synthgen", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(r, *needles):
    """The run failed with exit 2 and one ``error:`` line holding every needle, no traceback
    (a progress bar's last state may stand above it: drawn with ━, or at 0 a bare ``0/N unit``)."""
    lines = [ln for ln in r.stderr.strip().splitlines()
             if ln.strip() and "━" not in ln and not re.match(r"\S.* 0/\d+ \S", ln)]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    return build_tiny_blip2(tmp_path_factory.mktemp("vlm") / "tiny-blip2", image_size=CANVAS, lm_steps=20)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_vlm):
    """A run folder of a 2-step train-pin on clean shards (for eval-pin / predict)."""
    import os

    from tests.pin.fixtures import write_shards

    root = tmp_path_factory.mktemp("trained")
    write_shards(root / "shards", 8, canvas=CANVAS, grid=GRID, per_shard=4)
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    r = run_cli(["train-pin", root / "shards", "--model", tiny_vlm, "--out", root / "run", "--steps", "2",
                 "--batch-size", "4", "--loader-workers", "0", "--hidden", "16,16", "--no-progress"], env)
    assert r.returncode == 0, r.stderr
    return root / "run"
