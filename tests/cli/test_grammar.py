"""One CLI grammar across every command: outputs are --out/-o, -n is a number of scenes,
--workers are Ray CPUs (train-pin's DataLoader processes are --loader-workers), inputs of one kind
are positional, metavars read as words, and a help text is not copied where it does not apply."""

from __future__ import annotations

import re

import pytest
import typer
from typer.testing import CliRunner

from synthgen.cli import app

COMMANDS = typer.main.get_command(app).commands
# commands that write files (prefetch fills the model caches, not a path of yours)
WRITERS = {"render", "bank-from-annotations", "compose", "prepare-backgrounds", "prepare-objects", "preview", "stats", "export-coco", "export",
           "train-pin", "eval-pin", "predict", "import-pin", "export-pin", "run", "demo", "demo-data", "table"}


def _help(name: str) -> str:
    r = CliRunner().invoke(app, [name, "--help"], env={"COLUMNS": "220", "TERM": "dumb", "NO_COLOR": "1"})
    assert r.exit_code == 0, r.output
    return r.output


def test_every_command_is_covered():
    assert set(COMMANDS) == WRITERS | {"prefetch"}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_reads_as_words(name):
    text = _help(name)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    assert "...." not in usage, usage  # a metavar that already ends in ... doubles it
    assert not re.search(r"<(bool|int|str|float|path)>", text), "typer's <type> labels leaked into the help"
    for p in COMMANDS[name].params:
        if p.param_type_name == "argument":
            shown = p.metavar or p.name
            assert shown == shown.upper(), f"{name}: argument {shown} is not written as a metavar"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_outputs_are_out_and_o(name):
    params = COMMANDS[name].params
    assert not [p.name for p in params if p.name in ("plot", "output", "save", "dest", "out_dir")]
    outs = [p for p in params if p.name == "out"]
    if name in WRITERS:
        assert outs and "--out" in outs[0].opts and "-o" in outs[0].opts, f"{name}: its output is not --out/-o"
    else:
        assert not outs


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_short_options_mean_one_thing(name):
    for p in COMMANDS[name].params:
        if "-n" in p.opts:
            assert p.name in ("num_samples", "n") and "scene" in (p.help or "").lower(), f"{name}: -n is {p.name}"
        if "-w" in p.opts or "--workers" in p.opts:
            assert p.name == "workers" and "Ray" in (p.help or ""), f"{name}: --workers must be Ray CPUs"
        if "-o" in p.opts:
            assert p.name == "out"


def test_train_pin_names_its_loader_workers_apart_from_ray_cpus():
    opts = {o for p in COMMANDS["train-pin"].params for o in p.opts}
    assert "--loader-workers" in opts and "--workers" not in opts


def test_run_bound_help_is_not_the_training_one():
    """--model of eval-pin/predict loads the run's VLM from elsewhere: no list of defaults there."""
    train = next(p.help for p in COMMANDS["train-pin"].params if p.name == "model")
    for name in ("eval-pin", "predict"):
        model = next(p.help for p in COMMANDS[name].params if p.name == "model")
        assert model != train and "Salesforce/blip2" not in model and "run" in model
