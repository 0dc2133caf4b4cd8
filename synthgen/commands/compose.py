"""The compose stage's commands: ``compose``, ``prepare-backgrounds``, ``prepare-objects``, ``preview``, ``stats``,
``export-coco``; and the scene settings (:func:`scene_params`) that SceneGenerator and an
on-the-fly train-pin build the same way ``compose`` does."""

from __future__ import annotations

from typing import Any, Mapping

from synthgen.commands.core import Command, Option, resolve
from synthgen.commands.shared import EXECUTOR, RAY_ADDRESS, WORKERS, csv, recipe_option
from synthgen.compose.config import MIN_USABLE, ComposeParams, LayoutParams
from synthgen.errors import UserError

P, L = ComposeParams, LayoutParams
URL = "(a path or an s3:// / gs:// / hf:// URL)"
SAMPLES_PER_SHARD = 1000

# what decides a scene's content (ComposeParams / LayoutParams fields of the same names)
SCENE = (
    Option("a_max", L.a_max, "Maximum number of objects per scene (paper: 3).", "int", recipe=True),
    Option("fixed_count", L.fixed_count, "Always paste a_max objects instead of a uniform 1..a_max.", "bool",
           recipe=True),
    Option("s_min", L.s_min, "Per scene size n, minimum longer side as a fraction of the grid (paper: 0.3,0.2,0.1).",
           "floats", recipe=True, shown=csv(L.s_min)),
    Option("s_max", L.s_max, "Per scene size n, upper bound (exclusive) of the longer side as a fraction of the "
           "grid (paper: 1,1,1).", "floats", recipe=True, shown=csv(L.s_max)),
    Option("o_max", L.o_max, "Maximum summed overlap max(inter/area_new, inter/area_old) of a new object with "
           "placed ones (paper: 0.5; 0 forbids overlap).", "float", recipe=True),
    Option("min_visible", L.min_visible, "Minimum fraction of an earlier object's box cells that later objects "
           "must leave uncovered (guards against objects hidden by several later ones).", "float", recipe=True),
    Option("max_aspect_error", L.max_aspect_error, "Prefer object sizes whose rounding to whole cells changes the "
           "aspect ratio by at most this fraction.", "float", recipe=True),
    Option("size", P.size, "Canvas side in pixels: the VLM's input size (224; 364/448 for high-resolution "
           "variants).", "int", recipe=True),
    Option("grid", L.grid, "Grid cells per side (16 for ViT-L/14 at 224 = 14-px cells). --size must be divisible "
           "by it.", "int", recipe=True),
    Option("same_category_p", P.same_category_p, "Probability that the next object repeats a category of the "
           "scene, for positional referrals (Table 1: 0, no referrals; Table 2 / RefCOCO: 0.7, "
           "recipes/pin-refcoco.yaml).", "float", recipe=True),
    Option("repeat_rule", P.repeat_rule, "previous: repeat the previous object's category if it has not repeated "
           "yet, so pairs and never triples (the authors'); any: any category of the scene.", recipe=True),
    Option("object_sampling", P.object_sampling, "pairs: every object of the bank equally likely (the authors'); "
           "category: a category first, then one of its objects.", recipe=True),
    Option("strip_qualifiers", P.strip_qualifiers, "Ask for 'bow (weapon)' as 'bow' (the authors'); the json "
           "keeps the category as it is, the asked-for name in each object's 'name'.", "bool",
           off_flag="--keep-qualifiers", recipe=True),
    Option("paste", P.paste, "soft: blend with the cut-out's alpha (the authors'); hard: copy the pixels whose "
           "alpha reaches --paste-alpha.", recipe=True),
    Option("paste_alpha", P.paste_alpha, "Alpha (1-255) from which a pixel belongs to its object: the box is the "
           "extent of those pixels, masks and 'visible' count them.", "int", recipe=True),
    Option("absolute_referral_p", P.absolute_referral_p, "Probability that an object whose category is unique "
           "gets an absolute position (e.g. 'apple at the left').", "float", recipe=True),
    Option("referral_grammar", P.referral_grammar, "Text of positional referrals. grammatical: English phrases "
           "after the prompt's 'a|an' ('cup on the left', 'lower cup', 'pair of scissors in front'); authors: the "
           "authors' templates '{pos} {name}', '{name} {pos}', '{name} on {pos}' ('below cup', 'cup on below'), "
           "what the paper trained with (recipes/pin-refcoco.yaml). Scenes without position words are the same "
           "with both.", recipe=True),
    Option("background_fit", P.background_fit, "squash: resize to the square canvas ignoring aspect (paper); "
           "crop: random square crop first.", recipe=True),
    Option("masks", P.masks, "Also write {key}.mask.png: 0 background, i+1 = visible pixels of objects\\[i].",
           "bool", recipe=True),
    Option("jpeg_quality", P.jpeg_quality, "JPEG quality of the scene images.", "int", recipe=True),
    Option("seed", P.seed, "Run seed: scene k depends only on (seed, k, inputs).", "int", recipe=True),
    Option("tasks", P.tasks, "Question tasks written into each scene's json as 'questions' (each answer checked "
           "unique): name, referral, relation ('the cup left of the dog'), attribute (colour, size), all (every box "
           "of a name), absent (a bank category not in the scene), count, region ('what is at [box]?'), point. "
           "name / referral only (the paper's) write nothing new: the record is today's, byte for byte; "
           "training derives the same questions from it (docs/compose.md).", "strs", recipe=True,
           shown=csv(P.tasks)),
)
SCENE_NAMES = frozenset(o.name for o in SCENE)
_LAYOUT = frozenset(LayoutParams.__dataclass_fields__)

