"""CLI of the compose stage: ``compose``, ``preview``, ``stats`` and the offline ``demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def _floats(text: str, flag: str) -> tuple[float, ...]:
    from synthgen.errors import UserError

    try:
        vals = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{flag} takes comma-separated numbers, e.g. 0.3,0.2,0.1 (got {text!r})") from None
    if not vals:
        raise UserError(f"{flag} needs at least one number")
    return vals


# options of `compose` that a recipe's `compose:` section may set (what decides the dataset)
RECIPE_KEYS = ("num_samples", "a_max", "fixed_count", "s_min", "s_max", "o_max", "min_visible",
               "max_aspect_error", "size", "grid", "same_category_p", "absolute_referral_p",
               "background_fit", "masks", "samples_per_shard", "jpeg_quality", "seed")


def register(app: typer.Typer, user_errors) -> None:
    @app.command("compose", no_args_is_help=True)
    @user_errors
    def compose(
        ctx: typer.Context,
        objects: Path = typer.Option(..., "--objects", help="Object bank: a folder with index.jsonl (from `synthgen render`), a <category>/*.png tree, or X-Paste's LVIS_instance_pools.json."),
        backgrounds: str = typer.Option(..., "--backgrounds", help="Backgrounds: a folder of images (searched recursively; jpg/png/webp/...), a WebDataset .tar, a folder of tars, or a brace pattern like 'bg-{000..009}.tar'. BG-20k in the paper."),
        out: Path = typer.Option(..., "--out", "-o", help="Output folder for scenes-NNNNNN.tar shards, their *_stats.json and manifest.json. Re-running resumes."),
        num_samples: Optional[int] = typer.Option(None, "--num-samples", "-n", help="Number of scenes to write (required unless the recipe sets it)."),
        recipe: Optional[Path] = typer.Option(None, "--recipe", help="YAML recipe whose `compose:` section sets defaults for these options (e.g. recipes/pin-paper.yaml); options given on the command line win."),
        a_max: int = typer.Option(3, "--a-max", help="Maximum number of objects per scene (paper: 3)."),
        fixed_count: bool = typer.Option(False, "--fixed-count", help="Always paste a_max objects instead of a uniform 1..a_max."),
        s_min: str = typer.Option("0.3,0.2,0.1", "--s-min", help="Per scene size n, minimum longer side as a fraction of the grid (paper: 0.3,0.2,0.1)."),
        s_max: str = typer.Option("1,1,1", "--s-max", help="Per scene size n, upper bound (exclusive) of the longer side as a fraction of the grid (paper: 1,1,1)."),
        o_max: float = typer.Option(0.5, "--o-max", help="Maximum summed overlap max(inter/area_new, inter/area_old) of a new object with placed ones (paper: 0.5; 0 forbids overlap)."),
        min_visible: float = typer.Option(0.5, "--min-visible", help="Minimum fraction of an earlier object's box cells that later objects must leave uncovered (guards against objects hidden by several later ones)."),
        max_aspect_error: float = typer.Option(0.1, "--max-aspect-error", help="Prefer object sizes whose rounding to whole cells changes the aspect ratio by at most this fraction."),
        size: int = typer.Option(224, "--size", help="Canvas side in pixels: the VLM's input size (224; 364/448 for high-resolution variants)."),
        grid: int = typer.Option(16, "--grid", help="Grid cells per side (16 for ViT-L/14 at 224 = 14-px cells). --size must be divisible by it."),
        same_category_p: float = typer.Option(0.7, "--same-category-p", help="Probability that the next object repeats a category already in the scene (paper: 0.7, for positional referrals)."),
        absolute_referral_p: float = typer.Option(0.0, "--absolute-referral-p", help="Probability that an object whose category is unique gets an absolute position (e.g. 'apple at the left')."),
        background_fit: str = typer.Option("squash", "--background-fit", help="squash: resize to the square canvas ignoring aspect (paper); crop: random square crop first."),
        masks: bool = typer.Option(False, "--masks", help="Also write {key}.mask.png: 0 background, i+1 = visible pixels of objects\\[i]."),
        samples_per_shard: int = typer.Option(1000, "--samples-per-shard", help="Scenes per .tar shard."),
        jpeg_quality: int = typer.Option(95, "--jpeg-quality", help="JPEG quality of the scene images."),
        seed: int = typer.Option(0, "--seed", help="Run seed: scene k depends only on (seed, k, inputs)."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", help="CPUs of the local Ray started for this run (default: all CPUs of this machine; ignored with --ray-address)."),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Address of an existing Ray cluster (e.g. ray://head:10001 or auto); paths must be visible to every node."),
        executor: str = typer.Option("ray", "--executor", help="ray (default) or serial (in this process; for debugging)."),
    ) -> None:
        """Compose grounding scenes: paste 1..a_max cut-outs on backgrounds on a grid (the PIN
        composition function C) and write WebDataset shards with boxes and referral text."""
        from rich.console import Console

        from synthgen.compose import ComposeParams
        from synthgen.compose_run import ComposeJob, run_compose
        from synthgen.errors import UserError
        from synthgen.layout import LayoutParams

        if recipe is not None:
            from synthgen.recipes import apply_recipe

            vals = apply_recipe(ctx, recipe, "compose", locals(), set(RECIPE_KEYS))
            (num_samples, a_max, fixed_count, s_min, s_max, o_max, min_visible, max_aspect_error, size,
             grid, same_category_p, absolute_referral_p, background_fit, masks, samples_per_shard,
             jpeg_quality, seed) = (vals[k] for k in RECIPE_KEYS)
        if num_samples is None:
            raise UserError("--num-samples is required (or set compose.num_samples in --recipe)")

        layout = LayoutParams(grid=grid, a_max=a_max, fixed_count=fixed_count,
                              s_min=_floats(s_min, "--s-min"), s_max=_floats(s_max, "--s-max"),
                              o_max=o_max, min_visible=min_visible, max_aspect_error=max_aspect_error)
        params = ComposeParams(layout=layout, size=size, same_category_p=same_category_p,
                               absolute_referral_p=absolute_referral_p, background_fit=background_fit,
                               masks=masks, jpeg_quality=jpeg_quality, seed=seed)
        job = ComposeJob(objects=str(objects), backgrounds=backgrounds, out=str(out),
                         num_samples=num_samples, samples_per_shard=samples_per_shard, params=params)
        import os

        manifest = run_compose(job, workers=(os.cpu_count() or 1) if workers is None else workers, ray_address=ray_address, executor=executor)
        t = manifest["totals"]
        con = Console(stderr=True)
        con.print(f"[green]done[/]: {t['samples']} scenes, {t['objects']} objects in "
                  f"{len(manifest['shards'])} shard(s) -> {out}")
        if t["dropped_objects"]:
            con.print(f"dropped objects: {t['dropped_objects']}")
        for kind in ("backgrounds", "objects"):
            for reason, info in t[f"skipped_{kind}"].items():
                con.print(f"[yellow]skipped {kind}[/] ({reason}): {info['count']}, e.g. {info['examples'][:3]}")

    @app.command("preview", no_args_is_help=True)
    @user_errors
    def preview(
        shards: str = typer.Argument(..., help="Scene shards (a folder, a .tar, or a brace pattern), or an object bank folder."),
        output: Path = typer.Option(Path("preview.png"), "--output", "-o", help="PNG contact sheet to write."),
        n: int = typer.Option(16, "-n", "--num", help="Number of scenes to show (objects per category for a bank)."),
        scale: int = typer.Option(2, "--scale", help="Upscaling of each scene for legibility."),
    ) -> None:
        """Contact sheet of scenes with their boxes, referral labels and the target's answer; for
        an object bank (index.jsonl), its kept and rejected cut-outs with their CLIP scores."""
        from synthgen.inspection import contact_sheet

        if (Path(shards) / "index.jsonl").is_file():
            from synthgen.render.preview import preview_bank

            path, shown = preview_bank(shards, output, per_category=n)
            typer.echo(f"wrote {path} ({shown} objects)")
            return

        shown = contact_sheet(shards, output, n=n, scale=scale)
        typer.echo(f"wrote {output} ({shown} scenes)")

    @app.command("stats", no_args_is_help=True)
    @user_errors
    def stats(
        shards: str = typer.Argument(..., help="Scene shards: a folder, a .tar, or a brace pattern."),
        plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the distributions into this PNG."),
        top: int = typer.Option(15, "--top", help="Number of most frequent categories to list."),
    ) -> None:
        """Counts and distributions of scene shards: objects per scene, box sizes in cells,
        categories, visible fraction, referral kinds."""
        from synthgen.inspection import collect_stats, print_stats, plot_stats

        st = collect_stats(shards)
        print_stats(st, top=top)
        if plot is not None:
            plot_stats(st, plot)
            typer.echo(f"wrote {plot}")

    @app.command("export-coco", no_args_is_help=True)
    @user_errors
    def export_coco(
        shards: str = typer.Argument(..., help="Scene shards: a folder, a .tar, or a brace pattern."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for images/ and instances.json."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Export at most this many scenes."),
    ) -> None:
        """Export scene shards as a COCO-format detection set (e.g. for `eval-pin --coco-json`)."""
        from synthgen.export import export_coco as run_export

        coco = run_export(shards, out, limit)
        typer.echo(f"wrote {out}/instances.json: {len(coco['images'])} images, "
                   f"{len(coco['annotations'])} boxes, {len(coco['categories'])} categories")

    @app.command("demo")
    @user_errors
    def demo(
        out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for everything the demo makes."),
        num_samples: int = typer.Option(256, "--num-samples", "-n", help="Training scenes to compose."),
        workers: int = typer.Option(2, "--workers", "-w", help="Local Ray CPUs."),
        steps: int = typer.Option(150, "--steps", help="PIN training steps on the tiny BLIP-2."),
        train: bool = typer.Option(True, "--train/--no-train", help="Also train, evaluate and predict with PIN on a tiny BLIP-2."),
        render: bool = typer.Option(True, "--render/--no-render", help="Also run `render` with tiny random SD / CLIP / rembg models built by the demo."),
    ) -> None:
        """Offline end-to-end demo on built-in data (no downloads): an object bank and backgrounds
        from images shipped with scikit-image -> compose shards -> preview and stats -> render with tiny
        models -> train PIN on
        a tiny random BLIP-2 -> eval-pin (and the random baseline) -> predict."""
        from synthgen.demo import run_demo

        run_demo(out, num_samples=num_samples, workers=workers, steps=steps, train=train, render=render)
