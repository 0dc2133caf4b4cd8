"""The optimiser steps of train-pin: phases over the scene streams, logging, validation and
checkpoints (what :func:`synthgen.pin.training.train.train` runs once everything is set up)."""

from __future__ import annotations

import time

import torch

from synthgen import storage
from synthgen.pin.training.checkpoint import save_checkpoint

# precision -> (dtype of the frozen VLM's weights, autocast dtype): fp16 is the authors' (Lightning
# precision=16: fp32 weights, fp16 autocast, a grad scaler); bf16 also keeps the VLM in bf16,
# which halves its memory (no scaler needed: bf16 has fp32's range)
WEIGHTS = {"bf16": torch.bfloat16, "fp16": torch.float32, "fp32": torch.float32}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def check_finite(loss: float, step: int, device: torch.device | None = None) -> None:
    """Raise RuntimeError when the loss is not finite. Under DDP (``device`` given) the ranks first
    agree through a one-element all-reduce, so that all of them raise at the same step: a rank
    raising alone would leave the others waiting in their next collective."""
    import math

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


class Loop:
    """Optimiser steps over the phases of a :class:`~synthgen.pin.training.sources.DataPlan`."""

    def __init__(self, cfg, env, adapter, pin, pin_fn, optimizer, scaler, precision, log, meta,
                 val_shards, canvas, grid):
        self.cfg, self.env, self.adapter, self.pin, self.pin_fn = cfg, env, adapter, pin, pin_fn
        self.optimizer, self.scaler, self.precision, self.log, self.meta = (
            optimizer, scaler, precision, log, meta)
        self.val_shards, self.canvas, self.grid = val_shards, canvas, grid
        self.amp = precision != "fp32"
        self.bad: dict[str, int] = {}

    def _autocast(self):
        return torch.autocast(self.env.device.type, dtype=AUTOCAST[self.precision], enabled=self.amp)

    def validate(self) -> dict | None:
        from synthgen.pin.evaluation.evaluate import evaluate_scenes

        if not self.val_shards or not self.env.main:
            return None
        self.adapter.attach_pin(self.pin)  # the bare module: no DDP collectives on one rank
        self.pin.eval()
        with self._autocast():
            m = evaluate_scenes(self.adapter, self.val_shards, canvas=self.canvas, grid=self.grid,
                                limit=self.cfg.val_limit, batch_size=min(self.cfg.batch_size, 32))
        self.pin.train()
        self.adapter.attach_pin(self.pin_fn)
        return m

    def step(self, batch: dict) -> float:
        """One optimiser step; the loss before it."""
        with self._autocast():
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

    def run(self, plan, step: int) -> tuple[int, float, dict | None]:
        from synthgen.progress import progress_bars

        # train-pin ━━━ 120/1000 steps  2.1/s  0:07:12  loss 1.2345  134 samples/s
        progress = progress_bars("steps", enabled=self.cfg.progress and self.env.main, label_width=16, note=True)
        self.last_loss, self.val = float("nan"), None
        with progress:
            self.task = progress.add_task("train-pin", total=plan.steps, completed=step, begin=step, note="")
            self.progress = progress
            for phase in plan.phases:
                if step < phase.end:
                    step = self._phase(phase, plan, step)
        if self.bad:
            self.env.say("skipped bad samples (this rank): "
                         + ", ".join(f"{k} {v}" for k, v in sorted(self.bad.items())) + " (see log.jsonl)")
        return step, self.last_loss, self.val

    def _phase(self, phase, plan, step: int) -> int:
        from synthgen.pin.training.data import make_loader
        from synthgen.pin.training.sources import stream_for

        cfg, env = self.cfg, self.env
        stream, scfg = stream_for(phase, cfg, rank=env.rank, world=env.world, image_size=self.adapter.input_size)
        loader = make_loader(scfg, self.adapter.codec, workers=cfg.loader_workers, start_batch=step - phase.start,
                             pin_memory=env.device.type == "cuda", stream=stream)
        if len(plan.phases) > 1:
            self.progress.update(self.task, description=f"train-pin {phase.name}")
        losses, objects, n_since, t_log = [], [], 0, time.perf_counter()
        it = iter(loader)
        while step < phase.end:
            batch = next(it)
            for reason, n in batch.get("bad", {}).get("counts", {}).items():
                self.bad[reason] = self.bad.get(reason, 0) + n
            self.last_loss = self.step(batch)
            step += 1
            if self.scaler is None:  # (fp16's scaler skips non-finite steps itself)
                check_finite(self.last_loss, step, env.device if env.ddp else None)
            losses.append(self.last_loss)
            objects.append(float(batch["n_objects"].float().mean()))
            n_since += batch["input_ids"].shape[0] * env.world
            if step % cfg.log_every == 0 or step == phase.end:
                mean, sps = self._log_train(step, phase, losses, objects, n_since, time.perf_counter() - t_log)
                self.progress.update(self.task, note=f"loss {mean:.4f}  {sps:.1f} samples/s")
                losses, objects, n_since, t_log = [], [], 0, time.perf_counter()
            self.progress.update(self.task, completed=step)
            if self.val_shards and (step % cfg.eval_every == 0 or step == plan.steps):
                self._validate(step)
            if env.main and (step % cfg.save_every == 0 or step == plan.steps or step == phase.end):
                save_checkpoint(storage.path(str(cfg.out)), self.pin, self.optimizer, self.scaler, step, self.meta,
                                env.device)
                flush = getattr(self.log, "flush", None)
                if flush is not None:
                    flush()  # a remote log.jsonl is rewritten whole with each checkpoint
            if env.ddp and step % cfg.save_every == 0:
                torch.distributed.barrier()
        del it, loader
        return step

    def _validate(self, step: int) -> None:
        self.val = val = self.validate()
        if val is not None:
            self.log({"step": step, "val_miou": val["miou"], "val_n": val["n"],
                      "val_unparseable": val["unparseable"]})
            self.progress.console.print(f"step {step}: val mIoU {val['miou']:.4f} "
                                        f"({val['n']} queries, {val['unparseable']} unparseable)")

    def _log_train(self, step: int, phase, losses: list[float], objects: list[float], n: int,
                   dt: float) -> tuple[float, float]:
        sps = n / dt if dt > 0 else float("nan")
        mean = sum(losses) / len(losses)
        if self.env.ddp:  # log the mean over all ranks
            t = torch.tensor([mean], device=self.env.device)
            torch.distributed.all_reduce(t)
            mean = float(t) / self.env.world
        rec = {"step": step, "loss": mean, "samples_per_s": round(sps, 2), "lr": self.cfg.lr,
               "time": time.time(), "phase": phase.name, "loss_span": phase.loss_span,
               "objects_per_scene": round(sum(objects) / len(objects), 4)}
        if self.bad:
            rec["bad_samples"] = dict(sorted(self.bad.items()))
        self.log(rec)
        return mean, sps