EXTRA_OBJECT_ROOTS = Option(
    "extra_object_roots", (), "A folder outside the bank that object paths may point into (repeatable; e.g. where an "
    "X-Paste pools file's images live). Any other path outside the bank is skipped and counted.", "strs",
    flags=("--extra-object-root",), multiple=True, metavar="PATH")

CATEGORIES_MAP = Option(
    "categories_map", None, "YAML or JSON file mapping file or folder names (or the categories read from them) to "
    "category names, e.g. 'sheep-md-v0: sheep'; or a CSV of name,category rows. Renames the categories of the "
    "referral text and the scene records; names not in it keep theirs, a name that matches nothing is warned "
    "about. Or lvis, coco or voc: look each category up among that dataset's names and synonyms "
    "(teddybear_jarno_vasamaa -> teddy bear, with its LVIS id), warning about those that match nothing. Part of "
    "the run's options.", metavar="FILE|lvis|coco|voc")

COMPOSE_OPTIONS = (
    Option("objects", None, "Object bank (a folder or an s3:// / gs:// / hf:// URL): a folder with index.jsonl "
           "(from `synthgen render`), a <category>/*.png tree, a flat folder of RGBA PNGs (the category from each file "
           "name), or X-Paste's LVIS_instance_pools.json.",
           required=True, metavar="PATH"),
    Option("backgrounds", None, f"Backgrounds {URL}: a folder of images (searched recursively; jpg/png/webp/...), "
           "a WebDataset .tar, a folder of tars, or a brace pattern like 'bg-{000..009}.tar'. BG-20k in the paper.",
           required=True, metavar="PATH"),
    Option("out", None, "Output folder (or s3:// / gs:// URL) for scenes-NNNNNN.tar shards, their *_stats.json "
           "and manifest.json. Re-running resumes.", flags=("--out", "-o"), required=True, metavar="PATH"),
    Option("num_samples", None, "Number of scenes to write (required unless the recipe sets it).", "int",
           flags=("--num-samples", "-n"), required=True, recipe=True),
    Option("extend", False, "Grow an existing --out to --num-samples scenes: the same options, more scenes (scene "
           "k stays scene k; done shards are kept, a partial last shard is rewritten). Without it another "
           "--num-samples is refused.", "bool"),
    Option("prepare_backgrounds", False, "Decode each background once, shrunk to twice the canvas, into shards "
           "inside --out (OUT/backgrounds-SIZE, reused by the next run): several times faster on multi-megapixel "
           "backgrounds. Same as running `synthgen prepare-backgrounds` first.", "bool", recipe=True),
    Option("prepare_objects", False, "Decode each cut-out once, cropped and shrunk to the canvas, into a prepared "
           "bank inside --out (OUT/objects-SIZE, reused by the next run): compose from a bank of thousands of "
           "cut-outs runs several times faster, with the same scene bytes. Same as running `synthgen "
           "prepare-objects --size SIZE` first.", "bool", recipe=True),
    EXTRA_OBJECT_ROOTS,
    CATEGORIES_MAP,
    Option("min_usable", MIN_USABLE, "Refuse a bank of which fewer than this fraction of the cut-outs are usable "
           "(no alpha, unreadable, all transparent, outside the bank, ...; a bank of over 500 is judged on an even "
           "sample of 500); 0: compose from any bank with a usable cut-out. Not part of the run's options: "
           "changing it never refuses a resume.", "float", metavar="FRACTION"),
    recipe_option("compose", "recipes/pin-paper.yaml"),
    *SCENE,
    Option("samples_per_shard", SAMPLES_PER_SHARD, "Scenes per .tar shard.", "int", recipe=True),
    WORKERS, RAY_ADDRESS, EXECUTOR,
    Option("progress", True, "Show the progress bar (on stderr).", "bool", cli=False),
)


