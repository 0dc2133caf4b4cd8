"""YAML recipes: one section per stage (``render:``, ``compose:``, ``train:``) of option values, and
``run:`` (the steps of ``synthgen run``, :mod:`synthgen.workflow`).

A recipe is read with ``yaml.safe_load``. A section's entries are the command's option names
(``a_max``, ``same_category_p``, ...); :mod:`synthgen.commands` converts each value with the
option's own kind, so a recipe entry behaves exactly as the option typed on the command line or
given to the Python API. Options given there win over the recipe.

A recipe that is not YAML is one line naming the line and column; :func:`locate` adds the line of
the entry an error is about (an unknown key, a value of the wrong kind) to the error's message.
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
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"recipe {p}{at}: not valid YAML: {what}") from None
    if not isinstance(doc, dict):
        raise UserError(f"recipe {p}: expected a mapping of sections (render:, compose:, train:, run:)")
    return doc


def load_recipe(path: str | Path, section: str) -> dict[str, Any]:
    """The ``section`` mapping of a YAML recipe (empty when the recipe has none)."""
    doc = read_recipe(path)
    if not isinstance(doc.get(section, {}), dict):
        raise UserError(f"recipe {path}: expected a mapping with a `{section}:` section")
    return dict(doc.get(section) or {})


def key_lines(path: str | Path, section: str) -> dict[str, int]:
    """The line (from 1) of each key of the recipe's ``section``, from YAML's node marks."""
    import yaml

    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return {}
    if not isinstance(root, yaml.MappingNode):
        return {}
    lines = {}
    for key, value in root.value:
        if key.value == section and isinstance(value, yaml.MappingNode):
            lines = {str(k.value): k.start_mark.line + 1 for k, _ in value.value}
    return lines


def node_line(path: str | Path, *keys: str | int) -> int | None:
    """The line (from 1) of the entry the path ``keys`` leads to (mapping keys and list indices
    from the top: ``("run", "steps", 2, "compose", "a_mx")``): the line of its key in a mapping,
    of the item in a list; None when the recipe has no such entry."""
    import yaml

    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, yaml.YAMLError):
        return None
    line = None
    for key in keys:
        if isinstance(node, yaml.MappingNode):
            hit = next(((k, v) for k, v in node.value if str(k.value) == str(key)), None)
            if hit is None:
                return None
            line, node = hit[0].start_mark.line + 1, hit[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and 0 <= key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return None
    return line


def close_word(word: str, words) -> str:
    """`` (did you mean X?)`` when one of ``words`` is close to ``word``, else ``""``."""
    import difflib

    found = difflib.get_close_matches(str(word), [str(w) for w in words], n=1, cutoff=0.6)
    return f" (did you mean {found[0]}?)" if found else ""


def culprit(entries: dict[str, Any], options) -> str | None:
    """The entry of a section that a recipe check refuses first (``options``: those the section may
    set, :class:`~synthgen.commands.Option`): an unknown key, then a value missing or of the wrong
    kind, in the recipe's order; ``None`` when every entry is good."""
    def option(key):
        return next((o for o in options if key in o.keys()), None)

    unknown = [k for k in entries if option(k) is None]
    if unknown:
        return unknown[0]
    for key, value in entries.items():
        if value is None:
            return key
        try:
            option(key).convert(value)
        except UserError:
            return key
    return None


def locate(message: str, path: str | Path, section: str, options) -> str:
    """``message`` (an error about the recipe at ``path``) with the line of the entry of
    ``section`` it is about: ``recipe r.yaml:7: unknown option(s) in `compose:`: ...``. Unchanged
    when no entry is refused (the error is about something else)."""
    import re

    if re.search(rf"recipe {re.escape(str(path))}:\d", message):
        return message  # (already there: recipe_values names the line)
    try:
        key = culprit(load_recipe(path, section), options)
    except UserError:
        return message
    line = key_lines(path, section).get(key) if key is not None else None
    if line is None:
        return message
    for head in {f"recipe {path}:", f"recipe {Path(path)}:"}:
        if head in message:  # the last: `synthgen run` puts the step's own "recipe P: step N" before it
            i = message.rindex(head) + len(head) - 1
            return f"{message[:i]}:{line}{message[i:]}"
    return f"{message} (recipe {path}, line {line})"
