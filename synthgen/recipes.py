"""YAML recipes: one section per stage (``render:``, ``compose:``, ``train:``) of option values.

A recipe is read with ``yaml.safe_load``. Its entries are the stage's option names (underscores:
``a_max``, ``same_category_p``, ...); each value is converted by the option's own type, so a
recipe entry behaves exactly as the option typed on the command line, and the command builds its
config dataclass from the result. Options given on the command line win over the recipe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthgen.errors import UserError


def load_recipe(path: str | Path, section: str) -> dict[str, Any]:
    """The ``section`` mapping of a YAML recipe (empty when the recipe has none)."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise UserError(f"recipe not found: {p}")
    try:
        doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"recipe {p} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(section, {}), dict):
        raise UserError(f"recipe {p}: expected a mapping with a `{section}:` section")
    return dict(doc.get(section) or {})


def apply_recipe(ctx, path: str | Path | None, section: str, allowed: tuple[str, ...],
                 raw: tuple[str, ...] = ()) -> dict[str, Any]:
    """The command's option values (``ctx.params``) with the recipe's ``section`` applied wherever
    the user left the option at its default. Only ``allowed`` options may be set; each value is
    converted with the option's own type (a wrong type is a one-line error); lists become
    ``a,b,c``. Keys in ``raw`` (mappings with no single option, e.g. ``vlm_options``) are
    returned as they are under their own name (None when absent)."""
    values = dict(ctx.params)
    values.update({k: None for k in raw})
    if path is None:
        return values
    rec = load_recipe(path, section)
    for k in raw:
        values[k] = rec.pop(k, None)
    params = {p.name: p for p in ctx.command.params}
    unknown = sorted(k for k in rec if k not in params or k not in allowed)
    if unknown:
        raise UserError(f"recipe {path}: unknown option(s) in `{section}:`: {', '.join(unknown)} "
                        f"(settable: {', '.join(sorted(allowed + raw))})")
    for key, val in rec.items():
        src = ctx.get_parameter_source(key)
        if src is not None and getattr(src, "name", "") not in ("DEFAULT", "DEFAULT_MAP"):
            continue  # given on the command line: it wins
        if isinstance(val, (list, tuple)):
            val = ",".join(str(v) for v in val)
        if val is None:
            raise UserError(f"recipe {path}: `{section}.{key}` has no value")
        try:
            values[key] = params[key].process_value(
                ctx, val if isinstance(val, (bool, int, float, str)) else str(val))
        except Exception as exc:  # click.BadParameter and friends
            msg = getattr(exc, "message", None) or str(exc)
            raise UserError(f"recipe {path}: `{section}.{key}`: {msg}") from None
    return values
