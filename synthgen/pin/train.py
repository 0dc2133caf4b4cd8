"""PIN training (``synthgen train-pin``): a frozen VLM, PIN the only trainable tensor.

Adam (no weight decay, lr 1e-3), batch 64 per GPU, bf16/fp16 autocast on GPU, fp32 on CPU,
multi-GPU with ``torchrun`` (DDP around PIN only, so only PIN's gradients are synchronised).
:func:`train` reads top to bottom as numbered steps; the run folder (checkpoints, resume) is
:mod:`synthgen.pin.checkpoint`, the data stream :mod:`synthgen.pin.data`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from synthgen import __version__
from synthgen.errors import UserError, raise_problems
from synthgen.pin.checkpoint import (
    DATA_SPLIT,
    read_checkpoint,
    resume_conflicts,
    save_checkpoint,
    saved_step,
    set_rng_state,
    shard_list_digest,
)
from synthgen.pin.config import PRECISIONS, TrainConfig
from synthgen.rundir import RunFolder, atomic_write
from synthgen.schema import PIN_FORMAT, PIN_META_FILE, TRAIN_LOG_FILE, TRAIN_STATE_FILE

__all__ = ["TrainConfig", "train"]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class _Env:
    """This process's place in the (possibly distributed) run."""

    world: int
    rank: int
    device: torch.device
    say: Callable[[str], None]

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _environment(cfg: TrainConfig, echo: Callable[[str], None]) -> _Env:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device:
        device = torch.device(cfg.device)
    else:
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return _Env(world, rank, device, echo if rank == 0 else (lambda *_: None))


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type != "cuda":
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


