"""Driver of ``synthgen compose``: validation, resume, shard tasks, stats and manifest.

Shard ``s`` holds samples ``s*per_shard .. min(N, (s+1)*per_shard)-1``. A shard is done iff
its ``*_stats.json`` exists; a re-run skips done shards and rewrites the others from scratch.
``run.json`` records the options of the run in a folder so that a re-run with other options is
refused instead of mixing two datasets.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from synthgen import SCENE_SCHEMA, __version__
from synthgen.compose import ComposeParams, Composer, SceneStats
from synthgen.errors import UserError
from synthgen.atomic import atomic_write_json, remove_stale_temps
from synthgen.shards import ShardWriter, shard_name, stats_name


@dataclass(frozen=True)
class ComposeJob:
    objects: str
    backgrounds: str
    out: str
    num_samples: int
    samples_per_shard: int = 1000
    params: ComposeParams = ComposeParams()

    @property
    def num_shards(self) -> int:
        return math.ceil(self.num_samples / self.samples_per_shard)

    def shard_range(self, s: int) -> range:
        lo = s * self.samples_per_shard
        return range(lo, min(self.num_samples, lo + self.samples_per_shard))

    def identity(self) -> dict[str, Any]:
        """What decides the dataset's content: a re-run into the same folder must match it."""
        return {"objects": str(Path(self.objects).resolve()),
                "backgrounds": str(Path(self.backgrounds).resolve()) if "{" not in self.backgrounds
                else self.backgrounds,
                "num_samples": self.num_samples, "samples_per_shard": self.samples_per_shard,
                "params": self.params.to_dict(), "schema": SCENE_SCHEMA}


@lru_cache(maxsize=4)
def _open_bank(path: str, max_side: int):
    from synthgen.bank import ObjectBank

    return ObjectBank.open(path, max_side=max_side)


def compose_shard(job: ComposeJob, shard: int, backgrounds: list[str]) -> dict[str, Any]:
    """Write shard ``shard`` and its stats; runs in a worker. Returns the stats."""
    t0 = time.time()
    bank = _open_bank(job.objects, job.params.size)
    composer = Composer(job.params, bank, backgrounds)
    out = Path(job.out)
    stats = SceneStats()
    per_scene: dict[int, int] = {}
    n_objects = 0
    with ShardWriter(out / shard_name(shard)) as w:
        for k in job.shard_range(shard):
            scene = composer.scene(k, stats)
            n = len(scene.record["objects"])
            per_scene[n] = per_scene.get(n, 0) + 1
            n_objects += n
            w.write(scene.key, scene.encode(job.params.jpeg_quality))
    rec = {
        "shard": shard_name(shard), "samples": w.count, "objects": n_objects,
        "objects_per_scene": {str(k): v for k, v in sorted(per_scene.items())},
        "dropped_objects": stats.dropped_objects, "scene_resamples": stats.scene_resamples,
        "skipped_inputs": {"backgrounds": stats.skipped_backgrounds, "objects": stats.skipped_objects},
        "seconds": round(time.time() - t0, 3),
    }
    atomic_write_json(out / stats_name(shard), rec)
    return rec


def check_inputs(job: ComposeJob) -> list[str]:
    """Fail fast (before any work) on bad options and unusable inputs; returns the backgrounds."""
    from synthgen.backgrounds import list_backgrounds

    job.params.validate()
    if not str(job.objects).strip():
        raise UserError("--objects is empty")
    if job.num_samples < 1:
        raise UserError(f"--num-samples must be >= 1 (got {job.num_samples})")
    if job.samples_per_shard < 1:
        raise UserError(f"--samples-per-shard must be >= 1 (got {job.samples_per_shard})")
    bank = _open_bank(job.objects, job.params.size)
    if bank.first_usable(limit=min(len(bank), 2000)) is None:
        raise UserError(f"object bank {job.objects}: none of the first {min(len(bank), 2000)} "
                        "cut-outs is usable (RGBA PNGs with some opaque pixels are needed)")
    return list_backgrounds(job.backgrounds)


_LOCKS: dict[str, Any] = {}


def _lock(out: Path) -> None:
    """Hold an exclusive lock on ``out`` for the life of this process: two runs writing one
    folder would delete each other's temporary files."""
    import fcntl

    key = str(out.resolve())
    if key in _LOCKS:
        return
    f = open(out / ".lock", "w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise UserError(f"another synthgen compose is writing to {out}; wait for it or use another --out") from None
    _LOCKS[key] = f


def _unlock(out: Path) -> None:
    f = _LOCKS.pop(str(Path(out).resolve()), None)
    if f is not None:
        f.close()


def prepare_out(job: ComposeJob) -> list[int]:
    """Create/validate the output folder; return the shards still to do."""
    if not str(job.out).strip():
        raise UserError("--out is empty")
    out = Path(job.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out} cannot be created: {exc.strerror or exc}") from None
    _lock(out)
    run_file = out / "run.json"
    ident = json.loads(json.dumps(job.identity()))  # tuples -> lists, as stored
    if run_file.exists():
        try:
            old = json.loads(run_file.read_text())
        except json.JSONDecodeError:
            old = None
        if old != ident:
            diff = sorted(k for k in ident if (old or {}).get(k) != ident[k])
            raise UserError(f"{out} holds a compose run with other options ({', '.join(diff)}); "
                            "use a new --out folder, or remove that one to start over")
    else:
        atomic_write_json(run_file, ident)
    remove_stale_temps(out)
    return [s for s in range(job.num_shards) if not (out / stats_name(s)).exists()]


def write_manifest(job: ComposeJob, workers: int, ray_address: str | None) -> dict[str, Any]:
    out = Path(job.out)
    totals: dict[str, Any] = {"samples": 0, "objects": 0, "objects_per_scene": {}, "dropped_objects": {},
                              "scene_resamples": {}, "skipped_backgrounds": {}, "skipped_objects": {},
                              "shard_seconds": 0.0}
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
    manifest = {"synthgen_version": __version__, "schema": SCENE_SCHEMA,
                "shards": [shard_name(s) for s in range(job.num_shards)],
                "options": {**job.identity(), "workers": workers, "ray_address": ray_address},
                "totals": totals}
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def run_compose(job: ComposeJob, *, workers: int = 1, ray_address: str | None = None,
                executor: str = "ray", progress: bool = True) -> dict[str, Any]:
    """Compose the whole dataset (resuming), returning the manifest. Raises UserError when shards
    failed (after the others have finished)."""

    if workers < 1:
        raise UserError(f"--workers must be >= 1 (got {workers})")
    if executor not in ("ray", "serial"):
        raise UserError(f"--executor must be ray or serial (got {executor!r})")
    backgrounds = check_inputs(job)
    todo = prepare_out(job)
    try:
        return _run(job, todo, backgrounds, workers, ray_address, executor, progress)
    finally:
        _unlock(Path(job.out))


def _run(job: ComposeJob, todo: list[int], backgrounds: list[str], workers: int,
         ray_address: str | None, executor: str, progress: bool) -> dict[str, Any]:
    from synthgen.executors import run_ray, run_serial

    failures: dict[int, str] = {}
    if todo:
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        prog = Progress(TextColumn("compose"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("shards  {task.fields[samples]} samples"), TimeElapsedColumn(),
                        TimeRemainingColumn(), disable=not progress, transient=False)
        with prog:
            task = prog.add_task("shards", total=len(todo), samples=0)
            done_samples = [0]

            def on_result(_i: int, rec: dict[str, Any]) -> None:
                done_samples[0] += rec["samples"]
                prog.update(task, advance=1, samples=done_samples[0])

            jobs = [(job, s) for s in todo]
            shared = {"backgrounds": backgrounds}
            if executor == "serial":
                failures = run_serial(compose_shard, jobs, on_result, shared=shared)
            else:
                failures = run_ray(compose_shard, jobs, on_result, workers=workers,
                                   address=ray_address, shared=shared)
    if failures:
        lines = "; ".join(f"{shard_name(todo[i])}: {msg}" for i, msg in sorted(failures.items()))
        raise UserError(f"{len(failures)} of {len(todo)} shard(s) failed ({lines}); "
                        "the others are complete — re-run the same command to retry the failed ones")
    return write_manifest(job, workers, ray_address)
