"""How many training samples per second one DataLoader worker delivers to PIN training.

Stages timed cumulatively on one process (= one worker): read the tar (raw bytes + shuffle
buffer), decode the JPEG to a uint8 tensor, draw the target object and tokenise prompt + answer
with the VLM's tokenizer, collate into batches; then the same with a ``--tasks`` mix (every
task by default: the questions drawn and tokenised, derived from the record where the scene has
none of its own). This is what ``train-pin`` workers do; the
normalisation (rescale, mean/std of the BLIP-2 image processor) runs on the device. For
comparison, the last line times the stock ``Blip2Processor`` doing resize + normalise + tokenise on
the CPU per sample.

    python benchmarks/train_input.py [--model DIR|ID] [--scenes 2000] [--canvas 224]
                                     [--composed 256] [--bg-size 3000x2000] [--workers 1,2]

The last lines time the other input, scenes composed on the fly (``train-pin --objects
--backgrounds``, the authors' way), through train-pin's own DataLoader (``make_loader`` over
``ComposedStream``, its worker processes) with 1..N loader workers: from raw multi-megapixel JPEG
backgrounds (generated, ``--bg-size``), and from the same backgrounds prepared the way train-pin
now prepares them once in its run folder (``OUT/backgrounds-SIZE``, timed too). Each rate is
scenes/s delivered to the training process (wall clock, with the load average beside it), and per
worker. Then one worker's CPU cost a scene, measured in this process (``time.process_time``, the
same ``ComposedStream``): the rate of a worker with a core of its own, whatever else the machine
runs. The projection for 4 workers is 4 x that per-worker rate — a projection, not a measurement,
on a machine with fewer than 4 free cores — against the ~200 scenes/s one GPU consumes (a train
step of OpenFlamingo-3B / BLIP-2 at batch 64 in fp16 is of the order of 0.3 s on an A6000-class
GPU).

Without ``--model`` it builds the tiny BLIP-2 (same image-processor settings as
Salesforce/blip2-opt-2.7b: 224 px, CLIP mean/std; a small local BPE tokenizer instead of OPT's
GPT-2 BPE) because this machine has no model hub.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import tarfile
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image


def write_scene_shards(out: Path, n: int, canvas: int, per_shard: int = 500, seed: int = 0) -> list[str]:
    """Photo-like scenes: smooth random background (upsampled noise) + 1-3 pasted rectangles."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths, tar = [], None
    grid, cell = 16, canvas // 16
    for i in range(n):
        if i % per_shard == 0:
            if tar:
                tar.close()
            paths.append(str(out / f"scenes-{len(paths):06d}.tar"))
            tar = tarfile.open(paths[-1], "w")
        low = rng.integers(0, 256, (canvas // 16, canvas // 16, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(low).resize((canvas, canvas), Image.BICUBIC)).copy()
        img = np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
        objects = []
        for k in range(int(rng.integers(1, 4))):
            w, h = rng.integers(2, 9, size=2)
            c1, r1 = rng.integers(0, grid - w + 1), rng.integers(0, grid - h + 1)
            box = [int(c1 * cell), int(r1 * cell), int((c1 + w) * cell), int((r1 + h) * cell)]
            img[box[1]:box[3], box[0]:box[2]] = rng.integers(0, 256, 3)
            objects.append({"category": "teddy bear", "category_id": 1052, "object_id": f"o{k}",
                            "box": box, "cells": [int(c1), int(r1), int(c1 + w), int(r1 + h)],
                            "visible": 1.0, "referral": ["teddy bear", "left teddy bear", "cat"][k]})
        key = f"{i:09d}"
        meta = {"schema": "synthgen.scene/1", "key": key, "seed": seed, "width": canvas, "height": canvas,
                "grid": grid, "background": {"source": "noise", "fit": "squash"}, "objects": objects,
                "target": 0, "prompt": "", "answer": ""}
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        for name, data in ((f"{key}.jpg", buf.getvalue()), (f"{key}.json", json.dumps(meta).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    tar.close()
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="BLIP-2 hub id or directory (default: build the tiny one)")
    ap.add_argument("--scenes", type=int, default=2000)
    ap.add_argument("--canvas", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--composed", type=int, default=256,
                    help="scenes composed on the fly per timing from prepared backgrounds (0: skip); a "
                         "quarter of them from raw ones")
    ap.add_argument("--bg-size", default="3000x2000", help="WxH of the raw JPEG backgrounds")
    ap.add_argument("--backgrounds", type=int, default=16, help="raw backgrounds generated")
    ap.add_argument("--workers", default="1,2", help="loader workers to time, comma-separated")
    ap.add_argument("--composed-batch", type=int, default=16, help="batch of the on-the-fly timings")
    ap.add_argument("--tasks", default=None,
                    help="the --tasks mix of the last line of the stream timings (default: every task, weight 1)")
    ap.add_argument("--warmup-scenes", type=int, default=192,
                    help="scenes each worker composes before the steady timing (its cut-out cache fills)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # a DataLoader worker is one process, one thread
    from transformers import Blip2Processor

    from synthgen.compose.questions import TASKS
    from synthgen.pin.models.adapters import TextCodec
    from synthgen.pin.training import tasks as T
    from synthgen.pin.training.data import SceneStream, StreamConfig, decode_image
    from synthgen.shards import iter_tar

    tmp = Path(tempfile.mkdtemp(prefix="pin-bench-"))
    model = args.model
    if model is None:
        from synthgen.demo.tiny_blip2 import build_tiny_blip2
        model = str(build_tiny_blip2(tmp / "tiny-blip2", image_size=args.canvas, lm_steps=0))
    proc = Blip2Processor.from_pretrained(model)
    codec = TextCodec(proc.tokenizer, int(proc.num_query_tokens or 32),
                      int(proc.tokenizer.convert_tokens_to_ids("<image>")))
    t0 = time.perf_counter()
    shards = write_scene_shards(tmp / "shards", args.scenes, args.canvas)
    size_mb = sum(Path(p).stat().st_size for p in shards) / 1e6
    print(f"wrote {args.scenes} scenes {args.canvas}x{args.canvas} ({size_mb / args.scenes * 1000:.0f} kB/scene) "
          f"in {time.perf_counter() - t0:.1f}s; image processor: size {proc.image_processor.size}, "
          f"mean {proc.image_processor.image_mean}")
    n = args.scenes
    cfg = StreamConfig(shards=shards, batch_size=args.batch_size, shuffle_buffer=1000, image_size=args.canvas)
    ds = SceneStream(cfg, codec)

    def rate(fn) -> float:
        t = time.perf_counter()
        count = fn()
        return count / (time.perf_counter() - t)

    res = {}
    res["read (tar + shuffle buffer)"] = rate(lambda: sum(1 for _ in ds.raw_epoch(0, 1, 0)))
    res["+ decode JPEG -> uint8 tensor"] = rate(
        lambda: sum(1 for raw in ds.raw_epoch(0, 1, 0) if decode_image(raw["jpg"]) is not None))
    res["+ target draw + tokenise"] = rate(
        lambda: sum(1 for i, raw in enumerate(ds.raw_epoch(0, 1, 0)) if ds._decode(raw, 0, 0, i)))
    batches = n // args.batch_size

    asked: Counter = Counter()

    def full(stream=ds):
        it = stream.batches(0, 1)
        for _ in range(batches):
            asked.update(next(it).get("tasks", ()))
        return batches * args.batch_size
    res["+ collate = one train-pin worker"] = rate(full)
    mix = T.parse_weights(args.tasks or ",".join(TASKS))
    asked.clear()
    res["  the same with --tasks " + ",".join(f"{k}={v:g}" for k, v in mix.items())] = rate(
        lambda: full(SceneStream(dataclasses.replace(cfg, tasks=mix), codec)))
    asked_line = ", ".join(f"{k} {v / sum(asked.values()):.0%}" for k, v in asked.most_common())

    def stock():
        k = 0
        for raw in iter_tar(shards[0]):
            meta = json.loads(raw["json"])
            im = Image.open(io.BytesIO(raw["jpg"])).convert("RGB")
            proc(images=im, text=f"In the image is a {meta['objects'][0]['referral']} located at",
                 return_tensors="pt")
            k += 1
        return k
    res["stock Blip2Processor per sample (CPU resize+normalise)"] = rate(stock)
    for k, v in res.items():
        print(f"{k:58s} {v:9.1f} samples/s")
    print(f"questions asked with the mix (the scenes' own, derived when training): {asked_line}")
    if args.composed:
        composed_rates(tmp, codec, args)


def raw_backgrounds(root: Path, n: int, w: int, h: int) -> Path:
    """``n`` photo-like JPEGs of ``w`` x ``h`` (a smooth colour field plus noise: they compress and
    decode like photos, not like flat colours), every other one progressive."""
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.integers(0, 255, (h // 64 + 1, w // 64 + 1, 3)).astype(np.uint8)
        arr = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)).astype(np.int16)
        arr += rng.integers(-12, 12, (h, w, 1), dtype=np.int16)
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(root / f"bg_{i:03d}.jpg", quality=90,
                                                                    progressive=bool(i % 2))
    return root


def loader_rate(source, codec, canvas: int, batch: int, workers: int, scenes: int, warmup: int
                ) -> tuple[float, float]:
    """``(cold, steady)`` scenes/s that train-pin's DataLoader (``workers`` processes composing)
    delivers: over the first ``warmup`` scenes of each worker (worker start, bank index, the
    cut-out cache filling), then over the next ``scenes``."""
    from synthgen.pin.training.data import make_loader
    from synthgen.pin.training.scenes import ComposedConfig, ComposedStream

    cfg = ComposedConfig(shards=[], batch_size=batch, image_size=canvas, source=source)
    w = max(workers, 1)
    t = time.perf_counter()
    it = iter(make_loader(cfg, codec, workers=workers, stream=ComposedStream))
    n = max(1, -(-warmup // batch)) * w
    for _ in range(n):
        next(it)
    cold = n * batch / (time.perf_counter() - t)
    n = max(1, scenes // batch // w) * w
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    steady = n * batch / (time.perf_counter() - t)
    del it
    return cold, steady


def cpu_rate(source, codec, canvas: int, batch: int, scenes: int, warmup: int) -> float:
    """Scenes per CPU second of one worker's work (``ComposedStream.batches`` in this process, after
    ``warmup`` scenes): what a worker with a core of its own delivers, whatever else runs here."""
    from synthgen.pin.training.scenes import ComposedConfig, ComposedStream

    cfg = ComposedConfig(shards=[], batch_size=batch, image_size=canvas, source=source)
    it = ComposedStream(cfg, codec).batches(0, 1)
    for _ in range(max(1, -(-warmup // batch))):
        next(it)
    n = max(1, scenes // batch)
    t = time.process_time()
    for _ in range(n):
        next(it)
    return n * batch / (time.process_time() - t)


def composed_rates(tmp: Path, codec, args) -> None:
    """On-the-fly scenes/s from raw and from prepared backgrounds, by loader workers."""
    import os

    sys.path.insert(0, str(Path(__file__).parent))
    from compose import make_inputs

    from synthgen.commands.compose import scene_params
    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.pin.training.scenes import Backgrounds, ComposeSource

    w, h = (int(x) for x in args.bg_size.lower().split("x"))
    t0 = time.perf_counter()
    bank, _ = make_inputs(tmp / "compose-inputs", 0, 1, 200)
    bg = raw_backgrounds(tmp / "raw-bg", args.backgrounds, w, h)
    mb = sum(p.stat().st_size for p in bg.iterdir()) / 1e6 / args.backgrounds
    print(f"\non the fly: {args.backgrounds} raw backgrounds {w}x{h} ({w * h / 1e6:.1f} MP, {mb:.1f} MB JPEG), "
          f"a bank of 200 cut-outs 512x512, made in {time.perf_counter() - t0:.1f}s; {os.cpu_count()} CPU cores")
    params = scene_params(size=args.canvas)
    raw_items = list_backgrounds(str(bg)).items
    prepared = Backgrounds.of(str(bg), list_backgrounds(str(bg)), str(tmp / "run"), args.canvas)
    t0 = time.perf_counter()
    prepared_items = prepared.ready(progress=False)
    took = time.perf_counter() - t0
    print(f"prepared once into {prepared.folder} (shorter side {prepared.job.size}): {took:.2f}s, "
          f"{took / args.backgrounds * 1000:.0f} ms a background")
    sources = {"raw": ComposeSource(str(bank), raw_items, params),
               "prepared": ComposeSource(str(bank), prepared_items, params)}
    rows = []
    print("   DataLoader wall clock (cold: each worker's first scenes, its cut-out cache filling; steady: the next)")
    for n_workers in (int(x) for x in args.workers.split(",")):
        for name, src in sources.items():
            scenes = args.composed // 4 if name == "raw" else args.composed
            load = os.getloadavg()[0]
            cold, rate = loader_rate(src, codec, args.canvas, args.composed_batch, n_workers, scenes,
                                     args.warmup_scenes)
            rows.append((name, n_workers, rate))
            print(f"   {name:8s} backgrounds, {n_workers} worker(s): cold {cold:6.1f}, steady {rate:6.1f} scenes/s = "
                  f"{rate / n_workers:6.1f} per worker -> x4 ~{4 * rate / n_workers:4.0f} scenes/s  "
                  f"(load average {load:.1f} on {os.cpu_count()} cores)", flush=True)
    print("   one worker's CPU cost (in this process, steady; a worker with a core of its own)")
    for name, src in sources.items():
        scenes = args.composed // 4 if name == "raw" else args.composed
        cpu = cpu_rate(src, codec, args.canvas, args.composed_batch, scenes, args.warmup_scenes)
        wall = max(r / n for s, n, r in rows if s == name)
        print(f"   {name:8s} backgrounds: {1000 / cpu:6.1f} ms CPU a scene = {cpu:6.1f} scenes/s a worker -> "
              f"4 workers {4 * cpu:4.0f} scenes/s projected ({'>=' if 4 * cpu >= 200 else '<'} 200; best "
              f"measured wall rate a worker {wall:.1f} -> x4 {4 * wall:.0f}); workers for 200/s: "
              f"{200 / cpu:.1f}", flush=True)

if __name__ == "__main__":
    sys.exit(main())
