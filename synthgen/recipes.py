"""YAML recipes: a section of defaults for a command's options (``yaml.safe_load`` only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthgen.errors import UserError


def load_recipe(path: Path, section: str) -> dict[str, Any]:
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


def apply_recipe(ctx, path: Path, section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (a command's parameters) with the recipe's entries applied wherever the user
    left the option at its default. List values become comma-separated strings."""
    rec = load_recipe(path, section)
    out = dict(values)
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(rec) - known)
    if unknown:
        raise UserError(f"recipe {path}: unknown option(s) in `{section}:`: {', '.join(unknown)}")
    for key, val in rec.items():
        src = ctx.get_parameter_source(key)
        if src is None or getattr(src, "name", "") in ("DEFAULT", "DEFAULT_MAP"):
            if isinstance(val, (list, tuple)):
                val = ",".join(str(v) for v in val)
            out[key] = val
    return out
