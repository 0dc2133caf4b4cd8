"""``synthgen run RECIPE.yaml``: the steps a recipe's ``run:`` section declares, in order, each run
as the ``synthgen`` command a user would type (echoed first, so it can be copied).

    run:
      vars: {out: demo-out, vlm: blip2}        # {name} in any value; --set name=VALUE overrides
      env: {U2NET_HOME: "{out}/models/rembg"}  # environment of every step
      steps:
        - compose: {objects: "{out}/objects", backgrounds: "{out}/backgrounds", out: "{out}/shards"}
        - train-pin: {shards: "{out}/shards", out: "{out}/runs/pin"}
          tags: [train]                        # --only/--skip take commands, step names or tags
          launcher: "torchrun --nproc-per-node 2"   # optional: LAUNCHER -m synthgen train-pin ...
      message: "what the user should know at the end"

A step's keys are the command's option and argument names (underscores or dashes); values follow
the recipe rules of :mod:`synthgen.recipes` (lists become ``a,b,c``; true/false flags; a mapping
or list for a repeatable option gives it once per item). A command with a ``--recipe`` option
gets this recipe when the recipe has that command's section (``render:``, ``compose:``,
``train:``), so the stage options live in one place.

A step is skipped when its output is complete (the stage's own done marker, see :data:`DONE`), the
state file (``{out}/synthgen-run.json``) records the same command line as finished, and no
earlier step that makes data (all but preview and stats) ran in this run — after one did, the
later steps run again on its new output (eval-pin with ``--overwrite``). Any step that runs
resumes its own partial work (train-pin gets ``--resume`` when its run folder holds a run). A failed step stops the run; the summary says what ran, what was
skipped, where the outputs are, and the metrics of eval-pin steps.

Pure parts (:func:`load_plan`, :func:`command_line`, :func:`is_done`) are apart from running
(:func:`run_plan`).
"""

from __future__ import annotations

import json
import os
import shlex
import string
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from synthgen.bank.format import RENDER_STATS_FILE
from synthgen.errors import UserError
from synthgen.schema import LOCK_FILE, MANIFEST_FILE, PIN_META_FILE

STATE_FILE = "synthgen-run.json"
ALIASES = {"train": "train-pin", "eval": "eval-pin", "prepare": "prepare-backgrounds"}
RECIPE_SECTION = {"render": "render", "compose": "compose", "train-pin": "train"}
NOT_STEPS = ("run", "demo")
VIEWS = ("preview", "stats", "predict")  # steps that only look: running them changes nothing downstream
# exit statuses that report a result rather than a failure: predict --strict's "the answer held
# no box" (its JSON and picture are written); the run goes on and ends with that status, and the
# step is not recorded as done, so the next run checks again
RESULT_CODES = {("predict", 3): "no box"}


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


def load_plan(path: str | Path, overrides: Mapping[str, str] | None = None) -> Plan:
    """The ``run:`` section of the recipe at ``path``, its variables resolved (``overrides`` from
    ``--set`` replace declared ones; each variable may use the ones declared before it)."""
    from synthgen.recipes import load_recipe

    p = Path(path)
    run = load_recipe(p, "run")
    where = f"recipe {p}"
    if not run:
        raise UserError(f"{where} has no `run:` section (the steps of `synthgen run`); the stage "
                        "recipes (e.g. recipes/pin-paper.yaml) are used with each command's --recipe")
    unknown = sorted(set(run) - {"vars", "env", "steps", "message"})
    if unknown:
        raise UserError(f"{where}: unknown key(s) in `run:`: {', '.join(unknown)} (known: vars, env, steps, message)")
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
    steps = [_step(i, item, variables, where) for i, item in enumerate(items, 1)]
    import yaml

    doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    message = run.get("message")
    return Plan(recipe=p, vars=variables, env=env, steps=steps,
                message=expand(str(message), variables, f"{where}: `run.message`") if message else None,
                sections=tuple(k for k in doc if k != "run"))


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


def _cli_commands() -> dict[str, Any]:
    import typer

    from synthgen.cli import app

    return dict(typer.main.get_command(app).commands)  # type: ignore[attr-defined]


def _long(opts: Iterable[str]) -> str | None:
    opts = list(opts)
    return next((o for o in opts if o.startswith("--")), opts[0] if opts else None)


