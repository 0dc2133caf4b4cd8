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
