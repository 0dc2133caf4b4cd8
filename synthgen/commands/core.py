"""An option contract: each option of each command written once, and the one way values become a
command's configuration.

An :class:`Option` is a name (the Python API's keyword, the recipe key and the ``synthgen run``
step key), a default (the paper's), a help text, a kind (how a value is read) and how the command
line spells it. A :class:`Command` is its options, the recipe section that may set them, the
function that turns resolved values into the stage's configuration (``build``), the function that
runs it (``run``), and what ``synthgen run`` needs to know about its output.

:func:`resolve` is the only place values enter: the command line (typer's parsed values), the
Python API (keyword arguments) and recipes (YAML) all pass through it, in the same order
(defaults, then the recipe's section, then what was given: given wins), each value converted by
its option's :meth:`Option.convert`. Pure: no typer, no heavy import.
"""

from __future__ import annotations

import difflib
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from synthgen.errors import UserError

KINDS = ("str", "int", "float", "bool", "floats", "ints", "strs", "names", "path", "pairs")


def _kind_words(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false", "floats": "comma-separated numbers",
            "ints": "comma-separated positive integers", "strs": "a comma list of names", "str": "a string",
            "names": "a string or a list of strings", "path": "a path",
            "pairs": "KEY=VALUE items (or a mapping)"}[kind]


@dataclass(frozen=True)
class Option:
    """One option of a command (see the module doc). ``flags``: its command-line spellings
    (default ``--name-with-dashes``), ``off_flag`` the second spelling of a switch
    (``--keep-qualifiers``); ``argument``: positional; ``multiple``: repeatable on the command line
    (a list, or for ``pairs`` a mapping); ``recipe``: a recipe section may set it; ``cli``: it
    exists on the command line (``False``: the Python API only, e.g. the compose settings of an
    on-the-fly train-pin); ``api``: it exists in the Python API (``False``: how the command line
    prints a result, e.g. ``--json``); ``shown``: its default as the help shows it."""

    name: str
    default: Any = None
    help: str = ""
    kind: str = "str"
    flags: tuple[str, ...] = ()
    off_flag: str | None = None
    argument: bool = False
    required: bool = False
    multiple: bool = False
    recipe: bool = False
    cli: bool = True
    api: bool = True
    metavar: str | None = None
    shown: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option {self.name}: unknown kind {self.kind!r}")

    @property
    def spellings(self) -> tuple[str, ...]:
        return self.flags or (f"--{self.name.replace('_', '-')}",)

    @property
    def flag(self) -> str:
        """How messages name it: its long flag (``--a-max``), or an argument's name (``SHARDS``)."""
        if self.argument:
            return self.metavar or self.name.upper()
        return next((f for f in self.spellings if f.startswith("--")), self.spellings[0])

    def keys(self) -> set[str]:
        """The words a recipe or a step may use for it: its name, and its long flags with
        underscores (``extra_object_root`` for ``--extra-object-root``)."""
        return {self.name} | {f.lstrip("-").replace("-", "_") for f in self.spellings if f.startswith("--")}

    def convert(self, value: Any, where: str | None = None) -> Any:
        """``value`` (a command-line string, a YAML or Python value) as this option's type; a
        one-line error naming ``where`` (default: the flag) when it is not one."""
        where = where or self.flag
        if value is None:
            return None
        try:
            return _CONVERT[self.kind](value)
        except _Refused as exc:
            raise UserError(f"{where} {exc}") from None
        except (TypeError, ValueError) as exc:
            detail = f": {exc}" if isinstance(exc, _Detail) else ""
            raise UserError(f"{where} must be {_kind_words(self.kind)} (got {value!r}){detail}") from None


class _Detail(ValueError):
    """A conversion error whose text is worth showing."""


