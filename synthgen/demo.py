"""The offline demo: everything from images shipped inside installed packages, no downloads.

1. Build an object bank by cutting objects out of scikit-image's sample images with classic
   segmentation (Otsu threshold + connected components, given silhouettes, ellipse masks).
2. Use scikit-image's texture and photo samples as backgrounds.
3. ``compose`` scene shards with the paper's settings on a local Ray, then ``preview`` and
   ``stats`` them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from synthgen.errors import UserError
from synthgen.schema import INDEX_FILE, bank_record, object_file, object_id, slugify


def _skimage():
    try:
        from skimage import data, filters, measure
    except ImportError:  # pragma: no cover - dependency hint for users
        raise UserError("the demo needs scikit-image: pip install 'synthgen[demo]'") from None
    return data, filters, measure


def _rgba(rgb: np.ndarray, mask: np.ndarray) -> Image.Image:
    if rgb.ndim == 2:
        rgb = np.stack([rgb] * 3, -1)
    alpha = np.where(mask, 255, 0).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb[..., :3].astype(np.uint8), alpha]), "RGBA")


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def demo_cutouts() -> list[tuple[str, Image.Image]]:
    """(category, RGBA cut-out) pairs cut out of scikit-image's sample images."""
    data, filters, measure = _skimage()
    out: list[tuple[str, Image.Image]] = []
    coins = data.coins()
    from scipy import ndimage

    fg = ndimage.binary_fill_holes(ndimage.binary_opening(coins > filters.threshold_otsu(coins), iterations=2))
    labels = measure.label(fg)
    for region in measure.regionprops(labels):
        if region.area < 400:
            continue
        y1, x1, y2, x2 = region.bbox
        m = labels[y1:y2, x1:x2] == region.label
        out.append(("coin", _rgba(coins[y1:y2, x1:x2], m)))
    horse = data.horse()  # boolean silhouette, True = background
    m = ~horse
    ys, xs = np.nonzero(m)
    crop = m[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    for colour in ((120, 72, 30), (40, 40, 40), (200, 180, 150)):
        rgb = np.zeros(crop.shape + (3,), np.uint8) + np.array(colour, np.uint8)
        out.append(("horse", _rgba(rgb, crop)))
    cat = data.chelsea()
    h, w = cat.shape[:2]
    out.append(("cat", _rgba(cat, _ellipse(h, w, 150, 230, 140, 150))))
    cup = data.coffee()
    h, w = cup.shape[:2]
    out.append(("coffee cup", _rgba(cup, _ellipse(h, w, 190, 300, 150, 215))))
    rocket = data.rocket()
    h, w = rocket.shape[:2]
    out.append(("rocket", _rgba(rocket, _ellipse(h, w, 210, 320, 200, 40))))
    logo = np.asarray(data.logo())
    out.append(("logo", Image.fromarray(logo.astype(np.uint8), "RGBA")))
    return out


def build_demo_bank(folder: Path) -> Path:
    """Write the demo cut-outs as a synthgen object bank (``index.jsonl`` + RGBA PNGs)."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    counts: dict[str, int] = {}
    for cat, img in demo_cutouts():
        j = counts.get(cat, 0)
        counts[cat] = j + 1
        slug = slugify(cat)
        rel = object_file(slug, j)
        (folder / slug).mkdir(exist_ok=True)
        img.save(folder / rel)
        lines.append(bank_record(id=object_id(slug, j), category=cat, category_id=None, path=rel,
                                 width=img.width, height=img.height, kept=True, reason=None,
                                 source="skimage.data"))
    (folder / INDEX_FILE).write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def build_demo_backgrounds(folder: Path) -> Path:
    data, _, _ = _skimage()
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("brick", "grass", "gravel", "camera", "hubble_deep_field", "astronaut",
                 "chessboard_RGB" if hasattr(data, "chessboard_RGB") else "checkerboard"):
        try:
            arr = getattr(data, name)()
        except Exception:  # noqa: BLE001 - a sample missing from this skimage version
            continue
        Image.fromarray(np.asarray(arr).astype(np.uint8)).save(folder / f"{name}.jpg", quality=92)
    return folder


def _run(con, args: list[str], env: dict | None = None) -> None:
    """Run one ``synthgen`` command as a user would type it, echoing it first."""
    import os
    import shlex
    import subprocess
    import sys

    con.print(f"[cyan]$ synthgen {' '.join(shlex.quote(a) for a in args)}[/]")
    r = subprocess.run([sys.executable, "-m", "synthgen", *args], env={**os.environ, **(env or {})})
    if r.returncode != 0:
        raise UserError(f"demo step failed (exit {r.returncode}): synthgen {' '.join(args)}")


DEMO_RENDER_CATEGORIES = ("apple", "teddy bear", "umbrella")


def render_demo(con, out: Path, workers: int) -> Path:
    """Render a few categories with tiny random-weight models built here (SD UNet/VAE/text
    encoder, open_clip, a u2net-style ONNX net), saved and loaded by path like real ones."""
    import os

    from synthgen.render.tiny import build_tiny_models

    models = out / "models"
    env = {"U2NET_HOME": str(models / "rembg")}  # keep the ONNX cut-out net inside the demo folder
    os.environ.update(env)
    tiny = build_tiny_models(models)
    names = out / "categories.txt"
    names.write_text("\n".join(DEMO_RENDER_CATEGORIES) + "\n")
    bank = out / "rendered"
    _run(con, ["render", "--categories", str(names), "--out", str(bank), "--per-category", "4",
               "--min-per-category", "1", "--batch-size", "4", *tiny.as_cli_args()], env=env)
    _run(con, ["preview", str(bank), "-o", str(out / "rendered-preview.png")], env=env)
    return bank


def _tiny_vlm(con, out: Path, vlm: str) -> Path:
    """A tiny random VLM of the family ``vlm`` saved under ``out/models`` (loaded by path)."""
    if vlm == "openflamingo":
        from synthgen.pin.tiny_flamingo import build_tiny_openflamingo

        model = out / "models" / "tiny-openflamingo"
        if not (model / "checkpoint.pt").exists():
            con.print(f"[bold]3. a tiny random OpenFlamingo[/] saved to {model} (checkpoint.pt, a MosaicML-format "
                      "MPT, an open_clip ViT: loaded by path, like the real one)")
            build_tiny_openflamingo(model, perceiver_depth=1, heads=2, num_latents=8)
        return model
    from synthgen.pin.tiny import build_tiny_blip2

    model = out / "models" / "tiny-blip2"
    if not (model / "config.json").exists():
        con.print(f"[bold]3. a tiny random BLIP-2[/] saved to {model} (loaded by path, like a real checkpoint)")
        build_tiny_blip2(str(model))
    return model


def run_demo(out: Path, num_samples: int = 256, workers: int = 2, steps: int = 150,
             train: bool = True, render: bool = True, vlm: str = "blip2") -> None:
    from rich.console import Console

    from synthgen.compose.config import ComposeParams
    from synthgen.compose.export import export_coco
    from synthgen.compose.inspection import collect_stats, contact_sheet, print_stats
    from synthgen.compose.run import ComposeJob, run_compose

    con = Console(stderr=True)
    out = Path(out)
    bank = build_demo_bank(out / "objects")
    bgs = build_demo_backgrounds(out / "backgrounds")
    con.print(f"[bold]1. object bank[/] {bank} ({sum(1 for _ in open(bank / 'index.jsonl'))} cut-outs "
              f"from scikit-image samples); backgrounds {bgs}")
    con.print("[bold]2. compose[/] (paper settings: a_max=3, s_min=0.3,0.2,0.1, o_max=0.5, 224 px, 16x16 grid)")
    for name, n, seed in (("shards", num_samples, 0), ("val-shards", 32, 1)):
        job = ComposeJob(objects=str(bank), backgrounds=str(bgs), out=str(out / name), num_samples=n,
                         samples_per_shard=max(8, n // 4), params=ComposeParams(masks=True, seed=seed))
        run_compose(job, workers=workers)
    sheet = out / "preview.png"
    contact_sheet(str(out / "shards"), sheet, n=16)
    con.print(f"   preview: {sheet}")
    print_stats(collect_stats(str(out / "shards")), top=10)
    if render:
        con.print("[bold]2b. render[/] objects from text with tiny random models (SD -> rembg -> CLIP "
                  "filter), then compose reads that bank unchanged")
        rendered = render_demo(con, out, workers)
        run_compose(ComposeJob(objects=str(rendered), backgrounds=str(bgs), out=str(out / "rendered-shards"),
                               num_samples=16, samples_per_shard=16), workers=workers)
    if not train:
        return
    if vlm not in ("blip2", "openflamingo"):
        raise UserError(f"--vlm must be blip2 or openflamingo (got {vlm!r})")
    model = _tiny_vlm(con, out, vlm)
    run = out / "runs" / f"pin-{vlm}"
    con.print(f"[bold]4. train PIN[/] on the frozen tiny {vlm} (random weights: this shows the "
              "pipeline end to end; its numbers are a smoke test, not results)")
    _run(con, ["train-pin", str(out / "shards"), "--vlm", vlm, "--model", str(model), "--out", str(run),
               "--steps", str(steps), "--batch-size", "16", "--workers", "1", "--hidden", "64,64",
               "--val", str(out / "val-shards"), "--eval-every", str(max(1, steps // 2)),
               *(["--resume"] if (run / "pin.json").exists() else [])])
    coco = out / "val-coco"
    export_coco(str(out / "val-shards"), coco)
    con.print("[bold]5. evaluate[/] (the authors' protocol on a COCO-format export of held-out scenes)")
    _run(con, ["eval-pin", str(run), "--coco-json", str(coco / "instances.json"), "--images",
               str(coco / "images"), "--out", str(out / "preds.jsonl")])
    _run(con, ["eval-pin", str(run), "--coco-json", str(coco / "instances.json"), "--images",
               str(coco / "images"), "--baseline", "random", "--out", str(out / "preds-random.jsonl")])
    first = sorted((coco / "images").glob("*.jpg"))[0]
    cats = json.loads((coco / "instances.json").read_text())
    name = next(c["name"] for c in cats["categories"]
                if c["id"] == next(a["category_id"] for a in cats["annotations"] if a["image_id"] == 1))
    con.print("[bold]6. predict[/]")
    _run(con, ["predict", str(run), str(first), name, "-o", str(out / "predict.png")])
    con.print(f"[green]demo done[/]: everything is under {out}")
