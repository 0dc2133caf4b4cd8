"""Fixture builders shared by the test packages: every input is drawn by the test itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# Distinct, JPEG-robust solid colours for pixel-truth tests (far apart in RGB).
SOLID_COLOURS = {
    "red block": (230, 20, 20),
    "green block": (20, 200, 40),
    "blue block": (20, 40, 230),
    "yellow block": (240, 230, 20),
}


def write_rgba(path: Path, rgb, size=(60, 40), pad=0, shape="rect") -> Path:
    """An RGBA cut-out of one colour: a ``shape`` of ``size`` with ``pad`` transparent margin."""
    w, h = size
    arr = np.zeros((h + 2 * pad, w + 2 * pad, 4), dtype=np.uint8)
    if shape == "rect":
        arr[pad:pad + h, pad:pad + w, :3] = rgb
        arr[pad:pad + h, pad:pad + w, 3] = 255
    else:  # ellipse
        yy, xx = np.mgrid[0:h, 0:w]
        inside = ((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2 <= 1
        sub = arr[pad:pad + h, pad:pad + w]
        sub[inside, :3] = rgb
        sub[inside, 3] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGBA").save(path)
    return path


def make_index_bank(root: Path, colours=SOLID_COLOURS, per_category=3, pad=5) -> Path:
    """A synthgen object bank (index.jsonl + RGBA PNGs) of solid-colour rectangles with
    transparent margins and different aspect ratios."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    shapes = [(60, 40), (30, 70), (50, 50), (90, 30)]
    for ci, (name, rgb) in enumerate(colours.items()):
        for j in range(per_category):
            rel = f"{name.replace(' ', '_')}/{j:05d}.png"
            w, h = shapes[(ci + j) % len(shapes)]
            write_rgba(root / rel, rgb, (w, h), pad=pad)
            lines.append({"id": f"{name.replace(' ', '_')}/{j:05d}", "category": name,
                          "category_id": ci + 1, "path": rel, "width": w + 2 * pad,
                          "height": h + 2 * pad, "kept": True})
    (root / "index.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def make_backgrounds(root: Path, n=4, size=(320, 240)) -> Path:
    """Grey-ish gradient backgrounds (far from the solid object colours)."""
    root.mkdir(parents=True, exist_ok=True)
    w, h = size
    for i in range(n):
        yy, xx = np.mgrid[0:h, 0:w]
        g = (100 + 30 * np.sin(xx / (10 + i)) + 20 * np.cos(yy / 7)).astype(np.uint8)
        arr = np.stack([g, g, g + 5], -1)
        Image.fromarray(arr).save(root / f"bg_{i:02d}.jpg", quality=90)
    return root


def scene_records(out: Path) -> list[dict]:
    """The scene records (``{key}.json``) of a compose output's shards, in shard and member order."""
    import json
    import tarfile

    recs = []
    for shard in sorted(Path(out).glob("scenes-*.tar")):
        with tarfile.open(shard) as tf:
            recs += [json.loads(tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    return recs
