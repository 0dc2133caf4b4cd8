"""Shared fixtures: every input is drawn by the test itself (no network, no ../shared)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import make_backgrounds, make_index_bank

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray's raylet warns every 10 s, as a "(raylet)" console line, while the disk of its temp folder is
# over 95% full (a CI machine can be), and tests check the console: the tests never fill a disk, so
# its check is off for every Ray they start (1 turns it off; it reads RAY_<name> at start).
os.environ["RAY_local_fs_capacity_threshold"] = "1"


@pytest.fixture
def bank(tmp_path) -> Path:
    return make_index_bank(tmp_path / "bank")


@pytest.fixture
def backgrounds(tmp_path) -> Path:
    return make_backgrounds(tmp_path / "bg")


@pytest.fixture
def cli_env():
    """Environment for running ``python -m synthgen`` as a user would."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


@pytest.fixture
def synthgen_cmd():
    return [sys.executable, "-m", "synthgen"]
