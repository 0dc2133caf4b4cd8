"""CLI for the render stage: ``synthgen render`` and ``synthgen preview-bank``.

Only typer is imported here; the pipeline (torch, diffusers, rembg, ray) is imported inside the
command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

DEFAULT_SD_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # = generate.DEFAULT_SD_MODEL


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
        out: Path = typer.Option(..., "--out", "-o", help="Object bank folder to write (created; "
                                 "re-running the same command resumes it)."),
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
        per_category: int = typer.Option(60, "--per-category", help="Images generated per "
                                         "category (paper: 60; X-Paste: 100)."),
        sd_model: str = typer.Option(
            DEFAULT_SD_MODEL, "--sd-model",
            help="Diffusers text-to-image pipeline: hub id or local directory (X-Paste: SD v1.5)."),
        steps: int = typer.Option(50, "--steps", help="Denoising steps (DPM-Solver multistep)."),
        guidance: float = typer.Option(7.5, "--guidance", help="Classifier-free guidance scale."),
        size: int = typer.Option(512, "--size", help="Generated image side in pixels."),
        prompt: str = typer.Option("a photo of a single {name}", "--prompt",
                                   help="Prompt template; {name} is the category name with "
                                        "underscores as spaces."),
        clip_model: str = typer.Option(
            "ViT-L-14", "--clip-model",
            help="open_clip model name, hf-hub:org/repo, or a local directory with "
                 "open_clip_config.json and weights (X-Paste: ViT-L/14)."),
        clip_pretrained: str = typer.Option(
            "openai", "--clip-pretrained",
            help="open_clip pretrained tag or checkpoint file for a built-in --clip-model "
                 "(ignored for hf-hub:/directories; empty = none)."),
        cutout: str = typer.Option(
            "u2net", "--cutout",
            help="rembg session(s), comma separated; several = ensemble, the mask with the best "
                 "CLIP score wins (u2net, isnet-general-use, birefnet-general, ..., or "
                 "u2net_custom:/path/model.onnx under REMBG_HOME)."),
        min_clip: float = typer.Option(21.0, "--min-clip", help="CLIP score bar; per category "
                                       "bar = min(min-clip, best - tolerance)."),
        tolerance: float = typer.Option(1.0, "--tolerance", help="The category's best score "
                                        "minus this is the highest possible bar."),
        area: str = typer.Option("0.05,0.95", "--area", help="Allowed mask area fraction LO,HI "
                                 "of the generated image."),
        min_per_category: int = typer.Option(20, "--min-per-category", help="Drop categories "
                                             "with fewer surviving objects (paper: 20)."),
        batch_size: int = typer.Option(8, "--batch-size", help="Images per model call."),
        seed: int = typer.Option(0, "--seed", help="Base seed; each (category, index) gets its "
                                 "own seed derived from it."),
        gpus_per_worker: float = typer.Option(
            1.0, "--gpus-per-worker",
            help="GPUs per generator actor: a whole number, or a fraction <= 1 to pack several "
                 "generators on a GPU; cut-out and CLIP actors take what the generators leave of "
                 "the GPUs, or run on the CPU when nothing is left."),
        ray_address: Optional[str] = typer.Option(
            None, "--ray-address",
            help="Ray cluster to join (e.g. auto or ray://host:10001); default: a local Ray on "
                 "this machine's GPUs or CPU (env SYNTHGEN_RAY_NUM_CPUS, "
                 "SYNTHGEN_RAY_OBJECT_STORE_MB cap it)."),
        keep_rejected: bool = typer.Option(False, "--keep-rejected", help="Also save rejected "
                                           "cut-outs (under CATEGORY/_rejected/)."),
    ) -> None:
        """Render objects from text (X-Paste recipe): Stable Diffusion -> rembg cut-out -> CLIP
        score -> filter -> object bank (index.jsonl + RGBA PNGs)."""
        from synthgen.render.categories import select_categories
        from synthgen.render.pipeline import RenderConfig, render

        sel = select_categories(categories, categories_file=categories_file, exclude=exclude,
                                only=only)
        cfg = RenderConfig(
            out=out, per_category=per_category, sd_model=sd_model, steps=steps, guidance=guidance,
            size=size, prompt=prompt, clip_model=clip_model, clip_pretrained=clip_pretrained,
            cutout=cutout, min_clip=min_clip, tolerance=tolerance, area=_area(area),
            min_per_category=min_per_category, batch_size=batch_size, seed=seed,
            gpus_per_worker=gpus_per_worker, ray_address=ray_address,
            keep_rejected=keep_rejected)
        typer.echo(sel.summary())

        def report(name: str, st: dict) -> None:
            clip = st["clip"] or {}
            rej = ", ".join(f"{k} {v}" for k, v in st["rejected"].items()) or "none"
            flag = "  [category dropped]" if st["category_dropped"] else ""
            typer.echo(f"{name}: kept {st['kept']}/{st['generated']}  median CLIP "
                       f"{clip.get('median', float('nan')):.1f}  rejected: {rej}  "
                       f"{st['seconds']:.1f}s{flag}")

        res = render(sel.categories, cfg, on_category=report)
        typer.echo(f"{res.out}: {res.rendered} categories rendered, {res.skipped} already done; "
                   f"{res.kept}/{res.generated} objects kept, {res.dropped_categories} categories "
                   f"dropped (< {min_per_category}); {res.seconds:.0f}s")

    @app.command("preview-bank", no_args_is_help=True)
    @user_errors
    def preview_bank_cmd(
        bank: Path = typer.Argument(..., help="Object bank folder (written by synthgen render)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write (default "
                                           "BANK/preview.png)."),
        category: str = typer.Option("", "--category", help="Comma list of categories to show "
                                     "(default: all)."),
        per_category: int = typer.Option(8, "--per-category", help="Most objects shown per "
                                         "category, kept first."),
        thumb: int = typer.Option(96, "--thumb", help="Thumbnail side in pixels."),
    ) -> None:
        """Grid of kept (green) and rejected (red) cut-outs with their CLIP scores."""
        from synthgen.render.preview import preview_bank

        path, n = preview_bank(bank, out, categories=category, per_category=per_category,
                               thumb=thumb)
        typer.echo(f"wrote {path} ({n} objects)")
