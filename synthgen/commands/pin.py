"""The train-pin stage's commands: ``train-pin``, ``eval-pin``, ``predict``, ``import-pin``,
``export-pin``."""

from __future__ import annotations

from typing import Any

from synthgen.commands.compose import CATEGORIES_MAP
from synthgen.commands.core import Command, Option
from synthgen.commands.shared import RUN_MODEL_HELP, VLM_OPTION_HELP, csv, recipe_option
from synthgen.pin.models import METHODS
from synthgen.pin.models.registry import DEFAULT_MODELS, VLM_OPTIONS, VLMS, typed_options
from synthgen.pin.training.config import TrainConfig as T

VLM_HELP = ("VLM family: " + ", ".join(DEFAULT_MODELS) + " (blip2: transformers Blip2ForConditionalGeneration), "
            "or auto (read from the --model checkpoint's config).")
MODEL_HELP = ("Hub id or local directory of the VLM weights (default: "
              + ", ".join(f"{m} for {v}" for v, m in DEFAULT_MODELS.items()) + ").")
RUN = "Run directory of train-pin (pin.json + pin.safetensors), or its s3:// / gs:// / hf:// URL."


def _vlm_options(help: str, recipe: bool = False) -> Option:
    return Option("vlm_options", {}, help, "pairs", flags=("--vlm-option",), multiple=True, recipe=recipe,
                  metavar="KEY=VALUE", shown="")


def _device(what: str) -> Option:
    return Option("device", None, f"Device {what} runs on: cpu, cuda (this process's GPU: under torchrun each rank "
                  "its LOCAL_RANK's) or cuda:N (one process only) \\[default: the GPU if there is one].")


def _micro_batch(value) -> int | str:
    """``auto`` or a number as an integer (anything else is kept: TrainConfig's checks name it)."""
    text = str(value).strip().lower()
    return int(text) if text.isdigit() else "auto" if text == "auto" else value


def _train(v: dict[str, Any]):
    from synthgen.commands.compose import scene_values
    from synthgen.pin.training.config import TrainConfig

    compose = {}
    if v["objects"] is not None:  # scenes composed on the fly: compose's scene settings, read as compose reads them
        compose = scene_values({**v["compose"], "recipe": v["recipe"]}, "train-pin compose settings")
    shards = v["shards"]
    names = ("objects", "backgrounds", "out", "vlm", "model", "method", "steps", "epochs", "epoch_size", "warmup_epochs",
             "warmup_shards", "batch_size", "lr", "precision", "loader_workers", "val", "eval_every", "val_limit",
             "save_every", "log_every", "resume", "seed", "name_loss", "activation", "table", "hidden",
             "shuffle_buffer", "max_bad_samples", "progress", "grad_checkpointing", "attn_implementation",
             "max_skipped_steps", "device", "tasks")
    cfg = TrainConfig(micro_batch=_micro_batch(v["micro_batch"]), shards=shards if isinstance(shards, (str, type(None))) else list(shards), compose=compose,
                      extra_object_roots=tuple(v["extra_object_roots"]), categories_map=v["categories_map"],
                      vlm_options=typed_options(v["vlm"], v["vlm_options"]), method_options=dict(v["method_options"]),
                      **{k: v[k] for k in names})
    return cfg


