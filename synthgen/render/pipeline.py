"""``synthgen render``: generate -> cut out -> score -> filter -> object bank.

The three model stages are callable classes run as Ray Data ``map_batches`` stages over batches
of ``(category, index, seed, prompt)`` rows; each is an actor pool, so every model is loaded once
per actor. With GPUs: one generator actor per ``gpus_per_worker`` GPUs (a whole number above 1,
or a fraction <= 1 to pack several on a GPU), and the cut-out and scorer actors on what the
generators leave of the GPUs, or on the CPU when they leave nothing (:func:`plan_resources`).
Without GPUs: one actor per stage on the CPU. ``use_ray=False`` runs the same stage objects one
after the other in this process (the benchmark's baseline, and handy for debugging).

Results stream back in order; when a category has all its objects it is filtered and written (see
:mod:`synthgen.render.bank_writer`), so a killed run loses at most the categories in flight.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from synthgen.errors import UserError
from synthgen.render.categories import Category
from synthgen.render.filter import REASONS, FilterConfig, filter_category
from synthgen.render.generate import DEFAULT_SD_MODEL
from synthgen.render.models import ModelLoadError
from synthgen.render.score import CLIP_TEXT, DEFAULT_CLIP_MODEL, DEFAULT_CLIP_PRETRAINED
from synthgen.render.seeds import object_seed, prompt_for

DEFAULT_PROMPT = "a photo of a single {name}"
LIGHT_GPU = 0.1  # GPU share of a cut-out or scorer actor next to a generator


@dataclass
class RenderConfig:
    """Every setting of a render run (CLI options map 1:1)."""

    out: str | Path
    per_category: int = 60
    sd_model: str = DEFAULT_SD_MODEL
    steps: int = 50
    guidance: float = 7.5
    size: int = 512
    prompt: str = DEFAULT_PROMPT
    clip_model: str = DEFAULT_CLIP_MODEL
    clip_pretrained: str | None = DEFAULT_CLIP_PRETRAINED
    cutout: Sequence[str] | str = ("u2net",)
    min_clip: float = 21.0
    tolerance: float = 1.0
    area: tuple[float, float] = (0.05, 0.95)
    min_per_category: int = 20
    batch_size: int = 8
    seed: int = 0
    gpus_per_worker: float = 1.0
    ray_address: str | None = None
    keep_rejected: bool = False
    ray_init: dict = field(default_factory=dict)  # extra ray.init kwargs for a local Ray
    flush_interval: float = 10.0  # seconds between rebuilds of index.jsonl during a run

    def __post_init__(self) -> None:
        from synthgen.render.cutout import parse_cutout

        self.cutout = [s.label for s in parse_cutout(self.cutout)]
        self.area = (float(self.area[0]), float(self.area[1]))
        if self.clip_pretrained == "":
            self.clip_pretrained = None
        checks = [
            (self.per_category >= 1, "--per-category must be >= 1"),
            (self.steps >= 1, "--steps must be >= 1"),
            (self.size >= 8 and self.size % 8 == 0, "--size must be a multiple of 8 (>= 8)"),
            ("{name}" in self.prompt, "--prompt must contain {name}"),
            (0.0 <= self.area[0] <= self.area[1] <= 1.0, "--area must be LO,HI with 0 <= LO <= HI <= 1"),
            (self.min_per_category >= 0, "--min-per-category must be >= 0"),
            (self.per_category >= self.min_per_category,
             f"--per-category {self.per_category} is below --min-per-category "
             f"{self.min_per_category}, so every category would be dropped and the bank would be "
             f"empty; lower --min-per-category to {self.per_category} or less (the paper keeps "
             f"categories with 20 of 60 objects), or raise --per-category"),
            (self.tolerance >= 0, "--tolerance must be >= 0"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.gpus_per_worker >= 0.01,
             "--gpus-per-worker must be >= 0.01 (at most 100 generators per GPU)"),
            (self.gpus_per_worker <= 1 or float(self.gpus_per_worker).is_integer(),
             f"--gpus-per-worker above 1 must be a whole number of GPUs (got "
             f"{self.gpus_per_worker:g}): use 2, 3, ..., or a fraction <= 1 to share a GPU"),
        ]
        for ok, msg in checks:
            if not ok:
                raise UserError(msg)

    @property
    def filter(self) -> FilterConfig:
        return FilterConfig(min_clip=self.min_clip, tolerance=self.tolerance, area_lo=self.area[0],
                            area_hi=self.area[1], min_per_category=self.min_per_category)

    def fingerprint(self) -> dict:
        """The settings that decide the bank's content (a resumed run must match them)."""
        keys = ("per_category", "sd_model", "steps", "guidance", "size", "prompt", "clip_model",
                "clip_pretrained", "cutout", "min_clip", "tolerance", "area", "min_per_category",
                "seed")
        d = {k: getattr(self, k) for k in keys}
        d["area"] = list(d["area"])
        d["cutout"] = list(d["cutout"])
        d["scheduler"] = "DPMSolverMultistepScheduler"
        d["clip_text"] = CLIP_TEXT
        return d


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


