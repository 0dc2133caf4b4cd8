"""A mistyped command line is one line (issue 19, "first hour"): an unknown option or command, a
missing argument or a value the parser itself refuses ends with ``error: ...`` on stderr, the
closest flag or command when one is close, exit status 2 — not click's box of usage, hint and
message, and never a traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.hostile.conftest import one_line_error


def _synthgen(*args, env=None):
    return subprocess.run([sys.executable, "-m", "synthgen", *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.mark.parametrize("args,needles", [
    (["compose", "--ot", "x"], ["compose: no such option --ot", "(did you mean --out?)"]),
    (["compose", "--ot=x"], ["no such option --ot", "did you mean --out?"]),
    (["compose", "--samples-per-shar", "3"], ["did you mean --samples-per-shard?"]),
    (["train-pin", "shards", "--loader-worker", "2"], ["train-pin: no such option", "did you mean --loader-workers?"]),
    (["composee"], ["no such command 'composee'", "(did you mean compose?)"]),
    (["trian-pin", "x"], ["did you mean train-pin?"]),
    (["eval-pin", "--out", "o"], ["eval-pin: missing argument 'RUN'", "synthgen eval-pin -h"]),
    (["predict", "run"], ["predict: missing argument 'IMAGE'"]),
    (["compose", "--objects", "a", "-n"], ["compose: option '-n' requires an argument"]),
    (["compose", "--masks=yes"], ["option '--masks' does not take a value"]),
    (["predict", "r", "i.jpg", "text", "extra"], ["unexpected extra argument", "extra"]),
])
def test_a_usage_error_is_one_line_with_a_suggestion(args, needles):
    r = _synthgen(*args)
    one_line_error(r, *needles)
    assert r.stdout == ""
    for box in ("╭", "│", "Usage:", "Try '"):
        assert box not in r.stderr, r.stderr


def test_no_suggestion_when_nothing_is_close():
    line = one_line_error(_synthgen("compose", "--zzzzzz", "1"), "compose: no such option --zzzzzz")
    assert "did you mean" not in line and "synthgen compose -h" in line
    line = one_line_error(_synthgen("qqqq"), "no such command 'qqqq'")
    assert "did you mean" not in line


def test_help_version_and_a_bare_command_are_unchanged():
    r = _synthgen("compose", "-h")
    assert r.returncode == 0 and "--out" in r.stdout and r.stderr == ""
    r = _synthgen("--version")
    assert r.returncode == 0 and r.stdout.startswith("synthgen ")
    r = _synthgen("compose")  # no arguments: its help, as before
    assert r.returncode == 2 and "Usage" in r.stdout and "--objects" in r.stdout and "error" not in r.stderr


def test_the_api_of_the_group_keeps_click_non_standalone_mode():
    """Tools that call the command with ``standalone_mode=False`` still get click's exception."""
    import typer

    from synthgen.cli import app

    try:
        from typer._click.exceptions import NoSuchOption
    except ImportError:  # pragma: no cover
        from click.exceptions import NoSuchOption
    with pytest.raises(NoSuchOption):
        typer.main.get_command(app).main(["compose", "--ot", "x"], standalone_mode=False)


def test_cli_runner_sees_the_one_line_too():
    from typer.testing import CliRunner

    from synthgen.cli import app

    r = CliRunner().invoke(app, ["compose", "--ot", "x"])
    assert r.exit_code == 2 and r.output.strip() == "error: compose: no such option --ot (did you mean --out?)"
