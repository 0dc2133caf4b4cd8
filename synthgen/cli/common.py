"""Pieces every command shares: list options, recipes, the help text of shared options."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import typer

from synthgen.errors import UserError


def csv(values: Sequence[Any]) -> str:
    """A tuple default shown as the comma list the option takes (``0.3,0.2,0.1``)."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def floats(text: str, flag: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, e.g. 0.3,0.2,0.1 (got {text!r})") from None
    if not vals:
        raise UserError(f"{flag} needs at least one number")
    return vals


def ints(text: str, flag: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag} must be comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 1:
        raise UserError(f"{flag} must be positive integers, got {text!r}")
    return vals


def recipe_option(section: str, example: str) -> Any:
    return typer.Option(
        None, "--recipe",
        help=f"YAML recipe whose `{section}:` section sets defaults for these options (e.g. "
             f"{example}); options given on the command line win.")


def options(ctx: typer.Context, recipe: Optional[Path], section: str, allowed: tuple[str, ...],
            raw: tuple[str, ...] = ()) -> dict:
    """The command's option values with ``recipe``'s section applied (see :mod:`synthgen.recipes`)."""
    from synthgen.recipes import apply_recipe

    return apply_recipe(ctx, recipe, section, allowed, raw)


WORKERS_HELP = ("CPUs of the local Ray started for this run (default: all CPUs of this machine; "
                "ignored with --ray-address).")
RAY_ADDRESS_HELP = ("Address of an existing Ray cluster to run on (e.g. auto, or ray://head:10001); "
                    "paths must be visible to every node. Default: a new local Ray on this "
                    "machine, never one already running here.")


_TYPE_NAMES = {"int": "INT", "float": "FLOAT", "str": "TEXT", "path": "PATH", "bool": "BOOL",
               "int range": "INT", "float range": "FLOAT", "file": "FILE", "directory": "DIR"}


def readable_help() -> None:
    """Help in plain words: a value's metavar (``INT``, ``PATH``, ``a|b``, or the option's own),
    none for a switch (typer prints ``<bool>``), and ``RUN IMAGE TEXT`` in the usage line
    (typer prints ``{RUN}``). Applied once when the CLI is imported; tests/cli/test_grammar.py
    checks every command's help."""
    try:
        from typer import core
    except ImportError:  # pragma: no cover
        return

    plain = core.TyperOption.display_type  # typer's own label: <int>, <path>, a|b, list[str] ...

    def option_type(self, ctx):
        if self.metavar is not None:
            return self.metavar
        if getattr(self, "is_flag", False) and not getattr(self, "count", False):
            return None
        label = str(plain(self, ctx))
        inner = label[1:-1] if label.startswith("<") and label.endswith(">") else label
        inner = inner[5:-1] if inner.startswith("list[") and inner.endswith("]") else inner
        return _TYPE_NAMES.get(inner, inner.upper() if inner.isidentifier() else inner)

    def argument_usage(self):
        name = self.metavar if self.metavar is not None else self.name.upper()
        if not self.required:
            name = f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    if hasattr(core, "TyperOption") and hasattr(core.TyperOption, "display_type_rich"):
        core.TyperOption.display_type_rich = option_type
    if hasattr(core, "TyperArgument"):
        if hasattr(core.TyperArgument, "_usage_display_name"):
            core.TyperArgument._usage_display_name = argument_usage
        core.TyperArgument.display_type_rich = lambda self, ctx: None  # the name is the metavar
