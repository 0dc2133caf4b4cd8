"""PIN training (``synthgen train-pin``): a frozen VLM, PIN the only trainable tensor.

Adam (no weight decay, lr 1e-3), batch 64 per GPU, bf16/fp16 autocast on GPU, fp32 on CPU,
multi-GPU with ``torchrun`` (DDP around PIN only, so only PIN's gradients are synchronised).
A run directory holds ``pin.safetensors`` (PIN weights), ``pin.json`` (what the run is),
``train_state.pt`` (optimiser, step, RNG, and a copy of the weights and the run description, for
``--resume``) and ``log.jsonl``. Every file is written atomically (temp file + rename) and
``train_state.pt`` first: it is the checkpoint's commit point, from which ``--resume`` repairs
the other two after a kill between the files.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from synthgen.atomic import atomic_write_with, remove_stale_temps
from synthgen import __version__
from synthgen.errors import UserError

PRECISIONS = ("auto", "bf16", "fp16", "fp32")


@dataclass
class TrainConfig:
    shards: str | Sequence[str]
    out: str = "runs/pin"
    vlm: str = "blip2"
    model: str | None = None
    steps: int = 75_000
    batch_size: int = 64
    lr: float = 1e-3
    precision: str = "auto"
    workers: int = 4
    val: str | Sequence[str] | None = None
    eval_every: int = 1000
    val_limit: int = 256
    save_every: int = 1000
    log_every: int = 10
    resume: bool = False
    seed: int = 0
    name_loss: bool = False
    activation: str = "silu"
    table: str = "sinusoid"
    table_dim: int = 64
    hidden: tuple[int, ...] = (512, 768)
    shuffle_buffer: int = 1000
    progress: bool = True
    device: str | None = None
    extra: dict = field(default_factory=dict)


# --- small helpers -------------------------------------------------------------------------

def _dist():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device.type != "cuda":
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def rng_state(device: torch.device | None = None) -> dict:
    """CPU and Python RNG states, and the CUDA generator of ``device`` when it is a GPU (only
    that one: a run must resume on a machine with fewer GPUs)."""
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def set_rng_state(st: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(_tuplify(st["python"]))
    cuda = st.get("cuda")
    if cuda is None or device is None or device.type != "cuda" or not torch.cuda.is_available():
        return
    if isinstance(cuda, (list, tuple)):  # earlier checkpoints: every GPU of the saving machine
        index = device.index or 0
        if index >= len(cuda):
            return
        cuda = cuda[index]
    torch.cuda.set_rng_state(cuda, device)


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- checkpoint ----------------------------------------------------------------------------
#
# ``train_state.pt`` is the one commit point of a checkpoint: it holds everything (step,
# optimiser, RNG, scaler, PIN weights and the run description) and is written first, atomically.
# ``pin.safetensors`` and ``pin.json`` (what users and eval-pin read) follow; a kill between the
# files leaves them at the previous checkpoint, and ``--resume`` rewrites them from
# ``train_state.pt``.

STATE_FORMAT = 2  # 1 (no "format" key): optimiser/RNG only, weights and meta in the other files


def write_run_files(out: Path, weights: dict, meta: dict) -> None:
    """``pin.safetensors`` then ``pin.json`` (each atomically) for the checkpoint ``meta["step"]``."""
    from safetensors.torch import save_file

    step = int(meta["step"])
    atomic_write_with(out / "pin.safetensors",
                      lambda p: save_file(weights, p, metadata={"step": str(step)}))
    atomic_write_with(out / "pin.json", lambda p: Path(p).write_text(json.dumps(meta, indent=2) + "\n"))


def save_checkpoint(out: Path, pin, optimizer, scaler, step: int, meta: dict,
                    device: torch.device | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().float().cpu().contiguous() for k, v in pin.state_dict().items()}
    meta = dict(meta, step=step, saved_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
    state = {"format": STATE_FORMAT, "step": step, "optimizer": optimizer.state_dict(),
             "rng": rng_state(device), "scaler": scaler.state_dict() if scaler is not None else {},
             "pin": weights, "meta": json.dumps(meta)}
    atomic_write_with(out / "train_state.pt", lambda p: torch.save(state, p))  # the commit
    write_run_files(out, weights, meta)


def load_state(out: Path) -> dict:
    """The resume state, read with ``torch.load(weights_only=True)`` (no arbitrary pickles)."""
    return torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)


def _saved_step(out: Path) -> tuple[int | None, int | None]:
    """The steps ``pin.json`` and ``pin.safetensors`` say they hold (None: missing/unreadable)."""
    from safetensors import safe_open

    js = st = None
    try:
        js = int(json.loads((out / "pin.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        with safe_open(str(out / "pin.safetensors"), "pt") as f:
            st = int((f.metadata() or {})["step"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        pass
    return js, st


def read_checkpoint(out: Path, repair: bool = True) -> tuple[dict, dict, dict] | None:
    """``(meta, state, weights)`` of the last committed checkpoint in ``out``, or None when there
    is none. With ``repair``, ``pin.safetensors``/``pin.json`` left behind by a kill between the
    checkpoint files are rewritten from ``train_state.pt``."""
    from safetensors.torch import load_file

    if not (out / "train_state.pt").is_file():
        if (out / "pin.json").is_file():
            raise UserError(f"{out} holds pin.json but no train_state.pt (optimiser, step, RNG): it "
                            "cannot be resumed; choose another --out")
        return None
    state = load_state(out)
    step = int(state["step"])
    if "meta" in state:  # self-contained: train_state.pt is the checkpoint
        meta, weights = json.loads(state["meta"]), state["pin"]
        if repair and _saved_step(out) != (step, step):
            write_run_files(out, weights, meta)
        return meta, state, weights
    # written by an earlier synthgen: the three files must agree
    if not (out / "pin.json").is_file() or not (out / "pin.safetensors").is_file():
        raise UserError(f"{out}: train_state.pt (step {step}) has no pin.json/pin.safetensors "
                        "beside it; the checkpoint is incomplete")
    meta = json.loads((out / "pin.json").read_text())
    if step != int(meta["step"]):
        raise UserError(f"{out}: train_state.pt (step {step}) and pin.json "
                        f"(step {meta['step']}) disagree; the checkpoint is incomplete")
    return meta, state, load_file(str(out / "pin.safetensors"))


# --- resume settings -----------------------------------------------------------------------

DATA_SPLIT = 2  # how shards are dealt to data splits (synthgen.pin.data.SceneStream._split_plan)

# what fixes the data order (the exact-continuation skip of --resume) and the curve, with the
# option that sets it; a resume must keep these
_RESUME_SETTINGS = (("seed", "--seed"), ("batch_size", "--batch-size"), ("lr", "--lr"),
                    ("world_size", "world size"), ("workers", "--workers"),
                    ("shuffle_buffer", "--shuffle-buffer"), ("name_loss", "--name-loss"))


def shard_list_digest(shards: Sequence[str]) -> str:
    """sha256 of the shard file names in order (the stream depends on them, not on where the
    directory lives)."""
    import hashlib

    names = "\n".join(os.path.basename(str(u).rstrip("/")) for u in shards)
    return hashlib.sha256(names.encode()).hexdigest()


def resume_conflicts(prev: dict, now: dict) -> list[str]:
    """``"option old -> new"`` for every setting of ``now`` that differs from the run's ``prev``
    (settings a run of an earlier synthgen did not record are not compared). 0 and 1
    ``--workers`` are the same stream (one data split per rank)."""
    out = []
    for key, label in _RESUME_SETTINGS:
        if key not in prev:
            continue
        old, new = prev[key], now[key]
        same = max(old, 1) == max(new, 1) if key == "workers" else old == new
        if not same:
            out.append(f"{label} {old} -> {new}")
    if "train_shards_sha256" in prev and (prev["train_shards_sha256"], prev.get("train_shard_count")) != (
            now["train_shards_sha256"], now["train_shard_count"]):
        out.append(f"shards {prev.get('train_shards')} ({prev.get('train_shard_count')} shards) -> "
                   f"{now['train_shards']} ({now['train_shard_count']} shards)")
    return out


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


# --- the loop ------------------------------------------------------------------------------

def train(cfg: TrainConfig, echo: Callable[[str], None] = print, adapter=None) -> dict:
    """Train PIN; return a summary ``{"step", "loss", "out", ...}``.

    ``adapter``: an already loaded :class:`~synthgen.pin.adapters.VLMAdapter` to train on
    (default: load ``cfg.vlm``/``cfg.model``); its VLM weights are left untouched.
    """
    from synthgen.pin.adapters import load_adapter
    from synthgen.pin.data import StreamConfig, check_canvas, list_shards, make_loader, read_header
    from synthgen.pin.evaluate import evaluate_scenes
    from synthgen.pin.module import PIN, describe

    for name in ("steps", "batch_size", "eval_every", "save_every", "log_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if cfg.workers < 0:
        raise UserError("--workers must be >= 0")
    if not cfg.lr > 0:
        raise UserError("--lr must be > 0")

    world, rank, local = _dist()
    if cfg.device:
        device = torch.device(cfg.device)
    else:
        device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    ddp = world > 1
    main = rank == 0
    say = echo if main else (lambda *_: None)

    out = Path(cfg.out)
    shards = list_shards(cfg.shards)
    val_shards = list_shards(cfg.val) if cfg.val else None
    header = read_header(shards)
    grid = int(header.get("grid", 0)) or None
    canvas = int(header["width"])

    precision = resolve_precision(cfg.precision, device)
    if cfg.precision not in ("auto", precision):
        say(f"note: --precision {cfg.precision} is for GPUs; training in {precision} on {device.type}")

    # resume or fresh
    if not cfg.resume and ((out / "pin.json").is_file() or (out / "train_state.pt").is_file()):
        at = _saved_step(out)[0]
        raise UserError(f"{out} already holds a PIN run{f' (step {at})' if at is not None else ''}; "
                        "pass --resume to continue it or choose another --out")
    if main:
        remove_stale_temps(out)  # of a writer killed mid-checkpoint
    ckpt = read_checkpoint(out, repair=main)
    prev, state, prev_weights = ckpt if ckpt is not None else (None, None, None)
    settings = {"seed": cfg.seed, "lr": cfg.lr, "batch_size": cfg.batch_size, "world_size": world,
                "workers": cfg.workers, "shuffle_buffer": cfg.shuffle_buffer, "name_loss": cfg.name_loss,
                "train_shards": str(cfg.shards), "train_shard_count": len(shards),
                "train_shards_sha256": shard_list_digest(shards), "data_split": DATA_SPLIT}
    if prev is not None:
        changed = resume_conflicts(prev, settings)
        if changed:
            raise UserError(f"{out} was trained with other settings: {'; '.join(changed)}. Resume with "
                            "the run's settings (they fix the data order and the curve) or start a "
                            "new run with another --out")
        n_splits = world * max(cfg.workers, 1)
        if prev.get("data_split") != DATA_SPLIT and len(shards) >= n_splits and len(shards) % n_splits:
            say(f"note: {out} was started by a synthgen that dealt {len(shards)} shards over "
                f"{n_splits} data splits differently; after this resume the data order is not the "
                "one the original run would have seen")

    own_group = False
    if ddp and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        own_group = True
    model_id = cfg.model
    if prev is not None:
        if cfg.vlm != prev["vlm"] or (model_id and model_id != prev["model"]):
            raise UserError(f"{out} was trained on {prev['vlm']} {prev['model']}; resume with the same "
                            "--vlm/--model")
        model_id = prev["model"]

    if adapter is None:
        adapter = load_adapter(cfg.vlm, model_id, device=device, dtype=_DTYPES[precision])
    elif adapter.name != cfg.vlm:
        raise UserError(f"adapter is {adapter.name} but the config says --vlm {cfg.vlm}")
    else:
        device = adapter.device
    model_desc = f"{cfg.vlm} ({adapter.model_id})"
    check_canvas(header, str(cfg.shards), adapter.input_size, model_desc)
    if val_shards:
        check_canvas(read_header(val_shards), str(cfg.val), adapter.input_size, model_desc)

    torch.manual_seed(cfg.seed)
    if prev is not None:
        pin = PIN.from_config(prev["pin"])
        pin.load_state_dict(prev_weights)
    else:
        pin = PIN(adapter.num_positions, adapter.vision_width, table=cfg.table,
                  table_dim=cfg.table_dim, hidden=cfg.hidden, activation=cfg.activation)
    pin.to(device).train()
    if (pin.num_positions, pin.out_dim) != (adapter.num_positions, adapter.vision_width):
        raise UserError(f"PIN {pin.num_positions}x{pin.out_dim} does not fit {model_desc} "
                        f"({adapter.num_positions}x{adapter.vision_width})")
    say(describe(pin))

    pin_fn = pin
    if ddp:
        from torch.nn.parallel import DistributedDataParallel as DDP
        import inspect
        # PIN's only buffer is the fixed sinusoid table, equal on every rank: never sync it in
        # forward (validation calls PIN on rank 0 alone)
        sync = ({"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
                else {"broadcast_buffers": False})
        pin_fn = DDP(pin, device_ids=[device.index] if device.type == "cuda" else None, **sync)
    adapter.attach_pin(pin_fn)
    adapter.assert_frozen()

    optimizer = torch.optim.Adam(pin.parameters(), lr=cfg.lr, weight_decay=0.0)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], device)
        step = int(state["step"])
        say(f"resuming {out} at step {step}")
    elif cfg.resume:
        say(f"nothing to resume in {out}; starting a new run")

    meta = {
        "format": "synthgen.pin/1", "synthgen_version": __version__, "vlm": cfg.vlm,
        "model": adapter.model_id, "canvas": canvas, "grid": grid, "patch_grid": adapter.patch_grid,
        "vision_width": adapter.vision_width, "num_positions": adapter.num_positions,
        "pin": pin.config(), "pin_parameters": pin.num_parameters(), "precision": precision,
        **settings, "steps_planned": cfg.steps,
    }

    log_path = out / "log.jsonl"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_log(log_path) if r.get("step", 0) <= step]
        log_path.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def log(rec: dict) -> None:
        if main:
            with open(log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def validate() -> dict | None:
        if not val_shards or not main:
            return None
        adapter.attach_pin(pin)  # the bare module: no DDP collectives on one rank
        pin.eval()
        with torch.autocast(device.type, dtype=_DTYPES[precision], enabled=precision != "fp32"):
            m = evaluate_scenes(adapter, val_shards, canvas=canvas, grid=grid or adapter.patch_grid,
                                limit=cfg.val_limit, batch_size=min(cfg.batch_size, 32))
        pin.train()
        adapter.attach_pin(pin_fn)
        return m

    if step >= cfg.steps:
        say(f"{out} is already at step {step} >= --steps {cfg.steps}")
        return {"step": step, "out": str(out), "loss": None, "main": main}

    stream = StreamConfig(shards=shards, batch_size=cfg.batch_size, seed=cfg.seed, rank=rank,
                          world_size=world, shuffle_buffer=cfg.shuffle_buffer,
                          image_size=adapter.input_size, name_loss=cfg.name_loss)
    loader = make_loader(stream, adapter.codec, workers=cfg.workers, start_batch=step,
                         pin_memory=device.type == "cuda")

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    progress = Progress(
        TextColumn("[bold]train-pin"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[sps]} samples/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), disable=not (cfg.progress and main),
    )
    last_loss = float("nan")
    losses: list[float] = []
    t_log = time.perf_counter()
    n_since = 0
    val_metrics = None
    amp = precision != "fp32"
    with progress:
        task = progress.add_task("train", total=cfg.steps, completed=step, loss="-", sps="-")
        it = iter(loader)
        while step < cfg.steps:
            batch = next(it)
            with torch.autocast(device.type, dtype=_DTYPES[precision], enabled=amp):
                loss = adapter.loss(batch)
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            step += 1
            last_loss = float(loss.detach())
            if scaler is None:  # (fp16's scaler skips non-finite steps itself)
                check_finite(last_loss, step, device if ddp else None)
            losses.append(last_loss)
            n_since += batch["input_ids"].shape[0] * world
            if step % cfg.log_every == 0 or step == cfg.steps:
                dt = time.perf_counter() - t_log
                sps = n_since / dt if dt > 0 else float("nan")
                mean = sum(losses) / len(losses)
                if ddp:  # log the mean over all ranks
                    t = torch.tensor([mean], device=device)
                    torch.distributed.all_reduce(t)
                    mean = float(t) / world
                log({"step": step, "loss": mean, "samples_per_s": round(sps, 2), "lr": cfg.lr,
                     "time": time.time()})
                progress.update(task, loss=f"{mean:.4f}", sps=f"{sps:.1f}")
                losses, n_since, t_log = [], 0, time.perf_counter()
            progress.update(task, completed=step)
            if val_shards and (step % cfg.eval_every == 0 or step == cfg.steps):
                val_metrics = validate()
                if val_metrics is not None:
                    log({"step": step, "val_miou": val_metrics["miou"], "val_n": val_metrics["n"],
                         "val_unparseable": val_metrics["unparseable"]})
                    progress.console.print(f"step {step}: val mIoU {val_metrics['miou']:.4f} "
                                           f"({val_metrics['n']} queries, "
                                           f"{val_metrics['unparseable']} unparseable)")
            if main and (step % cfg.save_every == 0 or step == cfg.steps):
                save_checkpoint(out, pin, optimizer, scaler, step, meta, device)
            if ddp and step % cfg.save_every == 0:
                torch.distributed.barrier()
    del it, loader
    adapter.assert_frozen()
    if ddp:
        torch.distributed.barrier()
        if own_group:
            torch.distributed.destroy_process_group()
    say(f"saved {out / 'pin.safetensors'} at step {step}")
    return {"step": step, "loss": last_loss, "out": str(out), "val": val_metrics,
            "pin_parameters": pin.num_parameters(), "main": main}
