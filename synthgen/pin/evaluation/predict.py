"""``synthgen predict``: the box of one text in one image, with a trained PIN."""

from __future__ import annotations

from synthgen.errors import UserError
from synthgen.grounding import format_box, scale_box

BOX_COLOUR = (255, 32, 32)
FALLBACK_COLOUR = (128, 128, 128)
FALLBACK_LABEL = "no box in answer: fallback"


def draw_prediction(im, box, text: str, *, parsed: bool = True):
    """Draw ``box`` (pixels of ``im``, x2/y2 exclusive) on the RGB image ``im`` in place and return it.
    A parsed box: solid red, labelled with ``text``. The fallback box of an unparseable answer:
    dashed grey, labelled ``no box in answer: fallback``, so that a picture never shows it as an answer."""
    from PIL import ImageDraw

    draw = ImageDraw.Draw(im)
    w, h = im.size
    lw = max(1, round(min(w, h) / 150))
    x1, y1, x2, y2 = box  # a parsed box may be empty ([56,70,112,70]): draw it as a line
    rect = [x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)]
    font = _font(w, h)
    if parsed:
        draw.rectangle(rect, outline=BOX_COLOUR, width=lw)
        _label(draw, (x1, y1), text, BOX_COLOUR, font, above=True)
        return im
    dash = max(2, 2 * lw)
    left, top, right, bottom = rect
    for a in range(int(left), int(right) + 1, 2 * dash):  # top and bottom edges
        e = min(a + dash - 1, right)
        draw.line([(a, top), (e, top)], fill=FALLBACK_COLOUR, width=lw)
        draw.line([(a, bottom), (e, bottom)], fill=FALLBACK_COLOUR, width=lw)
    for a in range(int(top), int(bottom) + 1, 2 * dash):  # left and right edges
        e = min(a + dash - 1, bottom)
        draw.line([(left, a), (left, e)], fill=FALLBACK_COLOUR, width=lw)
        draw.line([(right, a), (right, e)], fill=FALLBACK_COLOUR, width=lw)
    _label(draw, (left, bottom + lw + 1), FALLBACK_LABEL, FALLBACK_COLOUR, font, above=False)
    return im


def _font(w: int, h: int):
    from synthgen.fonts import font

    return font(max(11, min(w, h) // 32))[0]


def _label(draw, at: tuple[float, float], text: str, colour, font, *, above: bool) -> None:
    """``text`` in white on a ``colour`` plate, readable on any image: above the point ``at`` (a
    box's top-left corner) where there is room, else below it."""
    pad = 2
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 2 * pad, bottom - top + 2 * pad
    x = min(max(0.0, at[0]), max(0.0, draw.im.size[0] - tw))
    y = at[1] - th if above and at[1] - th >= 0 else at[1]
    draw.rectangle([x, y, x + tw - 1, y + th - 1], fill=colour)
    draw.text((x + pad - left, y + pad - top), text, fill=(255, 255, 255), font=font)


def predict(run_dir, image, text: str, *, out=None, model: str | None = None,
            device: str | None = None, vlm_options: dict | None = None) -> dict:
    """Box for ``text`` in ``image`` (original pixels); draws it to ``out`` when given. An answer
    with no box gives the one-cell box at the origin with ``parsed`` False and ``fallback`` True
    (drawn dashed grey, see :func:`draw_prediction`)."""
    import torch
    from PIL import Image, ImageOps

    from synthgen import storage
    from synthgen.images import load_canvas
    from synthgen.pin.evaluation.evaluate import generate_boxes
    from synthgen.pin.training.checkpoint import load_run

    if out:  # (before the model: a name it cannot write is a mistake to hear of first)
        from synthgen.views import SHEET_SUFFIXES

        storage.output_file(out, "--out", SHEET_SUFFIXES)
    path = storage.path(str(image))
    if not path.is_file():
        raise UserError(f"no such image: {path}")
    src = path.source()
    if not text.strip():
        raise UserError("the object text is empty")
    from synthgen.pin.training.checkpoint import read_run

    arr, (w, h) = load_canvas(src, read_run(run_dir).canvas, what=f"image {path}")  # before the model
    run, adapter = load_run(run_dir, model=model, device=device, vlm_options=vlm_options)
    px = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    # predict reads any bracketed box (the lenient rule), as before eval-pin's strict default
    (raw, box, ok), = generate_boxes(adapter, [px], [text.strip()], canvas=run.canvas, grid=run.grid,
                                     parse="lenient")
    orig = scale_box(box, w / run.canvas, h / run.canvas)
    # an unparseable answer still gets a box (the one-cell box at the origin, what eval-pin scores it
    # as), but never passes for a real one: "fallback" says so, "output" is the raw answer
    result = {"text": text, "output": raw.strip(), "parsed": ok, "fallback": not ok, "box_canvas": box,
              "box": [round(v, 1) for v in orig], "box_text": format_box(orig)}
    if out:
        import io

        buf = io.BytesIO()
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")  # the frame the box is in
            draw_prediction(im, orig, text, parsed=ok)
            im.save(buf, format=Image.registered_extensions().get(storage.path(out).suffix.lower(), "PNG"))
        try:
            storage.atomic_write(out, buf.getvalue())
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
        result["drawn"] = str(out)
    return result
