"""``synthgen render``: generate -> cut out -> score -> filter -> object bank.

The three model stages (:mod:`.stages`) run as Ray Data ``map_batches`` stages over batches of
``(category, index, seed, prompt)`` rows, each an actor pool sized by :func:`.plan.plan_resources`
(``--gpus-per-worker`` <= 1 GPU per generator; the scorer actors on what the generators leave of
the GPUs, the rembg cut-out actors too when onnxruntime offers CUDA, else on the CPU).
``use_ray=False`` runs the same stage objects one after the other in this process (the
benchmark's baseline, and handy for debugging).

Results stream back in order; when a category has all its objects it is filtered and written
(:mod:`.records`, :mod:`synthgen.bank.writer`), so a killed run loses at most the categories in flight.

Progress (display only, :class:`_Bars`): a bar per stage (images generated, cut out, CLIP-scored,
with the category the stage is on) and one of the categories filtered and written. Each stage
counts its batches in a :class:`~.stages.StageCounts` (on Ray an actor without CPUs, told by the
stage actors without waiting; the driver reads it twice a second).
The bank folder is locked for the life of the run (:class:`~synthgen.storage.RunFolder`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from synthgen import storage
from synthgen.bank.format import RENDER_CONFIG_FILE
from synthgen.errors import UserError, raise_problems, recover
from synthgen.render.categories import Category, check_names
from synthgen.render.config import RenderConfig, RenderJob
from synthgen.render.plan import plan_resources
from synthgen.render.records import finish_category, unpack
from synthgen.render.seeds import object_seed, prompt_for
from synthgen.render.stages import CutoutStage, GenerateStage, ScoreStage, StageCounts
from synthgen.storage import RunFolder

STAGES = ("generate", "cut-out", "CLIP score")


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


class _Bars:
    """The render's bars: images per stage, with the category the stage is on (rows go through
    the stages in order: its next row's), and categories written (resumed: from those done)."""

    def __init__(self, enabled: bool, n_categories: int, n_done: int, per_category: int):
        from synthgen.progress import progress_bars

        self.prog = progress_bars("images", enabled=enabled, note=True)
        self.base = n_done * per_category
        self.names: list[str] = []  # the category of each row to do, in order
        total = n_categories * per_category
        self.stages = {s: self.prog.add_task(s, total=total, completed=self.base, begin=self.base, note="")
                       for s in STAGES}
        self.cats = self.prog.add_task("categories", total=n_categories, completed=n_done, begin=n_done,
                                       note="", unit="categories")

    def counts(self, done: dict[str, int]) -> None:
        for stage, task in self.stages.items():
            n = done.get(stage, 0)
            note = f"on {self.names[n]}" if n < len(self.names) else ""
            self.prog.update(task, completed=self.base + n, note=note)

    def category(self, name: str) -> None:
        self.prog.update(self.cats, advance=1, note=f"last: {name}")

    def finish_stages(self) -> None:
        for task in self.stages.values():
            self.prog.update(task, completed=self.prog.tasks[task].total, note="")


def _local_batches(rows: list[dict], cfg: RenderConfig, bars: _Bars | None = None) -> Iterator[dict]:
    counts = StageCounts()
    gen = GenerateStage(cfg.sd_model, cfg.steps, cfg.guidance, cfg.size, counts=counts)
    cut = CutoutStage(cfg.cutout, counts=counts)
    score = ScoreStage(cfg.clip_model, cfg.clip_pretrained, len(cfg.cutout), counts=counts)
    for start in range(0, len(rows), cfg.batch_size):
        batch = gen(_to_batch(rows[start:start + cfg.batch_size]))
        if bars:
            bars.counts(counts.snapshot())
        batch = cut(batch)
        if bars:
            bars.counts(counts.snapshot())
        batch = score(batch)
        if bars:
            bars.counts(counts.snapshot())
        yield batch