TRAIN = Command(
    "train-pin", "Train PIN on a frozen VLM from scene shards, or from scenes composed on the fly (torchrun for "
    "several GPUs).",
    (Option("shards", None, "Scene shards: a directory of .tar, a glob, a brace pattern (scenes-{000000..000099}.tar) "
            "or a URL. Or give --objects and --backgrounds instead.", "names", argument=True, metavar="SHARDS"),
     Option("objects", None, "Compose the training scenes on the fly in the DataLoader workers (the authors' way: "
            "fresh scenes every step) from this object bank; the compose settings are the `compose:` section of "
            "--recipe (default: compose's defaults, the paper's; its options that shape shard folders, "
            "num_samples and samples_per_shard, do not apply, and the backgrounds are always prepared).",
            metavar="PATH"),
     Option("backgrounds", None, "Backgrounds for --objects (a folder, tar shards or a pattern, as for compose). Raw "
            "images are prepared once into OUT/backgrounds-SIZE (decoded and shrunk to twice the canvas, as compose "
            "--prepare-backgrounds; reused by --resume); a prepare-backgrounds folder is read as it is.",
            metavar="PATH"),
     Option("extra_object_roots", (), "With --objects: a folder outside the bank that object paths may point into "
            "(repeatable).", "strs", flags=("--extra-object-root",), multiple=True, metavar="PATH"),
     CATEGORIES_MAP,
     Option("compose", {}, "With objects=: compose's scene settings (a_max=..., o_max=..., ...) over the recipe's "
            "`compose:` section.", "pairs", cli=False),
     Option("vlm", T.vlm, VLM_HELP, recipe=True),
     Option("model", None, MODEL_HELP, recipe=True),
     _vlm_options("An option of the VLM family (repeatable), e.g. openflamingo: lm=DIR, vision=NAME, "
                  "vision_pretrained=TAG|PATH, cross_attn_every=N, vision_tokens=ln_post|raw.", recipe=True),
     Option("method", T.method, "What is trained in the frozen VLM (the paper's Table 1 rows): " + "|".join(METHODS)
            + ". pin; coop (16 "
            "learnable tokens before the LLM's input); vpt-fusion (100 tokens appended to the fusion network's input, "
            "where PIN is added; blip2, openflamingo); vpt-vision (100 tokens appended to the vision encoder's input "
            "tokens; blip2, openflamingo, llava, paligemma); lora-vision (LoRA r=16, alpha=16 on the vision "
            "encoder's attention, through peft); full (every VLM weight: an upper bound for tiny models; the "
            "checkpoint holds the whole VLM).", recipe=True, metavar="METHOD"),
     Option("method_options", {}, "A size of the --method (repeatable): tokens=N (coop, vpt-*), r=N and alpha=N "
            "(lora-vision); default the paper's.", "pairs", flags=("--method-option",), multiple=True, recipe=True,
            metavar="KEY=VALUE", shown=""),
     Option("out", T.out, "Run directory, or an s3:// / gs:// URL (checkpoints, log).", flags=("--out", "-o"),
            metavar="PATH"),
     Option("steps", T.steps, "Total optimiser steps, when --epochs is not given (the paper's 160 x 60,000 scenes "
            "at 2 GPUs x 64 is 74,880).", "int", recipe=True),
     Option("epochs", T.epochs, "Length in epochs of --epoch-size scenes (paper: 160); replaces --steps.", "int",
            recipe=True),
     Option("epoch_size", T.epoch_size, "Scenes an epoch over all GPUs (paper: 60,000), split over the ranks like a "
            "DistributedSampler.", "int", recipe=True),
     Option("warmup_epochs", T.warmup_epochs, "The authors' warm-up (40 in their script): for these first epochs "
            "every scene has a_max objects and the loss also covers '{name} located at'. Needs --epochs; with "
            "shards also --warmup-shards.", "int", recipe=True),
     Option("warmup_shards", None, "Shards for the warm-up phase when training from shards (compose them with "
            "--fixed-count).", "names"),
     Option("batch_size", T.batch_size, "Scenes per optimiser step per GPU (paper: 64).", "int", recipe=True),
     Option("micro_batch", T.micro_batch, "Scenes a forward/backward takes: the batch is split into micro-batches "
            "whose gradients add up to the whole batch's (gradient accumulation; the update is the batch's). "
            "auto = the batch, halved on each CUDA out-of-memory error until it fits.", recipe=True, metavar="N|auto"),
     Option("grad_checkpointing", T.grad_checkpointing, "Recompute the VLM's layers between PIN and the loss in "
            "backward instead of keeping their activations (less memory, ~1/3 more compute).", "bool", recipe=True),
     Option("attn_implementation", T.attn_implementation, "Attention kernels of the VLM: auto = transformers' "
            "choice (sdpa where the model has it; Gemma 2, PaliGemma 2's LM, is eager), sdpa, flash_attention_2 "
            "(needs flash-attn), eager. OpenFlamingo: its own sdpa always.", recipe=True),
     Option("lr", T.lr, "Adam learning rate, no weight decay (paper: 1e-3).", "float", recipe=True),
     Option("precision", T.precision, "The frozen VLM's precision on GPU (PIN and Adam are fp32 always): bf16 = "
            "weights and autocast bf16; fp16 = weights and autocast fp16 with a grad scaler; fp16-mixed = fp16 "
            "autocast over fp32 weights with a grad scaler (the authors', Lightning precision=16; ~3x the memory); "
            "auto = bf16 where the GPU has it, else fp16; fp32. The CPU always trains in fp32.", recipe=True),
     Option("max_skipped_steps", T.max_skipped_steps, "Steps skipped in a row (loss not finite, or fp16 gradients "
            "overflowed) before the run stops with the remedy.", "int", recipe=True),
     _device("training"),
     Option("loader_workers", T.loader_workers, "DataLoader worker processes per GPU that read (or compose) the "
            "scenes (0 = in the main process). Not Ray CPUs: train-pin does not use Ray.", "int", recipe=True),
     Option("val", None, "Validation scene shards: mIoU every --eval-every steps (with a --tasks mix, each of "
            "its tasks' score too).", "names"),
     Option("eval_every", T.eval_every, "Steps between validations.", "int", recipe=True),
     Option("val_limit", T.val_limit, "Queries (objects) per validation (and questions per task of a --tasks "
            "mix).", "int", recipe=True),
     Option("save_every", T.save_every, "Steps between checkpoints.", "int", recipe=True),
     Option("log_every", T.log_every, "Steps between log.jsonl lines.", "int", recipe=True),
     Option("resume", False, "Continue the run in --out (PIN, optimiser, step, RNG) along the same curve.", "bool"),
     Option("seed", T.seed, "Seed for PIN init, data order, target draws and composed scenes.", "int", recipe=True),
     Option("name_loss", T.name_loss, "Also put the loss on the object name tokens after the warm-up (default: box "
            "only).", "bool", recipe=True),
     Option("activation", T.activation, "PIN MLP activation: silu (authors' code) | swiglu (as the paper "
            "describes).", recipe=True),
     Option("table", T.table, "PIN input table: sinusoid (fixed) | learned.", recipe=True),
     Option("hidden", T.hidden, "PIN MLP hidden widths (paper: 2 layers).", "ints", recipe=True, shown=csv(T.hidden)),
     Option("shuffle_buffer", T.shuffle_buffer, "Sample shuffle buffer per data worker (shards).", "int",
            recipe=True),
     Option("max_bad_samples", T.max_bad_samples, "Share of the samples read that may be bad (not a scene record, "
            "no or broken image, other canvas, damaged shard): they are skipped and counted in log.jsonl; past it "
            "(and past 10) train-pin stops, naming the shard and key.", "float", recipe=True),
     Option("tasks", T.tasks, "Question tasks mixed by weight, TASK=WEIGHT,... (name, referral, relation, attribute, "
            "all, absent, count, region, point; see compose --tasks): each sample asks one question of its scene, "
            "the task drawn by weight among those the scene can ask; the loss is on the answer. name=1 = the "
            "paper's (any object by its referral; today's stream exactly). Questions come from the shards' "
            "'questions', else are derived from each scene record (docs/train-eval.md).", recipe=True,
            metavar="TASK=W,..."),
     Option("progress", T.progress, "Show the progress bar.", "bool", off_flag="--no-progress"),
     recipe_option("train", "recipes/pin-paper.yaml")),
    _train, run="synthgen.pin.training.train:train", section="train", done="synthgen.schema:pin_run_done",
    resume=("--resume", "synthgen.schema:pin_run_exists"))


