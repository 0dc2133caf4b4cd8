"""The command line as a user meets it: help, lazy imports, recipes, the demo's inputs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from synthgen.bank.reader import CutOut, ObjectBank


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
    r = subprocess.run([sys.executable, "-m", "synthgen", "compose", "--help"], env=dict(cli_env, COLUMNS="200"),
                       capture_output=True, text=True, check=True)
    import re

    opts = set(re.findall(r"--[a-z][a-z-]+", r.stdout))
    for opt in ("--a-max", "--s-min", "--s-max", "--o-max", "--size", "--grid", "--same-category-p",
                "--background-fit", "--masks", "--samples-per-shard", "--seed", "--workers",
                "--ray-address", "--recipe", "--fixed-count", "--absolute-referral-p", "--repeat-rule",
                "--object-sampling", "--strip-qualifiers", "--paste", "--paste-alpha"):
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

    rec = load_recipe(Path(__file__).resolve().parents[2] / "recipes" / "pin-paper.yaml", "compose")
    assert rec["a_max"] == 3 and rec["o_max"] == 0.5 and rec["s_min"] == [0.3, 0.2, 0.1]


def test_demo_bank_is_cut_out_from_skimage(tmp_path):
    pytest.importorskip("skimage")
    from synthgen.demo.data import build_demo_backgrounds, build_demo_bank

    bank = ObjectBank.open(build_demo_bank(tmp_path / "objects"))
    assert {"coin", "horse", "cat", "coffee cup"} <= set(bank.categories)
    assert len(bank.by_category[bank.categories.index("coin")]) >= 10
    for i in range(len(bank)):
        cut = bank.load(i)
        assert isinstance(cut, CutOut)
        alpha = cut.rgba[..., 3]
        assert 0.2 < (alpha > 0).mean() <= 1.0
    assert len(list(build_demo_backgrounds(tmp_path / "bg").glob("*.jpg"))) >= 5


def _params(command: str) -> dict:
    import typer

    from synthgen.cli import app

    return {p.name: p for p in typer.main.get_command(app).commands[command].params}


def test_option_defaults_come_from_the_config_dataclasses_and_the_help_shows_them():
    import dataclasses

    from synthgen.commands import COMMANDS
    from synthgen.commands.shared import csv
    from synthgen.compose.config import ComposeParams, LayoutParams
    from synthgen.pin.training.config import TrainConfig
    from synthgen.render.config import RenderConfig

    def defaults(cls):
        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}

    for command, classes in (("compose", (LayoutParams, ComposeParams)), ("render", (RenderConfig,)),
                             ("train-pin", (TrainConfig,))):
        cmd, params = COMMANDS[command], _params(command)
        checked = 0
        for cls in classes:
            for name, value in defaults(cls).items():
                if name in {o.name for o in cmd.options} and name not in ("out",):
                    assert cmd.option(name).default == value, (command, name, cmd.option(name).default, value)
                    if name in params and not getattr(params[name], "is_flag", False):  # what --help shows
                        shown = params[name].default
                        want = None if value in (None, ()) else csv(value) if isinstance(value, tuple) else str(value)
                        assert shown == want, (name, shown, want)
                    checked += 1
        assert checked >= 10, (command, checked)
        for p in params.values():  # every option explains itself
            assert p.param_type_name == "argument" or (p.help or "").strip(), (command, p.name)


def test_render_and_train_recipes_set_defaults(tmp_path, cli_env, synthgen_cmd):
    """--recipe works for render and train-pin as for compose: values reach the run's config
    (seen in the error a bad value gives), unknown keys and wrong types are one-line errors."""
    names = tmp_path / "names.txt"
    names.write_text("cat\n")
    rec = tmp_path / "r.yaml"
    rec.write_text("render:\n  per_category: 4\n  min_per_category: 9\ntrain:\n  steps: 0\n")
    r = subprocess.run(synthgen_cmd + ["render", "--categories", str(names), "--out", str(tmp_path / "b"),
                                       "--recipe", str(rec)], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "--per-category 4 is below --min-per-category 9" in r.stderr, r.stderr
    r = subprocess.run(synthgen_cmd + ["render", "--categories", str(names), "--out", str(tmp_path / "b"),
                                       "--recipe", str(rec), "--min-per-category", "2", "--size", "12"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "--size must be a multiple of 8" in r.stderr  # CLI wins over recipe
    assert not (tmp_path / "b").exists()
    shards = tmp_path / "shards"
    from tests.pin.fixtures import write_shards

    write_shards(shards, 2, canvas=64, grid=4)
    r = subprocess.run(synthgen_cmd + ["train-pin", str(shards), "--out", str(tmp_path / "run"),
                                       "--recipe", str(rec)], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "--steps must be >= 1" in r.stderr and "Traceback" not in r.stderr, r.stderr
    rec.write_text("train:\n  stepz: 3\n")
    r = subprocess.run(synthgen_cmd + ["train-pin", str(shards), "--recipe", str(rec)],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "unknown option(s) in `train:`: stepz" in r.stderr
    rec.write_text("render:\n  steps: many\n")
    r = subprocess.run(synthgen_cmd + ["render", "--categories", str(names), "--out", str(tmp_path / "b"),
                                       "--recipe", str(rec)], env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "render.steps" in r.stderr


HOLD = """
import sys
from synthgen.storage import RunFolder
with RunFolder(sys.argv[1], sys.argv[2]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_render_and_train_pin_refuse_a_folder_another_run_uses(tmp_path, cli_env, synthgen_cmd):
    from tests.pin.fixtures import write_shards

    names = tmp_path / "names.txt"
    names.write_text("cat\n")
    shards = tmp_path / "shards"
    write_shards(shards, 2, canvas=64, grid=4)
    for stage, folder, cmd in (
            ("render", tmp_path / "bank", ["render", "--categories", str(names), "--per-category", "1",
                                            "--min-per-category", "1", "--out", str(tmp_path / "bank")]),
            ("train-pin", tmp_path / "run", ["train-pin", str(shards), "--out", str(tmp_path / "run"),
                                              "--model", str(tmp_path / "no-such-model")])):
        holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), stage], env=cli_env, text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert holder.stdout.readline().strip() == "locked"
            r = subprocess.run(synthgen_cmd + cmd, env=cli_env, capture_output=True, text=True)
            assert r.returncode == 2, r.stderr
            assert r.stderr.strip() == f"error: another synthgen {stage} is using {folder}; wait for it " \
                                       "to finish or use another --out", r.stderr
        finally:
            holder.communicate("\n", timeout=30)
        assert not any(folder.iterdir())  # the refused run wrote nothing, the holder's lock is gone
