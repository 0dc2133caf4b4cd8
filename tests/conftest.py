"""Shared fixtures: every input is drawn by the test itself (no network, no ../shared)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.helpers import make_backgrounds, make_index_bank

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


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