@contextlib.contextmanager
def _polled(counts, bars: _Bars | None, every: float = 0.5) -> Iterator[None]:
    """Read the counts actor into the bars every ``every`` seconds while the block runs."""
    if bars is None:
        yield
        return
    import threading

    import ray

    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every):
            try:
                bars.counts(ray.get(counts.snapshot.remote(), timeout=10))
            except Exception:  # noqa: BLE001 - display only; the run reports its own errors
                return

    thread = threading.Thread(target=poll, name="render-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=15)


def _onnx_providers() -> list[str]:
    """What this machine's onnxruntime offers (the cluster's nodes run the same install)."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _ray_batches(rows: list[dict], cfg: RenderConfig, bars: _Bars | None = None) -> Iterator[dict]:
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
                              node_gpus=node_gpus, onnx_providers=_onnx_providers())
        counts = ray.remote(num_cpus=0)(StageCounts).remote()  # (display only)
        n_blocks = max(1, math.ceil(len(rows) / cfg.batch_size))
        ds = ray.data.from_items(rows, override_num_blocks=n_blocks)
        ds = ds.map_batches(
            GenerateStage, fn_constructor_kwargs=dict(model=cfg.sd_model, steps=cfg.steps,
                                                      guidance=cfg.guidance, size=cfg.size,
                                                      threads=plan.threads, counts=counts),
            batch_size=cfg.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.n_gen),
            num_gpus=plan.gen_gpus, num_cpus=plan.gen_cpus)
        ds = ds.map_batches(
            CutoutStage, fn_constructor_kwargs=dict(cutout=list(cfg.cutout), threads=plan.light_threads,
                                                    counts=counts, providers=plan.cut_providers),
            batch_size=cfg.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.n_light),
            num_gpus=plan.cut_gpus, num_cpus=plan.light_cpus)
        ds = ds.map_batches(
            ScoreStage, fn_constructor_kwargs=dict(model=cfg.clip_model, pretrained=cfg.clip_pretrained,
                                                   n_candidates=len(cfg.cutout),
                                                   threads=plan.light_threads, counts=counts),
            batch_size=cfg.batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.n_light),
            num_gpus=plan.light_gpus, num_cpus=plan.light_cpus)
        with _polled(counts, bars):
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


def run_render(job: RenderJob, *, on_category: Callable[[str, dict], None] | None = None,
               echo: Callable[[str], None] | None = None, progress: bool = True) -> RenderResult:
    """``synthgen render``: select the job's categories (``echo`` gets the line saying which),
    then :func:`render` them; with ``job.prepared``, then write the finished bank's prepared form
    (:mod:`synthgen.compose.prepare_objects`)."""
    from synthgen.render.categories import select_categories

    raise_problems(job.config.problems())
    if isinstance(job.categories, tuple):
        cats = [Category(name, None) for name in job.categories]
    else:
        sel = select_categories(job.categories, categories_file=job.categories_file, exclude=job.exclude,
                                only=job.only)
        cats = sel.categories
        if echo is not None:
            echo(sel.summary())
    prepared = None
    if job.prepared is not None:  # (checked before any work: a bad place or size is one line now, not after hours)
        from synthgen.compose.prepare_objects import ObjectsJob, prepare_objects

        prepared = ObjectsJob(source=job.config.out, out=job.prepared, size=job.prepared_size)
        raise_problems(prepared.problems())
        if storage.overlap(job.prepared, job.config.out):
            raise UserError(f"--prepared {job.prepared} and --out {job.config.out} overlap; choose a folder "
                            "outside the bank")
    result = render(cats, job.config, on_category=on_category, progress=progress)
    if prepared is not None:
        manifest = prepare_objects(prepared, workers=job.config.workers, ray_address=job.config.ray_address,
                                   progress=progress)
        if echo is not None:
            echo(f"prepared: {manifest['objects']} cut-outs at {job.prepared_size} px -> {job.prepared}")
    return result


def render(categories: Sequence[Category], cfg: RenderConfig, *, use_ray: bool = True,
           on_category: Callable[[str, dict], None] | None = None,
           check_models: bool = True, progress: bool = True) -> RenderResult:
    """Render ``categories`` into the object bank ``cfg.out`` (resumable; see module doc).

    ``on_category(display_name, stats)`` is called after each category is written;
    ``progress``: show the bars (on stderr).
    """
    from synthgen.bank.writer import BankWriter

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
                bars = _Bars(progress, len(categories), result.skipped, cfg.per_category)
                with bars.prog:
                    _render_categories(todo, cfg, writer, result, use_ray, on_category, bars)
        finally:
            writer.flush()
    result.seconds = time.monotonic() - t0
    return result


def _render_categories(todo: Sequence[Category], cfg: RenderConfig, writer, result: RenderResult,
                       use_ray: bool, on_category: Callable[[str, dict], None] | None,
                       bars: _Bars | None = None) -> None:
    by_name = {c.name: c for c in todo}
    pending: dict[str, list[dict]] = {}
    last = time.monotonic()
    rows = _rows(todo, cfg)
    if bars:
        bars.names = [r["display"] for r in rows]
        bars.counts({})
    batches = _ray_batches(rows, cfg, bars) if use_ray else _local_batches(rows, cfg, bars)
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
                if bars:
                    if result.rendered == len(todo):  # (the last counts may still be on their way)
                        bars.finish_stages()
                    bars.category(cat.display)
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
