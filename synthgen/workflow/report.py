"""``synthgen run RECIPE`` on the console: the steps echoed as they run, then a summary of what ran,
what was skipped, the outputs and the eval-pin metrics (on stderr)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Mapping

from synthgen.errors import UserError
from synthgen.workflow.plan import Plan, load_plan, select
from synthgen.workflow.runner import Outcome, RunResult, run_plan


def run_recipe(recipe: str | Path, sets: Mapping[str, str] | None = None, out: str | None = None, only: str = "",
               skip: str = "", dry_run: bool = False, allow_launcher: bool = False) -> int:
    """Run the recipe's steps (``sets``: its variables; ``out``: the same as ``sets["out"]``),
    print the summary; the exit status of the run."""
    from rich.console import Console

    sets = {**(sets or {}), **({"out": str(out)} if out is not None else {})}
    # never wrap: the echoed commands are meant to be copied (rich wraps at 80 columns off a tty)
    con = Console(stderr=True, highlight=False, soft_wrap=True,
                  width=None if sys.stderr.isatty() else max(shutil.get_terminal_size().columns, 140))
    plan = load_plan(recipe, sets, allow_launcher)
    steps = select(plan, only.split(","), skip.split(","))
    if not steps:
        raise UserError("--only/--skip leave no step to run")
    con.print(f"[bold]synthgen run {recipe}[/]: {len(steps)} of {len(plan.steps)} step(s)"
              + (" (dry run: nothing is executed)" if dry_run else ""))
    result = run_plan(plan, steps, dry_run=dry_run, say=lambda line: con.print(line, markup=False))
    summarize(con, plan, result)
    return result.code


def eval_metrics(result: RunResult) -> list[tuple[Outcome, dict]]:
    """The metrics of the run's eval-pin steps (those that give ``out``) that ran or were done."""
    from synthgen.schema import metrics_file

    rows = []
    for o in result.outcomes:
        if o.step.command != "eval-pin" or o.status not in ("ran", "skipped") or not o.output:
            continue
        try:
            rows.append((o, json.loads(metrics_file(Path(o.output)).read_text())))
        except (OSError, ValueError):
            continue
    return rows


def summarize(con, plan: Plan, result: RunResult) -> None:
    from rich.table import Table

    table = Table(title="run summary", title_justify="left")
    for col in ("step", "command", "status", "seconds", "output"):
        table.add_column(col)
    colours = {"ran": "green", "skipped": "cyan", "failed": "red", "interrupted": "yellow", "not run": "dim"}
    for o in result.outcomes:
        name = o.step.name if o.step.name == o.step.command else f"{o.step.name} ({o.step.command})"
        table.add_row(str(o.step.index), name, f"[{colours.get(o.status, 'yellow')}]{o.status}[/]",
                      f"{o.seconds:.1f}" if o.status not in ("skipped", "not run") else "", o.output)
    con.print(table)
    rows = eval_metrics(result)
    if rows:
        mt = Table(title="eval-pin metrics", title_justify="left")
        for col in ("step", "scored", "queries", "mIoU", "medium", "large", "P@0.3", "unparseable"):
            mt.add_column(col)

        def num(m, k):
            v = m.get(k)
            return f"{v:.4f}" if isinstance(v, float) and v == v else "-" if v is None else str(v)

        for o, m in rows:
            what = f"baseline {m['baseline']}" if m.get("baseline") else "model"
            mt.add_row(f"{o.step.index} {o.step.name}", what, str(m.get("n", "")), num(m, "miou"),
                       num(m, "miou_M"), num(m, "miou_L"), num(m, "p@0.3"), num(m, "unparseable"))
        con.print(mt)
    for o in result.outcomes:  # the tables the run wrote (synthgen table), as they read in the file
        if o.step.command == "table" and o.status in ("ran", "skipped") and o.output:
            try:
                con.print(Path(o.output).read_text().strip(), markup=False)
            except OSError:
                continue
    failed = [o for o in result.outcomes if o.status in ("failed", "interrupted")]
    if failed:
        o = failed[0]
        con.print(f"[red]step {o.step.index} ({o.step.name}) {o.status}[/] (exit {o.code}); finished steps are "
                  f"kept: re-run the same command to resume ({plan.state_file} records what is done)")
    elif plan.message and any(o.status in ("ran", "skipped") for o in result.outcomes):
        con.print(plan.message)
