"""What the commands print reads as words (issue 19, "first hour"): counts as ``8 no position``,
examples as a comma list, canvas and grid in words — never a Python ``dict``, ``list`` or tuple repr."""

from __future__ import annotations

import re
import subprocess

from PIL import Image

from tests.helpers import make_backgrounds

REPR = re.compile(r"\{'|\['|\[\(|\(\d+, \d+\)|': ")


def _run(cmd, env):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def test_compose_and_stats_print_words_not_python_reprs(bank, tmp_path, cli_env, synthgen_cmd):
    bg = make_backgrounds(tmp_path / "bg", n=3)
    for i in range(2):  # unreadable backgrounds: the skipped line lists examples
        (bg / f"broken_{i}.jpg").write_bytes(b"not a jpeg")
    Image.new("RGB", (8, 8)).save(bg / "tiny.png")  # too small: another reason
    out = tmp_path / "shards"
    # large objects on a small grid: some find no position (the dropped-objects line)
    text = _run([*synthgen_cmd, "compose", "--objects", bank, "--backgrounds", bg, "--out", out,
                 "--num-samples", 24, "--a-max", 6, "--fixed-count", "--s-min", "0.6,0.6,0.6,0.6,0.6,0.6",
                 "--s-max", "0.9,0.9,0.9,0.9,0.9,0.9", "--workers", 1], cli_env)
    assert "dropped objects: " in text and "no position" in text, text
    assert re.search(r"skipped backgrounds \(\w[\w ]*\): \d+, e\.g\. \S", text), text
    text += _run([*synthgen_cmd, "stats", out], cli_env)
    assert "canvas 224 px with a 16x16 grid" in text, text
    bad = [line for line in text.splitlines() if REPR.search(line)]
    assert not bad, bad
