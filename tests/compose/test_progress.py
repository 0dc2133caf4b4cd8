"""compose's console: a bar per scene with its rate, and no Ray log lines, through the CLI."""

from __future__ import annotations

import re
import subprocess

import pytest

# what Ray's own logging looks like on a console: C++ log lines, the raylet's and Python's
RAY_LINES = re.compile(r"core_worker\.cc|logging\.cc|\.cc:\d+:|\(raylet\)|^\[\d{4}-\d\d-\d\d .*\] |"
                       r"(INFO|WARNING|ERROR) \S+\.py:\d+ --|Started a local Ray instance|ray\.init\(\) again",
                       re.MULTILINE)


def _compose(synthgen_cmd, cli_env, bank, backgrounds, out, *extra):
    args = ["compose", "--objects", str(bank), "--backgrounds", str(backgrounds), "--out", str(out),
            "-n", "24", "--samples-per-shard", "8", *extra]
    return subprocess.run(synthgen_cmd + args, env=cli_env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_compose_console_has_progress_and_summary_and_no_ray_lines(bank, backgrounds, tmp_path, cli_env,
                                                                     synthgen_cmd):
    env = dict(cli_env, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0")
    r = _compose(synthgen_cmd, env, bank, backgrounds, tmp_path / "out", "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert not RAY_LINES.search(r.stderr), r.stderr
    assert not RAY_LINES.search(r.stdout), r.stdout
    assert re.search(r"^compose\s.*24/24 scenes [\d.]+ scenes/s", r.stderr, re.MULTILINE), r.stderr
    assert "done: 24 scenes" in r.stderr

    # a resumed run's bar starts at the scenes already done (its total is the dataset's)
    (tmp_path / "out" / "scenes-000001_stats.json").unlink()
    (tmp_path / "out" / "manifest.json").unlink()
    r = _compose(synthgen_cmd, env, bank, backgrounds, tmp_path / "out", "--executor", "serial")
    assert r.returncode == 0 and re.search(r"^compose\s.*24/24 scenes", r.stderr, re.MULTILINE), r.stderr

    # a broken input still ends in its one-line error, and Ray adds no log line of its own
    broken = tmp_path / "broken"
    (broken / "scenes-000001.tar").mkdir(parents=True)  # the shard's final rename cannot succeed
    r = _compose(synthgen_cmd, env, bank, backgrounds, broken, "--workers", "2")
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 of 3 shard(s) failed (scenes-000001.tar: IsADirectoryError" in errors[0]
    assert not re.search(r"core_worker\.cc|logging\.cc", r.stderr + r.stdout)
    assert re.search(r"^compose\s.*16/24 scenes", r.stderr, re.MULTILINE), r.stderr  # its scenes are not done