def _eval(v: dict[str, Any]):
    from synthgen.pin.evaluation.job import EvalJob
    from synthgen.pin.evaluation.protocol import EvalProtocol

    proto = EvalProtocol(**{k: v[k] for k in EvalProtocol.__dataclass_fields__})
    return EvalJob(run=v["run"], coco_json=v["coco_json"], voc=v["voc"], refcoco=v["refcoco"], images=v["images"],
                   scenes=v["scenes"], tasks=v["tasks"],
                   split=v["split"], protocol=proto, out=v["out"], model=v["model"], batch_size=v["batch_size"],
                   limit=v["limit"], vlm_options=dict(v["vlm_options"]), overwrite=v["overwrite"], device=v["device"])


EVAL = Command(
    "eval-pin", "Evaluate a PIN run: mIoU (all/medium/large) on a COCO-format set or VOC, RefCOCO P@0.3, or a "
    "metric per question task on synthetic scene shards (--scenes).\n\n"
    "Defaults follow the PIN authors' evaluation code; metrics.json records every choice (protocol).",
    (Option("run", None, RUN, argument=True, required=True, metavar="RUN"),
     Option("coco_json", None, "COCO-format instances json (a path or URL) (COCO val2017, LVIS v1 val, VOC as "
            "COCO json).", metavar="PATH"),
     Option("voc", None, "PASCAL VOC folder of one year (VOCdevkit/VOC2007): ImageSets/Main/SPLIT.txt, "
            "Annotations/*.xml, JPEGImages/; raw class names, difficult objects included (the authors').",
            metavar="PATH"),
     Option("refcoco", None, "RefCOCO directory (refs(unc).p + instances.json): report P@0.3 and mIoU.",
            metavar="PATH"),
     Option("scenes", None, "Synthetic validation scene shards (a folder of .tar, a pattern or a URL): score each "
            "question task of --tasks on them.", metavar="SHARDS"),
     Option("tasks", "name", "With --scenes: the question tasks scored, each with its metric (name, referral, "
            "relation, attribute, all: mIoU and P@0.5, several boxes matched one to one greedily by IoU; absent, "
            "count, region: accuracy; point: on the target's mask, or its box without masks). With --limit N: "
            "the first N questions of each task.", metavar="TASK,..."),
     Option("images", None, "Directory (or URL prefix) with the images of the set (LVIS: the COCO root holding "
            "val2017/, or val2017/ itself; not used with --voc).", metavar="PATH"),
     Option("split", None, "RefCOCO split \\[default: testA] or VOC image set \\[default: test]."),
     Option("max_objects", 3, "Keep images with 1..N annotated objects, crowd and difficult ones included (paper: 3; "
            "not RefCOCO).", "int"),
     Option("out", None, "preds.jsonl path or URL \\[default: RUN/eval/SET/WHAT/preds.jsonl, WHAT = model or "
            "random-baseline (uniform-, native-), then each protocol choice that differs from the authors', e.g. "
            "model+parse-lenient]; metrics.json is written next to it.", flags=("--out", "-o"), metavar="PATH"),
     Option("overwrite", False, "Replace the results of an earlier evaluation at the same path (without it they are "
            "kept and eval-pin stops before any work).", "bool"),
     Option("baseline", None, "Score a baseline instead of the model, on the same queries: 'random' = the paper's "
            "(for each query a ground-truth box of another image of the set), 'uniform' = corners drawn uniformly on "
            "the grid, 'prior' = the one grid box with the best mIoU on the other half of the set's images (where "
            "objects usually are: a method must beat it), 'raw' = the run's VLM without PIN, asked PIN's question "
            "(the paper's 'raw' row), 'native' = the run's VLM without PIN, asked with its own grounding prompt "
            "(paligemma: 'detect NAME' -> <loc> tokens; qwen2_5_vl: bbox_2d JSON), 'in-context' = an openflamingo "
            "run's VLM without PIN shown --shots images of the set with their boxes before each query, --repeats "
            "times (the paper's 2/5/10 context rows; mean +- std)."),
     Option("shots", 2, "--baseline in-context: context images per query (the paper: 2, 5, 10), drawn from the "
            "set's other images, one object each.", "int"),
     Option("repeats", 10, "--baseline in-context: draws of the contexts, repeat r seeded by (--seed, r); "
            "metrics.json holds their mean, std and each repeat's numbers (the paper: 10).", "int"),
     Option("article", "auto", "Query article: 'auto' = a/an by the first letter (the authors' and training's), "
            "'a' = always 'a'."),
     Option("names", "strip", "COCO-format class names: 'strip' = '_' -> space and the qualifier dropped, "
            "'bow_(weapon)' -> 'bow' (the authors' LVIS rule), 'raw' = 'bow (weapon)'. VOC names are always the "
            "XML's."),
     Option("crowd", "query", "COCO iscrowd annotations, which always count towards --max-objects: 'query' = "
            "queried too (the authors'), 'skip' = not queried."),
     Option("gt_boxes", "authors", "Ground-truth boxes on the canvas: 'authors' = scaled and truncated to integers "
            "as their loaders (COCO/RefCOCO: x, y, w, h each, far corner <= canvas-1; VOC: corners, clipped to "
            "1..canvas), 'exact' = scaled as floats. Size buckets use the same boxes."),
     Option("parse", "strict", "Answer parser: 'strict' = the authors' (' \\[a,b,c,d]' with a space before '[', "
            "every value a grid line, a<c, b<d), 'lenient' = any \\[a,b,c,d]. Rejected answers count as the "
            "one-cell box at the origin; both rules' counts are reported."),
     Option("refcoco_sentences", "last", "RefCOCO queries: 'last' = one per referred object, its last sentence's "
            "raw text (the authors'), 'all' = one per sentence (its 'sent')."),
     Option("num_beams", 3, "Beam search width (the authors': 3).", "int"),
     Option("max_new_tokens", 12, "Most tokens generated per answer (the authors': 12).", "int"),
     Option("model", None, RUN_MODEL_HELP),
     _vlm_options(VLM_OPTION_HELP),
     Option("batch_size", 16, "Queries per generate call.", "int"),
     Option("limit", None, "Evaluate only the first N queries.", "int"),
     _device("the VLM"),
     Option("seed", 0, "Seed of the baselines.", "int")),
    _eval, run="synthgen.pin.evaluation.job:run_eval", done="synthgen.schema:eval_done", overwrite="--overwrite")

