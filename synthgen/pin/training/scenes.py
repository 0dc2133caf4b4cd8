"""Scenes composed in the DataLoader workers for train-pin (``--objects`` / ``--backgrounds``).

The authors compose every training scene on the fly, so a run of 160 epochs x 60,000 scenes sees
~9.6M distinct scenes; shards re-read a fixed set. Here each worker makes its scenes with the same
:class:`~synthgen.compose.scene.Composer` as ``synthgen compose`` (same layout, referrals, paste),
from the bank and background listing read once in the main process.

Deterministic in ``(seed, phase, split, position)``: sample ``k`` of data split ``s`` (of ``n``)
is scene ``k * n + s`` of a composer seeded by the run seed and the phase, so every split makes
distinct scenes, the stream does not depend on timing, and ``--resume`` starts at ``k = skip``
without composing the skipped scenes (the batches are those of the uninterrupted run). The
scene's own target object is the one asked for.

The workers read prepared backgrounds (``synthgen prepare-backgrounds``: each decoded once, at
twice the canvas), several times faster than multi-megapixel originals. Raw backgrounds are
prepared once, implicitly, into the run folder (``OUT/backgrounds-SIZE``, :class:`Backgrounds`)
by the existing preparer, so the scenes are those ``synthgen compose --prepare-backgrounds``
makes from the same backgrounds and seed. The bank is read prepared too (``synthgen
prepare-objects``: each cut-out decoded once, at the canvas): a bank that is not is prepared once
into ``OUT/objects-SIZE`` (:class:`PreparedBank`), with the same scenes as from the bank itself.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch

from synthgen.compose.config import ComposeParams
from synthgen.errors import UserError
from synthgen.pin.training import tasks as T
from synthgen.pin.training.data import BatchStream, StreamConfig
from synthgen.schema import BACKGROUNDS_PREFIX, PREPARED_FILE


@dataclass(frozen=True)
class ComposeSource:
    """What the workers compose from: the bank, the prepared backgrounds' listing (empty until
    :meth:`Backgrounds.ready`), the scene settings."""

    objects: str
    backgrounds: list[str] = field(repr=False)
    params: ComposeParams = ComposeParams()
    extra_object_roots: tuple[str, ...] = ()
    categories_map: str | None = None   # --categories-map: applied to the bank as compose applies it


# how long the other ranks of a DDP run wait for rank 0 to prepare the backgrounds (a large
# folder takes minutes; NCCL's default collective timeout, 10 minutes, is too short for it)
PREPARE_WAIT = datetime.timedelta(hours=24)


def prepared_name(size: int) -> str:
    """The run folder's sub-folder of backgrounds prepared at ``size`` (twice the canvas)."""
    return f"{BACKGROUNDS_PREFIX}-{size}"


def given_prepared(spec: str) -> bool:
    """Whether ``--backgrounds`` names a prepare-backgrounds folder (it holds ``prepared.json``);
    one that is not finished, or is being written now, is refused."""
    from synthgen import storage
    from synthgen.schema import scenes_done
    from synthgen.shards import expand, is_stream

    paths = expand(spec)
    if len(paths) != 1 or is_stream(paths[0]):
        return False
    folder = storage.path(paths[0])
    if not (folder / PREPARED_FILE).is_file():
        return False
    if not scenes_done(folder):
        raise UserError(f"--backgrounds {spec} is a prepare-backgrounds folder that is not finished (or is "
                        "being written now): finish it by running its `synthgen prepare-backgrounds` again, "
                        "or give the original backgrounds (they are then prepared inside --out)")
    return True


@dataclass
class Backgrounds:
    """The backgrounds an on-the-fly run reads: always prepared ones, made ready by :meth:`ready`.

    ``--backgrounds`` naming a finished prepare-backgrounds folder is read as it is (``job`` is
    None). Raw images are prepared once by :func:`~synthgen.compose.prepare.prepare_backgrounds`
    into ``OUT/backgrounds-SIZE`` (SIZE twice the canvas, as ``compose --prepare-backgrounds``),
    inside the run folder, and reused by a later run into it (``--resume``). The preparer's own
    checks make this safe to interrupt: a shard is written whole to a temporary and is done only
    once its ``_stats.json`` follows it, a re-run redoes the shards without one, the folder is
    locked while it is written and refused when prepared from other backgrounds; and the folder
    is listed only after every shard is done.
    """

    spec: str                       # --backgrounds
    folder: str                     # the prepared folder the workers read
    job: Any = None                 # the PrepareJob that makes `folder` (None: given prepared)
    items: list[str] | None = None  # the listing of `folder`, once ready

    @classmethod
    def of(cls, spec: str, listing, out: str, canvas: int) -> Backgrounds:
        """Those of ``--backgrounds spec`` (listed as ``listing``) for a run into ``out``."""
        from synthgen import storage
        from synthgen.compose.prepare import PrepareJob

        if given_prepared(spec):
            return cls(spec, spec, items=list(listing.items))
        size = 2 * canvas
        job = PrepareJob(source=spec, out=str(storage.path(out) / prepared_name(size)), size=size)
        return cls(spec, job.out, job)

    def ready(self, *, rank: int = 0, world: int = 1, progress: bool = False) -> list[str]:
        """The prepared listing. The first call prepares what is not done yet: on rank 0 of a DDP
        run while the other ranks wait (:func:`on_main_rank`), so one process prepares, before
        any DataLoader worker starts."""
        from synthgen.compose.backgrounds import list_backgrounds

        if self.items is None:
            if self.job is not None:
                on_main_rank(lambda: self._prepare(progress), rank, world)
            self.items = list_backgrounds(self.folder).items
        return self.items

    def _prepare(self, progress: bool) -> None:
        from synthgen.compose.prepare import prepare_backgrounds

        # (auto: Ray only when there are several shards and CPUs for them; none usable:
        # prepare_backgrounds says so, naming the backgrounds, not this cache)
        prepare_backgrounds(self.job, executor="auto", progress=progress)


