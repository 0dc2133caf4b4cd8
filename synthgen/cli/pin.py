"""CLI of the train-pin stage: ``train-pin``, ``eval-pin`` and ``predict``.

Only typer and the config are imported here; torch/transformers are imported inside the
command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthgen.cli.common import csv, ints, options, recipe_option
from synthgen.pin.config import DEFAULT_MODELS
from synthgen.pin.config import TrainConfig as T

_VLM_HELP = "VLM family: " + ", ".join(DEFAULT_MODELS) + " (blip2: transformers Blip2ForConditionalGeneration)."
_MODEL_HELP = ("Hub id or local directory of the VLM weights (default: "
               + ", ".join(f"{m} for {v}" for v, m in DEFAULT_MODELS.items())
               + "; for eval/predict the run's own model).")

# options a recipe's `train:` section may set
RECIPE_KEYS = ("vlm", "model", "steps", "epochs", "epoch_size", "warmup_epochs",
               "batch_size", "lr", "precision", "workers", "eval_every", "val_limit", "save_every",
               "log_every", "seed", "name_loss", "activation", "table", "hidden", "shuffle_buffer",
               "max_bad_samples")


def _fmt(v) -> str:
    return "-" if v is None or v != v else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _print_metrics(m: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("n", "mIoU", "mIoU_M", "mIoU_L", "P@0.3", "unparseable"):
        t.add_column(col, justify="right")
    t.add_row(str(m["n"]), _fmt(m["miou"]), _fmt(m["miou_M"]), _fmt(m["miou_L"]), _fmt(m["p@0.3"]),
              str(m["unparseable"]))
    c = Console()
    c.print(t)
    c.print(f"medium {m['n_M']}, large {m['n_L']}, small {m['n_S']} queries; "
            f"preds {m['preds_file']}; metrics {m['metrics_file']}")


def register(app, user_errors) -> None:
    @app.command("train-pin", no_args_is_help=True)
    @user_errors
    def train_pin(
        ctx: typer.Context,
        shards: Optional[str] = typer.Argument(None, help="Scene shards: a directory of .tar, a glob, a brace "
                                                          "pattern (scenes-{000000..000099}.tar) or a URL. "
                                                          "Or give --objects and --backgrounds instead."),
        objects: Optional[Path] = typer.Option(None, "--objects", help="Compose the training scenes on the fly in the DataLoader workers (the authors' way: fresh scenes every step) from this object bank; the compose settings are the `compose:` section of --recipe (default: compose's defaults, the paper's)."),
        backgrounds: Optional[str] = typer.Option(None, "--backgrounds", help="Backgrounds for --objects (a folder, tar shards or a pattern, as for compose)."),
        extra_object_root: Optional[list[Path]] = typer.Option(None, "--extra-object-root", help="With --objects: a folder outside the bank that object paths may point into (repeatable)."),
        vlm: str = typer.Option(T.vlm, help=_VLM_HELP),
        model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
        vlm_option: Optional[list[str]] = typer.Option(None, "--vlm-option", metavar="KEY=VALUE", help="An option of the VLM family (repeatable), e.g. openflamingo: lm=DIR, vision=NAME, vision_pretrained=TAG|PATH, cross_attn_every=N, vision_tokens=ln_post|raw."),
        out: Path = typer.Option(Path(T.out), "--out", "-o", help="Run directory (checkpoints, log)."),
        steps: int = typer.Option(T.steps, help="Total optimiser steps, when --epochs is not given (the paper's 160 x 60,000 scenes at 2 GPUs x 64 is 74,880)."),
        epochs: Optional[int] = typer.Option(T.epochs, help="Length in epochs of --epoch-size scenes (paper: 160); replaces --steps."),
        epoch_size: int = typer.Option(T.epoch_size, help="Scenes an epoch over all GPUs (paper: 60,000), split over the ranks like a DistributedSampler."),
        warmup_epochs: int = typer.Option(T.warmup_epochs, help="The authors' warm-up (40 in their script): for these first epochs every scene has a_max objects and the loss also covers '{name} located at'. Needs --epochs; with shards also --warmup-shards."),
        warmup_shards: Optional[str] = typer.Option(None, help="Shards for the warm-up phase when training from shards (compose them with --fixed-count)."),
        batch_size: int = typer.Option(T.batch_size, help="Scenes per step per GPU (paper: 64)."),
        lr: float = typer.Option(T.lr, help="Adam learning rate, no weight decay (paper: 1e-3)."),
        precision: str = typer.Option(T.precision, help="On GPU: fp16 = fp16 autocast over fp32 weights with a grad scaler (the authors'); bf16 = the frozen VLM in bf16 too (half its memory, no scaler); auto = bf16 where supported, else fp16; fp32. The CPU always trains in fp32."),
        workers: int = typer.Option(T.workers, help="DataLoader workers per GPU (0 = in the main process)."),
        val: Optional[str] = typer.Option(None, help="Validation scene shards: mIoU every --eval-every steps."),
        eval_every: int = typer.Option(T.eval_every, help="Steps between validations."),
        val_limit: int = typer.Option(T.val_limit, help="Queries (objects) per validation."),
        save_every: int = typer.Option(T.save_every, help="Steps between checkpoints."),
        log_every: int = typer.Option(T.log_every, help="Steps between log.jsonl lines."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out (PIN, optimiser, "
                                                            "step, RNG) along the same curve."),
        seed: int = typer.Option(T.seed, help="Seed for PIN init, data order, target draws and composed scenes."),
        name_loss: bool = typer.Option(False, "--name-loss", help="Also put the loss on the object "
                                                                  "name tokens after the warm-up (default: box only)."),
        activation: str = typer.Option(T.activation, help="PIN MLP activation: silu (authors' code) | "
                                                    "swiglu (as the paper describes)."),
        table: str = typer.Option(T.table, help="PIN input table: sinusoid (fixed) | learned."),
        hidden: str = typer.Option(csv(T.hidden), help="PIN MLP hidden widths (paper: 2 layers)."),
        shuffle_buffer: int = typer.Option(T.shuffle_buffer, help="Sample shuffle buffer per data worker (shards)."),
        max_bad_samples: float = typer.Option(T.max_bad_samples, help="Share of the samples read that may be bad (not a scene record, no or broken image, other canvas, damaged shard): they are skipped and counted in log.jsonl; past it (and past 10) train-pin stops, naming the shard and key."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
        recipe: Optional[Path] = recipe_option("train", "recipes/pin-paper.yaml"),
    ) -> None:
        """Train PIN on a frozen VLM from scene shards, or from scenes composed on the fly
        (torchrun for several GPUs)."""
        from synthgen.cli.pin_io import parse_vlm_options
        from synthgen.pin.train import TrainConfig, train
        from synthgen.recipes import load_recipe

        o = options(ctx, recipe, "train", RECIPE_KEYS, raw=("vlm_options",))
        compose = load_recipe(recipe, "compose") if (recipe is not None and objects is not None) else {}
        vlm_options = {**(o["vlm_options"] or {}), **parse_vlm_options(o["vlm_option"], o["vlm"])}
        cfg = TrainConfig(
            shards=shards, objects=str(objects) if objects is not None else None, backgrounds=backgrounds,
            compose=compose, extra_object_roots=tuple(str(r) for r in extra_object_root or ()),
            out=str(out), vlm=o["vlm"], model=o["model"], vlm_options=vlm_options,
            steps=o["steps"], epochs=o["epochs"], epoch_size=o["epoch_size"], warmup_epochs=o["warmup_epochs"],
            warmup_shards=warmup_shards, batch_size=o["batch_size"], lr=o["lr"], precision=o["precision"],
            workers=o["workers"], val=val, eval_every=o["eval_every"], val_limit=o["val_limit"],
            save_every=o["save_every"], log_every=o["log_every"], resume=resume, seed=o["seed"],
            name_loss=o["name_loss"], activation=o["activation"], table=o["table"],
            hidden=ints(o["hidden"], "--hidden"), shuffle_buffer=o["shuffle_buffer"],
            max_bad_samples=o["max_bad_samples"], progress=progress,
        )
        res = train(cfg, echo=typer.echo)
        if res.get("loss") is not None and res.get("main", True):
            typer.echo(f"step {res['step']}: loss {res['loss']:.4f}")

    @app.command("eval-pin", no_args_is_help=True)
    @user_errors
    def eval_pin(
        run: Path = typer.Argument(..., help="Run directory of train-pin (pin.json + pin.safetensors)."),
        coco_json: Optional[Path] = typer.Option(None, help="COCO-format instances json (COCO val2017, "
                                                            "LVIS v1 val, VOC as COCO json)."),
        images: Optional[Path] = typer.Option(None, help="Directory with the images of the set (LVIS: "
                                                       "the COCO root holding val2017/, or val2017/ itself)."),
        max_objects: int = typer.Option(3, help="Keep images with 1..N annotated objects (paper: 3)."),
        out: Optional[Path] = typer.Option(None, help="preds.jsonl path [default: RUN/eval/SET/preds.jsonl]; "
                                                      "metrics.json is written next to it."),
        baseline: Optional[str] = typer.Option(None, help="'random': random boxes on the grid instead of "
                                                          "the model, on the same queries."),
        refcoco: Optional[Path] = typer.Option(None, help="RefCOCO directory (refs(unc).p + instances.json): "
                                                          "report P@0.3 and mIoU."),
        split: str = typer.Option("testA", help="RefCOCO split."),
        model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
        batch_size: int = typer.Option(16, help="Queries per generate call."),
        limit: Optional[int] = typer.Option(None, help="Evaluate only the first N queries."),
        article: str = typer.Option("a", help="Query article: 'a' (the protocol's fixed text) or 'auto' "
                                              "(a/an as in training)."),
        seed: int = typer.Option(0, help="Seed of the random baseline."),
    ) -> None:
        """Evaluate a PIN run: mIoU (all/medium/large) on a COCO-format set, or RefCOCO P@0.3."""
        from synthgen.errors import UserError
        from synthgen.pin import evaluate as ev

        if max_objects < 1 or batch_size < 1 or (limit is not None and limit < 1):
            raise UserError("--max-objects, --batch-size and --limit must be >= 1")
        if images is None:
            raise UserError("--images DIR is required (the images of the set)")
        if refcoco is not None:
            m = ev.evaluate_refcoco(run, refcoco, images, split=split, out=out, model=model,
                                    batch_size=batch_size, limit=limit, baseline=baseline, seed=seed)
            _print_metrics(m, f"RefCOCO {split}")
            return
        if coco_json is None:
            raise UserError("give --coco-json FILE (or --refcoco DIR)")
        m = ev.evaluate_coco(run, coco_json, images, max_objects=max_objects, out=out, baseline=baseline,
                             model=model, batch_size=batch_size, limit=limit, article_mode=article,
                             seed=seed)
        _print_metrics(m, f"{Path(coco_json).name}{' (random baseline)' if baseline else ''}")

    @app.command("predict", no_args_is_help=True)
    @user_errors
    def predict(
        run: Path = typer.Argument(..., help="Run directory of train-pin."),
        image: Path = typer.Argument(..., help="Image file."),
        text: str = typer.Argument(..., help="What to find, e.g. \"cat\" or \"left teddy bear\"."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the image with the box drawn."),
        model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
        vlm_option: Optional[list[str]] = typer.Option(None, "--vlm-option", metavar="KEY=VALUE", help="Override a VLM option the run recorded (repeatable), e.g. lm=DIR for a local copy of OpenFlamingo's language model."),
    ) -> None:
        """Print the box of TEXT in IMAGE (original pixels) and optionally draw it."""
        from synthgen.cli.pin_io import parse_vlm_options
        from synthgen.pin.checkpoint import read_run
        from synthgen.pin.predict import predict as run_predict

        options = parse_vlm_options(vlm_option, read_run(run).meta.get("vlm", "")) if vlm_option else None
        r = run_predict(run, image, text, out=out, model=model, vlm_options=options)
        note = "" if r["parsed"] else f"  (no box in output {r['output']!r}: one-cell box at the origin)"
        typer.echo(f"{r['box_text']}{note}")
        if out:
            typer.echo(f"drawn to {out}")
