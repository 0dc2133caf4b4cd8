"""``synthgen prepare-backgrounds``: decode every background once, at the size compose needs.

Compose spends most of its time decoding multi-megapixel backgrounds for a 224-px canvas. This
decodes each background once (EXIF, colour modes and bad files handled and counted as compose
does), shrinks it so its shorter side is ``--size`` (default 448, twice the usual canvas; never
enlarged), and writes WebDataset shards ``backgrounds-NNNNNN.tar`` of ``{key}.jpg`` +
``{key}.json`` (source name and original size) with a ``manifest.json``. Compose and the
on-the-fly trainer read the folder like any background shards.

The scenes stay statistically the same: ``squash`` and ``crop`` act on the prepared image as on
the original (its aspect ratio is kept; a crop's position scales with it); only the resampling
differs, in two steps instead of one (area-like down to ``--size``, then bicubic to the canvas).

Like compose it is deterministic (item ``k`` of the sorted listing is key ``k``), parallel (Ray
tasks, one a shard), resumable (a shard is done when its ``_stats.json`` exists) and locked
(:class:`~synthgen.storage.RunFolder`); ``prepared.json`` records the source listing, and a
folder prepared from other backgrounds or at another size is refused.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from dataclasses import dataclass
from typing import Any

from synthgen import schema, storage
from synthgen.errors import UserError
from synthgen.schema import BACKGROUNDS_FORMAT as FORMAT
from synthgen.schema import BACKGROUNDS_PREFIX, MANIFEST_FILE
from synthgen.schema import PREPARED_FILE as IDENTITY_FILE
from synthgen.storage import RunFolder, atomic_write_json


def shard_name(i: int) -> str:
    return schema.shard_name(i, BACKGROUNDS_PREFIX)


def stats_name(i: int) -> str:
    return schema.stats_name(i, BACKGROUNDS_PREFIX)


@dataclass(frozen=True)
class PrepareJob:
    source: str
    out: str
    size: int = 448
    per_shard: int = 500
    quality: int = 95

    def problems(self) -> list[str]:
        checks = ((self.size >= 32, f"--size must be >= 32 (got {self.size})"),
                  (self.per_shard >= 1, f"--per-shard must be >= 1 (got {self.per_shard})"),
                  (1 <= self.quality <= 100, f"--jpeg-quality must lie in 1..100 (got {self.quality})"))
        return [msg for ok, msg in checks if not ok]


def _digest(items: list[str]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(it.encode("utf-8", "backslashreplace") + b"\n")
    return h.hexdigest()


def prepare_one(item: str, size: int, quality: int):
    """``(jpeg bytes, (w, h) before)`` of one background, or the Skip that makes it unusable."""
    from PIL import Image

    from synthgen.compose.backgrounds import read_background
    from synthgen.errors import Skip
    from synthgen.images import decode, encode_jpeg

    src = read_background(item)
    img = decode(src, draft_to=size, min_side=32)
    if isinstance(img, Skip):
        return img
    with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
        before = im.size
    w, h = img.size
    if min(w, h) > size:  # the shorter side becomes `size`, the aspect ratio stays
        new = (size, max(size, round(h * size / w))) if w <= h else (max(size, round(w * size / h)), size)
        img = img.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)
    import numpy as np

    return encode_jpeg(np.asarray(img), quality), before


PROGRESS_EVERY = 8  # backgrounds between two progress reports of a shard task


def shard_items(job: PrepareJob, shard: int, n_items: int) -> range:
    lo = shard * job.per_shard
    return range(lo, min(n_items, lo + job.per_shard))


def prepare_shard(job: PrepareJob, shard: int, items: list[str]) -> dict[str, Any]:
    """Write shard ``shard`` and its stats (runs in a worker)."""
    from synthgen.executors import _drain

    return _drain(prepare_shard_steps(job, shard, items), None)


def prepare_shard_steps(job: PrepareJob, shard: int, items: list[str]):
    """:func:`prepare_shard` as a progress generator (:mod:`synthgen.executors`): yields the
    backgrounds read so far (written or skipped) every :data:`PROGRESS_EVERY`, returns the stats."""
    from synthgen.compose.backgrounds import display_name
    from synthgen.errors import Skip
    from synthgen.shards import ShardWriter

    t0 = time.time()
    skipped: dict[str, dict[str, str]] = {}
    out = storage.path(job.out)
    with ShardWriter(out / shard_name(shard)) as w:
        for n, k in enumerate(shard_items(job, shard, len(items)), 1):
            res = prepare_one(items[k], job.size, job.quality)
            if isinstance(res, Skip):
                skipped.setdefault(res.reason, {})[display_name(items[k])] = res.detail
            else:
                jpg, before = res
                meta = {"source": display_name(items[k]), "width": before[0], "height": before[1]}
                w.write(f"{k:09d}", {"jpg": jpg, "json": json.dumps(meta).encode()})
            if n % PROGRESS_EVERY == 0:
                yield n
    rec = {"shard": shard_name(shard), "backgrounds": w.count, "skipped": skipped,
           "seconds": round(time.time() - t0, 3)}
    atomic_write_json(out / stats_name(shard), rec)
    return rec


def prepare_backgrounds(job: PrepareJob, *, workers: int | None = None, ray_address: str | None = None,
                        executor: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Prepare (resuming) and return the manifest; UserError when shards failed (after the others)."""
    import os

    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.errors import raise_problems

    raise_problems(job.problems())
    from synthgen.executors import check_executor, shards_failed

    check_executor(executor)  # (before any work)
    listing = list_backgrounds(job.source)
    for root in listing.roots:
        if storage.overlap(job.out, root):
            raise UserError(f"--out {job.out} and the backgrounds {root} overlap; choose an --out outside them")
    items = listing.items
    n_shards = math.ceil(len(items) / job.per_shard)
    ident = {"format": FORMAT, "source": job.source, "count": len(items), "listing_sha256": _digest(items),
             "size": job.size, "quality": job.quality, "per_shard": job.per_shard}
    with RunFolder(job.out, "prepare-backgrounds") as folder:
        folder.check_identity(IDENTITY_FILE, ident, what="settings or backgrounds")
        done = folder.names()
        todo = [s for s in range(n_shards) if stats_name(s) not in done]
        failures = _run(job, todo, items, workers or os.cpu_count() or 1, ray_address, executor, progress)
        if failures:
            raise shards_failed(failures, [shard_name(s) for s in todo])
        return _manifest(job, n_shards, listing.skipped, ident)


