"""CLI of the render stage: ``synthgen render`` (its bank is previewed by ``synthgen preview``).

Only typer and the config are imported here; the pipeline (torch, diffusers, rembg, ray) is
imported inside the command body.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthgen.cli.common import RAY_ADDRESS_HELP, WORKERS_HELP, csv, options, recipe_option
from synthgen.render.config import RenderConfig as R

# options a recipe's `render:` section may set
RECIPE_KEYS = ("categories", "categories_file", "exclude", "only", "per_category", "sd_model",
               "steps", "guidance", "size", "prompt", "clip_model", "clip_pretrained", "cutout",
               "min_clip", "tolerance", "area", "min_per_category", "batch_size", "seed",
               "gpus_per_worker", "keep_rejected")


def _area(text: str) -> tuple[float, float]:
    from synthgen.errors import UserError

    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"--area must be LO,HI (e.g. 0.05,0.95), got {text!r}") from None
    return lo, hi


def register(app: typer.Typer, user_errors) -> None:
    @app.command("render", no_args_is_help=True)
    @user_errors
    def render_cmd(
        ctx: typer.Context,
        out: str = typer.Option(..., "--out", "-o", metavar="PATH", help="Object bank folder (or s3:// / gs:// URL) "
                                "to write (created; re-running the same command resumes it)."),
        categories: str = typer.Option(
            "lvis", "--categories",
            help="lvis (LVIS v1, 1203 categories), coco (80), voc (20), or a FILE: .txt with one "
                 "name a line, or .json with a list of names / LVIS-format category dicts."),
        categories_file: Optional[Path] = typer.Option(
            None, "--categories-file",
            help="For --categories lvis: the official LVIS v1 annotation json (or a list of its "
                 "categories); default: the cached copy, downloaded once from the LVIS site."),
        exclude: str = typer.Option(
            "", "--exclude",
            help="Comma list: coco and/or voc drop every category that is a COCO / VOC class "
                 "(matched by WordNet synset; the paper trains on LVIS minus both: "
                 "--exclude coco,voc); other items are category names to drop."),
        only: str = typer.Option("", "--only", help="Comma list of category names to keep "
                                 "(applied before --exclude)."),
        per_category: int = typer.Option(R.per_category, "--per-category", help="Images generated per "
                                         "category (paper: 60; X-Paste: 100)."),
        sd_model: str = typer.Option(
            R.sd_model, "--sd-model",
            help="Diffusers text-to-image pipeline: hub id or local directory (X-Paste: SD v1.5)."),
        steps: int = typer.Option(R.steps, "--steps", help="Denoising steps (DPM-Solver multistep)."),
        guidance: float = typer.Option(R.guidance, "--guidance", help="Classifier-free guidance scale."),
        size: int = typer.Option(R.size, "--size", help="Generated image side in pixels."),
        prompt: str = typer.Option(R.prompt, "--prompt",
                                   help="Prompt template; {name} is the category name with "
                                        "underscores as spaces."),
        clip_model: str = typer.Option(
            R.clip_model, "--clip-model",
            help="open_clip model name, hf-hub:org/repo, or a local directory with "
                 "open_clip_config.json and weights (X-Paste: ViT-L/14)."),
        clip_pretrained: str = typer.Option(
            R.clip_pretrained, "--clip-pretrained",
            help="open_clip pretrained tag or checkpoint file for a built-in --clip-model "
                 "(ignored for hf-hub:/directories; empty = none)."),
        cutout: str = typer.Option(
            csv(R.cutout), "--cutout",
            help="rembg session(s), comma separated; several = ensemble, the mask with the best "
                 "CLIP score wins (u2net, isnet-general-use, birefnet-general, ..., or "
                 "u2net_custom:/path/model.onnx under REMBG_HOME)."),
        min_clip: float = typer.Option(R.min_clip, "--min-clip", help="CLIP score bar; per category "
                                       "bar = min(min-clip, best - tolerance)."),
        tolerance: float = typer.Option(R.tolerance, "--tolerance", help="The category's best score "
                                        "minus this is the highest possible bar."),
        area: str = typer.Option(csv(R.area), "--area", help="Allowed mask area fraction LO,HI "
                                 "of the generated image."),
        min_per_category: int = typer.Option(R.min_per_category, "--min-per-category", help="Drop categories "
                                             "with fewer surviving objects (paper: 20)."),
        batch_size: int = typer.Option(R.batch_size, "--batch-size", help="Images per model call."),
        seed: int = typer.Option(R.seed, "--seed", help="Base seed; each (category, index) gets its "
                                 "own seed derived from it."),
        gpus_per_worker: float = typer.Option(
            R.gpus_per_worker, "--gpus-per-worker",
            help="GPUs per generator actor: a whole number, or a fraction <= 1 to pack several "
                 "generators on a GPU; cut-out and CLIP actors take what the generators leave of "
                 "the GPUs, or run on the CPU when nothing is left."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", help=WORKERS_HELP),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
        object_store_mb: int = typer.Option(R.object_store_mb, "--object-store-mb", help="Object store of the local Ray in MB (images in flight between the stages; ignored with --ray-address)."),
        keep_rejected: bool = typer.Option(R.keep_rejected, "--keep-rejected", help="Also save rejected "
                                           "cut-outs (under CATEGORY/_rejected/)."),
        recipe: Optional[Path] = recipe_option("render", "recipes/pin-paper.yaml"),
    ) -> None:
        """Render objects from text (X-Paste recipe): Stable Diffusion -> rembg cut-out -> CLIP
        score -> filter -> object bank (index.jsonl + RGBA PNGs)."""
        from synthgen.errors import raise_problems
        from synthgen.extras import require

        require("render", "synthgen render")  # before Ray starts: a missing extra is one line
        from synthgen.render.categories import select_categories
        from synthgen.render.config import RenderConfig
        from synthgen.render.pipeline import render

        o = options(ctx, recipe, "render", RECIPE_KEYS)
        cfg = RenderConfig(
            out=out, per_category=o["per_category"], sd_model=o["sd_model"], steps=o["steps"],
            guidance=o["guidance"], size=o["size"], prompt=o["prompt"], clip_model=o["clip_model"],
            clip_pretrained=o["clip_pretrained"], cutout=o["cutout"], min_clip=o["min_clip"],
            tolerance=o["tolerance"], area=_area(o["area"]), min_per_category=o["min_per_category"],
            batch_size=o["batch_size"], seed=o["seed"], gpus_per_worker=o["gpus_per_worker"],
            workers=workers, ray_address=ray_address, object_store_mb=object_store_mb,
            keep_rejected=o["keep_rejected"])
        raise_problems(cfg.problems())
        sel = select_categories(o["categories"], categories_file=o["categories_file"],
                                exclude=o["exclude"], only=o["only"])
        typer.echo(sel.summary())

        def report(name: str, st: dict) -> None:
            clip = st["clip"] or {}
            rej = ", ".join(f"{k} {v}" for k, v in st["rejected"].items()) or "none"
            flag = "  [category dropped]" if st["category_dropped"] else ""
            # print (not typer.echo): on a terminal the progress bars show it above themselves
            print(f"{name}: kept {st['kept']}/{st['generated']}  median CLIP "
                  f"{clip.get('median', float('nan')):.1f}  rejected: {rej}  "
                  f"{st['seconds']:.1f}s{flag}", flush=True)

        res = render(sel.categories, cfg, on_category=report)
        typer.echo(f"{res.out}: {res.rendered} categories rendered, {res.skipped} already done; "
                   f"{res.kept}/{res.generated} objects kept, {res.dropped_categories} categories "
                   f"dropped (< {cfg.min_per_category}); {res.seconds:.0f}s")
