"""Helpers for the PIN tests: tiny BLIP-2 and hand-made scene shards (no compose code)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = {"cat": (230, 40, 40), "dog": (40, 80, 230), "bird": (40, 200, 60)}


def make_scene(rng: np.random.Generator, canvas: int, grid: int, n_objects: int):
    """A grey canvas with ``n_objects`` non-overlapping solid rectangles on grid lines."""
    cell = canvas // grid
    img = np.full((canvas, canvas, 3), 128, np.uint8)
    objects, taken = [], []
    names = list(COLOURS)
    for k in range(n_objects):
        for _ in range(50):
            w, h = rng.integers(2, grid // 2 + 2, size=2)
            c1, r1 = rng.integers(0, grid - w + 1), rng.integers(0, grid - h + 1)
            cells = [int(c1), int(r1), int(c1 + w), int(r1 + h)]
            if all(cells[2] <= t[0] or t[2] <= cells[0] or cells[3] <= t[1] or t[3] <= cells[1]
                   for t in taken):
                break
        else:
            continue
        taken.append(cells)
        name = names[(len(objects)) % len(names)]
        box = [v * cell for v in cells]
        img[box[1]:box[3], box[0]:box[2]] = COLOURS[name]
        objects.append({"category": name, "category_id": k, "object_id": f"o{k}", "box": box,
                        "cells": cells, "visible": 1.0, "referral": name})
    return img, objects


def write_shards(out: Path, n_scenes: int, *, canvas: int = 112, grid: int = 8, per_shard: int = 8,
                 max_objects: int = 1, seed: int = 0, fmt: str = "jpg") -> list[Path]:
    """Scene shards in the ``synthgen.scene/1`` layout, written with plain ``tarfile``."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    tar = None
    for i in range(n_scenes):
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            paths.append(out / f"scenes-{len(paths):06d}.tar")
            tar = tarfile.open(paths[-1], "w")
        n = int(rng.integers(1, max_objects + 1))
        img, objects = make_scene(rng, canvas, grid, n)
        key = f"{i:09d}"
        t = 0
        meta = {"schema": "synthgen.scene/1", "key": key, "seed": seed, "width": canvas,
                "height": canvas, "grid": grid, "background": {"source": "grey", "fit": "squash"},
                "objects": objects, "target": t,
                "prompt": f"In the image is a {objects[t]['referral']} located at",
                "answer": "[" + ",".join(map(str, objects[t]["box"])) + "]"}
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=95)
        for name, data in ((f"{key}.{fmt}", buf.getvalue()), (f"{key}.json", json.dumps(meta).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    if tar is not None:
        tar.close()
    return paths