# ----------------------------------------------------------------------------------------------
# stages (callable classes: Ray actors, or plain objects without Ray)


def _set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(int(n))


class GenerateStage:
    def __init__(self, model: str, steps: int, guidance: float, size: int, threads: int | None = None):
        _set_threads(threads)
        from synthgen.render.generate import Generator

        self.gen = Generator(model, steps=steps, guidance=guidance, size=size)

    def __call__(self, batch: dict) -> dict:
        out = dict(batch)
        images, reasons = self.gen([str(p) for p in batch["prompt"]], [int(s) for s in batch["seed"]])
        out["image"] = images
        out["gen_reason"] = np.array([r or "" for r in reasons])  # "" = not rejected
        return out


def _reason(batch: dict, i: int) -> str | None:
    """Why the generator already rejected image ``i`` of ``batch`` (``None``: it did not)."""
    r = batch.get("gen_reason")
    return (str(r[i]) or None) if r is not None else None


class CutoutStage:
    def __init__(self, cutout: Sequence[str], threads: int | None = None):
        _set_threads(threads)
        from synthgen.render.cutout import Cutter

        self.cutter = Cutter(list(cutout))

    def __call__(self, batch: dict) -> dict:
        from synthgen.render.cutout import Candidate

        images = list(batch["image"])
        todo = [i for i in range(len(images)) if not _reason(batch, i)]  # no work on rejected ones
        cands = [[Candidate(b"", float("nan"), 0, 0)] * len(self.cutter.specs)] * len(images)
        for i, c in zip(todo, self.cutter([images[i] for i in todo]) if todo else []):
            cands[i] = c
        out = {k: v for k, v in batch.items() if k != "image"}
        for k in range(len(self.cutter.specs)):
            out[f"cand_png_{k}"] = np.array([c[k].png for c in cands], dtype=object)
            out[f"cand_area_{k}"] = np.array([c[k].area_fraction for c in cands], dtype=np.float64)
        return out


class ScoreStage:
    """Scores every candidate and keeps the best per image (X-Paste's ensemble choice)."""

    def __init__(self, model: str, pretrained: str | None, n_candidates: int,
                 threads: int | None = None):
        _set_threads(threads)
        from synthgen.render.score import Scorer

        self.scorer = Scorer(model, pretrained)
        self.k = int(n_candidates)

    def __call__(self, batch: dict) -> dict:
        from synthgen.render.cutout import decode_png

        n = len(batch["seed"])
        names = [str(x) for x in batch["display"]]
        scores = np.full((n, self.k), np.nan, dtype=np.float64)
        todo = [(i, k) for i in range(n) for k in range(self.k) if len(batch[f"cand_png_{k}"][i])]
        if todo:
            imgs = [decode_png(batch[f"cand_png_{k}"][i]) for i, k in todo]
            vals = self.scorer(imgs, [names[i] for i, _ in todo])
            for (i, k), v in zip(todo, vals):
                scores[i, k] = float(v)
        out = {c: v for c, v in batch.items() if not c.startswith(("cand_png_", "cand_area_"))}
        best = np.full(n, -1, dtype=np.int64)
        for i in range(n):
            if not np.all(np.isnan(scores[i])):
                best[i] = int(np.nanargmax(scores[i]))
        out["best"] = best
        out["candidate_scores"] = scores
        out["clip_score"] = np.array([scores[i, b] if b >= 0 else np.nan for i, b in enumerate(best)])
        out["area_fraction"] = np.array([batch[f"cand_area_{b}"][i] if b >= 0 else np.nan
                                         for i, b in enumerate(best)], dtype=np.float64)
        out["png"] = np.array([batch[f"cand_png_{b}"][i] if b >= 0 else b"" for i, b in enumerate(best)],
                              dtype=object)
        return out