def scene_params_of(values: Mapping[str, Any]) -> ComposeParams:
    """The :class:`ComposeParams` of resolved compose values (the scene options among them)."""
    layout = {k: v for k, v in values.items() if k in SCENE_NAMES and k in _LAYOUT}
    rest = {k: v for k, v in values.items() if k in SCENE_NAMES and k not in _LAYOUT}
    return ComposeParams(layout=LayoutParams(**layout), **rest)


def scene_values(given: Mapping[str, Any], where: str = "compose settings") -> dict[str, Any]:
    """The scene options, resolved as ``synthgen compose`` resolves them from ``given`` (and
    ``given["recipe"]``'s ``compose:`` section); the options a ``compose:`` section may set that
    shape shards, not scenes, are accepted and left out; the others (``objects``, ...) refused."""
    for key in given:
        opt = COMPOSE.option(key, where)
        if opt.name not in SCENE_NAMES and not opt.recipe and opt.name != "recipe":
            raise UserError(f"{where}: {opt.name} is not a scene setting (the scene settings: "
                            f"{', '.join(sorted(SCENE_NAMES))})")
    values = resolve(COMPOSE, given, check_required=False)
    return {k: values[k] for k in sorted(SCENE_NAMES)}


def scene_params(given: Mapping[str, Any] | None = None, **options: Any) -> ComposeParams:
    """:class:`ComposeParams` from compose's scene options named as ``synthgen compose`` names them
    (``a_max``, ``s_min`` as a list or ``"0.3,0.2,0.1"``, ..., and ``recipe=PATH`` for its
    ``compose:`` section), checked."""
    from synthgen.errors import raise_problems

    params = scene_params_of(scene_values({**(given or {}), **options}))
    raise_problems(params.problems())
    return params


def _compose(v: dict[str, Any]):
    from synthgen.compose.run import ComposeJob

    job = ComposeJob(objects=v["objects"], backgrounds=v["backgrounds"], out=v["out"], num_samples=v["num_samples"],
                     samples_per_shard=v["samples_per_shard"], params=scene_params_of(v),
                     extra_object_roots=tuple(v["extra_object_roots"]), prepare_backgrounds=v["prepare_backgrounds"],
                     min_usable=v["min_usable"], categories_map=v["categories_map"],
                     prepare_objects=v["prepare_objects"])
    return job


COMPOSE = Command(
    "compose", "Compose grounding scenes: paste 1..a_max cut-outs on backgrounds on a grid (the PIN composition "
    "function C) and write WebDataset shards with boxes and referral text.",
    COMPOSE_OPTIONS, _compose, run="synthgen.compose.run:run_compose",
    runtime=("workers", "ray_address", "executor", "extend", "progress"), section="compose",
    done="synthgen.schema:scenes_done")


def _prepare(v: dict[str, Any]):
    from synthgen.compose.prepare import PrepareJob

    job = PrepareJob(source=v["backgrounds"], out=v["out"], size=v["size"], per_shard=v["per_shard"],
                     quality=v["jpeg_quality"])
    return job


PREPARE = Command(
    "prepare-backgrounds", "Decode every background once, shrunk to --size, into WebDataset shards that compose and "
    "train-pin read like any backgrounds (much faster than multi-megapixel originals).",
    (Option("backgrounds", None, f"Backgrounds {URL}: a folder of images (recursive), a WebDataset .tar, a folder "
            "of tars, or a brace pattern.", argument=True, required=True, metavar="BACKGROUNDS"),
     Option("out", None, "Folder (or s3:// / gs:// URL) for backgrounds-NNNNNN.tar shards, their _stats.json and "
            "manifest.json. Re-running resumes.", flags=("--out", "-o"), required=True, metavar="PATH"),
     Option("size", 448, "Shorter side of the prepared images in pixels (never enlarged); twice the largest canvas "
            "you compose (448 for 224). The canvas itself (224) makes compose ~1.3x faster for that canvas only.",
            "int"),
     Option("per_shard", 500, "Backgrounds per shard.", "int"),
     Option("jpeg_quality", 95, "JPEG quality of the prepared images.", "int"),
     WORKERS, RAY_ADDRESS, EXECUTOR,
     Option("progress", True, "Show the progress bar (on stderr).", "bool", cli=False)),
    _prepare, run="synthgen.compose.prepare:prepare_backgrounds", runtime=("workers", "ray_address", "executor", "progress"),
    done="synthgen.schema:scenes_done")


def _prepare_objects(v: dict[str, Any]):
    from synthgen.compose.prepare_objects import ObjectsJob

    return ObjectsJob(source=v["objects"], out=v["out"], size=v["size"], per_shard=v["per_shard"],
                      extra_object_roots=tuple(v["extra_object_roots"]))