def command_line(step: Step, plan: Plan, commands: Mapping[str, Any] | None = None) -> list[str]:
    """The ``synthgen`` arguments of ``step`` (command first), checked against the command's
    own options: an unknown name, a missing argument or a value of the wrong kind is a one-line
    error naming the step."""
    commands = commands if commands is not None else _cli_commands()
    here = f"recipe {plan.recipe}: step {step.index} ({step.command})"
    cmd = commands.get(step.command)
    if cmd is None or step.command in NOT_STEPS:
        raise UserError(f"{here}: not a synthgen command that a step can run (commands: "
                        f"{', '.join(sorted(c for c in commands if c not in NOT_STEPS))})")
    params = {p.name: p for p in cmd.params if p.name != "help"}
    unknown = [k for k in step.args if k not in params]
    if unknown:
        raise UserError(f"{here}: {cmd.name} has no option or argument {unknown[0]!r} (it takes: "
                        f"{', '.join(sorted(params))})")
    argv = [step.command]
    for p in cmd.params:  # positional arguments in the command's order
        if p.param_type_name != "argument":
            continue
        if p.name not in step.args or step.args[p.name] is None:
            if p.required:
                raise UserError(f"{here}: `{p.name}` is required")
            continue
        val = step.args[p.name]
        vals = val if isinstance(val, list) else [val]
        argv += [_scalar(v, f"{here}: `{p.name}`") for v in vals]
    for key, val in step.args.items():
        p = params[key]
        if p.param_type_name == "argument" or val is None:
            continue
        flag = _long(p.opts)
        if getattr(p, "is_flag", False) and not getattr(p, "count", False):
            if not isinstance(val, bool):
                raise UserError(f"{here}: `{key}` is a switch: true or false (got {val!r})")
            if val:
                argv.append(flag)
            elif p.secondary_opts:
                argv.append(_long(p.secondary_opts))
            elif p.default not in (False, None):
                raise UserError(f"{here}: `{key}` cannot be switched off")
            continue
        if getattr(p, "multiple", False):
            items = ([f"{k}={_scalar(v, f'{here}: `{key}.{k}`')}" for k, v in val.items()]
                     if isinstance(val, dict) else val if isinstance(val, list) else [val])
            for item in items:
                argv += [flag, _scalar(item, f"{here}: `{key}`")]
            continue
        if isinstance(val, dict):
            raise UserError(f"{here}: `{key}` takes one value, not a mapping")
        text = ",".join(_scalar(v, f"{here}: `{key}`") for v in val) if isinstance(val, list) \
            else _scalar(val, f"{here}: `{key}`")
        argv += [flag, text]
    section = RECIPE_SECTION.get(step.command)
    if section in plan.sections and "recipe" in params and "recipe" not in step.args:
        argv += ["--recipe", str(plan.recipe)]
    return argv


# --- when a step is done -------------------------------------------------------------------


def _unlocked(folder: Path, marker: str) -> bool:
    return (folder / marker).is_file() and not (folder / LOCK_FILE).exists()


def _trained(folder: Path) -> bool:
    try:
        meta = json.loads((folder / PIN_META_FILE).read_text())
        return (not (folder / LOCK_FILE).exists() and meta.get("step") is not None
                and meta.get("steps_planned") is not None and meta["step"] >= meta["steps_planned"])
    except (OSError, ValueError, TypeError):
        return False


def metrics_file(preds: Path) -> Path:
    """Where eval-pin writes the metrics of the predictions file ``preds``."""
    from synthgen.pin.evaluation.evaluate import metrics_file as of

    return of(preds)


DONE: dict[str, Callable[[Path], bool]] = {
    "demo-data": lambda o: o.joinpath("demo-data.json").is_file(),
    "render": lambda o: _unlocked(o, RENDER_STATS_FILE),
    "prepare-backgrounds": lambda o: _unlocked(o, MANIFEST_FILE),
    "compose": lambda o: _unlocked(o, MANIFEST_FILE),
    "train-pin": _trained,
    "export-coco": lambda o: o.joinpath("instances.json").is_file(),
    "eval-pin": lambda o: metrics_file(o).is_file(),
    "preview": lambda o: o.is_file(),
    "predict": lambda o: o.is_file(),
    "import-pin": lambda o: o.joinpath(PIN_META_FILE).is_file(),
    "export-pin": lambda o: o.is_file(),
}


def output_of(step: Step, commands: Mapping[str, Any] | None = None) -> Path | None:
    """The step's output path (its ``out``, or the command's default), None when it has none or
    it is not a local path (a remote URL: the stage itself knows what is done there)."""
    out = step.args.get("out")
    if out is None:
        commands = commands if commands is not None else _cli_commands()
        cmd = commands.get(step.command)
        default = next((p.default for p in getattr(cmd, "params", []) if p.name == "out"), None)
        out = default if isinstance(default, (str, Path)) else None
    if out is None or "://" in str(out):
        return None
    return Path(str(out))


def is_done(step: Step, commands: Mapping[str, Any] | None = None) -> bool:
    check = DONE.get(step.command)
    out = output_of(step, commands)
    return bool(check and out is not None and check(out))


# --- running -------------------------------------------------------------------------------


