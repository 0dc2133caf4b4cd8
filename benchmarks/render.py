"""Benchmark: the render pipeline through Ray vs the bare model calls in one process.

Same batches, same models (random weights from configs, sized so every model call takes >= 50 ms
on this machine), same work per batch (generate -> rembg cut-out -> CLIP score of every
candidate). Prints per-call times, the steady-state time of each path and their ratio.

    python benchmarks/render.py [--categories 5] [--per-category 8] [--batch-size 4]

Steady state: Ray's time from the first finished category to the last (actors started, models
loaded), against the bare loop's time for the same categories (all but the first).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH_CLIP = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 224, "layers": 6, "width": 384, "head_width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 2},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--categories", type=int, default=5)
    ap.add_argument("--per-category", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count() or 2)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="synthgen-bench-"))
    os.environ.setdefault("REMBG_HOME", str(work / "rembg"))
    from synthgen.demo.tiny_render import build_tiny_clip, build_tiny_sd, build_tiny_u2net
    from synthgen.render.categories import Category
    from synthgen.render.config import RenderConfig
    from synthgen.render.pipeline import _rows, _to_batch, render
    from synthgen.render.stages import CutoutStage, GenerateStage, ScoreStage

    sd = str(build_tiny_sd(work / "sd"))
    clip = f"local-dir:{build_tiny_clip(work / 'clip', model_cfg=BENCH_CLIP)}"
    cut = f"u2net_custom:{build_tiny_u2net()}"
    names = ["cat", "dog", "zebra", "kite", "mug", "lamp", "sausage", "bow_(weapon)", "cup", "hat"]
    cats = [Category(n) for n in (names * 10)[: args.categories]]
    cats = [Category(f"{c.name}_{i}") if i >= len(names) else c for i, c in enumerate(cats)]
    cfg = RenderConfig(out=work / "bank-ray", per_category=args.per_category, sd_model=sd,
                       steps=args.steps, size=args.size, clip_model=clip, clip_pretrained=None,
                       cutout=[cut], min_per_category=0, batch_size=args.batch_size,
                       workers=args.num_cpus, object_store_mb=300)
    rows = _rows(cats, cfg)
    batches = [_to_batch(rows[i:i + cfg.batch_size]) for i in range(0, len(rows), cfg.batch_size)]
    per_cat = -(-args.per_category // cfg.batch_size)

    # -- bare: the three models called directly in this process --------------------------------
    gen = GenerateStage(sd, cfg.steps, cfg.guidance, cfg.size)
    cutter = CutoutStage(cfg.cutout)
    scorer = ScoreStage(clip, None, 1)

    def bare_pass():
        times = []
        for b in batches:
            t0 = time.perf_counter()
            g = gen(b)
            t1 = time.perf_counter()
            c = cutter(g)
            t2 = time.perf_counter()
            scorer(c)
            times.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        return times

    scorer(cutter(gen(batches[0])))  # warm-up
    first = bare_pass()

    # -- Ray: the product pipeline (actor pools, streaming, writing the bank) ------------------
    done: list[float] = []
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    render(cats, cfg, use_ray=True, on_category=lambda n, s: done.append(time.perf_counter()))
    ray_total = time.perf_counter() - t0
    ray_steady = done[-1] - done[0]

    # bare again after Ray (the machine may be shared: per batch, the faster of the two passes)
    second = bare_pass()
    best = [min(a, b, key=sum) for a, b in zip(first, second)]
    t_gen, t_cut, t_score = ([t[i] for t in best] for i in range(3))
    t_batch = [sum(t) for t in best]
    bare_total = sum(t_batch)
    bare_steady = sum(t_batch[per_cat:])
    print(f"bare pass totals: {sum(map(sum, first)):.2f} s before Ray, "
          f"{sum(map(sum, second)):.2f} s after; load average at Ray start {load0:.1f}")

    ms = lambda xs: f"{1000 * statistics.median(xs):.0f} ms"
    print(f"batches: {len(batches)} x {cfg.batch_size} images ({len(cats)} categories x "
          f"{args.per_category}), image {cfg.size}px, {cfg.steps} steps, cpus {args.num_cpus}")
    print(f"median call: generate {ms(t_gen)}, cut-out {ms(t_cut)}, CLIP score {ms(t_score)}")
    print(f"bare in-process: {bare_total:.2f} s all batches, {bare_steady:.2f} s steady "
          f"(categories 2..{len(cats)})")
    print(f"ray pipeline:    {ray_total:.2f} s end to end (incl. ray.init, actor start, model "
          f"load, bank writing), {ray_steady:.2f} s steady")
    print(f"ratio ray/bare (steady state): {ray_steady / bare_steady:.3f}")
    if min(map(statistics.median, (t_gen, t_cut, t_score))) < 0.05:
        print("note: a model call took < 50 ms; raise --size/--steps/--batch-size", file=sys.stderr)


if __name__ == "__main__":
    main()
