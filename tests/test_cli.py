"""The command line as a user meets it: help, lazy imports, recipes, the demo's inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from synthgen.bank import CutOut, ObjectBank


def test_help_is_light_and_lists_commands(cli_env):
    code = ("import sys, synthgen.cli as c\n"
            "heavy = [m for m in ('torch', 'ray', 'diffusers', 'rembg', 'transformers', 'open_clip') if m in sys.modules]\n"
            "print(heavy)")
    r = subprocess.run([sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"
    r = subprocess.run([sys.executable, "-m", "synthgen", "--help"], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("compose", "preview", "stats", "demo"):
        assert cmd in r.stdout


def test_every_compose_option_has_help(cli_env):
    r = subprocess.run([sys.executable, "-m", "synthgen", "compose", "--help"], env=cli_env,
                       capture_output=True, text=True, check=True)
    import re

    opts = set(re.findall(r"--[a-z][a-z-]+", r.stdout))
    for opt in ("--a-max", "--s-min", "--s-max", "--o-max", "--size", "--grid", "--same-category-p",
                "--background-fit", "--masks", "--samples-per-shard", "--seed", "--workers",
                "--ray-address", "--recipe", "--fixed-count", "--absolute-referral-p"):
        assert opt in opts


def test_recipe_sets_defaults_and_command_line_wins(bank, backgrounds, tmp_path, cli_env, synthgen_cmd):
    rec = tmp_path / "r.yaml"
    rec.write_text("compose:\n  num_samples: 5\n  a_max: 2\n  s_min: [0.5, 0.4]\n  s_max: [1, 1]\n  seed: 3\n")
    out = tmp_path / "out"
    r = subprocess.run(synthgen_cmd + ["compose", "--recipe", str(rec), "--objects", str(bank),
                                       "--backgrounds", str(backgrounds), "--out", str(out),
                                       "--seed", "9", "--executor", "serial"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["num_samples"] == 5 and run["params"]["layout"]["a_max"] == 2
    assert run["params"]["layout"]["s_min"] == [0.5, 0.4] and run["params"]["seed"] == 9
    for text, needle in (("a_max: three", "compose.a_max"), ("o_max: null", "has no value"),
                         ("num_samples: 10.5", "compose.num_samples"), ("executor: serial", "unknown option")):
        bad = tmp_path / "typed.yaml"
        bad.write_text(f"compose:\n  {text}\n")
        r = subprocess.run(synthgen_cmd + ["compose", "--recipe", str(bad), "--objects", str(bank),
                                           "--backgrounds", str(backgrounds), "--out", str(tmp_path / "o3")],
                           env=cli_env, capture_output=True, text=True)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (text, r.stderr)
    rec.write_text("compose:\n  num_samples: 2\n  masks: 'no'\n")
    out4 = tmp_path / "o4"
    r = subprocess.run(synthgen_cmd + ["compose", "--recipe", str(rec), "--objects", str(bank),
                                       "--backgrounds", str(backgrounds), "--out", str(out4), "--executor", "serial"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 0 and json.loads((out4 / "run.json").read_text())["params"]["masks"] is False
    bad = tmp_path / "bad.yaml"
    bad.write_text("compose:\n  a_maxx: 2\n")
    r = subprocess.run(synthgen_cmd + ["compose", "--recipe", str(bad), "--objects", str(bank),
                                       "--backgrounds", str(backgrounds), "--out", str(tmp_path / "o2")],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown option(s)" in r.stderr and "a_maxx" in r.stderr


def test_paper_recipe_is_valid(tmp_path):
    from pathlib import Path

    from synthgen.recipes import load_recipe

    rec = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "pin-paper.yaml", "compose")
    assert rec["a_max"] == 3 and rec["o_max"] == 0.5 and rec["s_min"] == [0.3, 0.2, 0.1]


def test_demo_bank_is_cut_out_from_skimage(tmp_path):
    pytest.importorskip("skimage")
    from synthgen.demo import build_demo_backgrounds, build_demo_bank

    bank = ObjectBank.open(build_demo_bank(tmp_path / "objects"))
    assert {"coin", "horse", "cat", "coffee cup"} <= set(bank.categories)
    assert len(bank.by_category[bank.categories.index("coin")]) >= 10
    for i in range(len(bank)):
        cut = bank.load(i)
        assert isinstance(cut, CutOut)
        alpha = cut.rgba[..., 3]
        assert 0.2 < (alpha > 0).mean() <= 1.0
    assert len(list(build_demo_backgrounds(tmp_path / "bg").glob("*.jpg"))) >= 5
