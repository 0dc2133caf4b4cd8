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


def apply_recipe(ctx, path: Path, section: str, values: dict[str, Any],
                 allowed: set[str]) -> dict[str, Any]:
    """``values`` (a command's parameters) with the recipe's entries applied wherever the user
    left the option at its default. Only ``allowed`` keys may be set; each value is converted
    with the option's own type (a wrong type is a one-line error); lists become ``a,b,c``."""
    rec = load_recipe(path, section)
    out = dict(values)
    params = {p.name: p for p in ctx.command.params}
    unknown = sorted(k for k in rec if k not in params or k not in allowed)
    if unknown:
        raise UserError(f"recipe {path}: unknown option(s) in `{section}:`: {', '.join(unknown)} "
                        f"(settable: {', '.join(sorted(allowed))})")
    for key, val in rec.items():
        src = ctx.get_parameter_source(key)
        if src is not None and getattr(src, "name", "") not in ("DEFAULT", "DEFAULT_MAP"):
            continue  # given on the command line: it wins
        if isinstance(val, (list, tuple)):
            val = ",".join(str(v) for v in val)
        if val is None:
            raise UserError(f"recipe {path}: `{section}.{key}` has no value")
        try:
            param = params[key]
            out[key] = param.process_value(ctx, val if isinstance(val, (bool, int, float, str)) else str(val))
        except Exception as exc:  # click.BadParameter and friends
            msg = getattr(exc, "message", None) or str(exc)
            raise UserError(f"recipe {path}: `{section}.{key}`: {msg}") from None
    return out
