"""``synthgen predict``: the box of one text in one image, with a trained PIN."""

from __future__ import annotations

from pathlib import Path

from synthgen.errors import UserError
from synthgen.grounding import format_box, scale_box


def predict(run_dir, image, text: str, *, out=None, model: str | None = None,
            device: str | None = None, vlm_options: dict | None = None) -> dict:
    """Box for ``text`` in ``image`` (original pixels); draws it to ``out`` when given."""
    import torch
    from PIL import Image, ImageDraw, ImageOps

    from synthgen import storage
    from synthgen.images import load_canvas
    from synthgen.pin.checkpoint import load_run
    from synthgen.pin.evaluate import generate_boxes

    path = storage.path(str(image))
    if not path.is_file():
        raise UserError(f"no such image: {path}")
    src = path.read_bytes() if isinstance(path, storage.RemotePath) else path
    if not text.strip():
        raise UserError("the object text is empty")
    from synthgen.pin.checkpoint import read_run

    arr, (w, h) = load_canvas(src, read_run(run_dir).canvas, what=f"image {path}")  # before the model
    run, adapter = load_run(run_dir, model=model, device=device, vlm_options=vlm_options)
    px = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    # predict reads any bracketed box (the lenient rule), as before eval-pin's strict default
    (raw, box, ok), = generate_boxes(adapter, [px], [text.strip()], canvas=run.canvas, grid=run.grid,
                                     parse="lenient")
    orig = scale_box(box, w / run.canvas, h / run.canvas)
    result = {"text": text, "output": raw.strip(), "parsed": ok, "box_canvas": box,
              "box": [round(v, 1) for v in orig], "box_text": format_box(orig)}
    if out:
        import io

        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")  # the frame the box is in
            draw = ImageDraw.Draw(im)
            lw = max(1, round(min(w, h) / 150))
            x1, y1, x2, y2 = orig  # a parsed box may be empty ([56,70,112,70]): draw it as a line
            draw.rectangle([x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)], outline=(255, 32, 32), width=lw)
            draw.text((orig[0] + lw + 1, orig[1] + lw + 1), text, fill=(255, 32, 32))
            if storage.is_remote(str(out)):
                buf = io.BytesIO()
                im.save(buf, format=Image.registered_extensions().get(storage.path(str(out)).suffix.lower(), "PNG"))
                storage.path(str(out)).write_bytes(buf.getvalue())
            else:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                im.save(out)
        result["drawn"] = str(out)
    return result
