"""CLI of the train-pin stage: ``train-pin``, ``eval-pin`` and ``predict``.

Only typer and the config are imported here; torch/transformers are imported inside the
command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from synthgen.cli.common import csv, ints, options, recipe_option
from synthgen.pin.models.registry import DEFAULT_MODELS
from synthgen.pin.training.config import TrainConfig as T

_VLM_HELP = ("VLM family: " + ", ".join(DEFAULT_MODELS) + " (blip2: transformers Blip2ForConditionalGeneration), "
             "or auto (read from the --model checkpoint's config).")
_MODEL_HELP = ("Hub id or local directory of the VLM weights (default: "
               + ", ".join(f"{m} for {v}" for v, m in DEFAULT_MODELS.items()) + ").")
_RUN_MODEL_HELP = ("Load the VLM from here instead of the hub id or path the run recorded (e.g. a local copy "
                   "of the same weights).")

# options a recipe's `train:` section may set
RECIPE_KEYS = ("vlm", "model", "steps", "epochs", "epoch_size", "warmup_epochs",
               "batch_size", "lr", "precision", "loader_workers", "eval_every", "val_limit", "save_every",
               "log_every", "seed", "name_loss", "activation", "table", "hidden", "shuffle_buffer",
               "max_bad_samples")


EXIT_FALLBACK = 3  # predict --strict: the answer held no box (2 is a user error)


def _fmt(v) -> str:
    return "-" if v is None or v != v else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _print_metrics(m: dict, title: str) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=title)
    for col in ("n", "mIoU", "mIoU_M", "mIoU_L", "P@0.3", "unparseable"):
        t.add_column(col, justify="right")
    t.add_row(str(m["n"]), _fmt(m["miou"]), _fmt(m["miou_M"]), _fmt(m["miou_L"]), _fmt(m["p@0.3"]),
              str(m["unparseable"]))
    c = Console()
    c.print(t)
    c.print(f"medium {m['n_M']}, large {m['n_L']}, small {m['n_S']} queries; "
            f"preds {m['preds_file']}; metrics {m['metrics_file']}", soft_wrap=True)
    proto = m.get("protocol") or {}
    if proto:
        line = " ".join(f"{k}={'model' if k == 'baseline' and v is None else v}" for k, v in proto.items())
        c.print(escape(f"protocol: {line}"), soft_wrap=True)
    rej = m.get("rejected") or {}
    notes = [f"rejected answers: strict {rej.get('strict', 0)}, lenient {rej.get('lenient', 0)}"
             ] if proto.get("baseline") is None and rej else []
    notes += [f"{k.replace('_', ' ')} {m[k]}" for k in ("crowd_queries", "crowd_not_queried", "difficult_queries",
                                                        "size_mismatch_images") if k in m]
    skipped = m.get("skipped") or {}
    if skipped:
        notes.append("skipped " + ", ".join(f"{k} {v['count']}" for k, v in skipped.items()))
    if notes:
        c.print(escape("; ".join(notes)), soft_wrap=True)


def register(app, user_errors) -> None:
    @app.command("train-pin", no_args_is_help=True)
    @user_errors
    def train_pin(
        ctx: typer.Context,
        shards: Optional[str] = typer.Argument(None, metavar="SHARDS", help="Scene shards: a directory of .tar, a glob, a brace "
                                                          "pattern (scenes-{000000..000099}.tar) or a URL. "
                                                          "Or give --objects and --backgrounds instead."),
        objects: Optional[str] = typer.Option(None, "--objects", metavar="PATH", help="Compose the training scenes on the fly in the DataLoader workers (the authors' way: fresh scenes every step) from this object bank; the compose settings are the `compose:` section of --recipe (default: compose's defaults, the paper's)."),
        backgrounds: Optional[str] = typer.Option(None, "--backgrounds", help="Backgrounds for --objects (a folder, tar shards or a pattern, as for compose)."),
        extra_object_root: Optional[list[str]] = typer.Option(None, "--extra-object-root", metavar="PATH", help="With --objects: a folder outside the bank that object paths may point into (repeatable)."),
        vlm: str = typer.Option(T.vlm, help=_VLM_HELP),
        model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
        vlm_option: Optional[list[str]] = typer.Option(None, "--vlm-option", metavar="KEY=VALUE", help="An option of the VLM family (repeatable), e.g. openflamingo: lm=DIR, vision=NAME, vision_pretrained=TAG|PATH, cross_attn_every=N, vision_tokens=ln_post|raw."),
        out: str = typer.Option(str(T.out), "--out", "-o", metavar="PATH", help="Run directory, or an s3:// / gs:// URL (checkpoints, log)."),
        steps: int = typer.Option(T.steps, help="Total optimiser steps, when --epochs is not given (the paper's 160 x 60,000 scenes at 2 GPUs x 64 is 74,880)."),
        epochs: Optional[int] = typer.Option(T.epochs, help="Length in epochs of --epoch-size scenes (paper: 160); replaces --steps."),
        epoch_size: int = typer.Option(T.epoch_size, help="Scenes an epoch over all GPUs (paper: 60,000), split over the ranks like a DistributedSampler."),
        warmup_epochs: int = typer.Option(T.warmup_epochs, help="The authors' warm-up (40 in their script): for these first epochs every scene has a_max objects and the loss also covers '{name} located at'. Needs --epochs; with shards also --warmup-shards."),
        warmup_shards: Optional[str] = typer.Option(None, help="Shards for the warm-up phase when training from shards (compose them with --fixed-count)."),
        batch_size: int = typer.Option(T.batch_size, help="Scenes per step per GPU (paper: 64)."),
        lr: float = typer.Option(T.lr, help="Adam learning rate, no weight decay (paper: 1e-3)."),
        precision: str = typer.Option(T.precision, help="On GPU: fp16 = fp16 autocast over fp32 weights with a grad scaler (the authors'); bf16 = the frozen VLM in bf16 too (half its memory, no scaler); auto = bf16 where supported, else fp16; fp32. The CPU always trains in fp32."),
        loader_workers: int = typer.Option(T.loader_workers, "--loader-workers", help="DataLoader worker processes per GPU that read (or compose) the scenes (0 = in the main process). Not Ray CPUs: train-pin does not use Ray."),
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
        from synthgen.pin.training.train import TrainConfig, train
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
            loader_workers=o["loader_workers"], val=val, eval_every=o["eval_every"], val_limit=o["val_limit"],
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
        run: str = typer.Argument(..., metavar="RUN", help="Run directory of train-pin (pin.json + pin.safetensors), or its s3:// / gs:// / hf:// URL."),
        coco_json: Optional[str] = typer.Option(None, metavar="PATH", help="COCO-format instances json (a path or URL) (COCO val2017, "
                                                            "LVIS v1 val, VOC as COCO json)."),
        voc: Optional[str] = typer.Option(None, metavar="PATH", help="PASCAL VOC folder of one year (VOCdevkit/VOC2007): "
                                                      "ImageSets/Main/SPLIT.txt, Annotations/*.xml, JPEGImages/; "
                                                      "raw class names, difficult objects included (the authors')."),
        refcoco: Optional[str] = typer.Option(None, metavar="PATH", help="RefCOCO directory (refs(unc).p + instances.json): "
                                                          "report P@0.3 and mIoU."),
        images: Optional[str] = typer.Option(None, metavar="PATH", help="Directory (or URL prefix) with the images of the set (LVIS: "
                                                       "the COCO root holding val2017/, or val2017/ itself; "
                                                       "not used with --voc)."),
        split: Optional[str] = typer.Option(None, help="RefCOCO split \\[default: testA] or VOC image set "
                                                       "\\[default: test]."),
        max_objects: int = typer.Option(3, help="Keep images with 1..N annotated objects, crowd and difficult "
                                                "ones included (paper: 3; not RefCOCO)."),
        out: Optional[str] = typer.Option(None, "--out", "-o", metavar="PATH", help="preds.jsonl path or URL \\[default: RUN/eval/SET/WHAT/preds.jsonl, WHAT = model or "
                                                      "random-baseline (uniform-, native-), then each protocol choice that differs from the authors', e.g. "
                                                      "model+parse-lenient]; metrics.json is written next to it."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace the results of an earlier evaluation at the same path (without it they are kept and eval-pin stops before any work)."),
        baseline: Optional[str] = typer.Option(None, help="Score a baseline instead of the model, on the same "
                                                          "queries: 'random' = the paper's (for each query a "
                                                          "ground-truth box of another image of the set), "
                                                          "'uniform' = corners drawn uniformly on the grid, "
                                                          "'native' = the run's VLM without PIN, asked with its "
                                                          "own grounding prompt (paligemma: 'detect NAME' -> "
                                                          "<loc> tokens; qwen2_5_vl: bbox_2d JSON)."),
        article: str = typer.Option("auto", help="Query article: 'auto' = a/an by the first letter (the "
                                                 "authors' and training's), 'a' = always 'a'."),
        names: str = typer.Option("strip", help="COCO-format class names: 'strip' = '_' -> space and the "
                                                "qualifier dropped, 'bow_(weapon)' -> 'bow' (the authors' "
                                                "LVIS rule), 'raw' = 'bow (weapon)'. VOC names are always "
                                                "the XML's."),
        crowd: str = typer.Option("query", help="COCO iscrowd annotations, which always count towards "
                                                "--max-objects: 'query' = queried too (the authors'), "
                                                "'skip' = not queried."),
        gt_boxes: str = typer.Option("authors", help="Ground-truth boxes on the canvas: 'authors' = scaled "
                                                     "and truncated to integers as their loaders (COCO/"
                                                     "RefCOCO: x, y, w, h each, far corner <= canvas-1; VOC: "
                                                     "corners, clipped to 1..canvas), 'exact' = scaled as "
                                                     "floats. Size buckets use the same boxes."),
        parse: str = typer.Option("strict", help="Answer parser: 'strict' = the authors' (' \\[a,b,c,d]' with a "
                                                 "space before '[', every value a grid line, a<c, b<d), "
                                                 "'lenient' = any \\[a,b,c,d]. Rejected answers count as the "
                                                 "one-cell box at the origin; both rules' counts are reported."),
        refcoco_sentences: str = typer.Option("last", help="RefCOCO queries: 'last' = one per referred "
                                                           "object, its last sentence's raw text (the "
                                                           "authors'), 'all' = one per sentence (its 'sent')."),
        num_beams: int = typer.Option(3, help="Beam search width (the authors': 3)."),
        max_new_tokens: int = typer.Option(12, help="Most tokens generated per answer (the authors': 12)."),
        model: Optional[str] = typer.Option(None, help=_RUN_MODEL_HELP),
        vlm_option: Optional[list[str]] = typer.Option(None, "--vlm-option", metavar="KEY=VALUE", help="Override a VLM option the run recorded (repeatable), e.g. lm=DIR for a local copy of OpenFlamingo's language model."),
        batch_size: int = typer.Option(16, help="Queries per generate call."),
        limit: Optional[int] = typer.Option(None, help="Evaluate only the first N queries."),
        seed: int = typer.Option(0, help="Seed of the baselines."),
    ) -> None:
        """Evaluate a PIN run: mIoU (all/medium/large) on a COCO-format set or VOC, or RefCOCO P@0.3.

        Defaults follow the PIN authors' evaluation code; metrics.json records every choice (protocol).
        """
        from synthgen.errors import UserError
        from synthgen.pin.evaluation import evaluate as ev

        proto = ev.EvalProtocol(article=article, names=names, crowd=crowd, gt_boxes=gt_boxes, parse=parse,
                                baseline=baseline, max_objects=max_objects, refcoco_sentences=refcoco_sentences,
                                seed=seed, num_beams=num_beams, max_new_tokens=max_new_tokens)
        problems = proto.problems()
        if batch_size < 1 or (limit is not None and limit < 1):
            problems.append("--batch-size and --limit must be >= 1")
        if problems:
            raise UserError("; ".join(problems))
        sets = [flag for flag, v in (("--coco-json", coco_json), ("--voc", voc), ("--refcoco", refcoco))
                if v is not None]
        if len(sets) != 1:
            raise UserError("give one of --coco-json FILE, --voc DIR or --refcoco DIR"
                            + (f" (got {' and '.join(sets)})" if sets else ""))
        if split is not None and coco_json is not None:
            raise UserError("--split applies to --voc and --refcoco only")
        what = f" ({baseline} baseline)" if baseline else ""
        from synthgen.cli.pin_io import parse_vlm_options
        from synthgen.pin.training.checkpoint import read_run

        options = parse_vlm_options(vlm_option, read_run(run).meta.get("vlm", "")) if vlm_option else None
        kw = dict(out=out, model=model, batch_size=batch_size, limit=limit, protocol=proto, vlm_options=options,
                  overwrite=overwrite)
        if voc is not None:
            if images is not None:
                raise UserError("--images does not apply to --voc: its images are read from VOC/JPEGImages")
            m = ev.evaluate_voc(run, voc, split=split or "test", **kw)
            _print_metrics(m, f"VOC {Path(voc).name} {split or 'test'}{what}")
            return
        if images is None:
            raise UserError("--images DIR is required (the images of the set)")
        if refcoco is not None:
            m = ev.evaluate_refcoco(run, refcoco, images, split=split or "testA", **kw)
            _print_metrics(m, f"RefCOCO {split or 'testA'}{what}")
            return
        m = ev.evaluate_coco(run, coco_json, images, **kw)
        from synthgen import storage

        _print_metrics(m, f"{storage.path(coco_json).name}{what}")

    @app.command("predict", no_args_is_help=True)
    @user_errors
    def predict(
        run: str = typer.Argument(..., metavar="RUN", help="Run directory of train-pin (or its URL)."),
        image: str = typer.Argument(..., metavar="IMAGE", help="Image file (or URL)."),
        text: str = typer.Argument(..., metavar="TEXT", help="What to find, e.g. \"cat\" or \"left teddy bear\"."),
        out: Optional[str] = typer.Option(None, "--out", "-o", metavar="PATH", help="Write the image with the box drawn (a path or URL)."),
        model: Optional[str] = typer.Option(None, help=_RUN_MODEL_HELP),
        vlm_option: Optional[list[str]] = typer.Option(None, "--vlm-option", metavar="KEY=VALUE", help="Override a VLM option the run recorded (repeatable), e.g. lm=DIR for a local copy of OpenFlamingo's language model."),
        json_out: bool = typer.Option(False, "--json", help="Print the result as one JSON object (box, box_text, parsed, fallback, output: the raw answer, ...) instead of the box line."),
        strict: bool = typer.Option(False, "--strict", help=f"Exit with status {EXIT_FALLBACK} when the answer holds no box (the one-cell fallback box is still printed and drawn); for scripts."),
    ) -> None:
        """Print the box of TEXT in IMAGE (original pixels) and optionally draw it. An answer with no box
        gives the one-cell box at the origin, marked as a fallback (printed, in --json and drawn dashed grey)."""
        import json

        from synthgen.cli.pin_io import parse_vlm_options
        from synthgen.pin.evaluation.predict import predict as run_predict
        from synthgen.pin.training.checkpoint import read_run

        options = parse_vlm_options(vlm_option, read_run(run).meta.get("vlm", "")) if vlm_option else None
        r = run_predict(run, image, text, out=out, model=model, vlm_options=options)
        if json_out:
            typer.echo(json.dumps(r))
        else:
            note = "" if r["parsed"] else f"  (fallback: no box in answer {r['output']!r}; one-cell box at the origin)"
            typer.echo(f"{r['box_text']}{note}")
            if out:
                typer.echo(f"drawn to {out}")
        if strict and r["fallback"]:
            raise typer.Exit(EXIT_FALLBACK)
