"""Looking at scene shards: a contact sheet (``preview``) and distributions (``stats``)."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Any

from synthgen.errors import UserError
from synthgen.schema import SceneRecord
from synthgen.shards import find_shards, iter_samples

PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _load_record(sample: dict[str, Any]) -> SceneRecord:
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
    if "json" not in sample:
        raise UserError(f"{where} has no json")
    return SceneRecord.from_json(sample["json"], where)


def draw_scene(image, record: SceneRecord, scale: int = 2):
    """One annotated tile: boxes in colour with referral labels, the answer text underneath."""
    from PIL import Image, ImageDraw

    img = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    font = _font(10 * scale // 2 + 4)
    foot = 2 * (10 * scale // 2 + 8)
    tile = Image.new("RGB", (img.width, img.height + foot), (255, 255, 255))
    tile.paste(img, (0, 0))
    d = ImageDraw.Draw(tile)
    for i, obj in enumerate(record.objects):
        c = PALETTE[i % len(PALETTE)]
        x1, y1, x2, y2 = (v * scale for v in obj.box)
        width = 3 if i == record.target else 1
        d.rectangle([x1, y1, x2 - 1, y2 - 1], outline=c, width=width)
        label = f"{i}:{obj.referral}"
        tb = d.textbbox((x1 + 2, y1 + 1), label, font=font)
        d.rectangle(tb, fill=(0, 0, 0))
        d.text((x1 + 2, y1 + 1), label, fill=c, font=font)
    d.text((3, img.height + 2), record.prompt, fill=(0, 0, 0), font=font)
    d.text((3, img.height + 2 + foot // 2), record.answer, fill=(200, 0, 0), font=font)
    return tile


def contact_sheet(shards: str, output: Path, n: int = 16, scale: int = 2) -> int:
    from PIL import Image

    if n < 1:
        raise UserError(f"-n must be >= 1 (got {n})")
    tiles = []
    for sample in iter_samples(find_shards(shards)):
        if "jpg" not in sample:
            continue
        rec = _load_record(sample)
        tiles.append(draw_scene(Image.open(io.BytesIO(sample["jpg"])), rec, scale))
        if len(tiles) >= n:
            break
    if not tiles:
        raise UserError(f"no scenes found in {shards}")
    cols = min(len(tiles), max(1, int(round(len(tiles) ** 0.5))))
    rows = -(-len(tiles) // cols)
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * (tw + 4) + 4, rows * (th + 4) + 4), (90, 90, 90))
    for i, t in enumerate(tiles):
        sheet.paste(t, (4 + (i % cols) * (tw + 4), 4 + (i // cols) * (th + 4)))
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(output)
    return len(tiles)


def collect_stats(shards: str) -> dict[str, Any]:
    per_scene: Counter = Counter()
    cats: Counter = Counter()
    long_side: Counter = Counter()
    visible: list[float] = []
    kinds: Counter = Counter()
    scenes = 0
    sizes = set()
    for sample in iter_samples(find_shards(shards), want=("json",)):
        rec = _load_record(sample)
        scenes += 1
        sizes.add((rec.width, rec.grid))
        per_scene[len(rec.objects)] += 1
        for o in rec.objects:
            cats[o.category] += 1
            c = o.cells
            long_side[max(c[2] - c[0], c[3] - c[1])] += 1
            visible.append(float(o.visible))
            kinds["positional" if o.referral != o.category else "plain"] += 1
    if scenes == 0:
        raise UserError(f"no scenes found in {shards}")
    return {"scenes": scenes, "objects": sum(cats.values()), "canvas_grid": sorted(sizes),
            "objects_per_scene": dict(sorted(per_scene.items())), "categories": cats,
            "long_side_cells": dict(sorted(long_side.items())), "visible": visible,
            "referrals": dict(kinds)}


def print_stats(st: dict[str, Any], top: int = 15) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{st['scenes']}[/] scenes, [bold]{st['objects']}[/] objects, "
              f"{len(st['categories'])} categories, canvas/grid {st['canvas_grid']}")
    t = Table("objects per scene", "scenes", "share")
    for k, v in st["objects_per_scene"].items():
        t.add_row(str(k), str(v), f"{v / st['scenes']:.1%}")
    con.print(t)
    t = Table("longer side (cells)", "objects", "share")
    for k, v in st["long_side_cells"].items():
        t.add_row(str(k), str(v), f"{v / st['objects']:.1%}")
    con.print(t)
    vis = np.asarray(st["visible"])
    t = Table("visible fraction", "value")
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        t.add_row(f"q{int(q * 100)}", f"{np.quantile(vis, q):.3f}")
    t.add_row("share < 0.5", f"{(vis < 0.5).mean():.1%}")
    con.print(t)
    t = Table("referral", "objects")
    for k, v in st["referrals"].items():
        t.add_row(k, str(v))
    con.print(t)
    t = Table(f"top {top} categories", "objects")
    for k, v in st["categories"].most_common(top):
        t.add_row(k, str(v))
    con.print(t)


def plot_stats(st: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(18, 4))
    ax[0].bar([str(k) for k in st["objects_per_scene"]], list(st["objects_per_scene"].values()))
    ax[0].set_title("objects per scene")
    ax[1].bar(list(st["long_side_cells"]), list(st["long_side_cells"].values()))
    ax[1].set_title("longer side (cells)")
    ax[2].hist(st["visible"], bins=20, range=(0, 1))
    ax[2].set_title("visible fraction")
    common = st["categories"].most_common(15)
    ax[3].barh([k for k, _ in common][::-1], [v for _, v in common][::-1])
    ax[3].set_title("top categories")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