EXIT_FALLBACK = 3  # predict --strict: the answer held no box (2 is a user error)


def _predict(v: dict[str, Any]):
    return {"run_dir": v["run"], "image": v["image"], "text": v["text"], "out": v["out"], "model": v["model"],
            "vlm_options": dict(v["vlm_options"]) or None, "device": v["device"]}


PREDICT = Command(
    "predict", "Print the box of TEXT in IMAGE (original pixels) and optionally draw it. An answer with no box gives "
    "the one-cell box at the origin, marked as a fallback (printed, in --json and drawn dashed grey).",
    (Option("run", None, "Run directory of train-pin (or its URL).", argument=True, required=True, metavar="RUN"),
     Option("image", None, "Image file (or URL).", argument=True, required=True, metavar="IMAGE"),
     Option("text", None, "What to find, e.g. \"cat\" or \"left teddy bear\".", argument=True, required=True,
            metavar="TEXT"),
     Option("out", None, "Write the image with the box drawn (a path or URL).", flags=("--out", "-o"),
            metavar="PATH"),
     Option("model", None, RUN_MODEL_HELP),
     _vlm_options(VLM_OPTION_HELP),
     _device("the VLM"),
     Option("json", False, "Print the result as one JSON object (box, box_text, parsed, fallback, output: the raw "
            "answer, ...) instead of the box line.", "bool", api=False),
     Option("strict", False, f"Exit with status {EXIT_FALLBACK} when the answer holds no box (the one-cell fallback "
            "box is still printed and drawn); for scripts.", "bool", api=False)),
    _predict, run="synthgen.pin.evaluation.predict:predict", done="synthgen.schema:file_done", view=True,
    results={EXIT_FALLBACK: "no box"})


