"""Benchmark of ``synthgen compose`` against a floor baseline measured in the same run.

Floor: per sample, decode a multi-megapixel JPEG background, fit it to the canvas, encode the
canvas JPEG — nothing else. Compose: the full composition function C (objects, layout, paste,
referrals, json, mask) plus the same decode/encode. Reported as samples/s and ratios:

* compose / floor with one worker (target >= 0.8);
* compose with two Ray workers / one Ray worker (target >= 1.8; needs two idle cores).

Usage: python benchmarks/compose.py [--big 2000] [--samples 600] [--rounds 3]      (the default: banks)
       python benchmarks/compose.py --floor [--samples 400] [--megapixels 12] [--workdir /tmp/sgbench]
       python benchmarks/compose.py --prepared [--real-backgrounds DIR] [--prepared-size 448] [--samples 300]

The default times compose with a real-size object bank against a small one (issue 20), one
process, from prepared backgrounds, in ``--rounds`` interleaved rounds of ``--samples`` scenes
(each a freshly opened bank; the small one's cut-outs read into its cache first): a generated bank of ``--big``
(default 2,000) cut-outs, RGBA PNGs of 300-512 px in 100 categories, read as it is ("raw") and
prepared once by ``synthgen prepare-objects`` at the canvas, and a bank of 32 such cut-outs, which
stays in the bank's cache. Reports the three rates and prepared / small (goal >= 0.7; raw / small
was 0.18). ``--rss N`` instead generates a bank of N small cut-outs (e.g. 56000, the paper's),
prepares it, and reports the peak RSS of a process composing ``--samples`` scenes from it (raw and
prepared, each in its own process), with the size of its index. ``--shrunk-twice`` compares the
scenes at a 224 canvas from a bank of large cut-outs and from its form prepared at 448.

``--floor`` compares compose to a decode+fit+encode floor (and Ray scaling). ``--prepared`` times prepared backgrounds (``synthgen prepare-backgrounds``) against the raw
folder, in one run, on one process: compose from the raw folder, compose from the prepared
shards (goal >= 10x), and the floor on prepared backgrounds (read + decode a prepared background,
fit, encode the scene: goal compose >= 0.7x of it), then where compose's time goes (cProfile).
``--real-backgrounds`` uses a folder of real wallpapers (e.g. the 26 of ../shared/data, 1.3-13 MP)
instead of generated ones; ``--prepared-size`` is prepare-backgrounds' ``--size`` (default 448, twice
the canvas). The three are timed in ``--rounds`` interleaved rounds (medians reported), and the
ceiling of prepared / raw is printed: the floor / raw, what a compose costing no more than its
floor would reach.

``--index`` times the per-shard scene index (``*_index.parquet``): the same compose run (one
process, ``--samples-per-shard``, default 100: ten times the index writes of the CLI's default)
with and without it, alternating, after a warm-up of each; reports the median samples/s of both,
their ratio (goal >= 0.97) and the cost of writing one shard's index. Small backgrounds make
compose fastest and the index's share largest:
``python benchmarks/compose.py --index --megapixels 0.27 --samples 600 --workdir /tmp/sgbench-index``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_inputs(root: Path, n_bg: int, megapixels: float, n_obj: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    bg = root / "bg"
    bank = root / "bank"
    if not bg.exists():
        bg.mkdir(parents=True)
        w = int((megapixels * 1e6 * 4 / 3) ** 0.5)
        h = int(w * 3 / 4)
        for i in range(n_bg):
            # smooth colour field + noise: compresses like a photo, not like a flat colour
            small = rng.integers(0, 255, (h // 64 + 1, w // 64 + 1, 3)).astype(np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
            arr = np.asarray(img).astype(np.int16) + rng.integers(-12, 12, (h, w, 1), dtype=np.int16)
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
                bg / f"bg_{i:03d}.jpg", quality=90, progressive=bool(i % 2))
    if n_obj and not bank.exists():
        bank.mkdir(parents=True)
        lines = []
        for i in range(n_obj):
            cat = f"category_{i % 20:02d}"
            (bank / cat).mkdir(exist_ok=True)
            yy, xx = np.mgrid[0:512, 0:512]
            ry, rx = rng.integers(80, 250, 2)
            alpha = (((yy - 256) / ry) ** 2 + ((xx - 256) / rx) ** 2 <= 1).astype(np.uint8) * 255
            # smooth colours with mild noise, like a rendered object (not worst-case noise)
            small = rng.integers(0, 255, (9, 9, 3)).astype(np.uint8)
            rgb = np.asarray(Image.fromarray(small).resize((512, 512), Image.Resampling.BICUBIC))
            rgb = np.clip(rgb.astype(np.int16) + rng.integers(-6, 6, (512, 512, 1), dtype=np.int16), 0, 255).astype(np.uint8)
            Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(bank / cat / f"{i:05d}.png")
            lines.append(json.dumps({"id": f"{cat}/{i:05d}", "category": cat, "category_id": None,
                                     "path": f"{cat}/{i:05d}.png", "width": 512, "height": 512}))
        (bank / "index.jsonl").write_text("\n".join(lines) + "\n")
    return bank, bg


def floor(backgrounds: list[str], n: int, size: int) -> float:
    from synthgen.compose.backgrounds import read_background
    from synthgen.images import decode, encode_jpeg, fit_square

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _k in range(n):
        item = backgrounds[int(rng.integers(len(backgrounds)))]
        img = decode(read_background(item), draft_to=size, min_side=32)
        arr = np.asarray(fit_square(img, size, "squash", rng))
        encode_jpeg(arr, 95)
    return n / (time.perf_counter() - t0)


def compose_one_process(bank: Path, backgrounds: list[str], n: int) -> float:
    from synthgen.bank.reader import ObjectBank
    from synthgen.compose.config import ComposeParams
    from synthgen.compose.scene import Composer

    b = ObjectBank.open(bank, max_side=224)
    comp = Composer(ComposeParams(), b, backgrounds)
    for i in range(len(b)):  # the bank's cut-outs cached, like a worker in the middle of a shard
        b.load(i)
    for k in range(20):
        comp.scene(10_000_000 + k)
    t0 = time.perf_counter()
    for k in range(n):
        comp.scene(k).encode(95)
    return n / (time.perf_counter() - t0)


def compose_ray(bank: Path, bg: Path, out: Path, n: int, workers: int) -> float:
    import ray

    from synthgen.compose.run import ComposeJob, run_compose

    ray.init(num_cpus=workers, object_store_memory=200 << 20, include_dashboard=False,
             logging_level="ERROR")
    try:
        ray.get([ray.remote(lambda: 0).remote() for _ in range(workers)])  # workers up
        shutil.rmtree(out, ignore_errors=True)
        job = ComposeJob(objects=str(bank), backgrounds=str(bg), out=str(out), num_samples=n,
                         samples_per_shard=max(1, n // (4 * workers)))
        t0 = time.perf_counter()
        run_compose(job, workers=workers, progress=False)
        return n / (time.perf_counter() - t0)
    finally:
        ray.shutdown()


def prepared_comparison(args, bank: Path, bg: Path) -> None:
    import cProfile
    import pstats

    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.compose.prepare import PrepareJob, prepare_backgrounds

    raw = list_backgrounds(str(bg)).items
    prep_dir = args.workdir / "prepared"
    shutil.rmtree(prep_dir, ignore_errors=True)
    t0 = time.perf_counter()
    prepare_backgrounds(PrepareJob(source=str(bg), out=str(prep_dir), size=args.prepared_size), executor="serial",
                        progress=False)
    t_prep = time.perf_counter() - t0
    prepared = list_backgrounds(str(prep_dir)).items
    n = args.samples
    import statistics

    runs: dict[str, list[float]] = {"compose, raw folder": [], "compose, prepared shards": [],
                                    "floor, prepared (decode+fit+encode)": []}
    for _r in range(args.rounds):  # interleaved, so a busy moment of the machine hits all three
        runs["compose, raw folder"].append(compose_one_process(bank, raw, max(20, n // 10)))
        runs["compose, prepared shards"].append(compose_one_process(bank, prepared, n))
        runs["floor, prepared (decode+fit+encode)"].append(floor(prepared, n, 224))
    res = {k: statistics.median(v) for k, v in runs.items()}
    for k, v in res.items():
        print(f"{k:38s} {v:8.1f} samples/s  (median of {args.rounds}: {', '.join(f'{x:.1f}' for x in runs[k])})")
    raw_rate, prep, fl = (res["compose, raw folder"], res["compose, prepared shards"],
                          res["floor, prepared (decode+fit+encode)"])
    print(f"prepare-backgrounds: {len(raw)} backgrounds in {t_prep:.1f}s (one-off, {t_prep / len(raw):.2f}s each)")
    print(f"prepared / raw (1 worker):        {prep / raw_rate:.1f}x  (goal >= 10)")
    print(f"prepared compose / prepared floor: {prep / fl:.2f}x  (goal >= 0.7)")
    print(f"ceiling of prepared / raw (a compose as fast as its floor): {fl / raw_rate:.1f}x")
    prof = cProfile.Profile()
    prof.enable()
    compose_one_process(bank, prepared, n // 2)
    prof.disable()
    print("where compose's time goes (prepared backgrounds, cumulative):")
    pstats.Stats(prof).sort_stats("tottime").print_stats(12)


def index_cost(args, bank: Path, bg: Path) -> None:
    import statistics

    from synthgen.compose.index import write_index
    from synthgen.compose.run import ComposeJob, run_compose
    from synthgen.schema import index_row
    from synthgen.shards import iter_tar

    n = args.samples

    def once(index: bool) -> float:
        out = args.workdir / f"out-index-{index}"
        shutil.rmtree(out, ignore_errors=True)
        job = ComposeJob(objects=str(bank), backgrounds=str(bg), out=str(out), num_samples=n,
                         samples_per_shard=args.samples_per_shard, index=index)
        t0 = time.perf_counter()
        run_compose(job, executor="serial", progress=False)
        return n / (time.perf_counter() - t0)

    once(False), once(True)  # warm-up: bank cache, pyarrow import
    rates: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for index in ((False, True) if r % 2 == 0 else (True, False)):
            rates[index].append(once(index))
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"compose without index  {off:8.1f} samples/s  (runs: {', '.join(f'{v:.1f}' for v in rates[False])})")
    print(f"compose with index     {on:8.1f} samples/s  (runs: {', '.join(f'{v:.1f}' for v in rates[True])})")
    print(f"with / without:        {on / off:.3f}x  (goal >= 0.97; {n} scenes, {args.samples_per_shard} a shard)")
    from synthgen.schema import SceneRecord

    recs = [(SceneRecord.from_json(s["json"]), tar.name, "mask.png" in s)
            for tar in sorted((args.workdir / "out-index-True").glob("*.tar")) for s in iter_tar(str(tar))]
    t0 = time.perf_counter()
    for _ in range(10):
        write_index(args.workdir / "all_index.parquet", [index_row(*r) for r in recs])
    per_scene = (time.perf_counter() - t0) / 10 / len(recs)
    print(f"the index of {len(recs)} scenes in one file: {per_scene * 1e6:.0f} us a scene to build and write "
          f"({per_scene * 1000 * 1000:.0f} ms for a 1000-scene shard; compose takes {1000 / on:.1f} s for one), "
          f"{(args.workdir / 'all_index.parquet').stat().st_size / len(recs):.0f} bytes a scene")


def make_bank(root: Path, n: int, categories: int = 100, sides: tuple[int, int] = (300, 512), seed: int = 0) -> Path:
    """A synthgen bank (index.jsonl) of ``n`` RGBA PNG cut-outs (an ellipse of smooth colours on a
    transparent square) with sides drawn in ``sides``, in ``categories`` categories."""
    if (root / "index.jsonl").exists():
        return root
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        cat = f"category_{i % categories:03d}"
        (root / cat).mkdir(exist_ok=True)
        side = int(rng.integers(sides[0], sides[1] + 1))
        yy, xx = np.mgrid[0:side, 0:side]
        ry, rx = rng.integers(side // 6, side // 2, 2)
        alpha = (((yy - side / 2) / ry) ** 2 + ((xx - side / 2) / rx) ** 2 <= 1).astype(np.uint8) * 255
        small = rng.integers(0, 255, (9, 9, 3)).astype(np.uint8)
        rgb = np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC))
        noise = rng.integers(-6, 6, (side, side, 1), dtype=np.int16)
        rgb = np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(root / cat / f"{i:06d}.png", compress_level=1)
        lines.append(json.dumps({"id": f"{cat}/{i:06d}", "category": cat, "category_id": None,
                                 "path": f"{cat}/{i:06d}.png", "width": side, "height": side}))
    (root / "index.jsonl").write_text("\n".join(lines) + "\n")
    return root


def compose_rate(bank: Path, backgrounds: list[str], n: int, first: int = 0) -> float:
    """Scenes/s of one process composing and encoding ``n`` scenes from a freshly opened bank; a
    bank that fits its cache (<= 64 cut-outs) is read into it first, as in a worker's steady state
    (the others cannot be held)."""
    from synthgen.bank.reader import ObjectBank
    from synthgen.compose.config import ComposeParams
    from synthgen.compose.scene import Composer

    b = ObjectBank.open(bank, max_side=224)
    for i in range(len(b) if len(b) <= 64 else 0):
        b.load(i)
    comp = Composer(ComposeParams(), b, backgrounds)
    t0, c0 = time.perf_counter(), time.process_time()
    for k in range(first, first + n):
        comp.scene(k).encode(95)
    CPU_RATES.append(n / (time.process_time() - c0))  # (scenes a CPU second: steadier on a busy machine)
    return n / (time.perf_counter() - t0)


CPU_RATES: list[float] = []


def prepared_bank(bank: Path, out: Path) -> float:
    """Prepare ``bank`` into ``out`` (at 224, one process) unless done; the seconds it took."""
    from synthgen.compose.prepare_objects import ObjectsJob, prepare_objects

    t0 = time.perf_counter()
    prepare_objects(ObjectsJob(source=str(bank), out=str(out), size=224), executor="serial", progress=False)
    return time.perf_counter() - t0


def banks_comparison(args, bg: Path) -> None:
    import statistics

    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.compose.prepare import PrepareJob, prepare_backgrounds

    t0 = time.perf_counter()
    big = make_bank(args.workdir / f"bank-{args.big}", args.big)
    small = make_bank(args.workdir / "bank-32", 32, categories=8, seed=1)
    print(f"banks generated/found in {time.perf_counter() - t0:.0f}s")
    prep_bg = args.workdir / "bg-prepared"
    prepare_backgrounds(PrepareJob(source=str(bg), out=str(prep_bg), size=448), executor="serial", progress=False)
    backgrounds = list_backgrounds(str(prep_bg)).items
    prep = args.workdir / f"bank-{args.big}-prepared-224"
    t_prep = prepared_bank(big, prep)
    manifest = json.loads((prep / "manifest.json").read_text())
    src_bytes = sum(p.stat().st_size for p in big.rglob("*.png"))
    print(f"prepare-objects: {args.big} cut-outs in {t_prep:.1f}s (one process; {manifest['bytes'] / 1e6:.0f} MB "
          f"of pixels, the PNGs {src_bytes / 1e6:.0f} MB)")
    n = args.samples
    runs: dict[str, list[float]] = {"32 cut-outs": [], f"{args.big} cut-outs, raw PNGs": [],
                                    f"{args.big} cut-outs, prepared": []}
    for bank in (small, big, prep):  # warm-up: imports, the page cache
        compose_rate(bank, backgrounds, 20, first=10_000_000)
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.rounds):  # interleaved, so a busy moment of the machine hits all three
        for name, bank in zip(runs, (small, big, prep)):
            runs[name].append(compose_rate(bank, backgrounds, n, first=r * n))
            cpu[name].append(CPU_RATES[-1])
    res = {k: statistics.median(v) for k, v in runs.items()}
    for k, v in res.items():
        print(f"{k:32s} {v:8.1f} scenes/s  (median of {args.rounds}: {', '.join(f'{x:.1f}' for x in runs[k])}); "
              f"{statistics.median(cpu[k]):.1f} scenes a CPU second")
    s, raw, pr = res.values()
    small_runs, raw_runs, prep_runs = runs.values()
    per_round = sorted(p / q for p, q in zip(prep_runs, small_runs))  # (a busy moment hits both of a round)
    print(f"raw / small:      {raw / s:.2f}x")
    print(f"prepared / small: {pr / s:.2f}x of the medians; per round {', '.join(f'{r:.2f}' for r in per_round)}, "
          f"median {statistics.median(per_round):.2f}x  (goal >= 0.7)")
    print(f"prepared / raw:   {pr / raw:.1f}x")
    c = [statistics.median(v) for v in cpu.values()]
    print(f"by CPU time: raw / small {c[1] / c[0]:.2f}x, prepared / small {c[2] / c[0]:.2f}x, "
          f"prepared / raw {c[2] / c[1]:.1f}x")


def _rss_now() -> float:
    """This process's resident memory now, MB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def _rss_child(bank: str, backgrounds: str, n: int) -> None:
    import resource

    from synthgen.bank.reader import ObjectBank
    from synthgen.compose.config import ComposeParams
    from synthgen.compose.scene import Composer

    items = json.loads(backgrounds)
    before = _rss_now()
    t0 = time.perf_counter()
    b = ObjectBank.open(bank, max_side=224)
    t_open = time.perf_counter() - t0
    opened = _rss_now()
    comp = Composer(ComposeParams(), b, items)
    t0 = time.perf_counter()
    for k in range(n):
        comp.scene(k).encode(95)
    rate = n / (time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"objects": len(b), "open_s": round(t_open, 2), "rss_before_open_mb": round(before),
                      "bank_mb": round(opened - before), "rss_after_mb": round(_rss_now()),
                      "peak_rss_mb": round(peak), "bank_cache_mb": round(b._cached_bytes / 2**20),
                      "scenes_per_s": round(rate, 1)}))


