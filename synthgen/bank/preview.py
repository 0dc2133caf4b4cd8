"""``synthgen preview BANK``: a contact sheet of an object bank.

A row per category (categories with few cut-outs, as in a flat folder where each file is one,
side by side up to :data:`SHEET_WIDTH`): kept cut-outs (green frame, best CLIP score first), then rejected ones (red
frame) with why the filter refused them (``CLIP below bar`` / ``CLIP 18.2 < 21.0``, ``mask area`` /
``area 0.97``, ``empty mask``, ...) and their CLIP score, on a checkerboard. A rejected cut-out shows its full PNG (``render
--keep-rejected``) or the small thumbnail render keeps of it (``thumbnail`` in ``index.jsonl``); a
grey tile when the bank has neither (nothing was cut out, or a bank of an earlier synthgen). When a
category has more objects than columns, rejected ones get at least half of the columns.
"""

from __future__ import annotations

import io
from pathlib import Path

from synthgen import storage
from synthgen.errors import UserError

GREEN, RED, GREY = (40, 170, 60), (210, 50, 50), (150, 150, 150)
SHEET_WIDTH = 1600  # categories with few cut-outs are laid side by side up to this width
REASON_TEXT = {"clip_below_bar": "CLIP below bar", "area_out_of_range": "mask area", "empty_mask": "empty mask",
               "category_too_small": "category too small", "nsfw_blacked_out": "blacked out",
               # what compose skips in a bank it did not render (folder_records)
               "no_alpha": "no alpha channel", "unreadable": "unreadable", "transparent": "fully transparent",
               "outside_bank": "outside the bank", "missing": "missing", "not_regular_file": "not a file"}