def check_finite(loss: float, step: int, device: torch.device | None = None) -> None:
    """Raise RuntimeError when the loss is not finite. Under DDP (``device`` given) the ranks first
    agree through a one-element all-reduce, so that all of them raise at the same step: a rank
    raising alone would leave the others waiting in their next collective."""
    finite = math.isfinite(loss)
    everywhere = finite
    if device is not None:
        flag = torch.tensor([1 if finite else 0], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        everywhere = bool(flag.item())
    if not finite:
        raise RuntimeError(f"loss is {loss} at step {step}")
    if not everywhere:
        raise RuntimeError(f"loss is not finite on another rank at step {step}")


def _resume_point(cfg: TrainConfig, env: _Env, shards: list[str]):
    """``(prev meta, state, weights, settings)``: the checkpoint to continue (Nones for a new
    run) and this run's settings, refused when they differ from the checkpoint's."""
    out = Path(cfg.out)
    ckpt = read_checkpoint(out, repair=env.main)
    prev, state, weights = ckpt if ckpt is not None else (None, None, None)
    settings = {"seed": cfg.seed, "lr": cfg.lr, "batch_size": cfg.batch_size, "world_size": env.world,
                "workers": cfg.workers, "shuffle_buffer": cfg.shuffle_buffer, "name_loss": cfg.name_loss,
                "train_shards": str(cfg.shards), "train_shard_count": len(shards),
                "train_shards_sha256": shard_list_digest(shards), "data_split": DATA_SPLIT}
    if prev is None:
        return None, None, None, settings
    changed = resume_conflicts(prev, settings)
    if changed:
        raise UserError(f"{out} was trained with other settings: {'; '.join(changed)}. Resume with "
                        "the run's settings (they fix the data order and the curve) or start a "
                        "new run with another --out")
    n_splits = env.world * max(cfg.workers, 1)
    if prev.get("data_split") != DATA_SPLIT and len(shards) >= n_splits and len(shards) % n_splits:
        env.say(f"note: {out} was started by a synthgen that dealt {len(shards)} shards over "
                f"{n_splits} data splits differently; after this resume the data order is not the "
                "one the original run would have seen")
    if cfg.vlm != prev["vlm"] or (cfg.model and cfg.model != prev["model"]):
        raise UserError(f"{out} was trained on {prev['vlm']} {prev['model']}; resume with the same "
                        "--vlm/--model")
    return prev, state, weights, settings


def _build_pin(cfg: TrainConfig, adapter, prev: dict | None, weights: dict | None, env: _Env):
    """``(pin, pin_fn)``: PIN (seeded fresh, or the checkpoint's) and what the adapter calls
    (PIN itself, or its DDP wrapper)."""
    from synthgen.pin.module import PIN, describe

    torch.manual_seed(cfg.seed)
    if prev is not None:
        pin = PIN.from_config(prev["pin"])
        pin.load_state_dict(weights)
    else:
        pin = PIN(adapter.num_positions, adapter.vision_width, table=cfg.table,
                  table_dim=cfg.table_dim, hidden=cfg.hidden, activation=cfg.activation)
    pin.to(env.device).train()
    if (pin.num_positions, pin.out_dim) != (adapter.num_positions, adapter.vision_width):
        raise UserError(f"PIN {pin.num_positions}x{pin.out_dim} does not fit {cfg.vlm} "
                        f"({adapter.model_id}: {adapter.num_positions}x{adapter.vision_width})")
    env.say(describe(pin))
    if not env.ddp:
        return pin, pin
    from torch.nn.parallel import DistributedDataParallel as DDP

    # PIN's only buffer is the fixed sinusoid table, equal on every rank: never sync it in
    # forward (validation calls PIN on rank 0 alone)
    sync = ({"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
            else {"broadcast_buffers": False})
    dev = env.device
    return pin, DDP(pin, device_ids=[dev.index] if dev.type == "cuda" else None, **sync)


class _Log:
    """``log.jsonl`` of the run (main rank only), cut back to the resumed step."""

    def __init__(self, path: Path, step: int, enabled: bool):
        from synthgen.pin.checkpoint import read_log

        self.path, self.enabled = path, enabled
        if enabled:
            kept = [r for r in read_log(path) if r.get("step", 0) <= step]
            atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))

    def __call__(self, rec: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


def train(cfg: TrainConfig, echo: Callable[[str], None] = print, adapter=None) -> dict:
    """Train PIN; return a summary ``{"step", "loss", "out", ...}``.

    ``adapter``: an already loaded :class:`~synthgen.pin.adapters.VLMAdapter` to train on
    (default: load ``cfg.vlm``/``cfg.model``); its VLM weights are left untouched.
    """
    from synthgen.pin.adapters import load_adapter
    from synthgen.pin.data import check_canvas, read_header
    from synthgen.shards import find_shards

    # 1. settings, this process's rank and device
    raise_problems(cfg.problems())
    env = _environment(cfg, echo)
    out = Path(cfg.out)
    precision = resolve_precision(cfg.precision, env.device)
    if cfg.precision not in ("auto", precision):
        env.say(f"note: --precision {cfg.precision} is for GPUs; training in {precision} on "
                f"{env.device.type}")

    # 2. the data: shard lists and the canvas they were composed at
    shards = find_shards(cfg.shards)
    val_shards = find_shards(cfg.val) if cfg.val else None
    header = read_header(shards)

    # 3. the run folder (locked by the main rank): a new run, or the checkpoint to resume
    if not cfg.resume and ((out / PIN_META_FILE).is_file() or (out / TRAIN_STATE_FILE).is_file()):
        at = saved_step(out)[0]
        raise UserError(f"{out} already holds a PIN run{f' (step {at})' if at is not None else ''}; "
                        "pass --resume to continue it or choose another --out")
    with RunFolder(out, "train-pin") if env.main else contextlib.nullcontext():
        prev, state, weights, settings = _resume_point(cfg, env, shards)
        own_group = env.ddp and not torch.distributed.is_initialized()
        if own_group:
            torch.distributed.init_process_group("nccl" if env.device.type == "cuda" else "gloo")

        # 4. the frozen VLM, which must take the shards' canvas
        if adapter is None:
            model_id = prev["model"] if prev is not None else cfg.model
            options = {**(prev or {}).get("vlm_options", {}), **cfg.vlm_options}
            adapter = load_adapter(cfg.vlm, model_id, device=env.device, dtype=_DTYPES[precision], **options)
        elif adapter.name != cfg.vlm:
            raise UserError(f"adapter is {adapter.name} but the config says --vlm {cfg.vlm}")
        else:
            env.device = adapter.device
        vlm_options = dict(getattr(adapter, "vlm_options", {}))
        if prev is not None and prev.get("vlm_options", vlm_options) != vlm_options:
            raise UserError(f"{out} was trained on {prev['vlm']} with VLM options {prev['vlm_options']}, not "
                            f"{vlm_options}; resume with the run's options or start a new run with another --out")
        model_desc = f"{cfg.vlm} ({adapter.model_id})"
        check_canvas(header, str(cfg.shards), adapter.input_size, model_desc)
        if val_shards:
            check_canvas(read_header(val_shards), str(cfg.val), adapter.input_size, model_desc)

        # 5. PIN, added to the vision features before the fusion network; the VLM stays frozen
        pin, pin_fn = _build_pin(cfg, adapter, prev, weights, env)
        adapter.attach_pin(pin_fn)
        adapter.assert_frozen()

        # 6. the optimiser (and the run's state when resuming)
        optimizer = torch.optim.Adam(pin.parameters(), lr=cfg.lr, weight_decay=0.0)
        scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
        step = 0
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"], env.device)
            step = int(state["step"])
            env.say(f"resuming {out} at step {step}")
        elif cfg.resume:
            env.say(f"nothing to resume in {out}; starting a new run")
        canvas, grid = int(header["width"]), int(header.get("grid", 0)) or None
        meta = {"format": PIN_FORMAT, "synthgen_version": __version__, "vlm": cfg.vlm,
                "model": adapter.model_id, "vlm_options": vlm_options, "canvas": canvas, "grid": grid,
                "patch_grid": adapter.patch_grid, "vision_width": adapter.vision_width,
                "num_positions": adapter.num_positions, "pin": pin.config(),
                "pin_parameters": pin.num_parameters(), "precision": precision, **settings,
                "steps_planned": cfg.steps}
        log = _Log(out / TRAIN_LOG_FILE, step, env.main)
        if step >= cfg.steps:
            env.say(f"{out} is already at step {step} >= --steps {cfg.steps}")
            return {"step": step, "out": str(out), "loss": None, "main": env.main}

        # 7. the loop
        loop = _Loop(cfg, env, adapter, pin, pin_fn, optimizer, scaler, precision, log,
                     meta, val_shards, canvas, grid or adapter.patch_grid)
        step, last_loss, val_metrics = loop.run(shards, step)

        # 8. the end: the VLM untouched, every rank done
        adapter.assert_frozen()
        if env.ddp:
            torch.distributed.barrier()
            if own_group:
                torch.distributed.destroy_process_group()
    env.say(f"saved {out / 'pin.safetensors'} at step {step}")
    return {"step": step, "loss": last_loss, "out": str(out), "val": val_metrics,
            "pin_parameters": pin.num_parameters(), "main": env.main}


class _Loop:
    """Optimiser steps over the scene stream, with logging, validation and checkpoints."""

    def __init__(self, cfg, env, adapter, pin, pin_fn, optimizer, scaler, precision, log, meta,
                 val_shards, canvas, grid):
        self.cfg, self.env, self.adapter, self.pin, self.pin_fn = cfg, env, adapter, pin, pin_fn
        self.optimizer, self.scaler, self.precision, self.log, self.meta = (
            optimizer, scaler, precision, log, meta)
        self.val_shards, self.canvas, self.grid = val_shards, canvas, grid
        self.amp = precision != "fp32"

    def validate(self) -> dict | None:
        from synthgen.pin.evaluate import evaluate_scenes

        if not self.val_shards or not self.env.main:
            return None
        self.adapter.attach_pin(self.pin)  # the bare module: no DDP collectives on one rank
        self.pin.eval()
        with torch.autocast(self.env.device.type, dtype=_DTYPES[self.precision], enabled=self.amp):
            m = evaluate_scenes(self.adapter, self.val_shards, canvas=self.canvas, grid=self.grid,
                                limit=self.cfg.val_limit, batch_size=min(self.cfg.batch_size, 32))
        self.pin.train()
        self.adapter.attach_pin(self.pin_fn)
        return m

    def step(self, batch: dict) -> float:
        """One optimiser step; the loss before it."""
        with torch.autocast(self.env.device.type, dtype=_DTYPES[self.precision], enabled=self.amp):
            loss = self.adapter.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return float(loss.detach())

    def run(self, shards: list[str], step: int) -> tuple[int, float, dict | None]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        from synthgen.pin.data import StreamConfig, make_loader

        cfg, env = self.cfg, self.env
        stream = StreamConfig(shards=shards, batch_size=cfg.batch_size, seed=cfg.seed, rank=env.rank,
                              world_size=env.world, shuffle_buffer=cfg.shuffle_buffer,
                              image_size=self.adapter.input_size, name_loss=cfg.name_loss,
                              max_bad_samples=cfg.max_bad_samples)
        loader = make_loader(stream, self.adapter.codec, workers=cfg.workers, start_batch=step,
                             pin_memory=env.device.type == "cuda")
        progress = Progress(
            TextColumn("[bold]train-pin"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[sps]} samples/s"),
            TimeElapsedColumn(), TimeRemainingColumn(), disable=not (cfg.progress and env.main))
        last_loss, losses, n_since, t_log, val = float("nan"), [], 0, time.perf_counter(), None
        self.bad: dict[str, int] = {}
        with progress:
            task = progress.add_task("train", total=cfg.steps, completed=step, loss="-", sps="-")
            it = iter(loader)
            while step < cfg.steps:
                batch = next(it)
                for reason, n in batch.get("bad", {}).get("counts", {}).items():
                    self.bad[reason] = self.bad.get(reason, 0) + n
                last_loss = self.step(batch)
                step += 1
                if self.scaler is None:  # (fp16's scaler skips non-finite steps itself)
                    check_finite(last_loss, step, env.device if env.ddp else None)
                losses.append(last_loss)
                n_since += batch["input_ids"].shape[0] * env.world
                if step % cfg.log_every == 0 or step == cfg.steps:
                    mean, sps = self._log_train(step, losses, n_since, time.perf_counter() - t_log)
                    progress.update(task, loss=f"{mean:.4f}", sps=f"{sps:.1f}")
                    losses, n_since, t_log = [], 0, time.perf_counter()
                progress.update(task, completed=step)
                if self.val_shards and (step % cfg.eval_every == 0 or step == cfg.steps):
                    val = self.validate()
                    if val is not None:
                        self.log({"step": step, "val_miou": val["miou"], "val_n": val["n"],
                                  "val_unparseable": val["unparseable"]})
                        progress.console.print(f"step {step}: val mIoU {val['miou']:.4f} "
                                               f"({val['n']} queries, {val['unparseable']} unparseable)")
                if env.main and (step % cfg.save_every == 0 or step == cfg.steps):
                    save_checkpoint(Path(cfg.out), self.pin, self.optimizer, self.scaler, step,
                                    self.meta, env.device)
                if env.ddp and step % cfg.save_every == 0:
                    torch.distributed.barrier()
        del it, loader
        if self.bad:
            env.say("skipped bad samples (this rank): "
                    + ", ".join(f"{k} {v}" for k, v in sorted(self.bad.items())) + " (see log.jsonl)")
        return step, last_loss, val

    def _log_train(self, step: int, losses: list[float], n: int, dt: float) -> tuple[float, float]:
        sps = n / dt if dt > 0 else float("nan")
        mean = sum(losses) / len(losses)
        if self.env.ddp:  # log the mean over all ranks
            t = torch.tensor([mean], device=self.env.device)
            torch.distributed.all_reduce(t)
            mean = float(t) / self.env.world
        rec = {"step": step, "loss": mean, "samples_per_s": round(sps, 2), "lr": self.cfg.lr,
               "time": time.time()}
        if self.bad:
            rec["bad_samples"] = dict(sorted(self.bad.items()))
        self.log(rec)
        return mean, sps