class _Refused(ValueError):
    """A value of the right type that the option refuses: its text is the whole reason."""


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _to_int(v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError
    if isinstance(v, str):
        return int(v.strip())
    if _is_num(v) and int(v) == v:
        return int(v)
    raise TypeError


def _to_float(v: Any) -> float:
    if isinstance(v, str):
        return float(v.strip())
    if _is_num(v):
        return float(v)
    raise TypeError


def _items(v: Any) -> list:
    if isinstance(v, str):
        return [x for x in (s.strip() for s in v.split(",")) if x]
    if isinstance(v, (list, tuple)):
        return list(v)
    raise TypeError


def _to_floats(v: Any) -> tuple[float, ...]:
    out = tuple(_to_float(x) for x in _items(v))
    if not out:
        raise _Detail("at least one is needed")
    return out


def _to_ints(v: Any) -> tuple[int, ...]:
    out = tuple(_to_int(x) for x in _items(v))
    if not out or min(out) < 1:
        raise TypeError
    return out


def _to_strs(v: Any) -> tuple[str, ...]:
    return tuple(str(x).strip() for x in _items(v) if str(x).strip())


def _to_str(v: Any) -> str:
    if isinstance(v, str):
        return v
    if _is_num(v) or isinstance(v, Path):
        return str(v)
    raise TypeError


_BOOLS = {"true": True, "1": True, "yes": True, "y": True, "on": True, "t": True,
          "false": False, "0": False, "no": False, "n": False, "off": False, "f": False}


def _to_bool(v: Any) -> bool:
    """A boolean, or the words click takes for one (``'no'``, ``'true'``, ...)."""
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in _BOOLS:
        return _BOOLS[v.strip().lower()]
    raise TypeError


def _to_names(v: Any) -> str | tuple[str, ...]:
    """A string as it is (a folder, a pattern, ``lvis``), or a list of them."""
    if isinstance(v, (str, Path)):
        return str(v)
    if isinstance(v, (list, tuple)) and all(isinstance(x, (str, Path)) for x in v):
        return tuple(str(x) for x in v)
    raise TypeError


def _to_path(v: Any) -> Path:
    """A local path. A URL is refused: ``Path("s3://b/x")`` would quietly be a local folder ``s3:``."""
    if not isinstance(v, (str, Path)):
        raise TypeError
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", str(v)):
        url = re.sub(r"^([A-Za-z][A-Za-z0-9+.-]+):/+", r"\1://", str(v))
        raise _Refused(f"takes a local path, not the URL {url}; copy the file to a local disk first")
    return Path(v)


def _to_pairs(v: Any) -> dict[str, Any]:
    """``{"lm": "DIR"}``, or ``["lm=DIR", ...]`` / ``"lm=DIR"`` as typed on the command line
    (values stay text: their type is the consumer's, e.g. a VLM family's options)."""
    if isinstance(v, Mapping):
        return {str(k): x for k, x in v.items()}
    out: dict[str, Any] = {}
    for item in [v] if isinstance(v, str) else _items(v):
        key, sep, value = str(item).partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise _Detail(f"{item!r} is not KEY=VALUE")
        out[key] = value
    return out


_CONVERT: dict[str, Callable[[Any], Any]] = {
    "str": _to_str, "int": _to_int, "float": _to_float, "bool": _to_bool, "floats": _to_floats,
    "ints": _to_ints, "strs": _to_strs, "names": _to_names, "path": _to_path, "pairs": _to_pairs}


@dataclass(frozen=True)
class Command:
    """One command (see the module doc). ``build(values)`` -> the stage's configuration;
    ``run``: ``"module:function"`` called as ``function(config, **runtime)`` where ``runtime`` are
    the values of the options named in ``runtime`` (how to run, not what: workers, executor, ...);
    a configuration that is a mapping is the function's keyword arguments; ``output``: the
    option naming what it writes; ``done``: ``"module:function"`` telling from that path whether
    the output is complete; ``view``: running it changes nothing downstream; ``results``: exit
    statuses that report a result, not a failure; ``resume``, ``overwrite``: how ``synthgen run``
    continues a started output and replaces a finished one."""

    name: str
    help: str
    options: tuple[Option, ...]
    build: Callable[[dict[str, Any]], Any]
    run: str
    runtime: tuple[str, ...] = ()
    section: str | None = None
    output: str | None = "out"
    done: str | None = None
    view: bool = False
    results: Mapping[int, str] = field(default_factory=dict)
    resume: tuple[str, str] | None = None   # (flag, "module:function"): added when the output holds a started run
    overwrite: str | None = None            # the flag that replaces a finished output (run after a step upstream ran)

    def option(self, key: str, where: str | None = None) -> Option:
        """The option a key names (its name or a long flag; see :meth:`Option.keys`)."""
        for o in self.options:
            if key in o.keys():
                return o
        raise UserError(_unknown(f"{where or self.name}: unknown option(s)", [key], self.options))

    @property
    def arguments(self) -> tuple[Option, ...]:
        return tuple(o for o in self.options if o.argument)


def _unknown(head: str, keys: list[str], options, label: str = "known") -> str:
    """``{head} a_maks (did you mean a_max?) ({label}: ...)``."""
    names = sorted(o.name for o in options)
    hints = [m for k in keys for m in difflib.get_close_matches(k, names, n=1)]
    hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
    return f"{head} {', '.join(sorted(keys))}{hint} ({label}: {', '.join(names)})"


def load_function(ref: str) -> Callable:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def resolve(cmd: Command, given: Mapping[str, Any], check_required: bool = True) -> dict[str, Any]:
    """Every option's value: its default, then the recipe's section (when ``recipe`` is given
    and the command has one), then ``given`` (by name or flag; ``None`` = not given), each
    converted by its option. Unknown keys, values of the wrong kind and (``check_required``)
    missing required values are one-line errors."""
    unknown = [k for k in given if not any(k in o.keys() for o in cmd.options)]
    if unknown:
        raise UserError(_unknown(f"{cmd.name}: unknown option(s)", unknown, cmd.options))
    given = {cmd.option(k).name: v for k, v in given.items() if v is not None}
    values = {o.name: dict(o.default) if isinstance(o.default, dict) else o.default for o in cmd.options}
    recipe = given.get("recipe")
    if recipe is not None and cmd.section is not None:
        values.update(recipe_values(cmd, recipe))
    for name, value in given.items():
        opt = cmd.option(name)
        value = opt.convert(value)
        if opt.kind == "pairs" and isinstance(values.get(name), dict):
            value = {**values[name], **value}  # a mapping: the given keys win over the recipe's
        values[name] = value
    for o in cmd.options if check_required else ():
        if o.required and values[o.name] is None:
            also = f" (or `{cmd.section}.{o.name}` in the recipe)" if o.recipe else ""
            raise UserError(f"{o.flag} is required{also}")
    return values


def recipe_values(cmd: Command, recipe: str | Path) -> dict[str, Any]:
    """The options ``recipe``'s section of ``cmd`` sets, converted (unknown keys are an error)."""
    from synthgen.recipes import key_lines, load_recipe

    rec = load_recipe(recipe, cmd.section)
    lines = key_lines(recipe, cmd.section)

    def at(key: str) -> str:  # ``recipe r.yaml:7`` (the key's line), for the API as for the command line
        return f"recipe {recipe}" + (f":{lines[key]}" if key in lines else "")

    settable = [o for o in cmd.options if o.recipe]
    unknown = [k for k in rec if not any(k in o.keys() for o in settable)]
    if unknown:
        raise UserError(_unknown(f"{at(unknown[0])}: unknown option(s) in `{cmd.section}:`:", unknown, settable,
                                 "settable"))
    out: dict[str, Any] = {}
    for key, value in rec.items():
        where = f"{at(key)}: `{cmd.section}.{key}`"
        if value is None:
            raise UserError(f"{where} has no value")
        opt = cmd.option(key)
        out[opt.name] = opt.convert(value, where)
    return out


@dataclass(frozen=True)
class Call:
    """A command ready to run: its configuration, how to run it (workers, executor, ...) and the
    function that runs it. The command line and the Python API both build one with :func:`build`
    and run it with :meth:`execute`."""

    command: str
    config: Any
    runtime: Mapping[str, Any] = field(default_factory=dict)
    run: str = ""

    def execute(self, **hooks: Any) -> Any:
        """Run it; ``hooks`` are callbacks of the caller (``echo``, ``on_category``, ...). The extra
        the command needs (:mod:`synthgen.extras`) is checked first: a missing one is one line
        before any work."""
        from synthgen.extras import COMMAND_EXTRA, require

        if COMMAND_EXTRA.get(self.command) in ("render", "train"):
            require(COMMAND_EXTRA[self.command], f"synthgen {self.command}")
        run = load_function(self.run)
        if isinstance(self.config, Mapping):
            return run(**self.config, **self.runtime, **hooks)
        return run(self.config, **self.runtime, **hooks)


def build(cmd: Command, given: Mapping[str, Any]) -> Call:
    """The :class:`Call` of ``cmd`` with ``given`` values (:func:`resolve`, then ``cmd.build``)."""
    return call(cmd, resolve(cmd, given))


def call(cmd: Command, values: Mapping[str, Any]) -> Call:
    """The :class:`Call` of ``cmd`` with resolved ``values``."""
    return Call(cmd.name, cmd.build(dict(values)), {k: values[k] for k in cmd.runtime}, cmd.run)
