"""Odd output paths on every command that writes one file (issue 19, items 1-3 and 10): one
``error:`` line and exit 2 before any work, never a traceback, and nothing written anywhere but
where the user said."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import make_index_bank
from tests.hostile.conftest import CANVAS, GRID, one_line_error, run_cli


@pytest.fixture(scope="module")
def env():
    return dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from tests.pin.fixtures import write_shards

    d = tmp_path_factory.mktemp("shards")
    write_shards(d, 4, canvas=CANVAS, grid=GRID, per_shard=4)
    return d


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _odd_outputs(tmp: Path) -> list[tuple[str, tuple[str, ...]]]:
    (tmp / "adir").mkdir(exist_ok=True)
    (tmp / "afile").write_text("x")
    return [(str(tmp / "x.txt"), ("give a file name ending in",)),
            (str(tmp / "noext"), ("give a file name ending in",)),
            (str(tmp / "adir"), ("give a file name ending in",)),
            (str(tmp / "adir.png"), ()),  # (made a folder below)
            ("/", ("give a file name ending in",)),
            (str(tmp / "afile" / "x.png"), ("which is a file",))]


@pytest.mark.parametrize("command", ["preview", "stats", "predict"])
def test_odd_output_paths_are_one_line_errors(command, shards, trained_run, tmp_path, env):
    work = tmp_path / "work"
    work.mkdir()
    for out, needles in _odd_outputs(work):
        if out.endswith("adir.png"):
            Path(out).mkdir()
            needles = ("is a folder",)
        before = _files(work)
        args = {"preview": ["preview", shards], "stats": ["stats", shards],
                "predict": ["predict", trained_run, next(Path(shards).glob("*.tar")), "cat"]}[command]
        r = run_cli([*args, "-o", out], env, timeout=120)
        one_line_error(r, "--out", *needles)
        assert _files(work) == before, (out, _files(work) - before)


def test_preview_of_a_bank_never_writes_into_the_bank(tmp_path, env):
    bank = make_index_bank(tmp_path / "bank")
    before = _files(bank)
    r = subprocess_in(tmp_path / "elsewhere", ["preview", bank], env)
    assert r.returncode == 0 and (tmp_path / "elsewhere" / "preview.png").is_file(), r.stderr
    assert _files(bank) == before


def subprocess_in(cwd: Path, args, env):
    import subprocess
    import sys

    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "synthgen", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_stats_top_and_preview_size_are_bounded(shards, tmp_path, env):
    one_line_error(run_cli(["stats", shards, "--top", "-1"], env), "--top must be >= 1")
    r = run_cli(["preview", shards, "--scale", "100", "-n", "1", "-o", tmp_path / "big.png"], env)
    one_line_error(r, "megapixels", "lower --scale or -n")
    assert not (tmp_path / "big.png").exists()
