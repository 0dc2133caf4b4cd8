"""PIN training (``synthgen train-pin``): a frozen VLM, PIN the only trainable tensor (or, with
``--method``, a method of the paper's Table 1: :mod:`synthgen.pin.models.methods`).

Adam (no weight decay, lr 1e-3), batch 64 per GPU, bf16/fp16 autocast on GPU, fp32 on CPU,
multi-GPU with ``torchrun`` (DDP around PIN only, so only PIN's gradients are synchronised).
:func:`train` reads top to bottom as numbered steps; the run folder (checkpoints, resume) is
:mod:`synthgen.pin.training.checkpoint`, the data stream :mod:`synthgen.pin.training.data`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from dataclasses import dataclass
from typing import Callable

import torch

from synthgen import storage
from synthgen._version import __version__
from synthgen.errors import UserError, raise_problems
from synthgen.pin.runtime import resolve_precision
from synthgen.pin.training.checkpoint import (
    DATA_SPLIT,
    read_checkpoint,
    resume_conflicts,
    saved_step,
    set_rng_state,
)
from synthgen.pin.training.config import AUTO, TrainConfig
from synthgen.schema import PIN_FORMAT, PIN_META_FILE, TRAIN_LOG_FILE, TRAIN_STATE_FILE
from synthgen.storage import RunFolder, atomic_write

__all__ = ["TrainConfig", "train"]



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
    from synthgen.pin.runtime import pick_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(cfg.device, local, world, torch.cuda.is_available())
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return _Env(world, rank, device, echo if rank == 0 else (lambda *_: None))


def _resume_point(cfg: TrainConfig, env: _Env, plan):
    """``(prev meta, state, weights, settings)``: the checkpoint to continue (Nones for a new
    run) and this run's settings, refused when they differ from the checkpoint's."""
    out = storage.path(str(cfg.out))
    ckpt = read_checkpoint(out, repair=env.main)
    prev, state, weights = ckpt if ckpt is not None else (None, None, None)
    from synthgen.pin.models.registry import method_options

    settings = {"method": cfg.method, "method_options": method_options(cfg.method, cfg.method_options),
                "seed": cfg.seed, "lr": cfg.lr, "batch_size": cfg.batch_size, "world_size": env.world,
                "workers": cfg.loader_workers, "shuffle_buffer": cfg.shuffle_buffer, "name_loss": cfg.name_loss,
                **plan.settings}
    if prev is None:
        return None, None, None, settings
    if prev.get("method", "pin") != cfg.method:
        raise UserError(f"{out} trained --method {prev.get('method', 'pin')}, not {cfg.method}; resume with the "
                        "same --method or start a new run with another --out")
    changed = resume_conflicts(prev, settings)
    if changed:
        raise UserError(f"{out} was trained with other settings: {'; '.join(changed)}. Resume with "
                        "the run's settings (they fix the data order and the curve) or start a "
                        "new run with another --out")
    n_splits, n_shards = env.world * max(cfg.loader_workers, 1), settings.get("train_shard_count") or 0
    if "data_split" in settings and prev.get("data_split") != DATA_SPLIT and n_shards >= n_splits and n_shards % n_splits:
        env.say(f"note: {out} was started by a synthgen that dealt {n_shards} shards over "
                f"{n_splits} data splits differently; after this resume the data order is not the "
                "one the original run would have seen")
    if cfg.vlm not in (AUTO, prev["vlm"]) or (cfg.model and cfg.model != prev["model"]):
        raise UserError(f"{out} was trained on {prev['vlm']} {prev['model']}; resume with the same "
                        "--vlm/--model")
    return prev, state, weights, settings


def _ddp(module, env: _Env):
    """``module`` wrapped for DDP (its gradients synchronised); it has no buffer to sync in forward
    (PIN's one buffer is the fixed sinusoid table, equal on every rank; validation calls it on
    rank 0 alone)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    sync = ({"forward_sync_buffers": False}
            if "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
            else {"broadcast_buffers": False})
    dev = env.device
    return DDP(module, device_ids=[dev.index] if dev.type == "cuda" else None, **sync)


def _build_method(cfg: TrainConfig, adapter, prev: dict | None, weights: dict | None, env: _Env):
    """``(method, fn)``: a Table 1 method (seeded fresh, or the checkpoint's) put into the VLM, and
    what its hooks call (itself, or its DDP wrapper); the VLM frozen but for what it trains."""
    from synthgen.pin.models.methods import describe, make_method

    torch.manual_seed(cfg.seed)
    method = make_method(cfg.method, adapter, prev["method_options"] if prev is not None else cfg.method_options)
    method.attach(adapter)
    if weights is not None:
        method.load_state_dict(weights)
    method.train()
    adapter.assert_frozen(method.owned())
    env.say(describe(method))
    if not env.ddp:
        return method, method
    fn = _ddp(method, env)
    method.use(fn)
    return method, fn


