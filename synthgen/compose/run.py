"""Driver of ``synthgen compose``: validation, resume, shard tasks, stats and manifest.

Shard ``s`` holds samples ``s*per_shard .. min(N, (s+1)*per_shard)-1``. A shard is done iff
its ``*_stats.json`` exists; a re-run skips done shards and rewrites the others from scratch.
A worker writes the shard, then its scene index (``*_index.parquet``, :mod:`.index`), then its
stats (the marker). ``run.json`` records the options of the run in a folder so that a re-run with
other options is refused instead of mixing two datasets; the folder is locked while a run writes
it (:class:`~synthgen.storage.RunFolder`). ``--out`` (and the inputs) may be object-store URLs: a
shard is uploaded whole, then its index, then its stats, then at the end the manifest.

Growing a dataset (``--extend``, :func:`_grow`): the only option that may change is a larger
``num_samples``. Scene k depends only on (seed, k, inputs), so shards that were full stay as they
are; a partial last shard is rewritten (it gains scenes: its tar, index and stats are those of a
fresh run of the new size). Under the folder lock, in this order, so that a kill anywhere leaves a
folder that the old command or the new one finishes: the manifest is removed (the folder is no
longer a finished dataset), the partial shard's marker is removed, then ``run.json`` records the
new size and the growth history; the shards without a marker are then composed as in any resume.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from synthgen import storage
from synthgen._version import __version__
from synthgen.compose.config import MIN_USABLE, ComposeParams, min_usable_problems
from synthgen.compose.scene import Composer, SceneStats
from synthgen.errors import UserError, raise_problems
from synthgen.schema import (
    MANIFEST_FILE,
    RUN_FILE,
    growth_step,
    index_name,
    index_row,
    shard_name,
    stats_name,
)
from synthgen.shards import ShardWriter
from synthgen.storage import RunFolder, atomic_write_json


@dataclass(frozen=True)
class ComposeJob:
    objects: str
    backgrounds: str
    out: str
    num_samples: int
    samples_per_shard: int = 1000
    params: ComposeParams = ComposeParams()
    extra_object_roots: tuple[str, ...] = ()   # folders object paths may point into, besides the bank
    prepare_backgrounds: bool = False          # decode them once, into --out (prepared_folder)
    prepared: str | None = None                # the prepared folder read instead (set by run_compose)
    prepare_objects: bool = False              # decode the cut-outs once, into --out (prepare_objects.py)
    prepared_objects: str | None = None        # the prepared bank read instead (set by run_compose)
    index: bool = True                         # write each shard's scene index (off: benchmarks only)
    min_usable: float = MIN_USABLE             # refuse a bank with fewer usable cut-outs (not in identity)
    categories_map: str | None = None          # {file or folder name: category} file (bank/names.py)

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.samples_per_shard)

    def shard_range(self, s: int) -> range:
        lo = s * self.samples_per_shard
        return range(lo, min(self.num_samples, lo + self.samples_per_shard))

    def problems(self) -> list[str]:
        out = self.params.problems() + min_usable_problems(self.min_usable)
        if not str(self.objects).strip():
            out.append("--objects is empty")
        if not str(self.backgrounds).strip():
            out.append("--backgrounds is empty")
        if self.num_samples < 1:
            out.append(f"--num-samples must be >= 1 (got {self.num_samples})")
        if self.samples_per_shard < 1:
            out.append(f"--samples-per-shard must be >= 1 (got {self.samples_per_shard})")
        return out

    def identity(self, inputs: dict | None = None) -> dict[str, Any]:
        """What decides the dataset's content: a re-run into the same folder must match it.
        ``inputs``: the identity of the inputs' contents (:attr:`Inputs.identity`). ``min_usable``
        is not in it: it decides whether a run starts, never what it writes."""
        ident = {"objects": storage.resolved(self.objects),
                 "backgrounds": storage.resolved(self.backgrounds) if "{" not in self.backgrounds
                 else self.backgrounds,
                 "num_samples": self.num_samples, "samples_per_shard": self.samples_per_shard,
                 "params": self.params.to_dict(), "schema": self.params.scene_schema}
        if self.extra_object_roots:
            ident["extra_object_roots"] = [storage.resolved(r) for r in self.extra_object_roots]
        if self.categories_map:
            from synthgen.bank.names import map_identity

            ident["categories_map"] = map_identity(self.categories_map)
        if self.prepare_backgrounds:
            ident["prepared_backgrounds"] = {"size": 2 * self.params.size}
        if self.prepare_objects:
            ident["prepared_objects"] = {"size": self.params.size}
        if inputs is not None:
            ident["inputs"] = inputs
        return ident


@lru_cache(maxsize=4)
def _open_bank(path: str, max_side: int, extra_roots: tuple[str, ...] = (), categories_map: str | None = None):
    from synthgen.bank.reader import ObjectBank

    return ObjectBank.open(path, extra_roots=extra_roots, max_side=max_side, categories_map=categories_map)


@dataclass
class Inputs:
    """What a run reads: the background listing, what was refused when listing the inputs, and
    the identity of their contents (counts, sizes and a digest of the listings) for run.json."""

    backgrounds: list[str]
    skipped_backgrounds: dict[str, dict[str, str]]
    skipped_objects: dict[str, dict[str, str]]
    identity: dict[str, Any]
    bank: Any = None  # the bank's BankSurvey (layout, categories, unusable cut-outs)


def backgrounds_line(job, inputs: Inputs) -> str:
    """What compose says about its backgrounds when it starts (as it does about the bank)."""
    skipped = {k: len(v) for k, v in inputs.skipped_backgrounds.items() if v}
    left = f"; left out when listing: {', '.join(f'{n} {k}' for k, n in sorted(skipped.items()))}" if skipped else ""
    how = f" (prepared once into {job.prepared})" if job.prepared else ""
    return f"backgrounds: {len(inputs.backgrounds)} images from {job.backgrounds}{how}{left}"


def _digest(lines: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "backslashreplace") + b"\n")
    return h.hexdigest()


def inputs_identity(bank, backgrounds: list[str]) -> dict[str, Any]:
    """Counts, total bytes and a digest of (name, size) of the objects and backgrounds: a
    resume over inputs that changed is refused (naming what changed)."""
    from synthgen.compose.backgrounds import item_size

    bg = [(item, item_size(item)) for item in backgrounds]
    obj = bank.listing()  # (an object store: one listing, not a request per object)
    return {"backgrounds": {"count": len(bg), "bytes": sum(max(n, 0) for _, n in bg),
                            "sha256": _digest([f"{i}\t{n}" for i, n in bg])},
            "objects": {"count": len(obj), "bytes": sum(max(n, 0) for *_, n in obj),
                        "sha256": _digest([f"{i}\t{p}\t{n}" for i, p, n in obj])}}


PROGRESS_EVERY = 8  # scenes between two progress reports of a shard task


def compose_shard(job: ComposeJob, shard: int, backgrounds: list[str]) -> dict[str, Any]:
    """Write shard ``shard`` and its stats; runs in a worker. Returns the stats."""
    from synthgen.executors import _drain

    return _drain(compose_shard_steps(job, shard, backgrounds), None)


def compose_shard_steps(job: ComposeJob, shard: int, backgrounds: list[str]):
    """:func:`compose_shard` as a progress generator (:mod:`synthgen.executors`): yields the
    scenes written so far every :data:`PROGRESS_EVERY` scenes, returns the stats."""
    t0 = time.time()
    bank = _open_bank(job.prepared_objects or job.objects, job.params.size, tuple(job.extra_object_roots),
                      job.categories_map)
    composer = Composer(job.params, bank, backgrounds)
    out = storage.path(job.out)
    stats = SceneStats()
    per_scene: dict[int, int] = {}
    n_objects = 0
    rows = []
    with ShardWriter(out / shard_name(shard)) as w:
        for k in job.shard_range(shard):
            scene = composer.scene(k, stats)
            n = len(scene.record.objects)
            per_scene[n] = per_scene.get(n, 0) + 1
            n_objects += n
            w.write(scene.key, scene.encode(job.params.jpeg_quality))
            if job.index:
                rows.append(index_row(scene.record, shard_name(shard), scene.mask is not None))
            if w.count % PROGRESS_EVERY == 0:
                yield w.count
    if job.index:  # after the shard, before its marker
        from synthgen.compose.index import write_index

        write_index(out / index_name(shard), rows)
    rec = {
        "shard": shard_name(shard), "samples": w.count, "objects": n_objects,
        "objects_per_scene": {str(k): v for k, v in sorted(per_scene.items())},
        "dropped_objects": stats.dropped_objects, "scene_resamples": stats.scene_resamples,
        "skipped_inputs": {"backgrounds": stats.skipped_backgrounds, "objects": stats.skipped_objects},
        "seconds": round(time.time() - t0, 3),
    }
    atomic_write_json(out / stats_name(shard), rec)
    return rec


def _refuse_nesting(job: ComposeJob, roots: list[str]) -> None:
    """``--out`` inside an input (or an input inside ``--out``) would feed a resumed run its own
    scenes: refused before anything is written."""
    for option, root in roots:
        if storage.overlap(job.out, root):
            raise UserError(f"--out {job.out} and {option} {root} overlap: a resumed run would read "
                            f"its own output as input; choose an --out outside the inputs")


def check_inputs(job: ComposeJob) -> Inputs:
    """Fail fast (before any work) on bad options and unusable inputs; list the backgrounds."""
    from synthgen.compose.backgrounds import first_usable_background, list_backgrounds

    raise_problems(job.problems())
    from synthgen.shards import expand

    bank = _open_bank(job.prepared_objects or job.objects, job.params.size, tuple(job.extra_object_roots),
                      job.categories_map)
    listing = list_backgrounds(job.prepared or job.backgrounds)
    sources = expand(job.backgrounds) if job.prepared else []
    # (the prepared backgrounds are compose's own, inside --out: the raw sources are what to check)
    # (a bank prepared by this run lies inside --out: the bank it was made of is what to check)
    _refuse_nesting(job, [("--objects", bank.prepared.source_root if job.prepared_objects else bank.root)] + [("--backgrounds", r) for r in sources or listing.roots]
                    + [("--extra-object-root", r) for r in job.extra_object_roots])
    if bank.first_usable(limit=min(len(bank), 2000)) is None:
        raise UserError(f"object bank {job.objects}: none of the first {min(len(bank), 2000)} "
                        "cut-outs is usable (RGBA PNGs with some opaque pixels are needed)")
    first, reasons = first_usable_background(listing.items, job.params.size, job.params.min_background_side)
    if first < 0:
        checked = min(len(listing.items), 200)
        why = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in sorted(reasons.items()))
        raise UserError(f"backgrounds {job.backgrounds}: none of the first {checked} images is usable ({why}); "
                        f"compose needs decodable images of at least {job.params.min_background_side} px")
    survey = bank.survey()
    if survey.usable_fraction < job.min_usable:
        usable = survey.checked - survey.num_unusable
        raise UserError(f"object bank {job.objects} ({survey.layout}, {survey.categories} categories): "
                        f"{survey.num_unusable} of {survey.checked} cut-outs"
                        f"{' checked' if survey.checked < survey.listed else ''} are unusable "
                        f"({survey.reasons()}), fewer than --min-usable {job.min_usable:g} usable; fix the bank, "
                        f"or pass --min-usable 0 to compose with the {usable} usable")
    return Inputs(listing.items, listing.skipped, bank.rejected, inputs_identity(bank, listing.items), survey)


OPTIONAL_IDENTITY = ("inputs", "extra_object_roots")  # absent in the run.json of earlier synthgens


def _recorded(folder: RunFolder) -> dict | None:
    """The folder's ``run.json`` (None when there is none, or it cannot be read: then
    :meth:`~synthgen.storage.RunFolder.check_identity` names every difference)."""
    f = folder.path / RUN_FILE
    if not f.exists():
        return None
    try:
        old = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return old if isinstance(old, dict) else None


def shards_to_do(job: ComposeJob, folder: RunFolder, inputs: Inputs, extend: bool = False) -> list[int]:
    """Check the folder's run identity (recording it on a new run; growing it with ``extend``:
    :func:`_grow`); the shards still to do."""
    ident = json.loads(json.dumps(job.identity(inputs.identity)))
    old = _recorded(folder)
    if old is not None and "growth" in old:
        ident["growth"] = old["growth"]  # (the history is carried, not compared)
    n_old = old.get("num_samples") if old is not None else None
    if isinstance(n_old, int) and not isinstance(n_old, bool) and n_old != job.num_samples:
        ident = _grow(job, folder, old, ident, extend)
    folder.check_identity(RUN_FILE, ident, what="options", optional=OPTIONAL_IDENTITY)
    done = folder.names()
    return [s for s in range(job.num_shards) if stats_name(s) not in done]


def _grow(job: ComposeJob, folder: RunFolder, old: dict, ident: dict, extend: bool) -> dict:
    """A run of another ``num_samples`` into a folder: refused unless it grows the folder with
    ``extend`` and every other option is the same; then the growth is recorded (see the module's
    docstring for the order) and the identity of the grown run returned."""
    n_old, n_new, per = old["num_samples"], job.num_samples, job.samples_per_shard
    # every other option must be the same (named as on any resume over other options)
    folder.check_identity(RUN_FILE, {**ident, "num_samples": n_old}, what="options", optional=OPTIONAL_IDENTITY)
    what = f"{folder.path} holds a compose run with other options (--num-samples {n_old} -> {n_new})"
    if n_new < n_old:
        raise UserError(f"{what}: a dataset is never shrunk; use a new --out folder (or read the first "
                        f"{n_new} scenes of this one)")
    if not extend:
        raise UserError(f"{what}: add --extend to grow it to {n_new} scenes (scenes {n_old}..{n_new - 1} "
                        "are added, the done shards kept), or use a new --out folder")
    out = folder.path
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # no longer a finished dataset
    rewritten = []
    if n_old % per:  # the partial last shard gains scenes: composed again, like a fresh run's
        last = n_old // per
        (out / stats_name(last)).unlink(missing_ok=True)  # (before run.json: never a stale marker)
        rewritten.append(shard_name(last))
    growth = list(old.get("growth") or [growth_step(n_old)]) + [growth_step(n_new, rewritten)]
    ident = {**ident, "growth": growth}
    atomic_write_json(out / RUN_FILE, ident)
    return ident


def write_manifest(job: ComposeJob, inputs: Inputs, workers: int | None,
                   ray_address: str | None, growth: list | None = None) -> dict[str, Any]:
    """``manifest.json`` (the totals of every shard's stats; an extended run's ``growth``)."""
    out = storage.path(job.out)
    totals: dict[str, Any] = {"samples": 0, "objects": 0, "objects_per_scene": {}, "dropped_objects": {},
                              "scene_resamples": {}, "shard_seconds": 0.0,
                              "skipped_backgrounds": {r: dict(n) for r, n in inputs.skipped_backgrounds.items()},
                              "skipped_objects": {r: dict(n) for r, n in inputs.skipped_objects.items()}}
    for s in range(job.num_shards):
        st = json.loads((out / stats_name(s)).read_text())
        totals["samples"] += st["samples"]
        totals["objects"] += st["objects"]
        totals["shard_seconds"] += st["seconds"]
        for key in ("objects_per_scene", "dropped_objects", "scene_resamples"):
            for k, v in st[key].items():
                totals[key][k] = totals[key].get(k, 0) + v
        for kind in ("backgrounds", "objects"):
            for reason, names in st["skipped_inputs"][kind].items():
                totals[f"skipped_{kind}"].setdefault(reason, {}).update(names)
    for kind in ("backgrounds", "objects"):
        totals[f"skipped_{kind}"] = {r: {"count": len(n), "examples": sorted(n)[:20]}
                                     for r, n in totals[f"skipped_{kind}"].items()}
    manifest = {"synthgen_version": __version__, "schema": job.params.scene_schema,
                "shards": [shard_name(s) for s in range(job.num_shards)],
                "options": {**job.identity(inputs.identity), "workers": workers, "ray_address": ray_address},
                "totals": totals}
    if growth:
        manifest["growth"] = growth
    atomic_write_json(out / MANIFEST_FILE, manifest)
    return manifest


def run_compose(job: ComposeJob, *, workers: int | None = None, ray_address: str | None = None,
                executor: str = "auto", progress: bool = True, extend: bool = False,
                echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Compose the whole dataset (resuming), returning the manifest. Raises UserError when shards
    failed (after the others have finished). ``workers``: CPUs of the local Ray (default: all).
    ``extend``: a folder holding fewer scenes of the same options is grown to ``num_samples``
    (without it, another ``num_samples`` is refused). ``echo``: given the line about the bank
    (``objects: folder of category sub-folders, 12 categories, 340 cut-outs (...)``) once the
    inputs and the folder are checked."""
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    from synthgen.executors import check_executor

    check_executor(executor)  # (before any work)
    workers = workers or os.cpu_count() or 1
    if job.prepare_backgrounds:
        job = _with_prepared(job, workers, ray_address, executor, progress)
    if job.prepare_objects:
        from synthgen.compose.prepare_objects import for_compose

        job = for_compose(job, workers, ray_address, executor, progress)
    inputs = check_inputs(job)
    with RunFolder(job.out, "compose") as folder:
        todo = shards_to_do(job, folder, inputs, extend=extend)
        if echo is not None:  # once the run starts: a refusal stays one line
            echo(inputs.bank.line())
            echo(backgrounds_line(job, inputs))
        growth = (_recorded(folder) or {}).get("growth")
        return _run(job, todo, inputs, workers, ray_address, executor, progress, growth)