def rss(args, bg: Path) -> None:
    import subprocess
    import sys

    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.compose.prepare import PrepareJob, prepare_backgrounds

    t0 = time.perf_counter()
    bank = make_bank(args.workdir / f"bank-{args.rss}-small", args.rss, sides=(48, 96))
    print(f"bank of {args.rss} cut-outs (48-96 px) generated/found in {time.perf_counter() - t0:.0f}s")
    prep = args.workdir / f"bank-{args.rss}-small-prepared-224"
    print(f"prepare-objects: {prepared_bank(bank, prep):.0f}s; index "
          f"{(prep / 'objects.jsonl').stat().st_size / 1e6:.1f} MB on disk")
    prep_bg = args.workdir / "bg-prepared"
    prepare_backgrounds(PrepareJob(source=str(bg), out=str(prep_bg), size=448), executor="serial", progress=False)
    items = json.dumps(list_backgrounds(str(prep_bg)).items)
    for name, b in (("raw", bank), ("prepared", prep)):
        code = "import sys; sys.path.insert(0, 'benchmarks'); import compose; compose._rss_child(*sys.argv[1:3], int(sys.argv[3]))"
        out = subprocess.run([sys.executable, "-c", code, str(b), items, str(args.samples)], check=True,
                             capture_output=True, text=True).stdout
        print(f"{name:9s} {out.strip()}")


