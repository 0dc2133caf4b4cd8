"""The optimiser steps of train-pin: phases over the scene streams, logging, validation and
checkpoints (what :func:`synthgen.pin.training.train.train` runs once everything is set up)."""

from __future__ import annotations

import contextlib
import time

import torch

from synthgen import storage
from synthgen.errors import Interrupted, UserError
from synthgen.pin.models.adapters.base import loss_tokens
from synthgen.pin.runtime import AUTOCAST
from synthgen.pin.training.checkpoint import save_checkpoint


def agree_finite(loss: float, device: torch.device | None = None) -> bool:
    """Whether the loss is finite on every rank. Under DDP (``device`` given) the ranks agree
    through a one-element all-reduce, so that all of them skip (or stop at) the same step."""
    import math

    finite = math.isfinite(loss)
    if device is None:
        return finite
    flag = torch.tensor([1 if finite else 0], dtype=torch.int32, device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def micro_batches(batch: dict, size: int) -> list[dict]:
    """``batch`` cut into pieces of at most ``size`` samples along its first dimension (what is
    not a per-sample tensor, e.g. the bad-sample counts, goes with the first piece)."""
    n = batch["input_ids"].shape[0]
    if size >= n:
        return [batch]
    out = []
    for i in range(0, n, size):
        out.append({k: v[i:i + size] if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == n
                    else (v if i == 0 else None) for k, v in batch.items()})
    return out


class StopSignals:
    """SIGINT and SIGTERM (Ctrl-C, and how schedulers stop jobs) while training: the first asks the
    loop to stop after the step in progress, which it saves as a checkpoint; a second Ctrl-C stops
    at once. Installed from the main thread only (signal handlers live there)."""

    NAMES = ("SIGINT", "SIGTERM")

    def __init__(self, say) -> None:
        self.say, self.requested, self._before = say, None, {}

    def __enter__(self) -> StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.NAMES:
                sig = getattr(signal, name)
                self._before[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        import signal

        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def _handle(self, signum, frame) -> None:
        import signal

        if self.requested is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        self.say(f"{self.requested}: stopping after this step, with a checkpoint (Ctrl-C again stops at once)")


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
        # --micro-batch: samples a forward/backward takes; "auto" starts at the batch and halves
        # on a CUDA out-of-memory error (the CPU has none to catch: there it stays the batch)
        self.auto_micro = cfg.micro_batch == "auto"
        self.micro = cfg.batch_size if self.auto_micro else min(int(cfg.micro_batch), cfg.batch_size)
        self.skipped = 0  # optimiser steps skipped in a row (non-finite loss or fp16 overflow)
        self.saved: int | None = None  # the step of the last checkpoint this loop wrote

    def _autocast(self):
        return torch.autocast(self.env.device.type, dtype=AUTOCAST[self.precision], enabled=self.amp)

    def validate(self) -> dict | None:
        from synthgen.pin.evaluation.evaluate import evaluate_scenes

        if not self.val_shards or not self.env.main:
            return None
        use = getattr(self.pin, "use", None) or self.adapter.attach_pin  # (a --method: its own switch)
        use(self.pin)  # the bare module: no DDP collectives on one rank
        self.pin.eval()
        with self._autocast():
            m = evaluate_scenes(self.adapter, self.val_shards, canvas=self.canvas, grid=self.grid,
                                limit=self.cfg.val_limit, batch_size=min(self.cfg.batch_size, 32))
            others = [t for t, w in self.cfg.task_weights().items() if w > 0 and t != "name"]
            if others:  # a --tasks mix: each of its other tasks too, on up to --val-limit questions each
                m["tasks"] = self._validate_tasks(others)
        self.pin.train()
        use(self.pin_fn)
        return m

    def _validate_tasks(self, tasks: list[str]) -> dict[str, dict]:
        from synthgen.pin.evaluation.scenetasks import score_scene_tasks
        from synthgen.pin.evaluation.taskmetrics import summarize_tasks

        records = score_scene_tasks(self.adapter, self.val_shards, tasks, canvas=self.canvas,
                                    limit=self.cfg.val_limit, batch_size=min(self.cfg.batch_size, 32))
        return summarize_tasks(records, tasks)

    def _accumulate(self, batch: dict) -> float:
        """Forward and backward over ``batch`` in micro-batches; the gradients add up to the
        full batch's: each piece's mean loss is weighted by its share of the loss tokens. Under
        DDP, gradients are synchronised once, after the last piece."""
        pieces = micro_batches(batch, self.micro)
        total = sum(loss_tokens(p["labels"]) for p in pieces) or 1
        loss_sum = 0.0
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            sync = self.pin_fn.no_sync() if hasattr(self.pin_fn, "no_sync") and not last else contextlib.nullcontext()
            with sync:
                with self._autocast():
                    loss = self.adapter.loss(piece) * (loss_tokens(piece["labels"]) / total)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            loss_sum += float(loss.detach())
        return loss_sum

    def _fitting(self, batch: dict) -> float:
        """:meth:`_accumulate`, halving ``--micro-batch auto`` on each CUDA out-of-memory error."""
        while True:
            try:
                return self._accumulate(batch)
            except torch.cuda.OutOfMemoryError:
                if not self.auto_micro or self.micro == 1:
                    raise
                self.optimizer.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                self.micro = max(1, self.micro // 2)
                self.env.say(f"--micro-batch auto: out of GPU memory; {self.micro} samples a forward from now on")

    def step(self, batch: dict, at: int) -> float:
        """Optimiser step ``at``; the loss before it. A step whose loss is not finite (on any rank)
        or whose fp16 gradients overflowed is skipped; ``--max-skipped-steps`` in a row stop the
        run with the remedy."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self._fitting(batch)
        finite = agree_finite(loss, self.env.device if self.env.ddp else None)
        if self.scaler is not None:  # (its step skips non-finite gradients itself, and lowers the scale)
            before = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = not finite or self.scaler.get_scale() < before
        else:
            if finite:
                self.optimizer.step()
            skipped = not finite
        self.skipped = self.skipped + 1 if skipped else 0
        if self.skipped >= self.cfg.max_skipped_steps:
            self._stop_skipping(at, loss)
        return loss

    def _stop_skipping(self, at: int, loss: float) -> None:
        if self.precision in ("fp16", "fp16-mixed"):
            why, remedy = ("fp16 overflowed", "train in bf16 (--precision bf16 or auto on a GPU that has it) or "
                           "fp32; --resume continues from the last checkpoint")
        else:
            why, remedy = "the loss is not finite", "lower --lr or check the data; --resume continues from the last checkpoint"
        raise UserError(f"{self.skipped} optimiser steps in a row skipped at step {at} ({why}; last loss {loss}): "
                        f"{remedy}")

    def run(self, plan, step: int) -> tuple[int, float, dict | None]:
        from synthgen.progress import progress_bars

        # train-pin ━━━ 120/1000 steps  2.1/s  0:07:12  loss 1.2345  134 samples/s
        progress = progress_bars("steps", enabled=self.cfg.progress and self.env.main, label_width=16, note=True)
        self.last_loss, self.val = float("nan"), None
        with progress, StopSignals(progress.console.print if self.env.main else (lambda *_: None)) as self.stop:
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
            try:
                batch = next(it)
            except Exception:
                if self.stop.requested:  # (the signal stopped the loader's workers too)
                    self._interrupt(step)
                raise
            for reason, n in batch.get("bad", {}).get("counts", {}).items():
                self.bad[reason] = self.bad.get(reason, 0) + n
            self.last_loss = self.step(batch, step + 1)
            step += 1
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
            if step % cfg.save_every == 0 or step == plan.steps or step == phase.end:
                self._save(step)
            if env.ddp and step % cfg.save_every == 0:
                torch.distributed.barrier()
            if self._stopping():
                self._interrupt(step)
        del it, loader
        return step

    def _save(self, step: int) -> None:
        if not self.env.main or self.saved == step:
            return
        save_checkpoint(storage.path(str(self.cfg.out)), self.pin, self.optimizer, self.scaler, step, self.meta,
                        self.env.device)
        self.saved = step
        flush = getattr(self.log, "flush", None)
        if flush is not None:
            flush()  # a remote log.jsonl is rewritten whole with each checkpoint

    def _stopping(self) -> bool:
        """Whether a stop was asked for, on any rank (under DDP all ranks stop at the same step)."""
        if not self.env.ddp:
            return self.stop.requested is not None
        flag = torch.tensor([0 if self.stop.requested is None else 1], dtype=torch.int32, device=self.env.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _interrupt(self, step: int):
        """Save ``step`` (the last step done) and stop with what to do next."""
        self._save(step)
        raise Interrupted(f"{self.stop.requested or 'a signal on another rank'} at step {step}: the checkpoint of "
                          f"step {step} is in {self.cfg.out}; continue with the same command and --resume")

    def _validate(self, step: int) -> None:
        self.val = val = self.validate()
        if val is not None:
            from synthgen.pin.evaluation.taskmetrics import task_score

            tasks = {t: task_score(m) for t, m in val.get("tasks", {}).items()}
            self.log({"step": step, "val_miou": val["miou"], "val_n": val["n"],
                      "val_unparseable": val["unparseable"], **({"val_tasks": tasks} if tasks else {})})
            words = ", ".join(f"{t} {'-' if v is None else f'{v:.3f}'}" for t, v in tasks.items())
            self.progress.console.print(f"step {step}: val mIoU {val['miou']:.4f} "
                                        f"({val['n']} queries, {val['unparseable']} unparseable)"
                                        + (f"; tasks (mIoU or accuracy) {words}" if tasks else ""))

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
