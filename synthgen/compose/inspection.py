"""Looking at scene shards: a contact sheet (``preview``) and distributions (``stats``).

A preview tile is the scene with every object's box and its referral, the target in a colour no
other object gets (thick, :data:`TARGET`), and under the image what training reads for it: the
prompt, then the answer (marked when it is not the target's box). Labels are measured
(``textbbox``), kept inside the tile and never drawn over one another (:func:`place_labels`).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from synthgen.errors import UserError
from synthgen.fonts import fit_text, wrap_text
from synthgen.fonts import font as _font
from synthgen.grounding import format_box
from synthgen.schema import SceneRecord
from synthgen.shards import find_shards, is_stream, iter_samples

# object colours (object i gets PALETTE[i % 9]); the target always gets TARGET, which none of them is
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
           (145, 30, 180), (70, 240, 240), (210, 245, 60), (250, 190, 212)]
TARGET = (255, 0, 255)
TARGET_TEXT = (170, 0, 170)   # the target's colour, dark enough for text on white
FOOT_BG = (255, 255, 255)


def _load_record(sample: dict[str, Any]) -> SceneRecord:
    where = f"{sample.get('__url__')}: sample {sample.get('__key__')}"
    if "json" not in sample:
        raise UserError(f"{where} has no json")
    return SceneRecord.from_json(sample["json"], where)


# -- labels and captions (pure layout: sizes in, rectangles out) ---------------------------------

Rect = tuple[int, int, int, int]


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(boxes: Sequence[Sequence[float]], sizes: Sequence[tuple[int, int]], width: int, height: int,
                 order: Sequence[int] | None = None, step: int = 2) -> list[Rect | None]:
    """Where each box's label of ``sizes[i]`` (w, h) goes: a rectangle inside ``width`` x
    ``height`` that overlaps no other label, as close to its box as possible (above its top-left
    corner, inside it, below it, at its right end, then the nearest free place). ``None`` where no
    free place exists (or the label is larger than the tile). ``order``: who chooses first."""
    placed: list[Rect] = []
    out: list[Rect | None] = [None] * len(boxes)
    for i in (order if order is not None else range(len(boxes))):
        w, h = sizes[i]
        if w > width or h > height:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        cands = [(min(max(0, x), width - w), min(max(0, y), height - h))  # clamped into the tile
                 for x, y in ((x1, y1 - h), (x1, y1), (x1, y2), (x1, y2 - h),
                              (x2 - w, y1 - h), (x2 - w, y1), (x2 - w, y2), (x2 - w, y2 - h))]
        rect = next((r for r in ((x, y, x + w, y + h) for x, y in cands)
                     if not any(_overlaps(r, q) for q in placed)), None)
        if rect is None:  # the nearest free place, scanning the tile
            free = [(x, y) for y in range(0, height - h + 1, step) for x in range(0, width - w + 1, step)
                    if not any(_overlaps((x, y, x + w, y + h), q) for q in placed)]
            if free:
                x, y = min(free, key=lambda p: (p[0] - x1) ** 2 + (p[1] - y1) ** 2)
                rect = (x, y, x + w, y + h)
        if rect is not None:
            placed.append(rect)
            out[i] = rect
    return out


@dataclass
class TileLayout:
    """Everything a tile shows, with where (for the drawing and for tests)."""

    scale: int
    image_size: tuple[int, int]
    labels: list[str]                  # per object, as drawn (maybe cut to the tile)
    label_rects: list[Rect | None]     # per object, in tile pixels; None: listed in the caption
    title: str                         # "■ target 1 (magenta, thick): cat on the left"
    caption: list[str]                 # the prompt, wrapped
    answer: str                        # "→ [x1,y1,x2,y2] = target 0's box"
    answer_ok: bool                    # the answer is the target's box
    notes: list[str] = field(default_factory=list)


def _sizes(draw, labels: list[str], font, pad: int) -> list[tuple[int, int]]:
    out = []
    for t in labels:
        b = draw.textbbox((0, 0), t, font=font)
        out.append((b[2] - min(0, b[0]) + 2 * pad, b[3] - min(0, b[1]) + 2 * pad))
    return out


def scene_layout(record: SceneRecord, scale: int, draw, font, unicode: bool = True) -> TileLayout:
    w, h = record.width * scale, record.height * scale
    pad = max(1, scale)
    boxes = [[v * scale for v in o.box] for o in record.objects]
    labels = [fit_text(draw, f"{i} {o.referral}", font, w - 2 * pad) for i, o in enumerate(record.objects)]
    t = record.target
    order = [t] + [i for i in range(len(boxes)) if i != t]
    rects = place_labels(boxes, _sizes(draw, labels, font, pad), w, h, order=order)
    arrow, square = ("→", "■") if unicode else ("->", "#")
    target = record.objects[t] if 0 <= t < len(record.objects) else None
    answer_ok = target is not None and record.answer == format_box(target.box)
    title = (f"{square} target {t} (magenta, thick): {target.referral}" if target is not None
             else f"target {t} is not an object of the scene")
    caption = wrap_text(draw, record.prompt, font, w - 8)
    answer = fit_text(draw, f"{arrow} {record.answer}" + (f" = target {t}'s box" if answer_ok else ""), font, w - 8)
    notes = [] if answer_ok else [f"the answer is not the target's box {format_box(target.box)}"
                                  if target is not None else "no target"]
    missing = [labels[i] for i, r in enumerate(rects) if r is None]
    if missing:
        notes.append("not drawn (no room): " + "; ".join(missing))
    notes = [line for n in notes for line in wrap_text(draw, n, font, w - 8)]
    return TileLayout(scale, (w, h), labels, rects, fit_text(draw, title, font, w - 8), caption, answer, answer_ok,
                      notes)


def draw_scene(image, record: SceneRecord, scale: int = 2, return_layout: bool = False):
    """One annotated tile: every box in its colour with its label (index and referral), the
    target thick in :data:`TARGET`; under the image the target, its prompt and ``→ answer``."""
    from PIL import Image, ImageDraw

    img = image.convert("RGB").resize((record.width * scale, record.height * scale), Image.Resampling.NEAREST)
    font, uni = _font(6 * scale + 2)
    probe = ImageDraw.Draw(img)
    lay = scene_layout(record, scale, probe, font, uni)
    line_h = int(font.size * 1.3)
    n_lines = 2 + len(lay.caption) + len(lay.notes)
    tile = Image.new("RGB", (img.width, img.height + n_lines * line_h + 8), FOOT_BG)
    tile.paste(img, (0, 0))
    d = ImageDraw.Draw(tile)
    thin, thick = max(1, scale), 3 * max(1, scale)
    t = record.target
    for i, obj in enumerate(record.objects):  # others first, the target on top
        if i == t:
            continue
        x1, y1, x2, y2 = (v * scale for v in obj.box)
        d.rectangle([x1, y1, x2 - 1, y2 - 1], outline=PALETTE[i % len(PALETTE)], width=thin)
    if 0 <= t < len(record.objects):
        x1, y1, x2, y2 = (v * scale for v in record.objects[t].box)
        d.rectangle([x1, y1, x2 - 1, y2 - 1], outline=(0, 0, 0), width=thick + 2)
        d.rectangle([x1 + 1, y1 + 1, x2 - 2, y2 - 2], outline=TARGET, width=thick)
    pad = max(1, scale)
    for i, (label, rect) in enumerate(zip(lay.labels, lay.label_rects)):
        if rect is None:
            continue
        box = [rect[0], rect[1], rect[2] - 1, rect[3] - 1]  # PIL's rectangle includes its far corner
        if i == t:
            d.rectangle(box, fill=TARGET)
            d.text((rect[0] + pad, rect[1] + pad), label, fill=(0, 0, 0), font=font, anchor="la")
        else:
            d.rectangle(box, fill=(0, 0, 0))
            d.text((rect[0] + pad, rect[1] + pad), label, fill=PALETTE[i % len(PALETTE)], font=font, anchor="la")
    y = img.height + 4
    d.text((4, y), lay.title, fill=TARGET_TEXT, font=font)
    for line in lay.caption:
        y += line_h
        d.text((4, y), line, fill=(0, 0, 0), font=font)
    y += line_h
    d.text((4, y), lay.answer, fill=TARGET_TEXT if lay.answer_ok else (200, 0, 0), font=font)
    for line in lay.notes:
        y += line_h
        d.text((4, y), line, fill=(200, 0, 0), font=font)
    return (tile, lay) if return_layout else tile


def contact_sheet(shards: str, output: Path, n: int = 16, scale: int = 2) -> int:
    from PIL import Image

    if n < 1:
        raise UserError(f"-n must be >= 1 (got {n})")
    if scale < 1:
        raise UserError(f"--scale must be >= 1 (got {scale})")
    tiles = []
    for sample in iter_samples(find_shards(shards)):
        if "jpg" not in sample:
            continue
        rec = _load_record(sample)
        scene = Image.open(io.BytesIO(sample["jpg"]))
        if not tiles:
            _check_sheet_size(scene.size, n, scale)
        tiles.append(draw_scene(scene, rec, scale))
        if len(tiles) >= n:
            break
    if not tiles:
        raise UserError(f"no scenes found in {shards}")
    cols = min(len(tiles), max(1, int(round(len(tiles) ** 0.5))))
    rows = -(-len(tiles) // cols)
    tw, th = max(t.width for t in tiles), max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * (tw + 4) + 4, rows * (th + 4) + 4), (90, 90, 90))
    for i, t in enumerate(tiles):
        x, y = 4 + (i % cols) * (tw + 4), 4 + (i // cols) * (th + 4)
        sheet.paste(Image.new("RGB", (tw, th), FOOT_BG), (x, y))  # tiles of one height: white below
        sheet.paste(t, (x, y))
    save_or_explain(output, lambda: sheet.save(output))
    return len(tiles)


MAX_SHEET_PIXELS = 64_000_000  # below Pillow's decompression-bomb limit (~89 MP): any viewer opens it


def _check_sheet_size(scene: tuple[int, int], n: int, scale: int) -> None:
    """Refuse, before drawing, a sheet of ``n`` scenes of this size at ``scale`` that would be
    too large to open."""
    w, h = scene
    pixels = n * (w * scale) * (h * scale)
    if pixels > MAX_SHEET_PIXELS:
        raise UserError(f"-n {n} scenes at --scale {scale} make a sheet of ~{pixels / 1e6:.0f} megapixels (at most "
                        f"{MAX_SHEET_PIXELS // 1_000_000}); lower --scale or -n")


def save_or_explain(output, save) -> None:
    """Run ``save`` (which writes the file ``output``), its folder made first; a file that cannot
    be written is a one-line error."""
    try:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        save()
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None


# -- statistics ------------------------------------------------------------------------------------


def _stats_file(shard: str):
    """The ``*_stats.json`` compose wrote beside a shard, local or on an object store (None for
    streams such as ``pipe:`` or ``https://``)."""
    from synthgen import storage

    if is_stream(shard):
        return None
    p = storage.path(shard)
    return p.with_name(p.stem + "_stats.json")


def shard_stats(shards: Sequence[str]) -> dict[str, Any]:
    """What compose's per-shard stats files record for ``shards``, summed: objects dropped and
    scenes resampled by reason, inputs skipped by reason; ``found``: how many shards had one."""
    dropped: Counter = Counter()
    resampled: Counter = Counter()
    skipped: dict[str, Counter] = {"backgrounds": Counter(), "objects": Counter()}
    found = placed = 0
    for s in shards:
        f = _stats_file(s)
        if f is None or not f.is_file():
            continue
        try:
            st = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{f}: not a readable stats file ({exc})") from None
        found += 1
        placed += int(st.get("objects") or 0)
        dropped.update(st.get("dropped_objects") or {})
        resampled.update(st.get("scene_resamples") or {})
        for kind in skipped:
            for reason, names in ((st.get("skipped_inputs") or {}).get(kind) or {}).items():
                skipped[kind][reason] += len(names)
    return {"found": found, "shards": len(shards), "objects": placed, "dropped_objects": dict(dropped),
            "scene_resamples": dict(resampled), "skipped_inputs": {k: dict(v) for k, v in skipped.items()}}


def _cells(o, rec: SceneRecord) -> tuple[int, int, int, int]:
    if len(o.cells) == 4:
        return tuple(int(v) for v in o.cells)
    c = rec.width / rec.grid
    return tuple(int(round(v / c)) for v in o.box)


RELATIONS = ("left", "right", "top", "bottom", "middle", "front", "behind")


def collect_stats(shards: str) -> dict[str, Any]:
    from synthgen.compose.referral import relation_of

    paths = find_shards(shards)
    per_scene: Counter = Counter()
    cats: Counter = Counter()
    long_side: Counter = Counter()
    short_side: Counter = Counter()
    visible: list[float] = []
    kinds: Counter = Counter()
    relations: Counter = Counter()
    grids: Counter = Counter()
    centres: Counter = Counter()  # (row, col) of the box centre's cell, on each scene's grid
    scenes = 0
    sizes = set()
    for sample in iter_samples(paths, want=("json",)):
        rec = _load_record(sample)
        scenes += 1
        sizes.add((rec.width, rec.grid))
        grids[rec.grid] += 1
        per_scene[len(rec.objects)] += 1
        names = Counter(o.name for o in rec.objects)
        for o in rec.objects:
            cats[o.category] += 1
            c = _cells(o, rec)
            w, h = c[2] - c[0], c[3] - c[1]
            long_side[max(w, h)] += 1
            short_side[min(w, h)] += 1
            col = min(rec.grid - 1, int((c[0] + c[2]) / 2))
            row = min(rec.grid - 1, int((c[1] + c[3]) / 2))
            centres[(rec.grid, row, col)] += 1
            visible.append(float(o.visible))
            if o.referral == o.name:
                kinds["plain"] += 1
                continue
            kinds["relative" if names[o.name] > 1 else "absolute"] += 1
            relations[relation_of(o.referral, o.name) or "other"] += 1
    if scenes == 0:
        raise UserError(f"no scenes found in {shards}")
    grid = grids.most_common(1)[0][0]
    heat = [[0] * grid for _ in range(grid)]
    for (g, row, col), v in centres.items():  # other grids mapped onto the most common one
        heat[min(grid - 1, row * grid // g)][min(grid - 1, col * grid // g)] += v
    return {"scenes": scenes, "objects": sum(cats.values()), "canvas_grid": sorted(sizes),
            "objects_per_scene": dict(sorted(per_scene.items())), "categories": cats,
            "long_side_cells": dict(sorted(long_side.items())), "short_side_cells": dict(sorted(short_side.items())),
            "grid": grid, "centres": heat, "visible": visible,
            "referrals": {k: kinds[k] for k in ("plain", "relative", "absolute") if kinds[k]},
            "relations": {k: relations[k] for k in (*RELATIONS, "other") if relations[k]},
            "shard_stats": shard_stats(paths)}


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
    t = Table("side (cells)", "longer", "shorter")
    for k in sorted(set(st["long_side_cells"]) | set(st["short_side_cells"])):
        t.add_row(str(k), str(st["long_side_cells"].get(k, 0)), str(st["short_side_cells"].get(k, 0)))
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
    for k, v in st["relations"].items():
        t.add_row(f"  {k}", str(v))
    con.print(t)
    ss = st["shard_stats"]
    t = Table(f"compose stats ({ss['found']}/{ss['shards']} shards)", "count")
    for reason, v in sorted(ss["dropped_objects"].items()):
        t.add_row(f"dropped object: {reason}", str(v))
    for reason, v in sorted(ss["scene_resamples"].items()):
        t.add_row(f"scene resampled: {reason}", str(v))
    for kind, reasons in ss["skipped_inputs"].items():
        for reason, v in sorted(reasons.items()):
            t.add_row(f"skipped {kind[:-1]}: {reason}", str(v))
    con.print(t)
    t = Table(f"top {top} categories", "objects")
    for k, v in st["categories"].most_common(top):
        t.add_row(k, str(v))
    con.print(t)


PLOT_FIGSIZE = (20, 9)   # inches; at PLOT_DPI: 1600 x 720 px
PLOT_DPI = 80


def plot_stats(st: dict[str, Any], path: Path) -> dict[str, Any]:
    """Draw ``st`` (:func:`collect_stats`) into a PNG of 1600 x 720 px; returns the numbers each
    panel shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    grid = st["grid"]
    ss = st["shard_stats"]
    drawn: dict[str, Any] = {
        "objects_per_scene": dict(st["objects_per_scene"]),
        "long_side_cells": {k: st["long_side_cells"].get(k, 0) for k in range(1, grid + 1)},
        "short_side_cells": {k: st["short_side_cells"].get(k, 0) for k in range(1, grid + 1)},
        "centres": [list(r) for r in st["centres"]],
        "referrals": dict(st["referrals"]),
        "relations": dict(st["relations"]),
        "dropped_objects": {**{f"dropped object: {k}": v for k, v in sorted(ss["dropped_objects"].items())},
                            **{f"resampled scene: {k}": v for k, v in sorted(ss["scene_resamples"].items())},
                            **{f"skipped {kind[:-1]}: {k}": v for kind, r in ss["skipped_inputs"].items()
                               for k, v in sorted(r.items())}},
        "categories": dict(st["categories"].most_common(15)),
    }
    fig, ax = plt.subplots(2, 4, figsize=PLOT_FIGSIZE)
    a = ax[0, 0]
    a.bar([str(k) for k in drawn["objects_per_scene"]], list(drawn["objects_per_scene"].values()), color="#4477aa")
    a.set_title(f"objects per scene ({st['scenes']} scenes)")
    a.set_xlabel("objects")
    a = ax[0, 1]
    ks = list(range(1, grid + 1))
    a.bar([k - 0.2 for k in ks], [drawn["long_side_cells"][k] for k in ks], width=0.4, label="longer side")
    a.bar([k + 0.2 for k in ks], [drawn["short_side_cells"][k] for k in ks], width=0.4, label="shorter side")
    a.set_xticks(ks)
    a.set_xlim(0.4, grid + 0.6)
    a.set_xlabel(f"cells (grid {grid})")
    a.set_title("box sides in cells")
    a.legend()
    a = ax[0, 2]
    im = a.imshow(drawn["centres"], cmap="viridis", origin="upper", extent=(-0.5, grid - 0.5, grid - 0.5, -0.5))
    a.set_xticks(range(grid))
    a.set_yticks(range(grid))
    a.tick_params(labelsize=7)
    a.set_xlabel("cell column of the box centre")
    a.set_ylabel("cell row")
    a.set_title("box centres on the grid")
    fig.colorbar(im, ax=a, fraction=0.046, pad=0.04)
    a = ax[0, 3]
    a.hist(st["visible"], bins=20, range=(0, 1), color="#4477aa")
    a.set_title("visible fraction")
    a = ax[1, 0]
    colours = {"plain": "#999999", "relative": "#cc6677", "absolute": "#ddcc77"}
    bars = a.bar(list(drawn["referrals"]), list(drawn["referrals"].values()),
                 color=[colours[k] for k in drawn["referrals"]])
    a.bar_label(bars)
    a.set_title("referral kinds (objects)")
    a = ax[1, 1]
    if drawn["relations"]:
        a.bar_label(a.bar(list(drawn["relations"]), list(drawn["relations"].values()), color="#cc6677"))
    else:
        a.text(0.5, 0.5, "no position words", ha="center", va="center", transform=a.transAxes)
        a.set_axis_off()
    a.set_title("position words by relation")
    a = ax[1, 2]
    if drawn["dropped_objects"]:
        names = list(drawn["dropped_objects"])
        bars = a.barh(names[::-1], list(drawn["dropped_objects"].values())[::-1], height=0.5, color="#aa3377")
        a.bar_label(bars)
        extra = max(0.0, (3 - len(names)) / 2)  # a few bars stay bars, not slabs
        a.set_ylim(-0.5 - extra, len(names) - 0.5 + extra)
    else:
        a.text(0.5, 0.5, "none dropped or resampled" if ss["found"] else "no *_stats.json beside the shards",
               ha="center", va="center", transform=a.transAxes)
        a.set_axis_off()
    n_drop = sum(ss["dropped_objects"].values())
    share = f", {n_drop / (n_drop + ss['objects']):.1%} of objects dropped" if ss["objects"] else ""
    a.set_title("compose: dropped, resampled, skipped")
    a.set_xlabel(f"count ({ss['found']}/{ss['shards']} shards have stats{share})")
    a = ax[1, 3]
    common = list(drawn["categories"].items())
    a.barh([k for k, _ in common][::-1], [v for _, v in common][::-1], color="#4477aa")
    a.set_title("top categories")
    for a in (ax[0, 0], ax[0, 1], ax[0, 3], ax[1, 0], ax[1, 1]):  # counts are whole numbers
        a.yaxis.set_major_locator(MaxNLocator(integer=True))
    for a in (ax[1, 2], ax[1, 3]):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    save_or_explain(path, lambda: fig.savefig(path, dpi=PLOT_DPI))
    plt.close(fig)
    return drawn
