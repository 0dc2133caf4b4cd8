"""Settings of train-pin (the paper's by default) and their checks (the VLMs: :mod:`synthgen.pin.models.registry`).

The CLI takes its defaults from :class:`TrainConfig`. Light: no torch import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from synthgen.pin.models import ACTIVATIONS, ATTENTION, METHODS, PRECISIONS, TABLES
from synthgen.pin.models.registry import AUTO, DEFAULT_MODELS, VLMS, vlm_option_problems


@dataclass
class TrainConfig:
    shards: str | Sequence[str] | None = None   # scene shards, or compose on the fly:
    objects: str | None = None                  # an object bank, and
    backgrounds: str | None = None              # backgrounds (with the compose settings below)
    compose: dict = field(default_factory=dict)  # compose options (a recipe's compose: section)
    extra_object_roots: tuple[str, ...] = ()
    categories_map: str | None = None           # with objects: names of the bank's categories (bank/names.py)
    out: str = "runs/pin"
    vlm: str = "blip2"
    model: str | None = None
    vlm_options: dict = field(default_factory=dict)  # extra VLM options, e.g. OpenFlamingo's lm=
    method: str = "pin"          # what is trained: PIN, or a Table 1 method (synthgen.pin.models.methods)
    method_options: dict = field(default_factory=dict)  # its sizes (tokens=, r=, alpha=); the paper's by default
    steps: int = 75_000          # paper: 160 epochs x 60k scenes at 2 GPUs x 64 (used without --epochs)
    epochs: int | None = None    # the length in the paper's units (160), with epoch_size
    epoch_size: int = 60_000     # scenes an epoch, over all ranks
    warmup_epochs: int = 0       # the authors' 40: a_max objects, loss on "{name} located at" too
    warmup_shards: str | Sequence[str] | None = None  # the warm-up's scenes when reading shards
    batch_size: int = 64         # per GPU: the optimiser's batch
    micro_batch: int | str = "auto"  # samples a forward takes (gradient accumulation); auto: what fits
    grad_checkpointing: bool = False
    attn_implementation: str = "auto"
    max_skipped_steps: int = 20  # non-finite / overflowed steps in a row before the run stops
    lr: float = 1e-3
    precision: str = "auto"      # bf16 where the GPU has it, else fp16 (the authors': fp16-mixed)
    loader_workers: int = 4      # DataLoader worker processes per GPU
    val: str | Sequence[str] | None = None
    eval_every: int = 1000
    val_limit: int = 256
    save_every: int = 1000
    log_every: int = 10
    resume: bool = False
    seed: int = 0
    name_loss: bool = False
    activation: str = "silu"     # the authors' code; the paper's text says SwiGLU
    table: str = "sinusoid"
    table_dim: int = 64
    hidden: tuple[int, ...] = (512, 768)
    shuffle_buffer: int = 1000
    max_bad_samples: float = 0.01   # share of bad samples (skipped, counted) before a stop
    progress: bool = True
    device: str | None = None
    tasks: str | dict = "name=1"  # question tasks by weight (synthgen.pin.training.tasks); name=1: the paper's

    def task_weights(self) -> dict[str, float]:
        """``--tasks`` as ``{task: weight}`` (UserError when malformed)."""
        from synthgen.pin.training.tasks import parse_weights

        return parse_weights(self.tasks)

    def problems(self) -> list[str]:
        out = []
        for name in ("steps", "batch_size", "eval_every", "save_every", "log_every", "val_limit"):
            if getattr(self, name) < 1:
                out.append(f"--{name.replace('_', '-')} must be >= 1")
        if self.micro_batch != "auto" and (isinstance(self.micro_batch, bool) or not isinstance(self.micro_batch, int)
                                           or self.micro_batch < 1):
            out.append(f"--micro-batch must be a positive integer or auto, got {self.micro_batch!r}")
        if self.max_skipped_steps < 1:
            out.append("--max-skipped-steps must be >= 1")
        if self.attn_implementation not in ATTENTION:
            out.append(f"--attn-implementation must be one of {', '.join(ATTENTION)}, got {self.attn_implementation!r}")
        if self.loader_workers < 0:
            out.append("--loader-workers must be >= 0")
        if not self.lr > 0:
            out.append("--lr must be > 0")
        if self.precision not in PRECISIONS:
            out.append(f"--precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.activation not in ACTIVATIONS:
            out.append(f"--activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.table not in TABLES:
            out.append(f"--table must be one of {', '.join(TABLES)}, got {self.table!r}")
        if not self.hidden or min(self.hidden) < 1:
            out.append(f"--hidden must be positive integers, got {','.join(map(str, self.hidden))}")
        if self.vlm not in DEFAULT_MODELS and self.vlm != AUTO:
            out.append(f"unknown --vlm {self.vlm!r}; choose one of: {', '.join(VLMS)} or {AUTO}")
        elif self.vlm != AUTO:  # (auto: checked once the checkpoint named the family)
            out += vlm_option_problems(self.vlm, self.vlm_options)
        out += self._method_problems()
        if self.shuffle_buffer < 0:
            out.append("--shuffle-buffer must be >= 0")
        if self.seed < 0:
            out.append("--seed must be >= 0")
        if not 0 <= self.max_bad_samples <= 1:
            out.append(f"--max-bad-samples must lie in [0, 1] (got {self.max_bad_samples})")
        out += self._data_problems()
        try:
            self.task_weights()
        except Exception as exc:  # (a UserError: one line)
            out.append(str(exc))
        return out

    def _method_problems(self) -> list[str]:
        if self.method not in METHODS:
            return [f"--method must be one of {', '.join(METHODS)}, got {self.method!r}"]
        from synthgen.errors import UserError
        from synthgen.pin.models.registry import method_options, method_refusal

        out = [method_refusal(self.method, self.vlm)] if self.vlm != AUTO else []  # (auto: once the family is known)
        try:
            method_options(self.method, self.method_options)
        except UserError as exc:
            out.append(str(exc))
        if self.method != "pin" and (self.activation, self.table, tuple(self.hidden)) != (
                TrainConfig.activation, TrainConfig.table, TrainConfig.hidden):
            out.append(f"--activation, --table and --hidden shape PIN; --method {self.method} trains no PIN")
        return [o for o in out if o]

    def _data_problems(self) -> list[str]:
        out = []
        if (self.shards is None) == (self.objects is None):
            out.append("give scene shards (SHARDS) or --objects and --backgrounds to compose scenes "
                       "on the fly, not both" if self.shards is not None else
                       "no training data: give scene shards (SHARDS), or --objects BANK and "
                       "--backgrounds BG to compose scenes on the fly")
        if (self.objects is None) != (self.backgrounds is None):
            out.append("--objects and --backgrounds go together (scenes composed on the fly)")
        if self.categories_map is not None and self.objects is None:
            out.append("--categories-map names the categories of --objects (scenes composed on the fly); scene "
                       "shards carry their names: map them when composing them")
        if self.epochs is not None and self.epochs < 1:
            out.append(f"--epochs must be >= 1 (got {self.epochs})")
        if self.epoch_size < 1:
            out.append(f"--epoch-size must be >= 1 (got {self.epoch_size})")
        if self.warmup_epochs < 0 or (self.epochs is not None and self.warmup_epochs >= self.epochs):
            out.append(f"--warmup-epochs must lie in 0..epochs-1 (got {self.warmup_epochs})")
        if self.warmup_shards is not None and self.objects is not None:
            out.append("--warmup-shards is for shard input; on the fly the warm-up scenes are composed")
        return out
