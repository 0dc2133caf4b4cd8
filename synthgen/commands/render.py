"""The render stage's command: ``render`` (its bank is previewed by ``preview``)."""

from __future__ import annotations

from typing import Any

from synthgen.commands.core import Command, Option
from synthgen.commands.shared import RAY_ADDRESS, WORKERS, csv, recipe_option
from synthgen.errors import UserError
from synthgen.render.config import RenderConfig as R


def _render(v: dict[str, Any]):
    from synthgen.render.config import RenderConfig, RenderJob

    if len(v["area"]) != 2:
        raise UserError(f"--area must be LO,HI (e.g. 0.05,0.95), got {csv(v['area'])}")
    names = ("per_category", "sd_model", "steps", "guidance", "size", "prompt", "clip_model", "clip_pretrained",
             "cutout", "min_clip", "tolerance", "area", "min_per_category", "batch_size", "seed", "gpus_per_worker",
             "workers", "ray_address", "object_store_mb", "keep_rejected")
    cfg = RenderConfig(out=v["out"], **{k: v[k] for k in names})
    cats = v["categories"]
    job = RenderJob(cfg, categories=cats if isinstance(cats, str) else tuple(cats),
                    categories_file=str(v["categories_file"]) if v["categories_file"] is not None else None,
                    exclude=v["exclude"], only=v["only"], prepared=v["prepared"], prepared_size=v["prepared_size"])
    return job


RENDER = Command(
    "render", "Render objects from text (X-Paste recipe): Stable Diffusion -> rembg cut-out -> CLIP score -> filter "
    "-> object bank (index.jsonl + RGBA PNGs).",
    (Option("out", None, "Object bank folder (or s3:// / gs:// URL) to write (created; re-running the same command "
            "resumes it).", flags=("--out", "-o"), required=True, metavar="PATH"),
     Option("categories", "lvis", "lvis (LVIS v1, 1203 categories), coco (80), voc (20), or a FILE: .txt with one "
            "name a line, or .json with a list of names / LVIS-format category dicts. (The Python API also takes a "
            "list of names.)", "names", recipe=True),
     Option("categories_file", None, "For --categories lvis: the official LVIS v1 annotation json (or a list of "
            "its categories); default: the cached copy, downloaded once from the LVIS site.", "path", recipe=True),
     Option("exclude", (), "Comma list: coco and/or voc drop every category that is a COCO / VOC class (matched by "
            "WordNet synset; the paper trains on LVIS minus both: --exclude coco,voc); other items are category "
            "names to drop.", "strs", recipe=True, shown=""),
     Option("only", (), "Comma list of category names to keep (applied before --exclude).", "strs", recipe=True,
            shown=""),
     Option("per_category", R.per_category, "Images generated per category (paper: 60; X-Paste: 100).", "int",
            recipe=True),
     Option("sd_model", R.sd_model, "Diffusers text-to-image pipeline: hub id or local directory (X-Paste: SD "
            "v1.5).", recipe=True),
     Option("steps", R.steps, "Denoising steps (DPM-Solver multistep).", "int", recipe=True),
     Option("guidance", R.guidance, "Classifier-free guidance scale.", "float", recipe=True),
     Option("size", R.size, "Generated image side in pixels.", "int", recipe=True),
     Option("prompt", R.prompt, "Prompt template; {name} is the category name with underscores as spaces.",
            recipe=True),
     Option("clip_model", R.clip_model, "open_clip model name, hf-hub:org/repo, or a local directory with "
            "open_clip_config.json and weights (X-Paste: ViT-L/14).", recipe=True),
     Option("clip_pretrained", R.clip_pretrained, "open_clip pretrained tag or checkpoint file for a built-in "
            "--clip-model (ignored for hf-hub:/directories; empty = none).", recipe=True),
     Option("cutout", tuple(R.cutout), "rembg session(s), comma separated; several = ensemble, the mask with the "
            "best CLIP score wins (u2net, isnet-general-use, birefnet-general, ..., or "
            "u2net_custom:/path/model.onnx under REMBG_HOME).", "strs", recipe=True, shown=csv(R.cutout)),
     Option("min_clip", R.min_clip, "CLIP score bar; per category bar = min(min-clip, best - tolerance).", "float",
            recipe=True),
     Option("tolerance", R.tolerance, "The category's best score minus this is the highest possible bar.", "float",
            recipe=True),
     Option("area", R.area, "Allowed mask area fraction LO,HI of the generated image.", "floats", recipe=True,
            shown=csv(R.area)),
     Option("min_per_category", R.min_per_category, "Drop categories with fewer surviving objects (paper: 20).",
            "int", recipe=True),
     Option("batch_size", R.batch_size, "Images per model call.", "int", recipe=True),
     Option("seed", R.seed, "Base seed; each (category, index) gets its own seed derived from it.", "int",
            recipe=True),
     Option("gpus_per_worker", R.gpus_per_worker, "GPU share of a generator actor: 1 (a GPU each), or a fraction "
            "< 1 to pack several generators on a GPU (at most 1: a generator uses one GPU). The CLIP actors take "
            "what the generators leave of each GPU; the rembg cut-out actors too when onnxruntime offers CUDA "
            "(onnxruntime-gpu), else they run on the CPU.", "float", recipe=True),
     WORKERS, RAY_ADDRESS,
     Option("object_store_mb", R.object_store_mb, "Object store of the local Ray in MB (images in flight between "
            "the stages; ignored with --ray-address).", "int"),
     Option("keep_rejected", R.keep_rejected, "Also save rejected cut-outs (under CATEGORY/_rejected/).", "bool",
            recipe=True),
     Option("prepared", None, "Also write the finished bank's prepared form into this folder (outside --out): its "
            "cut-outs decoded once, as `synthgen prepare-objects` writes them, for compose and train-pin to read "
            "without decoding PNGs (much faster with thousands of cut-outs). Re-running resumes it.", metavar="PATH"),
     Option("prepared_size", 224, "With --prepared: the canvas it is prepared for (compose --size).", "int"),
     recipe_option("render", "recipes/pin-paper.yaml"),
     Option("progress", True, "Show the progress bars (on stderr).", "bool", cli=False)),
    _render, run="synthgen.render.pipeline:run_render", runtime=("progress",), section="render",
    done="synthgen.bank.format:bank_done")
