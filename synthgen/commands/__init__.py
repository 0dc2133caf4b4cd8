"""Every command's option contract, in one table (:data:`COMMANDS`).

Each command is written once (:mod:`.core`): its options (name, default, help, kind, flags, whether
a recipe may set it), the function that builds the stage's configuration from their values, the
function that runs it, and what ``synthgen run`` needs to know about its output. The command line
(:mod:`synthgen.cli`), the Python API (:mod:`synthgen.api`), recipes and ``synthgen run``
(:mod:`synthgen.workflow`) all build a command's configuration through :func:`.core.build`.
Light: importing this imports no torch, Ray or typer.
"""

from __future__ import annotations

from synthgen.commands.bank import BANK_FROM_ANNOTATIONS
from synthgen.commands.compose import COMPOSE, EXPORT_COCO, PREPARE, PREPARE_OBJECTS, PREVIEW, STATS
from synthgen.commands.core import Call, Command, Option, build, resolve
from synthgen.commands.export import EXPORT
from synthgen.commands.pin import EVAL, EXPORT_PIN, IMPORT_PIN, PREDICT, TRAIN
from synthgen.commands.render import RENDER
from synthgen.commands.table import TABLE
from synthgen.commands.workflow import DEMO, DEMO_DATA, PREFETCH, RUN

COMMANDS: dict[str, Command] = {c.name: c for c in (
    RENDER, BANK_FROM_ANNOTATIONS, COMPOSE, PREPARE, PREPARE_OBJECTS, PREVIEW, STATS, EXPORT, EXPORT_COCO, TRAIN, EVAL, PREDICT, IMPORT_PIN, EXPORT_PIN, RUN,
    DEMO, DEMO_DATA, PREFETCH, TABLE)}

__all__ = ["COMMANDS", "Call", "Command", "Option", "build", "resolve"]
