"""CLI of ``synthgen run``: a recipe's steps in order (see :mod:`synthgen.workflow`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthgen.errors import UserError


def parse_sets(items: Optional[list[str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items or []:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise UserError(f"--set takes NAME=VALUE (got {item!r})")
        out[name.strip()] = value
    return out


def run_recipe(recipe: Path, sets: dict[str, str], only: str = "", skip: str = "", dry_run: bool = False) -> int:
    """Run the recipe's steps, print the summary; the exit status of the run."""
    import shutil
    import sys

    from rich.console import Console

    from synthgen import workflow as wf

    # never wrap: the echoed commands are meant to be copied (rich wraps at 80 columns off a tty)
    con = Console(stderr=True, highlight=False, soft_wrap=True,
                  width=None if sys.stderr.isatty() else max(shutil.get_terminal_size().columns, 140))
    plan = wf.load_plan(recipe, sets)
    steps = wf.select(plan, only.split(","), skip.split(","))
    if not steps:
        raise UserError("--only/--skip leave no step to run")
    con.print(f"[bold]synthgen run {recipe}[/]: {len(steps)} of {len(plan.steps)} step(s)"
              + (" (dry run: nothing is executed)" if dry_run else ""))
    result = wf.run_plan(plan, steps, dry_run=dry_run, say=lambda line: con.print(line, markup=False))
    summarize(con, plan, result)
    return result.code


def summarize(con, plan, result) -> None:
    from rich.table import Table

    from synthgen import workflow as wf

    table = Table(title="run summary", title_justify="left")
    for col in ("step", "command", "status", "seconds", "output"):
        table.add_column(col)
    colours = {"ran": "green", "skipped": "cyan", "failed": "red", "interrupted": "yellow", "not run": "dim",
               "no box": "yellow"}
    for o in result.outcomes:
        name = o.step.name if o.step.name == o.step.command else f"{o.step.name} ({o.step.command})"
        table.add_row(str(o.step.index), name, f"[{colours[o.status]}]{o.status}[/]",
                      f"{o.seconds:.1f}" if o.status in ("ran", "failed", "no box") else "", o.output)
    con.print(table)
    rows = wf.eval_metrics(result)
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
    failed = [o for o in result.outcomes if o.status in ("failed", "interrupted")]
    if failed:
        o = failed[0]
        con.print(f"[red]step {o.step.index} ({o.step.name}) {o.status}[/] (exit {o.code}); finished steps are "
                  f"kept: re-run the same command to resume ({plan.state_file} records what is done)")
    elif plan.message and any(o.status in ("ran", "skipped") for o in result.outcomes):
        con.print(plan.message)


def register(app: typer.Typer, user_errors) -> None:
    @app.command("run", no_args_is_help=True)
    @user_errors
    def run(
        recipe: Path = typer.Argument(..., metavar="RECIPE", help="YAML recipe with a `run:` section (e.g. recipes/demo.yaml)."),
        set_: Optional[list[str]] = typer.Option(None, "--set", metavar="NAME=VALUE", help="Set a variable of the recipe's `run.vars` (repeatable), e.g. --set out=/data/run1."),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Folder of the run's outputs: the same as --set out=DIR."),
        only: str = typer.Option("", "--only", metavar="STEPS", help="Comma list: run only these steps (commands such as compose or train-pin, aliases train/eval/prepare, step names or tags). Their inputs must exist."),
        skip: str = typer.Option("", "--skip", metavar="STEPS", help="Comma list: leave these steps out (same words as --only)."),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print each step's command (and which are done) without running anything."),
    ) -> None:
        """Run a recipe's steps in order: render -> prepare-backgrounds -> compose -> train-pin ->
        eval-pin ... as its `run:` section declares them, each the command you would type (echoed).

        A step whose output is complete and whose command line is unchanged is skipped; any other
        runs and resumes its own partial work. A failed step stops the run (its exit status is the
        run's); a predict --strict step whose answer held no box is done, and the run goes on and
        exits 3. The summary lists what ran, what was skipped, the outputs and the eval-pin metrics.
        """
        sets = parse_sets(set_)
        if out is not None:
            sets["out"] = out
        code = run_recipe(recipe, sets, only=only, skip=skip, dry_run=dry_run)
        if code:
            raise typer.Exit(code)


def register_prefetch(app: typer.Typer, user_errors) -> None:
    @app.command("prefetch", no_args_is_help=True)
    @user_errors
    def prefetch(
        what: list[str] = typer.Argument(..., metavar="WHAT", help="render (its default Stable Diffusion, CLIP and rembg models) and/or VLM families: blip2, openflamingo, llava, smolvlm, qwen2_5_vl, paligemma."),
        model: Optional[list[str]] = typer.Option(None, "--model", metavar="VLM=HUB_ID", help="Another checkpoint for a VLM family (repeatable), e.g. openflamingo=openflamingo/OpenFlamingo-4B-vitl-rpj3b."),
        dry_run: bool = typer.Option(False, "--dry-run", help="List what would be downloaded."),
    ) -> None:
        """Download the models the stages will load into their caches (HF_HOME, open_clip's cache,
        U2NET_HOME), without loading them: for a Docker image or a cluster node before a run."""
        from synthgen import prefetch as pf

        models = {}
        for item in model or []:
            vlm, eq, hub_id = item.partition("=")
            if not eq or not hub_id:
                raise UserError(f"--model takes VLM=HUB_ID (got {item!r})")
            models[vlm] = hub_id
        render = "render" in what
        vlms = [w for w in what if w != "render"]
        if set(models) - set(vlms):
            raise UserError(f"--model {sorted(set(models) - set(vlms))[0]}=...: that VLM is not among WHAT")
        items = pf.plan(render=render, vlms=vlms, models=models)
        if dry_run:
            for item in items:
                typer.echo(item.describe())
            return
        paths = pf.prefetch(items, say=typer.echo)
        typer.echo(f"fetched {len(paths)} item(s)")
