"""Fixtures every PIN test module may ask for (a module that defines its own keeps it)."""

from __future__ import annotations

import pytest

from tests.pin.fixtures import write_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """16 drawn scenes at 112 px with an 8x8 grid, 8 a shard (one folder per test module)."""
    d = tmp_path_factory.mktemp("shards")
    write_shards(d, 16, canvas=112, grid=8, per_shard=8)
    return d