def _build_pin(cfg: TrainConfig, adapter, prev: dict | None, weights: dict | None, env: _Env):
    """``(pin, pin_fn)``: PIN (seeded fresh, or the checkpoint's) and what the adapter calls
    (PIN itself, or its DDP wrapper)."""
    from synthgen.pin.models.module import PIN, describe

    if cfg.method != "pin":
        return _build_method(cfg, adapter, prev, weights, env)
    torch.manual_seed(cfg.seed)
    if prev is not None:
        pin = PIN.from_config(prev["pin"])
        pin.load_state_dict(weights)
    else:
        pin = PIN(adapter.num_positions, adapter.vision_width, table=cfg.table,
                  table_dim=cfg.table_dim, hidden=cfg.hidden, activation=cfg.activation)
    pin.to(env.device).train()
    if (pin.num_positions, pin.out_dim) != (adapter.num_positions, adapter.vision_width):
        raise UserError(f"PIN {pin.num_positions}x{pin.out_dim} does not fit {adapter.name} "
                        f"({adapter.model_id}: {adapter.num_positions}x{adapter.vision_width})")
    env.say(describe(pin))
    if not env.ddp:
        return pin, pin
    return pin, _ddp(pin, env)


class _Log:
    """``log.jsonl`` of the run (main rank only), cut back to the resumed step.

    Locally each record is appended. An object cannot be appended to: in a remote run folder the
    log is rewritten whole (one PUT) at every checkpoint, at the end, and at most every
    :attr:`FLUSH_S` seconds in between; a kill loses only the lines after the last write, which
    ``--resume`` would drop anyway when they are after the last checkpoint."""

    FLUSH_S = 30.0

    def __init__(self, path, step: int, enabled: bool):
        import time

        from synthgen.pin.training.checkpoint import read_log

        self.path, self.enabled = path, enabled
        self.remote = path.remote  # inherent: an object cannot be appended to
        self.lines: list[str] = []
        self._flushed = time.monotonic()
        if enabled:
            kept = [r for r in read_log(path) if r.get("step", 0) <= step]
            self.lines = [json.dumps(r) + "\n" for r in kept]
            atomic_write(path, "".join(self.lines))

    def __call__(self, rec: dict) -> None:
        if not self.enabled:
            return
        import time

        if self.remote:
            self.lines.append(json.dumps(rec) + "\n")
            if time.monotonic() - self._flushed > self.FLUSH_S:
                self.flush()
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def flush(self) -> None:
        """Write a remote log whole (locally every line is already in the file)."""
        import time

        if self.enabled and self.remote:
            atomic_write(self.path, "".join(self.lines))
            self._flushed = time.monotonic()


