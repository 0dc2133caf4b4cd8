"""``synthgen prepare-objects``: decode every cut-out of a bank once, at the size compose needs.

With a bank of the paper's size (56,000 cut-outs) nearly every object compose pastes misses the
bank's cache, and decoding a 512-px PNG, cropping and downscaling it costs more than the rest of
its scene. This reads each cut-out once as compose reads it (:meth:`ObjectBank.load
<synthgen.bank.reader.ObjectBank.load>` at ``max_side`` = ``--size``, the canvas: cropped to its
opaque extent, downscaled with the same resampling, unusable ones skipped and counted by reason)
and writes its raw pixels into shards with an index (:mod:`synthgen.bank.prepared`). Compose,
train-pin and :class:`~synthgen.api.SceneGenerator` read the folder as the bank it was prepared
from: a canvas of ``--size`` gives the same scene bytes as the source bank, a smaller one scenes
downscaled twice (not the same bytes), a larger one is refused.

Like prepare-backgrounds (:mod:`.prepare`, whose task runner it shares) it is deterministic
(object ``k`` of the bank's sorted entries is in shard ``k // per_shard``), parallel (Ray
tasks, one a shard), resumable (a shard is done when its ``_stats.json`` exists), locked
(:class:`~synthgen.storage.RunFolder`), local or remote; ``prepared-objects.json`` records the
source and its listing, and a folder prepared from another bank or at another size is refused.
``compose --prepare-objects`` prepares into ``OUT/objects-SIZE`` (:func:`for_compose`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

from synthgen import storage
from synthgen.bank.format import PREPARED_FORMAT, PREPARED_IDENTITY, PREPARED_PREFIX, pixels_name
from synthgen.bank.prepared import finish, is_prepared, shard_stats, write_shard
from synthgen.errors import UserError, raise_problems
from synthgen.storage import RunFolder, atomic_write_json

PER_SHARD = 1000


@dataclass(frozen=True)
class ObjectsJob:
    source: str
    out: str
    size: int = 224
    per_shard: int = PER_SHARD
    extra_object_roots: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        checks = ((self.size >= 16, f"--size must be >= 16 (got {self.size})"),
                  (self.per_shard >= 1, f"--per-shard must be >= 1 (got {self.per_shard})"))
        return [msg for ok, msg in checks if not ok]


def _source_bank(job: ObjectsJob):
    """The source bank read at ``--size`` (each cut-out is read once: no cache)."""
    from synthgen.bank.reader import ObjectBank

    return ObjectBank.open(job.source, extra_roots=tuple(job.extra_object_roots), max_side=job.size, cache_bytes=0)


def shard_items(job: ObjectsJob, shard: int, n_items: int) -> range:
    lo = shard * job.per_shard
    return range(lo, min(n_items, lo + job.per_shard))


def prepare_objects_steps(job: ObjectsJob, shard: int, bank):
    """Write shard ``shard`` of ``bank`` and its stats (a progress generator,
    :mod:`synthgen.executors`)."""
    t0 = time.time()
    rows = yield from write_shard(bank, shard_items(job, shard, len(bank)), shard, job.out)
    rec = {"shard": pixels_name(shard), "objects": rows, "seconds": round(time.time() - t0, 3)}
    atomic_write_json(storage.path(job.out) / shard_stats(shard), rec)
    return {"shard": rec["shard"], "objects": len(rows), "seconds": rec["seconds"]}


def identity(job: ObjectsJob, bank, listing: list[tuple[str, str, int]]) -> dict[str, Any]:
    from synthgen.compose.prepare import _digest

    return {"format": PREPARED_FORMAT, "source": storage.resolved(job.source), "layout": bank.layout,
            "count": len(listing), "listing_sha256": _digest([f"{i}\t{p}\t{n}" for i, p, n in listing]),
            "max_side": job.size, "per_shard": job.per_shard,
            "extra_object_roots": [storage.resolved(r) for r in job.extra_object_roots]}


def prepare_objects(job: ObjectsJob, *, workers: int | None = None, ray_address: str | None = None,
                    executor: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Prepare (resuming) and return the manifest; UserError when shards failed (after the others)."""
    import os

    from synthgen.compose.prepare import run_shards
    from synthgen.executors import check_executor, shards_failed

    raise_problems(job.problems())
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    check_executor(executor)  # (before any work)
    if is_prepared(storage.path(job.source)):
        raise UserError(f"{job.source} is a prepared bank already; give the bank it was prepared from")
    bank = _source_bank(job)
    for root in bank.roots:
        if storage.overlap(job.out, root):
            raise UserError(f"--out {job.out} and the bank {root} overlap; choose an --out outside it")
    listing = bank.listing()
    n_shards = math.ceil(len(bank) / job.per_shard)
    ident = identity(job, bank, listing)
    with RunFolder(job.out, "prepare-objects") as folder:
        folder.check_identity(PREPARED_IDENTITY, ident, what="settings or bank")
        done = folder.names()
        todo = [s for s in range(n_shards) if shard_stats(s) not in done]
        failures = run_shards(prepare_objects_steps, [(job, s) for s in todo],
                              [len(shard_items(job, s, len(bank))) for s in todo], len(bank), unit="cut-outs",
                              label="prepare-objects", shared={"bank": bank}, workers=workers or os.cpu_count() or 1,
                              ray_address=ray_address, executor=executor, progress=progress)
        if failures:
            raise shards_failed(failures, [pixels_name(s) for s in todo])
        return finish(job.out, ident, n_shards, bank, listing)


def objects_folder(out: str, size: int) -> str:
    """Where ``compose --prepare-objects`` keeps the prepared bank: inside ``--out``,
    ``OUT/objects-SIZE`` (no ``*.tar`` in it: never listed as scene shards)."""
    return str(storage.path(out) / f"{PREPARED_PREFIX}-{size}")


def for_compose(job, workers, ray_address, executor, progress):
    """The compose job reading its bank prepared (or reused) at the canvas size inside ``--out``;
    a bank given prepared is read as it is."""
    if is_prepared(storage.path(job.objects)):
        return job
    folder = objects_folder(job.out, job.params.size)
    prepare_objects(ObjectsJob(source=job.objects, out=folder, size=job.params.size,
                               extra_object_roots=tuple(job.extra_object_roots)),
                    workers=workers, ray_address=ray_address, executor=executor, progress=progress)
    return replace(job, prepared_objects=folder)
