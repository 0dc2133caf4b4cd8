"""CLI of the train-pin stage: ``train-pin``, ``eval-pin`` and ``predict``.

Only typer is imported here; torch/transformers are imported inside the command bodies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

_VLM_HELP = "VLM family: blip2 (transformers Blip2ForConditionalGeneration)."
_MODEL_HELP = ("Hub id or local directory of the VLM weights "
               "(default: Salesforce/blip2-opt-2.7b for blip2; for eval/predict the run's own model).")


def _hidden(text: str) -> tuple[int, ...]:
    from synthgen.errors import UserError

    try:
        widths = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"--hidden must be comma-separated integers, got {text!r}") from None
    if not widths or min(widths) < 1:
        raise UserError(f"--hidden must be positive integers, got {text!r}")
    return widths


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
    @app.command("train-pin")
    @user_errors
    def train_pin(
        shards: str = typer.Argument(..., help="Scene shards: a directory of .tar, a glob, a brace "
                                               "pattern (scenes-{000000..000099}.tar) or a URL."),
        vlm: str = typer.Option("blip2", help=_VLM_HELP),
        model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
        out: Path = typer.Option(Path("runs/pin"), "--out", "-o", help="Run directory (checkpoints, log)."),
        steps: int = typer.Option(75_000, help="Total optimiser steps (paper: 160 epochs x 60k samples "
                                               "at 2 GPUs x 64 = 75k)."),
        batch_size: int = typer.Option(64, help="Scenes per step per GPU (paper: 64)."),
        lr: float = typer.Option(1e-3, help="Adam learning rate, no weight decay (paper: 1e-3)."),
        precision: str = typer.Option("auto", help="auto|bf16|fp16|fp32: autocast on GPU "
                                                   "(auto = bf16 where supported); CPU always fp32."),
        workers: int = typer.Option(4, help="DataLoader workers per GPU (0 = in the main process)."),
        val: Optional[str] = typer.Option(None, help="Validation scene shards: mIoU every --eval-every steps."),
        eval_every: int = typer.Option(1000, help="Steps between validations."),
        val_limit: int = typer.Option(256, help="Queries (objects) per validation."),
        save_every: int = typer.Option(1000, help="Steps between checkpoints."),
        log_every: int = typer.Option(10, help="Steps between log.jsonl lines."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in --out (PIN, optimiser, "
                                                            "step, RNG) along the same curve."),
        seed: int = typer.Option(0, help="Seed for PIN init, data order and target draws."),
        name_loss: bool = typer.Option(False, "--name-loss", help="Also put the loss on the object "
                                                                  "name tokens (default: box only)."),
        activation: str = typer.Option("silu", help="PIN MLP activation: silu (authors' code) | "
                                                    "swiglu (as the paper describes)."),
        table: str = typer.Option("sinusoid", help="PIN input table: sinusoid (fixed) | learned."),
        hidden: str = typer.Option("512,768", help="PIN MLP hidden widths (paper: 2 layers)."),
        shuffle_buffer: int = typer.Option(1000, help="Sample shuffle buffer per data worker."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
    ) -> None:
        """Train PIN on a frozen VLM from scene shards (torchrun for several GPUs)."""
        from synthgen.errors import UserError
        from synthgen.pin.module import ACTIVATIONS, TABLES
        from synthgen.pin.train import TrainConfig, train

        if activation not in ACTIVATIONS:
            raise UserError(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if table not in TABLES:
            raise UserError(f"--table must be one of {', '.join(TABLES)}, got {table!r}")
        cfg = TrainConfig(
            shards=shards, out=str(out), vlm=vlm, model=model, steps=steps, batch_size=batch_size, lr=lr,
            precision=precision, workers=workers, val=val, eval_every=eval_every, val_limit=val_limit,
            save_every=save_every, log_every=log_every, resume=resume, seed=seed, name_loss=name_loss,
            activation=activation, table=table, hidden=_hidden(hidden), shuffle_buffer=shuffle_buffer,
            progress=progress,
        )
        res = train(cfg, echo=typer.echo)
        if res.get("loss") is not None and res.get("main", True):
            typer.echo(f"step {res['step']}: loss {res['loss']:.4f}")

    @app.command("eval-pin")
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

    @app.command("predict")
    @user_errors
    def predict(
        run: Path = typer.Argument(..., help="Run directory of train-pin."),
        image: Path = typer.Argument(..., help="Image file."),
        text: str = typer.Argument(..., help="What to find, e.g. \"cat\" or \"left teddy bear\"."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the image with the box drawn."),
        model: Optional[str] = typer.Option(None, help=_MODEL_HELP),
    ) -> None:
        """Print the box of TEXT in IMAGE (original pixels) and optionally draw it."""
        from synthgen.pin.evaluate import predict as run_predict

        r = run_predict(run, image, text, out=out, model=model)
        note = "" if r["parsed"] else f"  (no box in output {r['output']!r}: one-cell box at the origin)"
        typer.echo(f"{r['box_text']}{note}")
        if out:
            typer.echo(f"drawn to {out}")