def _checker(size: int):
    from PIL import Image

    im = Image.new("RGB", (size, size), (235, 235, 235))
    px = im.load()
    step = max(4, size // 8)
    for y in range(size):
        for x in range(size):
            if (x // step + y // step) % 2:
                px[x, y] = (200, 200, 200)
    return im


def reason_text(r: dict) -> tuple[str, str]:
    """``(why, the number that decided it)`` of a rejected record: ``("CLIP below bar", "CLIP
    18.2 < 21.0")``, ``("mask area", "area 0.97, CLIP 25.1")``, ``("empty mask", "CLIP -")``."""
    reason = r.get("reason") or "rejected"
    score, bar, area = r.get("clip_score"), r.get("clip_bar"), r.get("area_fraction")
    clip = "CLIP -" if score is None else f"CLIP {score:.1f}"
    if reason == "clip_below_bar" and score is not None and bar is not None:
        digits = 1 if f"{score:.1f}" != f"{bar:.1f}" else 2  # never "21.0 < 21.0"
        detail = f"CLIP {score:.{digits}f} < {bar:.{digits}f}"
    elif reason == "area_out_of_range" and area is not None:
        detail = f"area {area:.2f}, {clip}"
    else:
        detail = clip
    return REASON_TEXT.get(reason, reason), detail


def choose(recs: list[dict], n: int) -> list[dict]:
    """At most ``n`` records of a category to show: kept ones by score, then rejected ones by score;
    rejected ones get at least half of the places when there are more records than places."""
    def by_score(r):
        return -(r.get("clip_score") if r.get("clip_score") is not None else -1e9)

    kept = sorted((r for r in recs if r["kept"]), key=by_score)
    rej = sorted((r for r in recs if not r["kept"]), key=by_score)
    n_rej = min(len(rej), max(n // 2, n - len(kept)))
    return kept[:n - n_rej] + rej[:n_rej]


def folder_records(bank: str | Path) -> list[dict]:
    """Records (as ``index.jsonl`` has them) of a bank that ``synthgen render`` did not write: a
    folder of category sub-folders, a flat folder, X-Paste pools. Each cut-out is read as compose
    reads it; one compose would skip is shown rejected, with the reason (``no_alpha``, ...)."""
    from synthgen.bank.reader import ObjectBank
    from synthgen.errors import Skip

    ob = ObjectBank.open(bank)
    records = []
    for i, e in enumerate(ob.entries):
        item = ob.load(i)
        skip = item.reason if isinstance(item, Skip) else None
        # only what compose could decode is drawn: no file outside the bank, none that fails to decode
        records.append({"category": e.category, "path": e.path if skip in (None, "no_alpha") else None,
                        "kept": skip is None, "reason": skip})
    for reason, paths in ob.rejected.items():
        records.extend({"category": "(refused)", "path": None, "kept": False, "reason": reason}
                       for _ in paths)
    return records


def preview_bank(bank: str | Path, out: str | Path | None = None, *, categories: str = "",
                 per_category: int = 8, thumb: int = 96) -> tuple[Path, int]:
    """Write the contact sheet of ``bank`` (``out``, default ``preview.png`` in the current folder,
    never inside the bank, where compose would read it as a cut-out); the path and
    the number of cut-outs shown. A bank without ``index.jsonl`` is read as compose reads it."""
    from PIL import Image, ImageDraw

    from synthgen.bank.format import INDEX_FILE
    from synthgen.bank.writer import read_index
    from synthgen.fonts import fit_text, font

    if per_category < 1:
        raise UserError(f"-n must be >= 1 (got {per_category})")
    if not (16 <= thumb <= 1024):
        raise UserError(f"--thumb must lie in 16..1024 pixels (got {thumb})")
    bank = storage.path(bank)
    from_render = (bank / INDEX_FILE).is_file()
    records = read_index(bank) if from_render else folder_records(bank)
    wanted = {c.strip().lower() for c in categories.split(",") if c.strip()}
    rows: dict[str, list[dict]] = {}
    for r in records:
        if wanted and r["category"].lower() not in wanted:
            continue
        rows.setdefault(r["category"], []).append(r)
    if not rows:
        raise UserError(f"no objects to show in {bank}" + (f" for {categories}" if wanted else ""))
    f, uni = font(12)
    line = 15
    tick, cross = ("✓", "✗") if uni else ("+", "x")
    label_w, cell, pad = 170, max(thumb + 8, 136), 2 * line + 6
    ncol = max(1, min(per_category, max(len(v) for v in rows.values())))
    head = 2 * line + 8
    legend = ("green = kept (CLIP score), red = rejected (why, CLIP score); rejected ones show their thumbnail"
              if from_render else "green = usable, red = skipped by compose (why)")
    title = (f"{bank}: {legend}", f"{sum(r['kept'] for r in records)} kept, {sum(not r['kept'] for r in records)} "
             f"rejected in {len({r['category'] for r in records})} categories")
    # short rows (a flat folder: one cut-out per category) side by side, not a strip one tile wide
    block = label_w + ncol * cell
    across = max(1, min(len(rows), SHEET_WIDTH // block))
    text_w = 8 + max(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=f) for t in title)
    sheet = Image.new("RGB", (max(across * block, min(int(text_w), SHEET_WIDTH)),
                              head + -(-len(rows) // across) * (cell + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, text in enumerate(title):
        draw.text((4, 4 + k * line), fit_text(draw, text, f, sheet.width - 8), fill="black", font=f)
    base = _checker(thumb)
    shown = 0
    for ri, (name, recs) in enumerate(sorted(rows.items())):
        x0, y = (ri % across) * block, head + (ri // across) * (cell + pad)
        kept = sum(r["kept"] for r in recs)
        bar = next((r.get("clip_bar") for r in recs if r.get("clip_bar") is not None), None)
        draw.text((x0 + 4, y + cell // 2 - 22), fit_text(draw, name, f, label_w - 8), fill="black", font=f)
        draw.text((x0 + 4, y + cell // 2 - 22 + line), f"kept {kept}/{len(recs)}", fill="black", font=f)
        if bar is not None:
            draw.text((x0 + 4, y + cell // 2 - 22 + 2 * line), f"CLIP bar {bar:.1f}", fill=(90, 90, 90), font=f)
        for ci, r in enumerate(choose(recs, ncol)):
            x = x0 + label_w + ci * cell
            tile = base.copy()
            src = next((bank / p for p in (r.get("path"), r.get("thumbnail")) if p and (bank / p).is_file()), None)
            if src is not None:
                with Image.open(io.BytesIO(src.read_bytes())) as im:
                    im = im.convert("RGBA")
                    k = thumb / max(im.width, im.height)
                    im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))),
                                   Image.Resampling.LANCZOS)
                    tile.paste(im, ((thumb - im.width) // 2, (thumb - im.height) // 2), im)
            else:
                ImageDraw.Draw(tile).text((4, thumb // 2 - 6), "no image", fill=GREY, font=f)
            ox = x + (cell - thumb) // 2
            sheet.paste(tile, (ox, y + 4))
            draw.rectangle([ox - 3, y + 1, ox + thumb + 2, y + thumb + 6], outline=GREEN if r["kept"] else RED, width=3)
            ty = y + thumb + 9
            if r["kept"] and not from_render:
                draw.text((x + 4, ty), fit_text(draw, f"{tick} usable", f, cell - 6), fill=GREEN, font=f)
            elif r["kept"]:
                score = r.get("clip_score")
                s = ("CLIP -" if "clip_model" in r else "kept") if score is None else f"CLIP {score:.1f}"
                draw.text((x + 4, ty), fit_text(draw, f"{tick} {s}", f, cell - 6), fill=GREEN, font=f)
            else:
                why, detail = reason_text(r)
                draw.text((x + 4, ty), fit_text(draw, f"{cross} {why}", f, cell - 6), fill=RED, font=f)
                if from_render:
                    draw.text((x + 4, ty + line), fit_text(draw, detail, f, cell - 6), fill="black", font=f)
            shown += 1
    path = storage.path(out or "preview.png")
    try:
        storage.atomic_write_with(path, lambda tmp: sheet.save(tmp, format="PNG"))
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path, shown