def _import(v: dict[str, Any]):
    return {"path": v["file"], "out": v["out"], "vlm": v["vlm"], "model": v["model"],
            "vlm_options": typed_options(v["vlm"], v["vlm_options"])}


IMPORT_PIN = Command(
    "import-pin", "Turn a PIN saved by the authors' code into a run that eval-pin and predict use.",
    (Option("file", None, "A PIN in the authors' format (QUVA-Lab/PIN, e.g. PINs/PIN_OF.pt): {'mlp': Sequential "
            "state dict, 'pos_enc': [1, N, 64]}.", "path", argument=True, required=True, metavar="FILE"),
     Option("out", None, "New run directory (pin.safetensors + pin.json).", "path", flags=("--out", "-o"),
            required=True),
     Option("vlm", "openflamingo", "VLM family the PIN was trained on: " + ", ".join(VLMS) + "."),
     Option("model", None, "Hub id or local path of the VLM (default: the VLM's default, for openflamingo the "
            "authors' OpenFlamingo-3B-langinstruct)."),
     _vlm_options("VLM option KEY=VALUE, repeatable; openflamingo: " + ", ".join(VLM_OPTIONS["openflamingo"])
                  + " (imports default to vision_tokens=ln_post, the tokens the authors' PIN_OF.pt was trained "
                  "on).")),
    _import, run="synthgen.pin.training.portable:import_pin", done="synthgen.schema:pin_run_exists")

EXPORT_PIN = Command(
    "export-pin", "Write a run's PIN in the authors' format ({'mlp': ..., 'pos_enc': ...}, torch.save).",
    (Option("run", None, "Run directory of train-pin or import-pin.", "path", argument=True, required=True,
            metavar="RUN"),
     Option("out", None, "File to write in the authors' format (e.g. PIN_OF.pt).", "path", flags=("--out", "-o"),
            required=True)),
    lambda v: {"run_dir": v["run"], "out": v["out"]},
    run="synthgen.pin.training.portable:export_pin", done="synthgen.schema:file_done")
