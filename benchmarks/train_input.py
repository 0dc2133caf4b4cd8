"""How many training samples per second one DataLoader worker delivers to PIN training.

Stages timed cumulatively on one process (= one worker): read the tar (raw bytes + shuffle
buffer), decode the JPEG to a uint8 tensor, draw the target object and tokenise prompt + answer
with the VLM's tokenizer, collate into batches. This is what ``train-pin`` workers do; the
normalisation (rescale, mean/std of the BLIP-2 image processor) runs on the device. For
comparison, the last line times the stock ``Blip2Processor`` doing resize + normalise + tokenise on
the CPU per sample.

    python benchmarks/train_input.py [--model DIR|ID] [--scenes 2000] [--canvas 224]
                                     [--composed 256] [--megapixels 12]

The last lines time the other input, scenes composed on the fly in the worker (``train-pin
--objects --backgrounds``, the authors' way) from multi-megapixel JPEG backgrounds, against the
~200 samples/s one GPU consumes (a train step of OpenFlamingo-3B / BLIP-2 at batch 64 in fp16 is
of the order of 0.3 s on an A6000-class GPU).

Without ``--model`` it builds the tiny BLIP-2 (same image-processor settings as
Salesforce/blip2-opt-2.7b: 224 px, CLIP mean/std; a small local BPE tokenizer instead of OPT's
GPT-2 BPE) because this machine has no model hub.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
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
    ap.add_argument("--composed", type=int, default=256, help="scenes composed on the fly (0: skip)")
    ap.add_argument("--megapixels", type=float, default=12.0, help="size of their backgrounds")
    ap.add_argument("--backgrounds", type=int, default=8)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # a DataLoader worker is one process, one thread
    from transformers import Blip2Processor

    from synthgen.pin.models.adapters import TextCodec
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

    def full():
        it = ds.batches(0, 1)
        for _ in range(batches):
            next(it)
        return batches * args.batch_size
    res["+ collate = one train-pin worker"] = rate(full)

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
    if args.composed:
        res.update(composed_rate(tmp, codec, args))
    for k, v in res.items():
        print(f"{k:58s} {v:9.1f} " + ("workers" if k.startswith("   workers") else "samples/s"))


def composed_rate(tmp: Path, codec, args) -> dict[str, float]:
    """Samples/s of one worker composing its scenes (ComposedStream, the train-pin code path)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from compose import make_inputs

    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.compose.config import ComposeParams
    from synthgen.pin.training.scenes import ComposedConfig, ComposedStream, ComposeSource

    bank, bg = make_inputs(tmp / "compose-inputs", args.backgrounds, args.megapixels, 200)
    source = ComposeSource(str(bank), list_backgrounds(str(bg)).items, ComposeParams(size=args.canvas))
    cfg = ComposedConfig(shards=[], batch_size=args.batch_size, image_size=args.canvas, source=source)
    stream = ComposedStream(cfg, codec)
    it = stream.batches(0, 1)
    next(it)  # warm: bank index, first decodes
    n = max(1, args.composed // args.batch_size)
    t = time.perf_counter()
    for _ in range(n):
        next(it)
    rate = n * args.batch_size / (time.perf_counter() - t)
    key = f"composed on the fly, {args.megapixels:g} MP JPEG backgrounds (1 worker)"
    return {key: rate, "   workers needed for ~200 samples/s (one GPU)": 200 / rate}


if __name__ == "__main__":
    sys.exit(main())