# ----------------------------------------------------------------------------------------------
# planning and execution


@dataclass(frozen=True)
class Plan:
    n_gen: int
    gen_gpus: float
    gen_cpus: float
    n_light: int        # actors per light stage (cut-out, scorer)
    light_gpus: float
    light_cpus: float
    threads: int | None  # torch threads of a generator (CPU only)
    light_threads: int = 1


def _down(x: float) -> float:
    """``x`` rounded down to Ray's resource unit (0.0001)."""
    return math.floor(x * 10_000 + 1e-6) / 10_000


def _cpu_shares(cpus: float, n_gen: int, n_light: int, light_on_gpu: bool) -> tuple[float, float]:
    """CPUs of a generator and of a light actor: at most half the CPUs for the generators (1
    each at most), the rest split over the 2 * ``n_light`` light actors (1 each at most when they
    run on a GPU; all of it when they run on the CPU), so the total never exceeds ``cpus``."""
    cpus = max(cpus, 0.0)
    gen = max(0.0001, min(1.0, _down(cpus / (2 * n_gen))))
    light = _down((cpus - n_gen * gen) / (2 * n_light))
    if light_on_gpu:
        light = min(1.0, light)
    elif light > 1:
        light = float(math.floor(light))  # whole CPUs, one torch/ONNX thread each
    return gen, max(0.0001, light)


def plan_resources(gpus: float, cpus: float, gpus_per_worker: float,
                   node_gpus: Sequence[float] | None = None) -> Plan:
    """Actor counts and resources, never more than the cluster has and always valid for Ray
    (fractions of 0.0001, whole numbers above 1). ``node_gpus`` lists the GPUs of each node
    (default: all ``gpus`` on one node); a generator's GPUs are always on one node.

    * ``gpus_per_worker`` = k > 1 (a whole number): per node ``floor(node GPUs / k)`` generators
      with exactly k GPUs each. The light actors (cut-out, scorer) go on the GPUs left over (two
      per GPU, half a GPU each) or, when none is left, run on the CPU with 0 GPUs.
    * ``gpus_per_worker`` <= 1: k = ``floor(1 / gpus_per_worker)`` generators per GPU, plus one
      cut-out and one scorer actor per GPU with ``LIGHT_GPU`` each (less when k is large); the
      generators' share is trimmed so that k of them and the two light actors fill one GPU and
      k + 1 generators never fit on one GPU (Ray packs fractions; the generator pool starts
      first, so every GPU gets exactly k generators and room for its light actors).
    * No GPU: one actor per stage on the CPU.
    """
    per_node = [int(math.floor(g + 1e-9)) for g in (node_gpus if node_gpus is not None else [gpus])]
    whole = sum(per_node)
    if whole < 1:
        cpus = max(1.0, cpus)
        light = 0.25 if cpus <= 2 else 1.0
        return Plan(1, 0.0, max(1.0, cpus - 2 * light) if cpus > 2 else 1.0, 1, 0.0, light,
                    threads=max(1, int(cpus)))
    if gpus_per_worker > 1:
        k = int(round(gpus_per_worker))
        if abs(gpus_per_worker - k) > 1e-9:
            raise UserError(f"--gpus-per-worker above 1 must be a whole number, got {gpus_per_worker:g}")
        n_gen = sum(g // k for g in per_node)
        if n_gen == 0:
            raise UserError(f"--gpus-per-worker {k} needs {k} GPUs on one node, but the largest "
                            f"node has {max(per_node)}; use --gpus-per-worker {max(per_node)} or less")
        left = whole - n_gen * k
        if left >= 1:
            n_light, light_gpus = left, 0.5
        else:
            n_light, light_gpus = n_gen, 0.0
        gen_cpus, light_cpus = _cpu_shares(cpus, n_gen, n_light, light_gpus > 0)
        return Plan(n_gen, float(k), gen_cpus, n_light, light_gpus, light_cpus, None,
                    light_threads=1 if light_gpus > 0 else max(1, int(light_cpus)))
    k = max(1, int(math.floor(1.0 / gpus_per_worker + 1e-9)))
    gen_gpus = min(_down(gpus_per_worker), _down((1.0 - 2 * LIGHT_GPU) / k))
    if (k + 1) * gen_gpus <= 1.0 + 1e-9:
        # the smallest share with which k + 1 generators no longer fit on one GPU
        gen_gpus = (math.floor(10_000 / (k + 1)) + 1) / 10_000
    light_gpus = min(LIGHT_GPU, _down((1.0 - k * gen_gpus) / 2))
    n_gen, n_light = k * whole, whole
    gen_cpus, light_cpus = _cpu_shares(cpus, n_gen, n_light, light_gpus > 0)
    return Plan(n_gen, gen_gpus, gen_cpus, n_light, light_gpus, light_cpus, None,
                light_threads=1 if light_gpus > 0 else max(1, int(light_cpus)))


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


def local_ray_init_kwargs() -> dict:
    """Defaults for a local Ray (env ``SYNTHGEN_RAY_NUM_CPUS`` / ``SYNTHGEN_RAY_OBJECT_STORE_MB``
    override): object store capped at 2 GiB, no dashboard."""
    kw: dict = {"include_dashboard": False, "object_store_memory": 2 << 30}
    if os.environ.get("SYNTHGEN_RAY_NUM_CPUS"):
        kw["num_cpus"] = int(os.environ["SYNTHGEN_RAY_NUM_CPUS"])
    if os.environ.get("SYNTHGEN_RAY_OBJECT_STORE_MB"):
        kw["object_store_memory"] = int(os.environ["SYNTHGEN_RAY_OBJECT_STORE_MB"]) << 20
    return kw


def _ray_batches(rows: list[dict], cfg: RenderConfig) -> Iterator[dict]:
    import logging

    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(Path(__file__).with_name("ray_data_logging.yaml")))
    import ray

    started = False
    if not ray.is_initialized():
        if cfg.ray_address:
            ray.init(address=cfg.ray_address, logging_level=logging.ERROR)
        else:
            kw = local_ray_init_kwargs() | dict(cfg.ray_init)
            ray.init(logging_level=logging.ERROR, **kw)
        started = True
    try:
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
    finally:
        if started:
            ray.shutdown()


