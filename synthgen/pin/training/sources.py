"""Where train-pin's scenes come from, and the phases of a run.

Two sources: scene shards (``SHARDS``), or scenes composed on the fly in the DataLoader workers
(``--objects BANK --backgrounds BG``, :mod:`.scenes`). A run's length is ``--steps``, or in the
paper's units ``--epochs`` x ``--epoch-size`` (global scenes an epoch, split over the ranks like a
DistributedSampler that drops the last partial batch: ``(epoch_size // world) // batch`` steps
an epoch).

Phases (the authors' ``--epoch_change_reconstruct 40``): for the first ``--warmup-epochs`` every
scene has exactly ``a_max`` objects and the loss also covers ``{name} located at``; then
``1..a_max`` objects and the box only. With shards the warm-up reads its own shard set
(``--warmup-shards``, composed with ``--fixed-count``); on the fly it composes such scenes.

On the fly the workers read prepared backgrounds (:class:`~.scenes.Backgrounds`): raw ones are
prepared once into the run folder, ``OUT/backgrounds-SIZE``, by :func:`stream_for` before the
first DataLoader starts (on rank 0 of a DDP run, the other ranks waiting), and reused after; so
is the bank (:class:`~.scenes.PreparedBank`: ``OUT/objects-SIZE``, the same scenes).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from synthgen.errors import UserError


@dataclass
class Phase:
    name: str                 # "warmup" | "main"
    start: int                # first step (0-based) of the phase
    end: int                  # step after its last
    loss_span: str            # see synthgen.pin.models.adapters.base.loss_span
    shards: list[str] = field(default_factory=list)
    source: Any = None        # a scenes.ComposeSource when composing on the fly (no backgrounds
    backgrounds: Any = None   # yet) and its scenes.Backgrounds, shared by the phases of a run
    bank: Any = None          # and its scenes.PreparedBank, also shared


@dataclass
class DataPlan:
    canvas: int
    grid: int | None
    steps: int
    phases: list[Phase]
    settings: dict            # what fixes the data and the curve (pin.json; checked on resume)
    describe: str


def steps_per_epoch(epoch_size: int, world: int, batch_size: int) -> int:
    n = (epoch_size // world) // batch_size
    if n < 1:
        raise UserError(f"--epoch-size {epoch_size} gives no full batch of {batch_size} on each of "
                        f"{world} rank(s); raise --epoch-size or lower --batch-size")
    return n


def _lengths(cfg, world: int) -> tuple[int, int, int | None]:
    """``(total steps, warm-up steps, steps per epoch)``."""
    if cfg.epochs is None:
        if cfg.warmup_epochs:
            raise UserError("--warmup-epochs needs the run's length in epochs: give --epochs and "
                            "--epoch-size (the paper: 160 x 60000, warm-up 40)")
        return cfg.steps, 0, None
    spe = steps_per_epoch(cfg.epoch_size, world, cfg.batch_size)
    return cfg.epochs * spe, cfg.warmup_epochs * spe, spe


def plan_data(cfg, world: int) -> DataPlan:
    """The data of a run: its source, canvas, length and phases, checked before any model loads."""
    total, warm, spe = _lengths(cfg, world)
    main_span = "name" if cfg.name_loss else "box"
    settings: dict[str, Any] = {"epochs": cfg.epochs, "epoch_size": cfg.epoch_size,
                                "warmup_epochs": cfg.warmup_epochs, "steps_per_epoch": spe,
                                "tasks": cfg.task_weights()}
    if cfg.objects is not None:
        return _plan_composed(cfg, total, warm, main_span, settings)
    return _plan_shards(cfg, total, warm, main_span, settings)


def _plan_shards(cfg, total: int, warm: int, main_span: str, settings: dict) -> DataPlan:
    from synthgen.pin.training.checkpoint import DATA_SPLIT, shard_list_digest
    from synthgen.pin.training.data import read_header
    from synthgen.shards import find_shards

    shards = find_shards(cfg.shards)
    header = read_header(shards)
    phases = []
    if warm:
        if not cfg.warmup_shards:
            raise UserError("the warm-up phase needs scenes with exactly a_max objects: compose them "
                            "with `synthgen compose --fixed-count` and pass --warmup-shards, or train on "
                            "the fly with --objects/--backgrounds (or set --warmup-epochs 0)")
        warm_shards = find_shards(cfg.warmup_shards)
        wh = read_header(warm_shards)
        if (wh["width"], wh.get("grid")) != (header["width"], header.get("grid")):
            raise UserError(f"--warmup-shards {cfg.warmup_shards} have canvas/grid {wh['width']}/"
                            f"{wh.get('grid')} but {cfg.shards} have {header['width']}/{header.get('grid')}")
        phases.append(Phase("warmup", 0, warm, "name_prompt", shards=warm_shards))
        settings["warmup_shards_sha256"] = shard_list_digest(warm_shards)
    phases.append(Phase("main", warm, total, main_span, shards=shards))
    settings.update({"train_shards": str(cfg.shards), "train_shard_count": len(shards),
                     "train_shards_sha256": shard_list_digest(shards), "data_split": DATA_SPLIT})
    return DataPlan(int(header["width"]), int(header.get("grid", 0)) or None, total, phases, settings,
                    f"{len(shards)} shard(s) of {cfg.shards}")


def _plan_composed(cfg, total: int, warm: int, main_span: str, settings: dict) -> DataPlan:
    from synthgen.bank.reader import ObjectBank
    from synthgen.commands.compose import scene_params
    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.compose.questions import TASKS
    from synthgen.compose.run import inputs_identity
    from synthgen.pin.training.scenes import Backgrounds, ComposeSource, PreparedBank, phase_seed

    params = scene_params(cfg.compose)
    asked = tuple(t for t in TASKS if t in cfg.task_weights() or t in params.tasks)
    if not set(asked) <= {"name", "referral"}:  # the records carry the fields these tasks need
        params = dataclasses.replace(params, tasks=asked)
    bank = ObjectBank.open(cfg.objects, extra_roots=tuple(cfg.extra_object_roots), max_side=params.size,
                           categories_map=cfg.categories_map)
    if bank.first_usable(limit=min(len(bank), 2000)) is None:
        raise UserError(f"object bank {cfg.objects}: none of the first {min(len(bank), 2000)} cut-outs "
                        "is usable (RGBA PNGs with some opaque pixels are needed)")
    listing = list_backgrounds(cfg.backgrounds)
    backgrounds = Backgrounds.of(str(cfg.backgrounds), listing, str(cfg.out), params.size)
    prepared = PreparedBank.of(str(cfg.objects), tuple(cfg.extra_object_roots), str(cfg.out), params.size)

    def source(phase: int, **layout) -> ComposeSource:
        p = dataclasses.replace(params, seed=phase_seed(cfg.seed, phase),
                                layout=dataclasses.replace(params.layout, **layout))
        return ComposeSource(str(cfg.objects), [], p, tuple(cfg.extra_object_roots), cfg.categories_map)

    phases = []
    if warm:
        phases.append(Phase("warmup", 0, warm, "name_prompt", source=source(0, fixed_count=True),
                            backgrounds=backgrounds, bank=prepared))
    phases.append(Phase("main", warm, total, main_span, source=source(1), backgrounds=backgrounds, bank=prepared))
    settings.update({"train_source": "composed", "compose": params.to_dict(),
                     "train_objects": str(cfg.objects), "train_backgrounds": str(cfg.backgrounds),
                     "inputs": inputs_identity(bank, listing.items), "categories_map": _map_identity(cfg),
                     "prepared_backgrounds": None if backgrounds.job is None else {"size": backgrounds.job.size},
                     "prepared_objects": None if prepared.job is None else {"size": prepared.job.size}})
    how = ("prepared" if backgrounds.job is None
           else f"prepared once into {backgrounds.folder}")
    return DataPlan(params.size, params.layout.grid, total, phases, settings,
                    f"scenes composed from {cfg.objects} on {cfg.backgrounds} ({how})")


def _map_identity(cfg) -> dict | None:
    from synthgen.bank.names import map_identity

    return None if cfg.categories_map is None else map_identity(cfg.categories_map)


def stream_for(phase: Phase, cfg, *, rank: int, world: int, image_size: int):
    """``(stream class, its config)`` of a phase. Called by every rank before the phase's
    DataLoader starts (inside the locked run folder, once the process group is up): on the fly,
    the first call prepares the raw backgrounds (:meth:`~.scenes.Backgrounds.ready`: rank 0
    alone, the others wait for it) and every phase's workers read the prepared folder."""
    from synthgen.pin.training.data import SceneStream, StreamConfig
    from synthgen.pin.training.scenes import ComposedConfig, ComposedStream

    common = dict(batch_size=cfg.batch_size, seed=cfg.seed, rank=rank, world_size=world,
                  shuffle_buffer=cfg.shuffle_buffer, image_size=image_size, name_loss=phase.loss_span,
                  max_bad_samples=cfg.max_bad_samples, tasks=cfg.task_weights())
    if phase.source is not None:
        items = phase.backgrounds.ready(rank=rank, world=world, progress=cfg.progress and rank == 0)
        objects = (phase.source.objects if phase.bank is None
                   else phase.bank.ready(rank=rank, world=world, progress=cfg.progress and rank == 0))
        source = dataclasses.replace(phase.source, backgrounds=items, objects=objects)
        return ComposedStream, ComposedConfig(shards=[], source=source, **common)
    return SceneStream, StreamConfig(shards=phase.shards, **common)
