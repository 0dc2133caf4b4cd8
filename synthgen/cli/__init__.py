"""The ``synthgen`` command line: a thin layer over each stage's config and driver.

Each stage registers its commands from a light module (:mod:`.render`, :mod:`.compose`,
:mod:`.pin`, :mod:`.demo`) that imports typer and the stage's config dataclasses (whose defaults
the options show); the heavy work is imported inside the command body, so ``synthgen --help``
is instant. A :class:`~synthgen.errors.UserError` ends a command with one line and status 2.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

import typer

from synthgen._version import __version__
from synthgen.errors import UserError

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


def _refuse_urls_in_local_paths(kwargs: dict) -> None:
    """Options typed as local paths (recipes, plots, the demo, import-pin/export-pin) cannot take a
    URL: ``Path("s3://b/x")`` is ``s3:/b/x``, which would quietly become a local folder ``s3:``."""
    import re
    from pathlib import PurePath

    for name, value in kwargs.items():
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, PurePath) and re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", str(v)):
                url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/+", r"\1://", str(v))
                raise UserError(f"--{name.replace('_', '-')} takes a local path, not the URL {url}; "
                                "copy the file to a local disk first")


def user_errors(fn: F) -> F:
    """Turn :class:`UserError` into a one-line message and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            _refuse_urls_in_local_paths(kwargs)
            return fn(*args, **kwargs)
        except UserError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except ModuleNotFoundError as exc:  # an optional dependency the core install leaves out
            from synthgen.extras import missing_extra

            error = missing_extra(exc, fn.__name__.removesuffix("_cmd").replace("_", "-"))
            if error is None:
                raise
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.secho("interrupted: finished work is kept; re-run the same command to resume (train-pin: with --resume)",
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
    from synthgen.cli import compose, demo, pin, pin_io, render, run
    from synthgen.cli.common import readable_help

    readable_help()

    for stage in (render, compose, pin, pin_io, run, demo):
        stage.register(app, user_errors)
    run.register_prefetch(app, user_errors)


_register()


def main(argv: list[str] | None = None) -> None:
    app(args=argv if argv is not None else sys.argv[1:], prog_name="synthgen")