def _model_error_in(exc: BaseException) -> ModelLoadError | None:
    """A :class:`ModelLoadError` raised inside a Ray actor, found in the wrapped exception."""
    seen = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ModelLoadError):
            return e
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    text = str(exc)
    if "ModelLoadError" in text and "cannot load the" in text:
        line = next(line for line in text.splitlines() if "cannot load the" in line)
        return ModelLoadError(line.split("ModelLoadError:", 1)[-1].strip())
    return None


def preflight(cfg: RenderConfig) -> None:
    """Check (and fetch into the local caches) every model before anything starts."""
    from synthgen.render.cutout import fetch_cutout, parse_cutout
    from synthgen.render.generate import fetch_sd
    from synthgen.render.score import fetch_clip

    fetch_sd(cfg.sd_model)
    fetch_clip(cfg.clip_model, cfg.clip_pretrained)
    for spec in parse_cutout(cfg.cutout):
        fetch_cutout(spec)


# ----------------------------------------------------------------------------------------------
# per-category finishing


def _finish_category(cat: Category, rows: list[dict], cfg: RenderConfig, seconds: float):
    rows = sorted(rows, key=lambda r: r["index"])
    res = filter_category([r["clip_score"] for r in rows], [r["area_fraction"] for r in rows],
                          cfg.filter, rejected=[r.get("gen_reason") for r in rows])
    slug = cat.slug
    records, pngs = [], {}
    gen_meta = {"model": cfg.sd_model, "steps": cfg.steps, "guidance": cfg.guidance,
                "size": cfg.size, "scheduler": "DPMSolverMultistepScheduler"}
    for r, kept, reason in zip(rows, res.kept, res.reasons):
        idx = int(r["index"])
        png = r["png"]
        path = None
        if png and (kept or cfg.keep_rejected):
            path = f"{slug}/{idx:05d}.png" if kept else f"{slug}/_rejected/{idx:05d}.png"
            pngs[path] = png
        score = r["clip_score"]
        area = r["area_fraction"]
        records.append({
            "id": f"{slug}/{idx:05d}",
            "category": cat.display,
            "category_id": cat.id,
            "path": path,
            "width": r["width"], "height": r["height"],
            "kept": bool(kept), "reason": reason,
            "index": idx, "seed": int(r["seed"]), "prompt": r["prompt"],
            "lvis_name": cat.name,
            "clip_score": None if score is None or math.isnan(score) else round(float(score), 4),
            "clip_bar": None if res.bar is None else round(float(res.bar), 4),
            "area_fraction": None if area is None or math.isnan(area) else round(float(area), 6),
            "cutout_session": r["cutout_session"],
            "candidate_scores": {s: (None if math.isnan(v) else round(float(v), 4))
                                 for s, v in zip(cfg.cutout, r["candidate_scores"])},
            "generator": gen_meta,
            "clip_model": {"model": cfg.clip_model, "pretrained": cfg.clip_pretrained},
        })
    from synthgen.render.bank_writer import quantiles

    rejected = {k: 0 for k in REASONS}
    for reason in res.reasons:
        if reason:
            rejected[reason] += 1
    stats = {
        "category": cat.display, "category_id": cat.id, "slug": slug,
        "generated": len(rows), "kept": res.n_kept,
        "rejected": {k: v for k, v in rejected.items() if v},
        "category_dropped": res.category_dropped,
        "clip_bar": None if res.bar is None else round(float(res.bar), 4),
        "clip": quantiles(r["clip_score"] for r in rows),
        "area_fraction": quantiles(r["area_fraction"] for r in rows),
        "seconds": round(seconds, 3),
    }
    doc = {"slug": slug, "category": asdict(cat), "stats": stats, "records": records}
    return doc, pngs


