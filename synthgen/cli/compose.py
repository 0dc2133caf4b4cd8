"""CLI of the compose stage: ``compose``, ``preview``, ``stats`` and ``export-coco``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthgen.cli.common import RAY_ADDRESS_HELP, WORKERS_HELP, csv, options, recipe_option
from synthgen.compose.config import MIN_USABLE
from synthgen.compose.config import ComposeParams as P
from synthgen.compose.config import LayoutParams as L

# options of `compose` that a recipe's `compose:` section may set (what decides the dataset)
RECIPE_KEYS = ("num_samples", "prepare_backgrounds", "a_max", "fixed_count", "s_min", "s_max", "o_max", "min_visible",
               "max_aspect_error", "size", "grid", "same_category_p", "repeat_rule", "object_sampling",
               "strip_qualifiers", "paste", "paste_alpha", "absolute_referral_p", "referral_grammar", "background_fit", "masks",
               "samples_per_shard", "jpeg_quality", "seed")
SAMPLES_PER_SHARD = 1000


JOB_KEYS = ("num_samples", "prepare_backgrounds", "samples_per_shard")  # the rest are scene options


def compose_job(o: dict):
    """The :class:`~synthgen.compose.run.ComposeJob` of the command's option values (built by
    the Python API, :func:`synthgen.api.compose_job`, which the command is a layer over)."""
    from synthgen.api import compose_job as build
    from synthgen.errors import UserError

    if o["num_samples"] is None:
        raise UserError("--num-samples is required (or set compose.num_samples in --recipe)")
    params = {k: o[k] for k in RECIPE_KEYS if k not in JOB_KEYS}
    return build(o["objects"], o["backgrounds"], o["out"], o["num_samples"], samples_per_shard=o["samples_per_shard"],
                 extra_object_roots=o["extra_object_root"] or (), prepare_backgrounds=o["prepare_backgrounds"],
                 min_usable=o["min_usable"], **params)


def _is_bank(path: Path) -> bool:
    """A folder that is an object bank, not scene shards: an index.jsonl (render), an X-Paste
    pools file, or images and no .tar."""
    from synthgen.bank.format import INDEX_FILE, POOLS_FILE
    from synthgen.images import IMAGE_EXTS

    if not path.is_dir():
        return False
    if (path / INDEX_FILE).is_file() or (path / POOLS_FILE).is_file():
        return True
    if any(path.glob("*.tar")):
        return False
    return any(p.suffix.lower() in IMAGE_EXTS for p in path.rglob("*") if p.is_file())


def register(app: typer.Typer, user_errors) -> None:
    @app.command("compose", no_args_is_help=True)
    @user_errors
    def compose(
        ctx: typer.Context,
        objects: str = typer.Option(..., "--objects", metavar="PATH", help="Object bank (a folder or an s3:// / gs:// / hf:// URL): a folder with index.jsonl (from `synthgen render`), a <category>/*.png tree, or X-Paste's LVIS_instance_pools.json."),
        backgrounds: str = typer.Option(..., "--backgrounds", metavar="PATH", help="Backgrounds (a path or an s3:// / gs:// / hf:// URL): a folder of images (searched recursively; jpg/png/webp/...), a WebDataset .tar, a folder of tars, or a brace pattern like 'bg-{000..009}.tar'. BG-20k in the paper."),
        out: str = typer.Option(..., "--out", "-o", metavar="PATH", help="Output folder (or s3:// / gs:// URL) for scenes-NNNNNN.tar shards, their *_stats.json and manifest.json. Re-running resumes."),
        num_samples: Optional[int] = typer.Option(None, "--num-samples", "-n", help="Number of scenes to write (required unless the recipe sets it)."),
        extend: bool = typer.Option(False, "--extend", help="Grow an existing --out to --num-samples scenes: the same options, more scenes (scene k stays scene k; done shards are kept, a partial last shard is rewritten). Without it another --num-samples is refused."),
        prepare_backgrounds: bool = typer.Option(False, "--prepare-backgrounds", help="Decode each background once, shrunk to twice the canvas, into shards beside --out (OUT.backgrounds-SIZE, reused by the next run): several times faster on multi-megapixel backgrounds. Same as running `synthgen prepare-backgrounds` first."),
        extra_object_root: Optional[list[str]] = typer.Option(None, "--extra-object-root", metavar="PATH", help="A folder outside the bank that object paths may point into (repeatable; e.g. where an X-Paste pools file's images live). Any other path outside the bank is skipped and counted."),
        min_usable: float = typer.Option(MIN_USABLE, "--min-usable", metavar="FRACTION", help="Refuse a bank of which fewer than this fraction of the cut-outs are usable (no alpha, unreadable, all transparent, outside the bank, ...; a bank of over 500 is judged on an even sample of 500); 0: compose from any bank with a usable cut-out. Not part of the run's options: changing it never refuses a resume."),
        recipe: Optional[Path] = recipe_option("compose", "recipes/pin-paper.yaml"),
        a_max: int = typer.Option(L.a_max, "--a-max", help="Maximum number of objects per scene (paper: 3)."),
        fixed_count: bool = typer.Option(L.fixed_count, "--fixed-count", help="Always paste a_max objects instead of a uniform 1..a_max."),
        s_min: str = typer.Option(csv(L.s_min), "--s-min", help="Per scene size n, minimum longer side as a fraction of the grid (paper: 0.3,0.2,0.1)."),
        s_max: str = typer.Option(csv(L.s_max), "--s-max", help="Per scene size n, upper bound (exclusive) of the longer side as a fraction of the grid (paper: 1,1,1)."),
        o_max: float = typer.Option(L.o_max, "--o-max", help="Maximum summed overlap max(inter/area_new, inter/area_old) of a new object with placed ones (paper: 0.5; 0 forbids overlap)."),
        min_visible: float = typer.Option(L.min_visible, "--min-visible", help="Minimum fraction of an earlier object's box cells that later objects must leave uncovered (guards against objects hidden by several later ones)."),
        max_aspect_error: float = typer.Option(L.max_aspect_error, "--max-aspect-error", help="Prefer object sizes whose rounding to whole cells changes the aspect ratio by at most this fraction."),
        size: int = typer.Option(P.size, "--size", help="Canvas side in pixels: the VLM's input size (224; 364/448 for high-resolution variants)."),
        grid: int = typer.Option(L.grid, "--grid", help="Grid cells per side (16 for ViT-L/14 at 224 = 14-px cells). --size must be divisible by it."),
        same_category_p: float = typer.Option(P.same_category_p, "--same-category-p", help="Probability that the next object repeats a category of the scene, for positional referrals (Table 1: 0, no referrals; Table 2 / RefCOCO: 0.7, recipes/pin-refcoco.yaml)."),
        repeat_rule: str = typer.Option(P.repeat_rule, "--repeat-rule", help="previous: repeat the previous object's category if it has not repeated yet, so pairs and never triples (the authors'); any: any category of the scene."),
        object_sampling: str = typer.Option(P.object_sampling, "--object-sampling", help="pairs: every object of the bank equally likely (the authors'); category: a category first, then one of its objects."),
        strip_qualifiers: bool = typer.Option(P.strip_qualifiers, "--strip-qualifiers/--keep-qualifiers", help="Ask for 'bow (weapon)' as 'bow' (the authors'); the json keeps the category as it is, the asked-for name in each object's 'name'."),
        paste: str = typer.Option(P.paste, "--paste", help="soft: blend with the cut-out's alpha (the authors'); hard: copy the pixels whose alpha reaches --paste-alpha."),
        paste_alpha: int = typer.Option(P.paste_alpha, "--paste-alpha", help="Alpha (1-255) from which a pixel belongs to its object: the box is the extent of those pixels, masks and 'visible' count them."),
        absolute_referral_p: float = typer.Option(P.absolute_referral_p, "--absolute-referral-p", help="Probability that an object whose category is unique gets an absolute position (e.g. 'apple at the left')."),
        referral_grammar: str = typer.Option(P.referral_grammar, "--referral-grammar", help="Text of positional referrals. grammatical: English phrases after the prompt's 'a|an' ('cup on the left', 'lower cup', 'pair of scissors in front'); authors: the authors' templates '{pos} {name}', '{name} {pos}', '{name} on {pos}' ('below cup', 'cup on below'), what the paper trained with (recipes/pin-refcoco.yaml). Scenes without position words are the same with both."),
        background_fit: str = typer.Option(P.background_fit, "--background-fit", help="squash: resize to the square canvas ignoring aspect (paper); crop: random square crop first."),
        masks: bool = typer.Option(P.masks, "--masks", help="Also write {key}.mask.png: 0 background, i+1 = visible pixels of objects\\[i]."),
        samples_per_shard: int = typer.Option(SAMPLES_PER_SHARD, "--samples-per-shard", help="Scenes per .tar shard."),
        jpeg_quality: int = typer.Option(P.jpeg_quality, "--jpeg-quality", help="JPEG quality of the scene images."),
        seed: int = typer.Option(P.seed, "--seed", help="Run seed: scene k depends only on (seed, k, inputs)."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", help=WORKERS_HELP),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
        executor: str = typer.Option("ray", "--executor", help="ray (default) or serial (in this process; for debugging)."),
    ) -> None:
        """Compose grounding scenes: paste 1..a_max cut-outs on backgrounds on a grid (the PIN
        composition function C) and write WebDataset shards with boxes and referral text."""
        from rich.console import Console

        from synthgen.compose.run import run_compose

        job = compose_job(options(ctx, recipe, "compose", RECIPE_KEYS))
        con = Console(stderr=True)
        manifest = run_compose(job, workers=workers, ray_address=ray_address, executor=executor, extend=extend,
                               # the bank line on stdout: stderr stays progress and, on failure, one error line
                               echo=lambda line: typer.echo(line))
        t = manifest["totals"]
        con.print(f"[green]done[/]: {t['samples']} scenes, {t['objects']} objects in "
                  f"{len(manifest['shards'])} shard(s) -> {out}", soft_wrap=True)
        if t["dropped_objects"]:
            con.print(f"dropped objects: {t['dropped_objects']}")
        for kind in ("backgrounds", "objects"):
            for reason, info in t[f"skipped_{kind}"].items():
                con.print(f"[yellow]skipped {kind}[/] ({reason}): {info['count']}, e.g. {info['examples'][:3]}")

    @app.command("prepare-backgrounds", no_args_is_help=True)
    @user_errors
    def prepare_backgrounds_cmd(
        backgrounds: str = typer.Argument(..., metavar="BACKGROUNDS", help="Backgrounds (a path or an s3:// / gs:// / hf:// URL): a folder of images (recursive), a WebDataset .tar, a folder of tars, or a brace pattern."),
        out: str = typer.Option(..., "--out", "-o", metavar="PATH", help="Folder (or s3:// / gs:// URL) for backgrounds-NNNNNN.tar shards, their _stats.json and manifest.json. Re-running resumes."),
        size: int = typer.Option(448, "--size", help="Shorter side of the prepared images in pixels (never enlarged); twice the largest canvas you compose (448 for 224). The canvas itself (224) makes compose ~1.3x faster for that canvas only."),
        per_shard: int = typer.Option(500, "--per-shard", help="Backgrounds per shard."),
        jpeg_quality: int = typer.Option(95, "--jpeg-quality", help="JPEG quality of the prepared images."),
        workers: Optional[int] = typer.Option(None, "--workers", "-w", help=WORKERS_HELP),
        ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
        executor: str = typer.Option("ray", "--executor", help="ray (default) or serial (in this process)."),
    ) -> None:
        """Decode every background once, shrunk to --size, into WebDataset shards that compose and
        train-pin read like any backgrounds (much faster than multi-megapixel originals)."""
        from synthgen.compose.prepare import PrepareJob, prepare_backgrounds

        m = prepare_backgrounds(PrepareJob(source=backgrounds, out=str(out), size=size, per_shard=per_shard,
                                           quality=jpeg_quality), workers=workers, ray_address=ray_address,
                                executor=executor)
        typer.echo(f"done: {m['backgrounds']} backgrounds in {len(m['shards'])} shard(s) -> {out}")
        for reason, info in m["skipped"].items():
            typer.echo(f"skipped ({reason}): {info['count']}, e.g. {info['examples'][:3]}", err=True)

    @app.command("preview", no_args_is_help=True)
    @user_errors
    def preview(
        source: str = typer.Argument(..., metavar="SHARDS_OR_BANK", help="Scene shards (a folder, a .tar, or a brace pattern), or an object bank folder (from `synthgen render`, a folder of category sub-folders or of cut-outs, X-Paste pools)."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG contact sheet to write (default: preview.png; for a bank BANK/preview.png)."),
        n: int = typer.Option(16, "-n", "--num", help="Scenes: how many to show."),
        per_category: int = typer.Option(16, "--per-category", help="Bank: most cut-outs shown per category, kept ones first (rejected ones get at least half of them)."),
        scale: int = typer.Option(2, "--scale", help="Scenes: upscaling of each scene (and its labels) for legibility."),
        category: str = typer.Option("", "--category", help="Bank: comma list of categories to show (default: all)."),
        thumb: int = typer.Option(96, "--thumb", help="Bank: thumbnail side in pixels (16-1024)."),
    ) -> None:
        """Contact sheet of scenes: every box with its referral, the target thick in magenta with its
        prompt and answer underneath; or of an object bank: kept (green) and rejected (red) cut-outs
        with why they were rejected and their CLIP scores."""
        from synthgen import storage

        if not storage.is_remote(source) and _is_bank(Path(storage.localize(source))):
            from synthgen.bank.preview import preview_bank

            path, shown = preview_bank(source, out, categories=category, per_category=per_category, thumb=thumb)
            typer.echo(f"wrote {path} ({shown} objects of the bank {source})")
            return
        from synthgen.compose.inspection import contact_sheet

        path = out or Path("preview.png")
        shown = contact_sheet(source, path, n=n, scale=scale)
        typer.echo(f"wrote {path} ({shown} scenes)")

    @app.command("stats", no_args_is_help=True)
    @user_errors
    def stats(
        shards: str = typer.Argument(..., metavar="SHARDS", help="Scene shards: a folder, a .tar, or a brace pattern."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also draw the distributions into this PNG (1600 x 720): objects per scene, box sides in cells, box centres on the grid, visible fraction, referral kinds and relations, dropped objects / resampled scenes / skipped inputs by reason (from the shards' *_stats.json), top categories."),
        top: int = typer.Option(15, "--top", help="Number of most frequent categories to list."),
    ) -> None:
        """Counts and distributions of scene shards: objects per scene, box sizes in cells,
        categories, visible fraction, referral kinds, and what compose dropped, resampled or
        skipped (by reason, from each shard's *_stats.json)."""
        from synthgen.compose.inspection import collect_stats, plot_stats, print_stats

        st = collect_stats(shards)
        print_stats(st, top=top)
        if out is not None:
            plot_stats(st, out)
            typer.echo(f"wrote {out}")

    @app.command("export-coco", no_args_is_help=True)
    @user_errors
    def export_coco(
        shards: str = typer.Argument(..., metavar="SHARDS", help="Scene shards: a folder, a .tar, or a brace pattern (paths or s3:// / gs:// / hf:// URLs)."),
        out: str = typer.Option(..., "--out", "-o", metavar="PATH", help="Folder (or s3:// / gs:// URL) for images/ and instances.json."),
        limit: Optional[int] = typer.Option(None, "--limit", help="Export at most this many scenes."),
    ) -> None:
        """Export scene shards as a COCO-format detection set (e.g. for `eval-pin --coco-json`)."""
        from synthgen.compose.export import export_coco as run_export

        coco = run_export(shards, out, limit)
        typer.echo(f"wrote {out}/instances.json: {len(coco['images'])} images, "
                   f"{len(coco['annotations'])} boxes, {len(coco['categories'])} categories")
        for reason, info in coco["info"]["skipped_scenes"].items():
            typer.echo(f"skipped scenes ({reason}): {info['count']}, e.g. {info['examples'][:2]}", err=True)
