"""YAML recipes: one section per stage (``render:``, ``compose:``, ``train:``) of option values, and
``run:`` (the steps of ``synthgen run``, :mod:`synthgen.workflow`).

A recipe is read with ``yaml.safe_load``. A section's entries are the command's option names
(``a_max``, ``same_category_p``, ...); :mod:`synthgen.commands` converts each value with the
option's own kind, so a recipe entry behaves exactly as the option typed on the command line or
given to the Python API. Options given there win over the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthgen.errors import UserError


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The whole recipe: a mapping of sections (a one-line error when it is not one)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise UserError(f"recipe {p}: expected a mapping of sections (render:, compose:, train:, run:)")
    return doc


def load_recipe(path: str | Path, section: str) -> dict[str, Any]:
    """The ``section`` mapping of a YAML recipe (empty when the recipe has none)."""
    doc = read_recipe(path)
    if not isinstance(doc.get(section, {}), dict):
        raise UserError(f"recipe {path}: expected a mapping with a `{section}:` section")
    return dict(doc.get(section) or {})
