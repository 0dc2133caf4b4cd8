"""The ``synthgen`` command line: every command of :data:`synthgen.commands.COMMANDS`, made into a
typer command from its option contract (:mod:`.build`), its result printed by :mod:`.present`.

Typer only reads the words; every value then goes through the same :func:`synthgen.commands.build`
as the Python API's, so a command line, a recipe and an API call make the same configuration. The
heavy work is imported when a command runs: ``synthgen --help`` is instant. A
:class:`~synthgen.errors.UserError` ends a command with one line and status 2.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

from synthgen._version import __version__
from synthgen.errors import Interrupted, UserError

F = TypeVar("F", bound=Callable)

app = typer.Typer(
    name="synthgen",
    help=(
        "Synthetic grounding data for vision-language models (PIN, CVPR 2024).\n\n"
        "render: text -> object bank;  compose: objects + backgrounds -> WebDataset scene shards;  "
        "train-pin: shards -> PIN on a frozen VLM."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _interrupted(name: str) -> str:
    """What a Ctrl-C leaves, for the command ``name``."""
    from synthgen.commands import COMMANDS

    cmd = COMMANDS.get(name)
    flag = cmd.resume[0] if cmd is not None and cmd.resume else None
    again = f"re-run the same command with {flag} to continue" if flag else "re-run the same command to resume"
    return f"interrupted: finished work is kept; {again}"


def user_errors(name: str, fn: F) -> F:
    """Turn :class:`UserError` (and a missing optional dependency) into a one-line message and exit
    status 2; Ctrl-C into one line and status 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as exc:  # an optional dependency the core install leaves out
            from synthgen.extras import missing_extra

            error = missing_extra(exc, name)
            if error is None:
                raise
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt as exc:
            typer.secho(f"interrupted: {exc}" if isinstance(exc, Interrupted) else _interrupted(name),
                        fg=typer.colors.YELLOW, err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"synthgen {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


def _register() -> None:
    from synthgen.cli.build import typer_command
    from synthgen.cli.common import readable_help
    from synthgen.commands import COMMANDS

    readable_help()
    for name, cmd in COMMANDS.items():
        bare = not any(o.required or o.argument for o in cmd.options) and cmd.section is None  # (demo)
        app.command(name, help=cmd.help, no_args_is_help=not bare)(
            user_errors(name, typer_command(cmd)))


_register()


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="synthgen")
