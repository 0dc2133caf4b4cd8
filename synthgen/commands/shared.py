"""Options several commands share, written once."""

from __future__ import annotations

from typing import Any, Sequence

from synthgen.commands.core import Option


def csv(values: Sequence[Any]) -> str:
    """A tuple default shown as the comma list the option takes (``0.3,0.2,0.1``)."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def recipe_option(section: str, example: str) -> Option:
    return Option("recipe", None, f"YAML recipe whose `{section}:` section sets defaults for these options (e.g. "
                  f"{example}); options given on the command line win.", "path")


WORKERS = Option("workers", None, "CPUs of the local Ray started for this run (default: all CPUs of this machine; "
                 "ignored with --ray-address).", "int", flags=("--workers", "-w"))
RAY_ADDRESS = Option("ray_address", None, "Address of an existing Ray cluster to run on (e.g. auto, or "
                     "ray://head:10001); paths must be visible to every node. Default: a new local Ray on this "
                     "machine, never one already running here.")
EXECUTOR = Option("executor", "auto", "auto = in this process when Ray cannot help (one shard to write, or --workers 1, "
                  "and no --ray-address), else Ray; ray = always Ray; serial = always in this process. The bytes "
                  "are the same.")
VLM_OPTION_HELP = ("Override a VLM option the run recorded (repeatable), e.g. lm=DIR for a local copy of "
                   "OpenFlamingo's language model.")
RUN_MODEL_HELP = ("Load the VLM from here instead of the hub id or path the run recorded (e.g. a local copy of the "
                  "same weights).")
