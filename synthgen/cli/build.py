"""A typer command made from a command's option contract.

Typer (click) only splits the words: every option is read as text (switches as booleans) and
converted by its own :meth:`~synthgen.commands.core.Option.convert` in
:func:`synthgen.commands.build`, like a recipe entry or a Python API keyword. What the user typed
is told apart from the defaults by click's parameter source, so a recipe fills only what the
command line left out.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, List, Optional

import typer

from synthgen.commands import Command, Option, resolve
from synthgen.commands.core import call
from synthgen.commands.shared import csv

METAVARS = {"int": "INT", "float": "FLOAT", "str": "TEXT", "names": "TEXT", "path": "PATH", "floats": "LIST",
            "ints": "LIST", "strs": "LIST", "pairs": "KEY=VALUE"}


def _shown(o: Option) -> str | None:
    """The default as ``--help`` shows it. Only shown: what the user did not type is resolved
    from the option's own default (or a recipe), never from this text."""
    if o.shown is not None:
        return o.shown or None
    if o.default is None:
        return None
    return csv(o.default) if isinstance(o.default, tuple) else str(o.default)


def _parameter(o: Option) -> inspect.Parameter:
    """``name: TYPE = typer.Option(...)`` (or ``typer.Argument``) for ``o``."""
    if o.kind == "bool":
        annotation: Any = bool
        info = typer.Option(o.default, f"{o.flag}/{o.off_flag}" if o.off_flag else o.flag,
                            *(f for f in o.spellings if f != o.flag), help=o.help)
    else:
        annotation = Optional[List[str]] if o.multiple else Optional[str]
        metavar = o.metavar or (o.name.upper() if o.argument else METAVARS[o.kind])
        required = o.required and not o.recipe  # a recipe may still give it: checked once resolved
        default = ... if required else None if o.multiple else _shown(o)
        if o.argument:
            info = typer.Argument(default, metavar=metavar, help=o.help)
        else:
            info = typer.Option(default, *o.spellings, metavar=metavar, help=o.help)
    return inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation)


def typer_command(cmd: Command) -> Callable:
    """The function typer registers for ``cmd``: it resolves what was typed, builds the command's
    call and hands it to the command's printer (:mod:`synthgen.cli.present`)."""
    options = [o for o in cmd.options if o.cli]

    def command(ctx: typer.Context, **typed: Any) -> None:
        from synthgen.cli.present import PRINTERS

        values = resolve(cmd, _typed(ctx, typed))
        PRINTERS[cmd.name](call(cmd, values), values)

    ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    params = [ctx_param, *(_parameter(o) for o in options)]
    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__name__ = cmd.name.replace("-", "_")
    command.__doc__ = cmd.help
    return command


def call_of(cmd: Command, argv: list[str]):
    """The :class:`~synthgen.commands.core.Call` the command line ``argv`` (the command's own
    words) builds, without running it: what the command does before it runs (for tests and tools)."""
    import typer.main

    alone = typer.Typer()
    alone.command(cmd.name)(typer_command(cmd))
    ctx = typer.main.get_command(alone).make_context(cmd.name, list(argv))
    return call(cmd, resolve(cmd, _typed(ctx, ctx.params)))


def _typed(ctx, typed: dict[str, Any]) -> dict[str, Any]:
    """What the user typed: the values whose source is the command line, not a default."""
    # (by name: typer may carry its own copy of click, and with it another ParameterSource enum)
    return {k: v for k, v in typed.items()
            if getattr(ctx.get_parameter_source(k), "name", "") not in ("DEFAULT", "DEFAULT_MAP")}