def _unpack(batch: dict, specs: Sequence[str]) -> Iterator[dict]:
    from PIL import Image
    import io

    for i in range(len(batch["seed"])):
        b = int(batch["best"][i])
        png = bytes(batch["png"][i]) if b >= 0 else b""
        w = h = None
        if png:
            with Image.open(io.BytesIO(png)) as im:
                w, h = im.size
        yield {"category": str(batch["category"][i]), "index": int(batch["index"][i]),
               "seed": int(batch["seed"][i]), "prompt": str(batch["prompt"][i]),
               "png": png, "width": w, "height": h,
               "gen_reason": _reason(batch, i),
               "clip_score": float(batch["clip_score"][i]),
               "area_fraction": float(batch["area_fraction"][i]),
               "cutout_session": specs[b] if b >= 0 else None,
               "candidate_scores": [float(x) for x in batch["candidate_scores"][i]]}


def render(categories: Sequence[Category], cfg: RenderConfig, *, use_ray: bool = True,
           on_category: Callable[[str, dict], None] | None = None,
           check_models: bool = True) -> RenderResult:
    """Render ``categories`` into the object bank ``cfg.out`` (resumable; see module doc).

    ``on_category(display_name, stats)`` is called after each category is written.
    """
    from synthgen.render.bank_writer import BankWriter

    t0 = time.monotonic()
    out = Path(cfg.out)
    writer = BankWriter(out)
    diff = writer.config_diff(cfg.fingerprint())
    if diff:
        what = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(diff.items()))
        raise UserError(f"{out} was rendered with other settings ({what}); re-run with the same "
                        f"settings to resume, or use a new --out")
    done = writer.finished()
    todo = [c for c in categories if c.name not in done]
    result = RenderResult(out=out, categories=len(categories), skipped=len(categories) - len(todo))
    if todo and check_models:
        preflight(cfg)  # before anything is written: a bad model leaves no half-made bank
    writer.save_config(cfg.fingerprint())
    if not todo:
        writer.flush()
        result.seconds = time.monotonic() - t0
        return result

    by_name = {c.name: c for c in todo}
    pending: dict[str, list[dict]] = {}
    last = time.monotonic()
    batches = _ray_batches(_rows(todo, cfg), cfg) if use_ray else _local_batches(_rows(todo, cfg), cfg)
    try:
        for batch in batches:
            for row in _unpack(batch, list(cfg.cutout)):
                rows = pending.setdefault(row["category"], [])
                rows.append(row)
                if len(rows) < cfg.per_category:
                    continue
                cat = by_name[row["category"]]
                now = time.monotonic()
                doc, pngs = _finish_category(cat, pending.pop(cat.name), cfg, now - last)
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
    except UserError:
        raise
    except Exception as exc:
        err = _model_error_in(exc)
        if err is not None:
            raise err from None
        raise
    finally:
        close = getattr(batches, "close", None)
        if close:
            close()
        writer.flush()
    result.seconds = time.monotonic() - t0
    return result