def prepared_folder(job: ComposeJob) -> Path:
    """Where ``--prepare-backgrounds`` keeps the prepared backgrounds: inside ``--out`` (compose
    writes nowhere else), ``OUT/backgrounds-SIZE``, whose shards the scene shards' listing of
    ``OUT`` (its top-level ``*.tar``) never includes."""
    return storage.path(job.out) / f"backgrounds-{2 * job.params.size}"


def _with_prepared(job: ComposeJob, workers, ray_address, executor, progress) -> ComposeJob:
    """Prepare (or reuse) the backgrounds at twice the canvas; the job reading them."""
    import dataclasses

    from synthgen.compose.prepare import PrepareJob, prepare_backgrounds

    folder = prepared_folder(job)
    prepare_backgrounds(PrepareJob(source=job.backgrounds, out=str(folder), size=2 * job.params.size),
                        workers=workers, ray_address=ray_address, executor=executor, progress=progress)
    return dataclasses.replace(job, prepared=str(folder))


def _run(job: ComposeJob, todo: list[int], inputs: Inputs, workers: int | None,
         ray_address: str | None, executor: str, progress: bool, growth: list | None = None) -> dict[str, Any]:
    from synthgen.executors import in_process, run_ray, run_serial, shards_failed

    failures: dict[int, str] = {}
    if todo:
        from synthgen.progress import progress_bars

        remaining = [len(job.shard_range(s)) for s in todo]
        prog = progress_bars("scenes", enabled=progress)
        with prog:
            # per scene (the shard tasks report every few scenes); a resumed run starts at its done scenes
            done = job.num_samples - sum(remaining)
            task = prog.add_task("compose", total=job.num_samples, completed=done, begin=done)
            partial = [0] * len(todo)  # scenes of each shard counted so far

            def on_progress(i: int, done: int) -> None:
                prog.advance(task, done - partial[i])
                partial[i] = done

            def on_result(i: int, rec: dict[str, Any]) -> None:
                on_progress(i, rec["samples"])

            jobs = [(job, s) for s in todo]
            shared = {"backgrounds": inputs.backgrounds}
            if in_process(executor, workers, ray_address, len(jobs)):
                failures = run_serial(compose_shard_steps, jobs, on_result, shared=shared, on_progress=on_progress)
            else:
                failures = run_ray(compose_shard_steps, jobs, on_result, workers=workers,
                                   address=ray_address, shared=shared, on_progress=on_progress)
            for i in failures:  # a failed shard's scenes are not done
                on_progress(i, 0)
    if failures:
        raise shards_failed(failures, [shard_name(s) for s in todo])
    return write_manifest(job, inputs, workers, ray_address, growth)