def train(cfg: TrainConfig, echo: Callable[[str], None] = print, adapter=None) -> dict:
    """Train PIN; return a summary ``{"step", "loss", "out", ...}``.

    ``adapter``: an already loaded :class:`~synthgen.pin.models.adapters.VLMAdapter` to train on
    (default: load ``cfg.vlm``/``cfg.model``); its VLM weights are left untouched.
    """
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.runtime import SCALED, WEIGHTS
    from synthgen.pin.training.data import check_canvas, read_header
    from synthgen.pin.training.loop import Loop
    from synthgen.pin.training.sources import plan_data
    from synthgen.shards import find_shards

    # 1. settings, this process's rank and device
    raise_problems(cfg.problems())
    env = _environment(cfg, echo)
    if env.ddp and cfg.method in ("lora-vision", "full"):
        raise UserError(f"--method {cfg.method} trains weights inside the VLM on one GPU; run it without torchrun")
    if cfg.method != "pin" and cfg.vlm == AUTO and cfg.model and adapter is None:  # (the family from its config)
        from synthgen.pin.models.adapters import detect_family
        from synthgen.pin.models.registry import method_refusal

        why = method_refusal(cfg.method, detect_family(cfg.model))
        if why:
            raise UserError(why)
    out = storage.path(str(cfg.out))
    precision = resolve_precision(cfg.precision, env.device)
    if cfg.precision not in ("auto", precision):
        env.say(f"note: --precision {cfg.precision} is for GPUs; training in {precision} on "
                f"{env.device.type}")

    # 2. the data: shards or scenes composed on the fly, the canvas, the length and the phases
    plan = plan_data(cfg, env.world)
    val_shards = find_shards(cfg.val) if cfg.val else None

    # 3. the run folder (locked by the main rank): a new run, or the checkpoint to resume
    if not cfg.resume and ((out / PIN_META_FILE).is_file() or (out / TRAIN_STATE_FILE).is_file()):
        at = saved_step(out)[0]
        raise UserError(f"{out} already holds a PIN run{f' (step {at})' if at is not None else ''}; "
                        "pass --resume to continue it or choose another --out")
    with RunFolder(out, "train-pin") if env.main else contextlib.nullcontext():
        prev, state, weights, settings = _resume_point(cfg, env, plan)
        own_group = env.ddp and not torch.distributed.is_initialized()
        if own_group:
            torch.distributed.init_process_group("nccl" if env.device.type == "cuda" else "gloo")

        # 4. the frozen VLM, which must take the shards' canvas
        if adapter is None:
            model_id = prev["model"] if prev is not None else cfg.model
            options = {**(prev or {}).get("vlm_options", {}), **cfg.vlm_options}
            vlm = prev["vlm"] if prev is not None and cfg.vlm == AUTO else cfg.vlm
            adapter = load_adapter(vlm, model_id, device=env.device, dtype=WEIGHTS[precision],
                                   attn_implementation=cfg.attn_implementation, **options)
        elif cfg.vlm not in (AUTO, adapter.name):
            raise UserError(f"adapter is {adapter.name} but the config says --vlm {cfg.vlm}")
        else:
            env.device = adapter.device
        vlm_options = dict(getattr(adapter, "vlm_options", {}))
        if prev is not None and prev.get("vlm_options", vlm_options) != vlm_options:
            raise UserError(f"{out} was trained on {prev['vlm']} with VLM options {prev['vlm_options']}, not "
                            f"{vlm_options}; resume with the run's options or start a new run with another --out")
        if prev is not None and adapter.name != prev["vlm"]:  # (--vlm auto on another checkpoint)
            raise UserError(f"{out} was trained on {prev['vlm']} {prev['model']}, not {adapter.name}")
        model_desc = f"{adapter.name} ({adapter.model_id})"
        check_canvas({"width": plan.canvas, "height": plan.canvas}, plan.describe, adapter.input_size, model_desc)
        if val_shards:
            check_canvas(read_header(val_shards), str(cfg.val), adapter.input_size, model_desc)

        # 5. PIN, added to the vision features before the fusion network (or the --method trained
        # instead); the VLM stays frozen but for what the method trains
        pin, pin_fn = _build_pin(cfg, adapter, prev, weights, env)
        owned = pin.owned() if cfg.method != "pin" else ()
        if cfg.method == "pin":
            adapter.attach_pin(pin_fn)
        adapter.assert_frozen(owned) if owned else adapter.assert_frozen()
        if cfg.grad_checkpointing:
            env.say(f"gradient checkpointing: {adapter.enable_grad_checkpointing()} layers recompute in backward")

        # 6. the optimiser (and the run's state when resuming)
        params = list(pin.trainable().values()) if cfg.method != "pin" else list(pin.parameters())
        n_trainable = sum(p.numel() for p in params)
        optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=0.0)
        scaler = torch.amp.GradScaler(env.device.type) if precision in SCALED else None
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
        canvas, grid = plan.canvas, plan.grid
        meta = {"format": PIN_FORMAT, "synthgen_version": __version__, "vlm": adapter.name,  # auto resolved
                "model": adapter.model_id, "vlm_options": vlm_options, "canvas": canvas, "grid": grid,
                "patch_grid": adapter.patch_grid, "vision_width": adapter.vision_width,
                "num_positions": adapter.num_positions, "trainable_parameters": n_trainable,
                **({"pin": pin.config(), "pin_parameters": n_trainable} if cfg.method == "pin" else {}),
                "precision": precision, **settings,
                "steps_planned": plan.steps}
        log = _Log(out / TRAIN_LOG_FILE, step, env.main)
        if step >= plan.steps:
            env.say(f"{out} is already at step {step} >= the {plan.steps} steps planned")
            return {"step": step, "out": str(out), "loss": None, "main": env.main}

        # 7. the loop, phase by phase (the warm-up, then the main phase)
        env.say(f"training on {plan.describe}: {plan.steps} steps"
                + "".join(f", {p.name} {p.start}-{p.end}" for p in plan.phases if len(plan.phases) > 1))
        loop = Loop(cfg, env, adapter, pin, pin_fn, optimizer, scaler, precision, log,
                    meta, val_shards, canvas, grid or adapter.patch_grid)
        try:
            step, last_loss, val_metrics = loop.run(plan, step)
        except BaseException:
            with contextlib.suppress(Exception):  # (the run's own error is the one to see)
                log.flush()
            raise
        log.flush()

        # 8. the end: the VLM untouched, every rank done
        adapter.assert_frozen(owned) if owned else adapter.assert_frozen()
        if env.ddp:
            torch.distributed.barrier()
            if own_group:
                torch.distributed.destroy_process_group()
    env.say(f"saved {out / 'pin.safetensors'} at step {step}")
    return {"step": step, "loss": last_loss, "out": str(out), "val": val_metrics,
            **({"pin_parameters": n_trainable} if cfg.method == "pin" else {}),
            "trainable_parameters": n_trainable, "method": cfg.method, "main": env.main}
