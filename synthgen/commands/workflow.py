"""The commands around the stages: ``run`` (a recipe's steps), ``demo``, ``demo-data`` and
``prefetch``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthgen.commands.core import Command, Option


def _renamed(**rename: str):
    """The values as the runner's keyword arguments, some under another name."""
    return lambda v: {rename.get(k, k): x for k, x in v.items()}


RUN = Command(
    "run", "Run a recipe's steps in order: render -> prepare-backgrounds -> compose -> train-pin -> eval-pin ... as "
    "its `run:` section declares them, each the command you would type (echoed).\n\n"
    "A step whose output is complete and whose command line is unchanged is skipped; any other runs and resumes "
    "its own partial work. A failed step stops the run (its exit status is the run's); a predict --strict step "
    "whose answer held no box is done, and the run goes on and exits 3. The summary lists what ran, what was "
    "skipped, the outputs and the eval-pin metrics.",
    (Option("recipe", None, "YAML recipe with a `run:` section (e.g. recipes/demo.yaml).", "path", argument=True,
            required=True, metavar="RECIPE"),
     Option("set", {}, "Set a variable of the recipe's `run.vars` (repeatable), e.g. --set out=/data/run1.",
            "pairs", multiple=True, metavar="NAME=VALUE", shown=""),
     Option("out", None, "Folder of the run's outputs: the same as --set out=DIR.", flags=("--out", "-o")),
     Option("only", "", "Comma list: run only these steps (commands such as compose or train-pin, aliases "
            "train/eval/prepare, step names or tags). Their inputs must exist.", metavar="STEPS"),
     Option("skip", "", "Comma list: leave these steps out (same words as --only).", metavar="STEPS"),
     Option("dry_run", False, "Print each step's command (and which are done) without running anything.", "bool"),
     Option("allow_launcher", False, "Let the recipe run a step under a launcher other than torchrun, python -m "
            "torch.distributed.run, accelerate launch, srun/mpirun ... python, and set code-loading variables "
            "(LD_PRELOAD, PYTHONPATH, PATH, ...) in `run.env`. Only for a recipe you trust: it may run any command.",
            "bool")),
    _renamed(set="sets"), run="synthgen.workflow.report:run_recipe", output=None)

DEMO = Command(
    "demo", "Offline end-to-end demo on built-in data (no downloads): `synthgen run recipes/demo.yaml`.\n\n"
    "demo-data (objects and backgrounds from scikit-image's samples, tiny random models) -> compose -> preview and "
    "stats -> render with tiny models -> train PIN on a tiny VLM -> eval-pin (and the random baseline) -> "
    "predict -> a wider tiny BLIP-2 trained whole on one-object scenes, scored beside the prior and random "
    "baselines (synthgen table). Every command is echoed before it runs.",
    (Option("out", Path("demo-out"), "Folder for everything the demo makes.", "path", flags=("--out", "-o")),
     Option("num_samples", 256, "Training scenes to compose.", "int", flags=("--num-samples", "-n")),
     Option("workers", 2, "CPUs of the local Ray.", "int", flags=("--workers", "-w")),
     Option("steps", 150, "PIN training steps on the tiny VLM.", "int"),
     Option("train", True, "Also train, evaluate and predict with PIN on a tiny VLM.", "bool", off_flag="--no-train"),
     Option("render", True, "Also run `render` with tiny random SD / CLIP / rembg models built by the demo.", "bool",
            off_flag="--no-render"),
     Option("vlm", "blip2", "The tiny VLM PIN is trained on: blip2 or openflamingo (the paper's main VLM)."),
     Option("learn_steps", 800, "Steps of the demo's learning part: a wider tiny BLIP-2 trained whole "
            "(train-pin --method full) on one-object scenes, scored beside the prior and random baselines.", "int")),
    dict, run="synthgen.demo.data:run_demo", output=None)

DEMO_DATA = Command(
    "demo-data", "The demo's inputs, made offline: an object bank and backgrounds from scikit-image's samples, a cat "
    "photo, and tiny random-weight models (SD, open_clip, a u2net-style cut-out net, the VLM) saved as real "
    "checkpoints are and loaded by path (the models go under models/; the cut-out net under rembg's model root, "
    "U2NET_HOME).",
    (Option("out", None, "Folder to write objects/, backgrounds/, photos/, categories.txt, models/ and "
            "demo-data.json into.", "path", flags=("--out", "-o"), required=True),
     Option("vlm", "blip2", "The tiny VLM to build: blip2 or openflamingo."),
     Option("learn_width", 128, "Also build models/tiny-blip2-learn, a tiny BLIP-2 this wide (vision tower, "
            "Q-Former and language model; 112-pixel canvas, 16 query tokens) that the demo trains whole; 0 builds "
            "none.", "int")),
    dict, run="synthgen.demo.data:make_demo_data", done="synthgen.schema:demo_data_done")


def _prefetch(v: dict[str, Any]) -> dict[str, Any]:
    return {"what": tuple(v["what"]), "models": dict(v["model"]), "dry_run": v["dry_run"]}


PREFETCH = Command(
    "prefetch", "Download the models the stages will load into their caches (HF_HOME, open_clip's cache, "
    "U2NET_HOME), without loading them: for a Docker image or a cluster node before a run.",
    (Option("what", (), "render (its default Stable Diffusion, CLIP and rembg models) and/or VLM families: blip2, "
            "openflamingo, llava, smolvlm, qwen2_5_vl, paligemma.", "strs", argument=True, required=True,
            multiple=True, metavar="WHAT"),
     Option("model", {}, "Another checkpoint for a VLM family (repeatable), e.g. "
            "openflamingo=openflamingo/OpenFlamingo-4B-vitl-rpj3b.", "pairs", multiple=True, metavar="VLM=HUB_ID",
            shown=""),
     Option("dry_run", False, "List what would be downloaded.", "bool")),
    _prefetch, run="synthgen.prefetch:run", output=None)