@dataclass
class Outcome:
    step: Step
    argv: list[str]
    status: str                  # ran | skipped | failed | interrupted | not run | no box
    seconds: float = 0.0
    code: int = 0
    output: str = ""


@dataclass
class RunResult:
    outcomes: list[Outcome] = field(default_factory=list)
    code: int = 0


def _state(plan: Plan) -> dict[str, Any]:
    try:
        doc = json.loads(plan.state_file.read_text())
        return doc if isinstance(doc, dict) and isinstance(doc.get("finished"), list) else {"finished": []}
    except (OSError, ValueError):
        return {"finished": []}


def _save_state(plan: Plan, state: dict[str, Any]) -> None:
    from synthgen.rundir import atomic_write_json

    plan.state_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.state_file, state)


def shell_line(argv: list[str], launcher: str | None = None) -> str:
    head = f"{launcher} -m synthgen" if launcher else "synthgen"
    return head + " " + " ".join(shlex.quote(a) for a in argv)


def process_line(step: Step, argv: list[str], python: str = sys.executable) -> list[str]:
    """What is executed for ``step``: ``python -m synthgen ...``, or its launcher's command."""
    head = shlex.split(step.launcher) if step.launcher else [python]
    return [*head, "-m", "synthgen", *argv]


def run_plan(plan: Plan, steps: list[Step], *, dry_run: bool = False, say: Callable[[str], None] = print,
             python: str = sys.executable) -> RunResult:
    """Run ``steps`` of ``plan`` in order (see the module doc); never raises for a failed step."""
    commands = _cli_commands()
    lines = {s.index: command_line(s, plan, commands) for s in steps}  # every step checked first
    state = _state(plan)
    finished = {json.dumps(a) for a in state["finished"]}
    result = RunResult()
    env = {**os.environ, **plan.env}
    upstream_ran = False  # once a step that makes data has run, the later steps run again
    if plan.env:
        say("environment of every step: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env.items()))
    for pos, step in enumerate(steps):
        argv = lines[step.index]
        out = output_of(step, commands)
        if step.command == "train-pin" and "resume" not in step.args and out is not None \
                and (out / PIN_META_FILE).is_file():
            argv = [*argv, "--resume"]
        shown = str(out) if out is not None else str(step.args.get("out", ""))
        done = is_done(step, commands) and json.dumps(lines[step.index]) in finished
        if done and not upstream_ran:
            say(f"[{step.index}] {step.name}: done, skipped ({shown})")
            result.outcomes.append(Outcome(step, argv, "skipped", output=shown))
            continue
        if done:  # its inputs may have changed: an earlier step ran
            say(f"[{step.index}] {step.name}: done, but an earlier step ran: running it again")
            if step.command == "eval-pin" and "overwrite" not in step.args:
                argv = [*argv, "--overwrite"]
        say(f"[{step.index}] $ {shell_line(argv, step.launcher)}")
        if dry_run:
            result.outcomes.append(Outcome(step, argv, "not run", output=shown))
            continue
        t0 = time.time()
        try:
            code = subprocess.run(process_line(step, argv, python), env=env).returncode
        except KeyboardInterrupt:
            code = 130
        except OSError as exc:  # the launcher is not installed
            say(f"error: cannot start {process_line(step, argv, python)[0]}: {exc.strerror or exc}")
            code = 2
        verdict = RESULT_CODES.get((step.command, code))
        status = "ran" if code == 0 else verdict or ("interrupted" if code == 130 else "failed")
        outcome = Outcome(step, argv, status, seconds=time.time() - t0, code=code, output=shown)
        result.outcomes.append(outcome)
        if verdict is not None:
            say(f"[{step.index}] {step.name}: {verdict} (exit {code}); the run goes on and ends with exit {code}")
            result.code = result.code or code
            continue
        if code != 0:
            result.code = code
            result.outcomes += [Outcome(s, lines[s.index], "not run", output=str(output_of(s, commands) or ""))
                                for s in steps[pos + 1:]]
            break
        upstream_ran = upstream_ran or step.command not in VIEWS
        key = json.dumps(lines[step.index])
        if key not in finished:
            finished.add(key)
            state["finished"].append(lines[step.index])
        state["recipe"] = str(plan.recipe)
        _save_state(plan, state)
    return result


def eval_metrics(result: RunResult) -> list[tuple[Outcome, dict]]:
    """The metrics of the run's eval-pin steps (those that give ``out``) that ran or were done."""
    rows = []
    for o in result.outcomes:
        if o.step.command != "eval-pin" or o.status not in ("ran", "skipped") or not o.output:
            continue
        try:
            rows.append((o, json.loads(metrics_file(Path(o.output)).read_text())))
        except (OSError, ValueError):
            continue
    return rows
