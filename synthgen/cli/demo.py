"""CLI of the offline demo: every stage end to end on built-in data (``synthgen demo``)."""

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
        steps: int = typer.Option(150, "--steps", help="PIN training steps on the tiny BLIP-2."),
        train: bool = typer.Option(True, "--train/--no-train", help="Also train, evaluate and predict with PIN on a tiny BLIP-2."),
        render: bool = typer.Option(True, "--render/--no-render", help="Also run `render` with tiny random SD / CLIP / rembg models built by the demo."),
        vlm: str = typer.Option("blip2", "--vlm", help="The tiny VLM PIN is trained on: blip2 or openflamingo (the paper's main VLM)."),
    ) -> None:
        """Offline end-to-end demo on built-in data (no downloads): an object bank and backgrounds
        from images shipped with scikit-image -> compose shards -> preview and stats -> render with
        tiny models -> train PIN on a tiny random BLIP-2 -> eval-pin (and the random baseline) ->
        predict."""
        from synthgen.demo import run_demo

        run_demo(out, num_samples=num_samples, workers=workers, steps=steps, train=train, render=render, vlm=vlm)
