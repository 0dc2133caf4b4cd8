"""Looking at scene shards: a contact sheet (``preview``); their distributions (``stats``) are
:mod:`synthgen.compose.stats`.

A preview tile is the scene with every object's box and its referral, the target in a colour no
other object gets (thick, :data:`TARGET`), and under the image what training reads for it: the
prompt, then the answer (marked when it is not the target's box). Labels are measured
(``textbbox``), kept inside the tile and never drawn over one another (:func:`place_labels`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from synthgen.errors import UserError
from synthgen.fonts import fit_text, wrap_text
from synthgen.fonts import font as _font
from synthgen.grounding import format_box
from synthgen.schema import SceneRecord
from synthgen.shards import find_shards, iter_samples

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


def question_lines(record: SceneRecord, draw, font, width: int, arrow: str = "->") -> list[str]:
    """``task: question -> answer (objects 0, 2)``, one line per question the record carries
    (wrapped to ``width``)."""
    lines = []
    for q in record.questions or ():
        refs = f" (object{'s' if len(q['targets']) > 1 else ''} {', '.join(map(str, q['targets']))})" \
            if q["targets"] else ""
        lines += wrap_text(draw, f"{q['task']}: {q['text']} {arrow} {q['answer']}{refs}", font, width)
    return lines


def draw_scene(image, record: SceneRecord, scale: int = 2, return_layout: bool = False, questions: bool = False):
    """One annotated tile: every box in its colour with its label (index and referral), the
    target thick in :data:`TARGET`; under the image the target, its prompt and ``→ answer``;
    with ``questions``, then the record's questions with their answers (:func:`question_lines`)."""
    from PIL import Image, ImageDraw

    img = image.convert("RGB").resize((record.width * scale, record.height * scale), Image.Resampling.NEAREST)
    font, uni = _font(6 * scale + 2)
    probe = ImageDraw.Draw(img)
    lay = scene_layout(record, scale, probe, font, uni)
    line_h = int(font.size * 1.3)
    asked = question_lines(record, probe, font, img.width - 8, "→" if uni else "->") if questions else []
    n_lines = 2 + len(lay.caption) + len(lay.notes) + len(asked)
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
    for line in asked:
        y += line_h
        d.text((4, y), line, fill=(40, 40, 120), font=font)
    return (tile, lay) if return_layout else tile


def contact_sheet(shards: str, output: Path, n: int = 16, scale: int = 2, questions: bool = False) -> int:
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
        tiles.append(draw_scene(scene, rec, scale, questions=questions))
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
    from synthgen.storage import save_or_explain

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
