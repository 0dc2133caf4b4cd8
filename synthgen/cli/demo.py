"""CLI of the offline demo: ``synthgen demo`` (the recipe recipes/demo.yaml) and ``demo-data``."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer, user_errors) -> None:
    @app.command("demo")
    @user_errors
    def demo(
        out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for everything the demo makes."),
        num_samples: int = typer.Option(256, "--num-samples", "-n", help="Training scenes to compose."),
        workers: int = typer.Option(2, "--workers", "-w", help="CPUs of the local Ray."),
        steps: int = typer.Option(150, "--steps", help="PIN training steps on the tiny VLM."),
        train: bool = typer.Option(True, "--train/--no-train", help="Also train, evaluate and predict with PIN on a tiny VLM."),
        render: bool = typer.Option(True, "--render/--no-render", help="Also run `render` with tiny random SD / CLIP / rembg models built by the demo."),
        vlm: str = typer.Option("blip2", "--vlm", help="The tiny VLM PIN is trained on: blip2 or openflamingo (the paper's main VLM)."),
    ) -> None:
        """Offline end-to-end demo on built-in data (no downloads): `synthgen run recipes/demo.yaml`.

        demo-data (objects and backgrounds from scikit-image's samples, tiny random models) ->
        compose -> preview and stats -> render with tiny models -> train PIN on a tiny VLM ->
        eval-pin (and the random baseline) -> predict. Every command is echoed before it runs.
        """
        from synthgen.cli.run import run_recipe
        from synthgen.demo.data import demo_recipe
        from synthgen.errors import UserError

        if vlm not in ("blip2", "openflamingo"):
            raise UserError(f"--vlm must be blip2 or openflamingo (got {vlm!r})")
        if num_samples < 1 or steps < 1 or workers < 1:
            raise UserError("--num-samples, --steps and --workers must be >= 1")
        sets = {"out": str(out), "samples": str(num_samples), "workers": str(workers), "steps": str(steps),
                "eval_every": str(max(1, steps // 2)), "vlm": vlm}
        skip = ",".join(w for w, keep in (("render", render), ("train", train)) if not keep)
        code = run_recipe(demo_recipe(), sets, skip=skip)
        if code:
            raise typer.Exit(code)

    @app.command("demo-data", no_args_is_help=True)
    @user_errors
    def demo_data(
        out: Path = typer.Option(..., "--out", "-o", help="Folder to write objects/, backgrounds/, photos/, categories.txt, models/ and demo-data.json into."),
        vlm: str = typer.Option("blip2", "--vlm", help="The tiny VLM to build: blip2 or openflamingo."),
    ) -> None:
        """The demo's inputs, made offline: an object bank and backgrounds from scikit-image's
        samples, a cat photo, and tiny random-weight models (SD, open_clip, a u2net-style cut-out
        net, the VLM) saved as real checkpoints are and loaded by path (the models go under
        models/; the cut-out net under rembg's model root, U2NET_HOME)."""
        from synthgen.demo.data import make_demo_data

        make_demo_data(out, vlm=vlm, say=typer.echo)