PREPARE_OBJECTS = Command(
    "prepare-objects", "Decode every cut-out of an object bank once, cropped and shrunk to --size, into a prepared "
    "bank (raw pixels in shards, an index) that compose, train-pin and SceneGenerator read like the bank itself, "
    "without decoding PNGs (much faster with thousands of cut-outs).",
    (Option("objects", None, f"Object bank {URL}: any bank compose reads (index.jsonl, a <category>/*.png tree, a "
            "flat folder, X-Paste pools).", argument=True, required=True, metavar="BANK"),
     Option("out", None, "Folder (or s3:// / gs:// URL) outside the bank for objects-NNNNNN.rgba shards, their "
            "_stats.json, objects.jsonl and manifest.json. Re-running resumes.", flags=("--out", "-o"),
            required=True, metavar="PATH"),
     Option("size", 224, "Longest side of the prepared cut-outs in pixels (never enlarged): the canvas you compose "
            "(compose --size). Composing at this canvas gives the same scene bytes as the bank itself; at a smaller "
            "canvas the cut-outs larger than --size are shrunk twice (close, not the same bytes: docs/fidelity.md); "
            "a larger canvas is refused.",
            "int"),
     Option("per_shard", 1000, "Cut-outs per shard.", "int"),
     EXTRA_OBJECT_ROOTS, WORKERS, RAY_ADDRESS, EXECUTOR,
     Option("progress", True, "Show the progress bar (on stderr).", "bool", cli=False)),
    _prepare_objects, run="synthgen.compose.prepare_objects:prepare_objects",
    runtime=("workers", "ray_address", "executor", "progress"), done="synthgen.schema:scenes_done")


PREVIEW = Command(
    "preview", "Contact sheet of scenes: every box with its referral, the target thick in magenta with its prompt "
    "and answer underneath; or of an object bank: kept (green) and rejected (red) cut-outs with why they were "
    "rejected and their CLIP scores.",
    (Option("source", None, "Scene shards (a folder, a .tar, or a brace pattern), or an object bank folder (from "
            "`synthgen render`, a folder of category sub-folders or of cut-outs, X-Paste pools).", argument=True,
            required=True, metavar="SHARDS_OR_BANK"),
     Option("out", None, "Contact sheet to write (.png; scenes also .jpg/.webp) (default: preview.png in the current folder, "
            "never inside the input).", "path",
            flags=("--out", "-o")),
     Option("n", 16, "Scenes: how many to show.", "int", flags=("-n", "--num")),
     Option("per_category", 16, "Bank: most cut-outs shown per category, kept ones first (rejected ones get at "
            "least half of them).", "int"),
     Option("scale", 2, "Scenes: upscaling of each scene (and its labels) for legibility.", "int"),
     Option("category", "", "Bank: comma list of categories to show (default: all)."),
     Option("thumb", 96, "Bank: thumbnail side in pixels (16-1024).", "int"),
     Option("questions", False, "Scenes: also list each scene's questions (compose --tasks) under it: task, "
            "question -> answer, and the objects the answer refers to.", "bool")),
    dict, run="synthgen.views:preview", done="synthgen.schema:file_done", view=True)

STATS = Command(
    "stats", "Counts and distributions of scene shards: objects per scene, box sizes in cells, categories, visible "
    "fraction, referral kinds, and what compose dropped, resampled or skipped (by reason, from each shard's "
    "*_stats.json).",
    (Option("shards", None, "Scene shards: a folder, a .tar, or a brace pattern.", argument=True, required=True,
            metavar="SHARDS"),
     Option("out", None, "Also draw the distributions into this PNG (1600 x 720): objects per scene, box sides in "
            "cells, box centres on the grid, visible fraction, referral kinds and relations, dropped objects / "
            "resampled scenes / skipped inputs by reason (from the shards' *_stats.json), top categories.", "path",
            flags=("--out", "-o")),
     Option("top", 15, "Number of most frequent categories to list.", "int")),
    dict, run="synthgen.views:stats", done="synthgen.schema:file_done", view=True)

EXPORT_COCO = Command(
    "export-coco", "Export scene shards as a COCO-format detection set (e.g. for `eval-pin --coco-json`); the "
    "same as `export --to coco`.",
    (Option("shards", None, "Scene shards: a folder, a .tar, or a brace pattern (paths or s3:// / gs:// / hf:// "
            "URLs).", argument=True, required=True, metavar="SHARDS"),
     Option("out", None, "Folder (or s3:// / gs:// URL) for images/ and instances.json.", flags=("--out", "-o"),
            required=True, metavar="PATH"),
     Option("limit", None, "Export at most this many scenes.", "int"),
     Option("overwrite", False, "Replace an earlier export in --out (its instances.json and every image; without "
            "it an earlier export is kept and export-coco stops before any work).", "bool")),
    dict, run="synthgen.compose.export:export_coco", done="synthgen.schema:coco_done", overwrite="--overwrite")