def _run(job, todo, items, workers, ray_address, executor, progress) -> dict[int, str]:
    sizes = [len(shard_items(job, s, len(items))) for s in todo]
    return run_shards(prepare_shard_steps, [(job, s) for s in todo], sizes, len(items), unit="images",
                      label="prepare-backgrounds", shared={"items": items}, workers=workers,
                      ray_address=ray_address, executor=executor, progress=progress)


def run_shards(steps, jobs: list[tuple], sizes: list[int], total: int, *, unit: str, label: str, shared: dict,
               workers, ray_address, executor: str, progress: bool) -> dict[int, str]:
    """Run the shard tasks ``steps(*job, **shared)`` (progress generators) in this process or on
    Ray, with one bar of ``total`` items (``sizes``: of each job's shard); the failures."""
    from synthgen.executors import in_process, run_ray, run_serial
    from synthgen.progress import progress_bars

    if not jobs:
        return {}
    prog = progress_bars(unit, enabled=progress, label_width=19)
    with prog:
        # per item; a resumed run starts at the items of its done shards
        done = total - sum(sizes)
        task = prog.add_task(label, total=total, completed=done, begin=done)
        partial = [0] * len(jobs)

        def on_progress(i: int, done: int) -> None:
            prog.advance(task, done - partial[i])
            partial[i] = done

        def on_result(i: int, _rec) -> None:
            on_progress(i, sizes[i])

        if in_process(executor, workers, ray_address, len(jobs)):
            failures = run_serial(steps, jobs, on_result, shared=shared, on_progress=on_progress)
        else:
            failures = run_ray(steps, jobs, on_result, workers=workers, address=ray_address,
                               shared=shared, on_progress=on_progress)
        for i in failures:  # a failed shard's items are not done
            on_progress(i, 0)
        return failures


def _manifest(job: PrepareJob, n_shards: int, listing_skips: dict, ident: dict) -> dict[str, Any]:
    out = storage.path(job.out)
    skipped = {r: dict(n) for r, n in listing_skips.items()}
    count = 0
    for s in range(n_shards):
        st = json.loads((out / stats_name(s)).read_text())
        count += st["backgrounds"]
        for reason, names in st["skipped"].items():
            skipped.setdefault(reason, {}).update(names)
    manifest = {**ident, "shards": [shard_name(s) for s in range(n_shards)], "backgrounds": count,
                "skipped": {r: {"count": len(n), "examples": sorted(n)[:20]} for r, n in skipped.items()}}
    if not count:  # (no manifest: nothing here is usable, and a re-run says so again)
        why = ", ".join(f"{v['count']} {k.replace('_', ' ')}" for k, v in sorted(manifest["skipped"].items()))
        raise UserError(f"backgrounds {job.source}: none of its {ident['count']} images is usable ({why})")
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest
