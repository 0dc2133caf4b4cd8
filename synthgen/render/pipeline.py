"""``synthgen render``: generate -> cut out -> score -> filter -> object bank.

The three model stages (:mod:`.stages`) run as Ray Data ``map_batches`` stages over batches of
``(category, index, seed, prompt)`` rows, each an actor pool sized by :func:`.plan.plan_resources`
(one generator per ``--gpus-per-worker`` GPUs; the cut-out and scorer actors on what the
generators leave of the GPUs, or on the CPU). ``use_ray=False`` runs the same stage objects one
after the other in this process (the benchmark's baseline, and handy for debugging).

Results stream back in order; when a category has all its objects it is filtered and written
(:mod:`.records`, :mod:`.bank_writer`), so a killed run loses at most the categories in flight.
The bank folder is locked for the life of the run (:class:`~synthgen.rundir.RunFolder`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from synthgen.errors import raise_problems, recover
from synthgen.render.categories import Category, check_names
from synthgen.render.config import RenderConfig
from synthgen.render.plan import plan_resources
from synthgen.render.records import finish_category, unpack
from synthgen.render.seeds import object_seed, prompt_for
from synthgen.render.stages import CutoutStage, GenerateStage, ScoreStage
from synthgen.rundir import RunFolder
from synthgen.schema import RENDER_CONFIG_FILE


@dataclass
class RenderResult:
    out: Path
    categories: int = 0          # categories asked for
    skipped: int = 0             # already finished before this run
    rendered: int = 0            # finished by this run
    generated: int = 0
    kept: int = 0
    dropped_categories: int = 0
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)  # per category rendered by this run


def _rows(categories: Sequence[Category], cfg: RenderConfig) -> list[dict]:
    rows = []
    for c in categories:
        for i in range(cfg.per_category):
            rows.append({"category": c.name, "display": c.display, "index": i,
                         "seed": object_seed(cfg.seed, c.name, i),
                         "prompt": prompt_for(cfg.prompt, c.display)})
    return rows


def _to_batch(rows: list[dict]) -> dict:
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def _local_batches(rows: list[dict], cfg: RenderConfig) -> Iterator[dict]:
    gen = GenerateStage(cfg.sd_model, cfg.steps, cfg.guidance, cfg.size)
    cut = CutoutStage(cfg.cutout)
    score = ScoreStage(cfg.clip_model, cfg.clip_pretrained, len(cfg.cutout))
    for start in range(0, len(rows), cfg.batch_size):
        yield score(cut(gen(_to_batch(rows[start:start + cfg.batch_size]))))


def _ray_batches(rows: list[dict], cfg: RenderConfig) -> Iterator[dict]:
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml")))
    import ray

    from synthgen.executors import ray_session

    with ray_session(cfg.workers, cfg.ray_address, cfg.object_store_mb):
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True
        ctx.enable_progress_bars = False
        res = ray.cluster_resources()
        node_gpus = [n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n.get("Alive")]
        plan = plan_resources(res.get("GPU", 0.0), res.get("CPU", 1.0), cfg.gpus_per_worker,
                              node_gpus=node_gpus)
        n_blocks = max(1, math.ceil(len(rows) / cfg.batch_size))
        ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
        ds = ds.map_batches(
            GenerateStage, fn_constructor_kwargs=dict(model=cfg.sd_model, steps=cfg.steps,
                                                      guidance=cfg.guidance, size=cfg.size,
                                                      threads=plan.threads),
            batch_size=cfg.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.n_gen),
            num_gpus=plan.gen_gpus, num_cpus=plan.gen_cpus)
        ds = ds.map_batches(
            CutoutStage, fn_constructor_kwargs=dict(cutout=list(cfg.cutout), threads=plan.light_threads),
            batch_size=cfg.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.n_light),
            num_gpus=plan.light_gpus, num_cpus=plan.light_cpus)
        ds = ds.map_batches(
            ScoreStage, fn_constructor_kwargs=dict(model=cfg.clip_model, pretrained=cfg.clip_pretrained,
                                                   n_candidates=len(cfg.cutout),
                                                   threads=plan.light_threads),
            batch_size=cfg.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.n_light),
            num_gpus=plan.light_gpus, num_cpus=plan.light_cpus)
        yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def preflight(cfg: RenderConfig) -> None:
    """Check (and fetch into the local caches) every model before anything starts."""
    from synthgen.render.cutout import fetch_cutout, parse_cutout
    from synthgen.render.generate import fetch_sd
    from synthgen.render.score import fetch_clip

    fetch_sd(cfg.sd_model)
    fetch_clip(cfg.clip_model, cfg.clip_pretrained)
    for spec in parse_cutout(cfg.cutout):
        fetch_cutout(spec)


def render(categories: Sequence[Category], cfg: RenderConfig, *, use_ray: bool = True,
           on_category: Callable[[str, dict], None] | None = None,
           check_models: bool = True) -> RenderResult:
    """Render ``categories`` into the object bank ``cfg.out`` (resumable; see module doc).

    ``on_category(display_name, stats)`` is called after each category is written.
    """
    from synthgen.render.bank_writer import BankWriter

    raise_problems(cfg.problems())
    check_names(categories)
    t0 = time.monotonic()
    with RunFolder(cfg.out, "render", clean="recursive") as folder:
        # 1. a bank rendered with other settings is refused before any model loads
        folder.check_identity(RENDER_CONFIG_FILE, cfg.fingerprint(), what="settings", record=False)
        writer = BankWriter(folder.path)
        done = writer.finished()
        todo = [c for c in categories if c.name not in done]
        result = RenderResult(out=folder.path, categories=len(categories),
                              skipped=len(categories) - len(todo))
        # 2. every model loads before anything is written: a bad one leaves no half-made bank
        if todo and check_models:
            preflight(cfg)
        folder.record_identity(RENDER_CONFIG_FILE, cfg.fingerprint())
        # 3. stream the rows through the stages; write each category once it is complete
        try:
            if todo:
                _render_categories(todo, cfg, writer, result, use_ray, on_category)
        finally:
            writer.flush()
    result.seconds = time.monotonic() - t0
    return result


def _render_categories(todo: Sequence[Category], cfg: RenderConfig, writer, result: RenderResult,
                       use_ray: bool, on_category: Callable[[str, dict], None] | None) -> None:
    by_name = {c.name: c for c in todo}
    pending: dict[str, list[dict]] = {}
    last = time.monotonic()
    rows = _rows(todo, cfg)
    batches = _ray_batches(rows, cfg) if use_ray else _local_batches(rows, cfg)
    try:
        for batch in batches:
            for row in unpack(batch, list(cfg.cutout)):
                rows_of = pending.setdefault(row["category"], [])
                rows_of.append(row)
                if len(rows_of) < cfg.per_category:
                    continue
                cat = by_name[row["category"]]
                now = time.monotonic()
                doc, pngs = finish_category(cat, pending.pop(cat.name), cfg, now - last)
                last = now
                writer.add_category(doc, pngs)
                writer.flush(cfg.flush_interval)
                st = doc["stats"]
                result.rendered += 1
                result.generated += st["generated"]
                result.kept += st["kept"]
                result.dropped_categories += int(st["category_dropped"])
                result.stats[cat.name] = st
                if on_category:
                    on_category(cat.display, st)
    except Exception as exc:
        err = recover(exc)  # a model that fails to load in a Ray actor, a bad input, ...
        if err is not None:
            raise err from None
        raise
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()