def shrunk_twice(args, bg: Path) -> None:
    """Scenes at a 224 canvas from a bank and from its form prepared at 448 (its cut-outs larger
    than 448 shrunk twice): how many scene records and images are the same, the mean difference."""
    from synthgen.bank.reader import ObjectBank
    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.compose.config import ComposeParams
    from synthgen.compose.prepare import PrepareJob, prepare_backgrounds
    from synthgen.compose.prepare_objects import ObjectsJob, prepare_objects
    from synthgen.compose.scene import Composer

    bank = make_bank(args.workdir / "bank-200-large", 200, categories=40, sides=(500, 1024), seed=2)
    prep = args.workdir / "bank-200-large-prepared-448"
    prepare_objects(ObjectsJob(source=str(bank), out=str(prep), size=448), executor="serial", progress=False)
    prep_bg = args.workdir / "bg-prepared"
    prepare_backgrounds(PrepareJob(source=str(bg), out=str(prep_bg), size=448), executor="serial", progress=False)
    items = list_backgrounds(str(prep_bg)).items
    a = Composer(ComposeParams(), ObjectBank.open(bank, max_side=224), items)
    b = Composer(ComposeParams(), ObjectBank.open(prep, max_side=224), items)
    same_rec = same_img = 0
    diffs = []
    for k in range(args.samples):
        sa, sb = a.scene(k), b.scene(k)
        same_rec += sa.record.to_json() == sb.record.to_json()
        d = np.abs(sa.image.astype(np.int16) - sb.image.astype(np.int16))
        same_img += not d.any()
        diffs.append(float(d.mean()))
    print(f"{args.samples} scenes at 224 from 200 cut-outs of 500-1024 px, the bank vs its form prepared at 448: "
          f"{same_rec} records the same, {same_img} images the same; mean |difference| {np.mean(diffs):.3f}/255 "
          f"per pixel channel (max over scenes {max(diffs):.3f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=None, help="scenes a timed run (400; banks: 600)")
    ap.add_argument("--floor", action="store_true", help="compose against its decode+fit+encode floor, Ray scaling")
    ap.add_argument("--big", type=int, default=2000, help="banks: cut-outs of the generated big bank")
    ap.add_argument("--rss", type=int, default=0, help="peak RSS of a worker with a bank of this many cut-outs")
    ap.add_argument("--shrunk-twice", action="store_true", help="scenes from a bank prepared at 448, at 224")
    ap.add_argument("--megapixels", type=float, default=12.0)
    ap.add_argument("--backgrounds", type=int, default=24)
    ap.add_argument("--objects", type=int, default=120)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/synthgen-bench-compose"))
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--prepared", action="store_true", help="prepared backgrounds against the raw folder")
    ap.add_argument("--prepared-size", type=int, default=448, help="--prepared: prepare-backgrounds --size")
    ap.add_argument("--real-backgrounds", type=Path, help="a folder of real backgrounds to use")
    ap.add_argument("--index", action="store_true", help="compose with and without the per-shard scene index")
    ap.add_argument("--samples-per-shard", type=int, default=100, help="--index: scenes per shard")
    ap.add_argument("--rounds", type=int, default=3, help="--index / --prepared: timed runs of each")
    args = ap.parse_args()

    from synthgen.compose.backgrounds import list_backgrounds

    if args.samples is None:
        args.samples = 400 if (args.floor or args.prepared or args.index) else 600
    if not (args.floor or args.prepared or args.index):
        _, bg = make_inputs(args.workdir, args.backgrounds, args.megapixels, 0)
        run = shrunk_twice if args.shrunk_twice else rss if args.rss else banks_comparison
        run(args, args.real_backgrounds or bg)
        return
    bank, bg = make_inputs(args.workdir, args.backgrounds, args.megapixels, args.objects)
    if args.prepared:
        prepared_comparison(args, bank, args.real_backgrounds or bg)
        return
    if args.index:
        index_cost(args, bank, args.real_backgrounds or bg)
        return
    backgrounds = list_backgrounds(str(bg)).items
    res = {}
    res["floor_1proc"] = floor(backgrounds, args.samples, 224)
    res["compose_1proc"] = compose_one_process(bank, backgrounds, args.samples)
    if not args.skip_ray:
        res["compose_ray_1w"] = compose_ray(bank, bg, args.workdir / "out1", args.samples, 1)
        res["compose_ray_2w"] = compose_ray(bank, bg, args.workdir / "out2", args.samples, 2)
    for k, v in res.items():
        print(f"{k:18s} {v:8.1f} samples/s")
    print(f"compose/floor (1 worker):     {res['compose_1proc'] / res['floor_1proc']:.2f}x  (target >= 0.8)")
    if not args.skip_ray:
        print(f"ray 1 worker / 1 process:     {res['compose_ray_1w'] / res['compose_1proc']:.2f}x")
        print(f"ray 2 workers / 1 worker:     {res['compose_ray_2w'] / res['compose_ray_1w']:.2f}x  (target >= 1.8)")


if __name__ == "__main__":
    main()
