"""``synthgen preview-bank``: a contact sheet of an object bank.

One row per category: kept cut-outs (green frame) then rejected ones (red frame; grey tile with the
reason when the PNG was not kept), each with its CLIP score, on a checkerboard.
"""

from __future__ import annotations

from pathlib import Path

from synthgen.errors import UserError

GREEN, RED, GREY = (40, 170, 60), (210, 50, 50), (150, 150, 150)


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


def preview_bank(bank: str | Path, out: str | Path | None = None, *, categories: str = "",
                 per_category: int = 8, thumb: int = 96) -> tuple[Path, int]:
    from PIL import Image, ImageDraw

    from synthgen.render.bank_writer import read_index

    bank = Path(bank)
    records = read_index(bank)
    wanted = {c.strip().lower() for c in categories.split(",") if c.strip()}
    rows: dict[str, list[dict]] = {}
    for r in records:
        if wanted and r["category"].lower() not in wanted:
            continue
        rows.setdefault(r["category"], []).append(r)
    if not rows:
        raise UserError(f"no objects to show in {bank}" + (f" for {categories}" if wanted else ""))
    label_w, cell, pad = 160, thumb + 8, 14
    ncol = max(1, min(per_category, max(len(v) for v in rows.values())))
    sheet = Image.new("RGB", (label_w + ncol * cell, len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    base = _checker(thumb)
    shown = 0
    for ri, (name, recs) in enumerate(sorted(rows.items())):
        recs = sorted(recs, key=lambda r: (not r["kept"], -(r.get("clip_score") or -1e9)))[:ncol]
        y = ri * (cell + pad)
        kept = sum(r["kept"] for r in rows[name])
        draw.text((4, y + cell // 2 - 10), f"{name[:22]}\nkept {kept}/{len(rows[name])}", fill="black")
        for ci, r in enumerate(recs):
            x = label_w + ci * cell
            tile = base.copy()
            if r.get("path") and (bank / r["path"]).is_file():
                with Image.open(bank / r["path"]) as im:
                    im = im.convert("RGBA")
                    k = thumb / max(im.width, im.height)
                    im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))),
                                   Image.Resampling.LANCZOS)
                    tile.paste(im, ((thumb - im.width) // 2, (thumb - im.height) // 2), im)
            else:
                ImageDraw.Draw(tile).text((4, thumb // 2 - 6), str(r.get("reason") or "no png")[:16],
                                          fill=GREY)
            sheet.paste(tile, (x + 4, y + 4))
            draw.rectangle([x + 1, y + 1, x + cell - 2, y + cell - 2],
                           outline=GREEN if r["kept"] else RED, width=3)
            score = r.get("clip_score")
            draw.text((x + 4, y + cell), "-" if score is None else f"{score:.1f}", fill="black")
            shown += 1
    path = Path(out) if out else bank / "preview.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path, shown
