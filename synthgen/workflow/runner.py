"""Running a plan's steps, each as the ``synthgen`` command a user would type, in a process of its own.

A step is skipped when its command says its output is complete (:attr:`Command.done
<synthgen.commands.core.Command>`), the state file (``{out}/synthgen-run.json``) records the same
command line as finished, and no earlier step that makes data (every command but the views) ran
in this run; after one did, the later steps run again on its new output (with the command's
``overwrite`` flag, e.g. eval-pin's ``--overwrite``). A step whose output holds a started run
continues it (the command's ``resume`` flag: train-pin's ``--resume``). A failed step stops the run.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from synthgen.commands import COMMANDS
from synthgen.commands.core import load_function
from synthgen.workflow.plan import Plan, Step, command_line, is_done, output_of


@dataclass
class Outcome:
    step: Step
    argv: list[str]
    status: str                  # ran | skipped | failed | interrupted | not run | a result word (no box)
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
    from synthgen.storage import atomic_write_json

    plan.state_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(plan.state_file, state)


def shell_line(argv: list[str], launcher: str | None = None) -> str:
    head = f"{launcher} -m synthgen" if launcher else "synthgen"
    return head + " " + " ".join(shlex.quote(a) for a in argv)


def process_line(step: Step, argv: list[str], python: str = sys.executable) -> list[str]:
    """What is executed for ``step``: ``python -m synthgen ...``, or its launcher's command."""
    head = shlex.split(step.launcher) if step.launcher else [python]
    return [*head, "-m", "synthgen", *argv]


def _with_flags(step: Step, argv: list[str], again: bool) -> list[str]:
    """The command's own flags for a started output (resume) or a finished one run again."""
    cmd = COMMANDS[step.command]
    out = output_of(step)
    given = {k.replace("_", "-") for k in step.args}
    if cmd.resume is not None and out is not None:
        flag, started = cmd.resume
        if flag.lstrip("-") not in given and load_function(started)(out):
            argv = [*argv, flag]
    if again and cmd.overwrite is not None and cmd.overwrite.lstrip("-") not in given:
        argv = [*argv, cmd.overwrite]
    return argv


def run_plan(plan: Plan, steps: list[Step], *, dry_run: bool = False, say: Callable[[str], None] = print,
             python: str = sys.executable) -> RunResult:
    """Run ``steps`` of ``plan`` in order (see the module doc); never raises for a failed step."""
    lines = {s.index: command_line(s, plan) for s in steps}  # every step checked first
    state = _state(plan)
    finished = {json.dumps(a) for a in state["finished"]}
    result = RunResult()
    env = {**os.environ, **plan.env}
    upstream_ran = False  # once a step that makes data has run, the later steps run again
    if plan.env:
        say("environment of every step: " + " ".join(f"{k}={shlex.quote(v)}" for k, v in plan.env.items()))
    for pos, step in enumerate(steps):
        out = output_of(step)
        shown = str(out) if out is not None else str(step.args.get("out", ""))
        done = is_done(step) and json.dumps(lines[step.index]) in finished
        if done and not upstream_ran:
            say(f"[{step.index}] {step.name}: done, skipped ({shown})")
            result.outcomes.append(Outcome(step, lines[step.index], "skipped", output=shown))
            continue
        if done:  # its inputs may have changed: an earlier step ran
            say(f"[{step.index}] {step.name}: done, but an earlier step ran: running it again")
        argv = _with_flags(step, lines[step.index], again=done)
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
        if code == 0 and output_of(step) is not None and COMMANDS[step.command].done and not is_done(step):
            say(f"[{step.index}] {step.name}: exited 0 but left no complete output in {shown}: failed")
            code = 1  # (a launcher that ran something else, or a step that wrote elsewhere)
        verdict = COMMANDS[step.command].results.get(code)
        status = "ran" if code == 0 else verdict or ("interrupted" if code == 130 else "failed")
        result.outcomes.append(Outcome(step, argv, status, seconds=time.time() - t0, code=code, output=shown))
        if verdict is not None:
            say(f"[{step.index}] {step.name}: {verdict} (exit {code}); the run goes on and ends with exit {code}")
            result.code = result.code or code
            continue
        if code != 0:
            result.code = code
            result.outcomes += [Outcome(s, lines[s.index], "not run", output=str(output_of(s) or ""))
                                for s in steps[pos + 1:]]
            break
        upstream_ran = upstream_ran or not COMMANDS[step.command].view
        key = json.dumps(lines[step.index])
        if key not in finished:
            finished.add(key)
            state["finished"].append(lines[step.index])
        state["recipe"] = str(plan.recipe)
        _save_state(plan, state)
    return result
