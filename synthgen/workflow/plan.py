"""A recipe's ``run:`` section read into steps, and a step into the command line a user types
(pure: reading the recipe is the only I/O).

A step's keys are the command's option names (underscores or dashes, or the long flag's spelling:
``extra_object_root``); values follow the recipe rules of :mod:`synthgen.commands` (lists become
``a,b,c``; true/false switches; a mapping or list for a repeatable option gives it once per item),
and every value is checked by its option before any step runs. A command with a ``--recipe`` option
gets this recipe when the recipe has that command's section (``render:``, ``compose:``, ``train:``),
so the stage options live in one place.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from synthgen.commands import COMMANDS, Command, Option, resolve
from synthgen.errors import UserError

RUN_KEYS = ("vars", "env", "steps", "message")  # what a recipe's `run:` section may hold

STATE_FILE = "synthgen-run.json"
ALIASES = {"train": "train-pin", "eval": "eval-pin", "prepare": "prepare-backgrounds"}
NOT_STEPS = ("run", "demo")


@dataclass(frozen=True)
class Step:
    index: int                  # 1-based, as the summary shows it
    command: str
    args: dict[str, Any]
    name: str
    tags: tuple[str, ...] = ()
    launcher: str | None = None  # e.g. "torchrun --nproc-per-node 2": runs `LAUNCHER -m synthgen ...`

    def matches(self, word: str) -> bool:
        return word in (self.command, self.name, *self.tags) or ALIASES.get(word) == self.command


@dataclass(frozen=True)
class Plan:
    recipe: Path
    vars: dict[str, str]
    env: dict[str, str]
    steps: list[Step]
    message: str | None = None
    sections: tuple[str, ...] = ()   # the recipe's top-level sections (render:, compose:, train:)

    @property
    def state_file(self) -> Path:
        return Path(self.vars["out"]) / STATE_FILE


# --- reading a recipe ----------------------------------------------------------------------


def _fields(text: str) -> list[str]:
    try:
        return [f for _, f, _, _ in string.Formatter().parse(text) if f is not None]
    except ValueError as exc:
        raise UserError(f"bad braces in {text!r}: {exc} (write {{{{ and }}}} for literal braces)") from None


def expand(value: Any, variables: Mapping[str, str], where: str) -> Any:
    """``value`` with ``{name}`` replaced by the variables, in strings, lists and mappings."""
    if isinstance(value, str):
        missing = [f for f in _fields(value) if f not in variables]
        if missing:
            raise UserError(f"{where}: {{{missing[0]}}} is not a variable of the recipe (variables: "
                            f"{', '.join(variables) or 'none'}; `run.vars` declares them)")
        return value.format_map(variables)
    if isinstance(value, list):
        return [expand(v, variables, where) for v in value]
    if isinstance(value, dict):
        return {k: expand(v, variables, where) for k, v in value.items()}
    return value


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise UserError(f"{where} must be a string or a number (got {type(value).__name__})")


def load_plan(path: str | Path, overrides: Mapping[str, str] | None = None, allow_launcher: bool = False) -> Plan:
    """The ``run:`` section of the recipe at ``path``, its variables resolved (``overrides`` from
    ``--set`` replace declared ones; each variable may use the ones declared before it). Unknown
    launchers and code-loading ``run.env`` variables are refused unless ``allow_launcher``
    (:mod:`synthgen.workflow.trust`)."""
    from synthgen.recipes import close_word, load_recipe, read_recipe
    from synthgen.workflow.trust import check_trust

    p = Path(path)
    run = load_recipe(p, "run")
    where = f"recipe {p}"
    if not run:
        raise UserError(f"{where} has no `run:` section (the steps of `synthgen run`); the stage "
                        "recipes (e.g. recipes/pin-paper.yaml) are used with each command's --recipe")
    unknown = [str(k) for k in run if k not in RUN_KEYS]
    if unknown:
        raise UserError(f"{_at(p, 'run', unknown[0])}: unknown key(s) in `run:`: {', '.join(unknown)}"
                        f"{close_word(unknown[0], RUN_KEYS)} (known: {', '.join(RUN_KEYS)})")
    raw_vars = run.get("vars") or {}
    if not isinstance(raw_vars, dict):
        raise UserError(f"{where}: `run.vars` must be a mapping of names to values")
    overrides = dict(overrides or {})
    extra = sorted(set(overrides) - set(raw_vars))
    if extra:
        raise UserError(f"--set {extra[0]}=...: the recipe has no variable {extra[0]!r} "
                        f"(variables: {', '.join(raw_vars) or 'none'})")
    if "out" not in raw_vars:
        raise UserError(f"{where}: `run.vars` must declare `out`, the folder of the run's outputs and its "
                        f"state ({STATE_FILE})")
    variables: dict[str, str] = {}
    for name, val in raw_vars.items():
        val = overrides.get(name, val)
        variables[str(name)] = expand(_scalar(val, f"{where}: `run.vars.{name}`"), variables,
                                      f"{where}: `run.vars.{name}`")
    env_raw = run.get("env") or {}
    if not isinstance(env_raw, dict):
        raise UserError(f"{where}: `run.env` must be a mapping of variable names to values")
    env = {str(k): expand(_scalar(v, f"{where}: `run.env.{k}`"), variables, f"{where}: `run.env.{k}`")
           for k, v in env_raw.items()}
    items = run.get("steps")
    if not isinstance(items, list) or not items:
        raise UserError(f"{where}: `run.steps` must be a list of steps, e.g. `- compose: {{out: ...}}`")
    steps = [_step(i, item, variables, _at(p, "run", "steps", i - 1)) for i, item in enumerate(items, 1)]
    check_trust(env, [(f"step {s.index} ({s.command})", s.launcher) for s in steps if s.launcher], where,
                allow_launcher)
    message = run.get("message")
    return Plan(recipe=p, vars=variables, env=env, steps=steps,
                message=expand(str(message), variables, f"{where}: `run.message`") if message else None,
                sections=tuple(k for k in read_recipe(p) if k != "run"))


def _at(recipe: Path, *keys: str | int) -> str:
    """``recipe r.yaml:LINE`` of the entry ``keys`` leads to (``recipe r.yaml`` when not found)."""
    from synthgen.recipes import node_line

    line = node_line(recipe, *keys)
    return f"recipe {recipe}" + (f":{line}" if line else "")


def _step(index: int, item: Any, variables: Mapping[str, str], where: str) -> Step:
    here = f"{where}: step {index}"
    if not isinstance(item, dict):
        raise UserError(f"{here} must be a mapping like `- compose: {{...}}`")
    commands = [k for k in item if k not in ("name", "tags", "launcher")]
    if len(commands) != 1:
        raise UserError(f"{here} must name one command (got {', '.join(map(str, commands)) or 'none'})")
    command = str(commands[0])
    args = item[command] or {}
    if not isinstance(args, dict):
        raise UserError(f"{here} ({command}): its arguments must be a mapping of option names to values")
    tags = item.get("tags") or []
    if isinstance(tags, str):
        tags = [tags]
    here = f"{here} ({command})"
    args = {str(k).replace("-", "_"): expand(v, variables, f"{here}: `{k}`") for k, v in args.items()}
    launcher = item.get("launcher")
    if launcher is not None and not isinstance(launcher, str):
        raise UserError(f"{here}: `launcher` must be a command line such as \"torchrun --nproc-per-node 2\"")
    return Step(index=index, command=command, args=args, name=str(item.get("name") or command),
                tags=tuple(str(t) for t in tags),
                launcher=expand(launcher, variables, f"{here}: `launcher`") if launcher else None)


def select(plan: Plan, only: Iterable[str] = (), skip: Iterable[str] = ()) -> list[Step]:
    """The steps ``--only`` / ``--skip`` keep (words: commands, aliases, step names, tags)."""
    only, skip = [w for w in only if w], [w for w in skip if w]
    for word in (*only, *skip):
        if not any(s.matches(word) for s in plan.steps):
            names = sorted({w for s in plan.steps for w in (s.command, s.name, *s.tags)})
            raise UserError(f"no step of {plan.recipe} is {word!r} (steps: {', '.join(names)})")
    return [s for s in plan.steps
            if (not only or any(s.matches(w) for w in only)) and not any(s.matches(w) for w in skip)]


# --- a step as a command line --------------------------------------------------------------


def command_of(step: Step, plan: Plan) -> Command:
    from synthgen.recipes import close_word

    cmd = COMMANDS.get(step.command)
    if cmd is None or step.command in NOT_STEPS:
        runnable = sorted(c for c in COMMANDS if c not in NOT_STEPS)
        raise UserError(f"{_at(plan.recipe, 'run', 'steps', step.index - 1)}: step {step.index} ({step.command}): "
                        f"not a synthgen command that a step can run{close_word(step.command, runnable)} "
                        f"(commands: {', '.join(runnable)})")
    return cmd


def _options(step: Step, cmd: Command, plan: Plan) -> dict[str, tuple[Option, Any]]:
    """The step's arguments by option name (an unknown one is an error naming the step, its line
    and the closest option)."""
    from synthgen.recipes import close_word, node_line

    found = {}
    for key, value in step.args.items():
        opt = next((o for o in cmd.options if o.cli and key in o.keys()), None)
        if opt is None:
            names = sorted(o.name for o in cmd.options if o.cli)
            # (the key as written: the recipe may spell it with dashes)
            written = next((k for k in (key, key.replace("_", "-")) if
                            node_line(plan.recipe, "run", "steps", step.index - 1, step.command, k)), key)
            at = _at(plan.recipe, "run", "steps", step.index - 1, step.command, written)
            raise UserError(f"{at}: step {step.index} ({step.command}): {cmd.name} has no option or argument "
                            f"{key!r}{close_word(key, names)} (it takes: {', '.join(names)})")
        found[opt.name] = (opt, value)
    return found


def command_line(step: Step, plan: Plan) -> list[str]:
    """The ``synthgen`` arguments of ``step`` (command first), checked against the command's
    options: an unknown name, a missing argument or a value of the wrong kind is a one-line error
    naming the step."""
    cmd = command_of(step, plan)
    here = f"recipe {plan.recipe}: step {step.index} ({step.command})"
    found = _options(step, cmd, plan)
    argv = [step.command]
    for opt in cmd.arguments:  # positional arguments in the command's order
        val = found.get(opt.name, (opt, None))[1]
        if val is None:
            if opt.required:
                raise UserError(f"{here}: `{opt.name}` is required")
            continue
        argv += [_scalar(v, f"{here}: `{opt.name}`") for v in (val if isinstance(val, list) else [val])]
    for opt, val in found.values():
        if not opt.argument and val is not None:
            argv += _flags(opt, val, f"{here}: `{opt.name}`")
    with_recipe = cmd.section in plan.sections and any(o.name == "recipe" for o in cmd.options) \
        and "recipe" not in found
    if with_recipe:
        argv += ["--recipe", str(plan.recipe)]
    try:  # every value checked by its option now, before any step runs
        resolve(cmd, {**{name: v for name, (_, v) in found.items()}, **({"recipe": plan.recipe} if with_recipe else {})},
                check_required=False)
    except UserError as exc:
        raise UserError(f"{here}: {exc}") from None
    return argv


def _flags(opt, val: Any, where: str) -> list[str]:
    if opt.kind == "bool":
        if not isinstance(val, bool):
            raise UserError(f"{where} is a switch: true or false (got {val!r})")
        if val:
            return [opt.flag]
        if opt.off_flag:
            return [opt.off_flag]
        if opt.default not in (False, None):
            raise UserError(f"{where} cannot be switched off")
        return []
    if opt.multiple:
        items = ([f"{k}={_scalar(v, f'{where}.{k}')}" for k, v in val.items()] if isinstance(val, dict)
                 else val if isinstance(val, list) else [val])
        return [x for item in items for x in (opt.flag, _scalar(item, where))]
    if isinstance(val, dict):
        raise UserError(f"{where} takes one value, not a mapping")
    text = ",".join(_scalar(v, where) for v in val) if isinstance(val, list) else _scalar(val, where)
    return [opt.flag, text]


# --- what a step writes --------------------------------------------------------------------


def output_of(step: Step) -> Path | None:
    """The step's output path (its output option, or that option's default), None when it has
    none or it is not a local path (a remote URL: the stage itself knows what is done there)."""
    cmd = COMMANDS.get(step.command)
    if cmd is None or cmd.output is None:
        return None
    opt = cmd.option(cmd.output)
    out = next((v for k, v in step.args.items() if k in opt.keys()), opt.default)
    if out is None or "://" in str(out):
        return None
    return Path(str(out))


def is_done(step: Step) -> bool:
    """Whether the step's output is complete, as its command tells (:attr:`Command.done`)."""
    from synthgen.commands.core import load_function

    cmd = COMMANDS.get(step.command)
    out = output_of(step)
    return bool(cmd is not None and cmd.done and out is not None and load_function(cmd.done)(out))