@dataclass
class PreparedBank:
    """The bank an on-the-fly run reads: a prepared one (:mod:`synthgen.bank.prepared`), made
    ready by :meth:`ready` as :class:`Backgrounds` are. ``--objects`` naming a prepared bank is
    read as it is (``job`` None); another bank is prepared once at the canvas into
    ``OUT/objects-SIZE`` by :func:`~synthgen.compose.prepare_objects.prepare_objects`
    (resumable, locked, refused when prepared from another bank) and reused by a resumed run."""

    spec: str                       # --objects
    folder: str                     # the prepared bank the workers read
    job: Any = None                 # the ObjectsJob that makes `folder` (None: given prepared)
    done: bool = False

    @classmethod
    def of(cls, spec: str, extra_roots: tuple[str, ...], out: str, canvas: int) -> PreparedBank:
        from synthgen import storage
        from synthgen.bank.prepared import is_prepared
        from synthgen.compose.prepare_objects import ObjectsJob, objects_folder

        if is_prepared(storage.path(spec)):
            return cls(spec, spec, done=True)
        job = ObjectsJob(source=spec, out=objects_folder(out, canvas), size=canvas, extra_object_roots=extra_roots)
        return cls(spec, job.out, job)

    def ready(self, *, rank: int = 0, world: int = 1, progress: bool = False) -> str:
        """The prepared bank's folder, prepared first (rank 0 alone) when it is not done yet."""
        if not self.done:
            from synthgen.compose.prepare_objects import prepare_objects

            on_main_rank(lambda: prepare_objects(self.job, executor="auto", progress=progress), rank, world,
                         "the bank")
            self.done = True
        return self.folder


def on_main_rank(fn: Callable[[], Any], rank: int, world: int, what: str = "the backgrounds") -> None:
    """Run ``fn()`` on rank 0 alone while the other ranks of a DDP run wait for it (on a gloo
    group of their own that waits :data:`PREPARE_WAIT`); a failure there is raised on every rank.
    Without a process group (one process) the caller runs it. ``what``: what ``fn`` prepares, for
    the others' error."""
    import torch.distributed as dist

    if world <= 1 or not (dist.is_available() and dist.is_initialized()):
        fn()
        return
    group = dist.new_group(backend="gloo", timeout=PREPARE_WAIT)
    outcome: list[str | None] = [None]
    try:
        if rank == 0:
            try:
                fn()
            except BaseException as exc:
                outcome = [str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"]
                raise
            finally:
                dist.broadcast_object_list(outcome, src=0, group=group)
        else:
            dist.broadcast_object_list(outcome, src=0, group=group)
    finally:
        dist.destroy_process_group(group)
    if outcome[0] is not None:
        raise UserError(f"rank 0 could not prepare {what}: {outcome[0]}")


def phase_seed(seed: int, phase: int) -> int:
    """The composer seed of a phase (0: the warm-up, 1: the main phase) of a run seeded ``seed``."""
    state = np.random.SeedSequence([int(seed), 0x5CE7E, int(phase)]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))


@dataclass
class ComposedConfig(StreamConfig):
    source: ComposeSource | None = None


class ComposedStream(BatchStream):
    """Endless batches of freshly composed scenes for one DDP rank (see the module doc)."""

    cfg: ComposedConfig

    def _composer(self):
        from synthgen.bank.reader import ObjectBank
        from synthgen.compose.scene import Composer

        src = self.cfg.source
        if not src.backgrounds:
            raise ValueError("the ComposeSource has no backgrounds yet (sources.stream_for makes them ready)")
        bank = ObjectBank.open(src.objects, extra_roots=src.extra_object_roots, max_side=src.params.size,
                               categories_map=src.categories_map)
        return Composer(src.params, bank, src.backgrounds)

    def batches(self, split: int, n_splits: int, skip_batches: int = 0) -> Iterator[dict]:
        composer = self._composer()
        bs = self.cfg.batch_size
        k = skip_batches * bs
        chunk: list[dict] = []
        while True:
            scene = composer.scene(k * n_splits + split)
            k += 1
            self.read += 1
            rec = scene.record
            # the scene's own target is PIN's question; a --tasks mix draws by scene index
            ask = (T.name_ask(rec, rec.target) if self.cfg.tasks is None or T.is_default(self.cfg.tasks) else
                   T.draw(rec, self.cfg.tasks, T.mix_rng(self.cfg.seed, 0, str((k - 1) * n_splits + split)),
                          name_target=rec.target))
            ids, labels = ask.encode(self.codec, self.cfg.name_loss)
            chunk.append({"pixels": torch.from_numpy(scene.image).permute(2, 0, 1).contiguous(),
                          "ids": ids, "labels": labels, "box": ask.box, "key": rec.key,
                          "n_objects": len(rec.objects), "task": ask.task})
            if len(chunk) == bs:
                yield self.collate(chunk)
                chunk = []
