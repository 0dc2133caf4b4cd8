"""The offline demo's inputs: everything from images shipped inside installed packages and tiny
random-weight models built from configs, no downloads (``synthgen demo-data``).

1. An object bank cut out of scikit-image's sample images with classic segmentation (Otsu
   threshold + connected components, given silhouettes, ellipse masks).
2. scikit-image's texture and photo samples as backgrounds, and its cat photo for ``predict``.
3. Tiny render models (SD, open_clip, a u2net-style ONNX net) and a tiny VLM, saved as real
   checkpoints are and loaded by path.

The demo itself is the recipe ``recipes/demo.yaml``, run by ``synthgen run`` (``synthgen demo``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from synthgen.bank.format import INDEX_FILE, bank_record, object_file, object_id
from synthgen.errors import UserError
from synthgen.schema import DEMO_DATA_FILE, slugify


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


DEMO_RENDER_CATEGORIES = ("apple", "teddy bear", "umbrella")


def build_demo_photo(folder: Path) -> Path:
    """scikit-image's photo of a cat (Chelsea): the picture `predict` is asked about."""
    data, _, _ = _skimage()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cat.jpg"
    Image.fromarray(np.asarray(data.chelsea()).astype(np.uint8)).save(path, quality=92)
    return path


def tiny_vlm(models: Path, vlm: str) -> Path:
    """A tiny random VLM of the family ``vlm`` saved under ``models`` (loaded by path)."""
    if vlm == "openflamingo":
        from synthgen.demo.tiny_flamingo import build_tiny_openflamingo

        model = models / "tiny-openflamingo"
        if not (model / "checkpoint.pt").exists():
            build_tiny_openflamingo(model, perceiver_depth=1, heads=2, num_latents=8)
        return model
    if vlm != "blip2":
        raise UserError(f"--vlm must be blip2 or openflamingo (got {vlm!r})")
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    model = models / "tiny-blip2"
    if not (model / "config.json").exists():
        build_tiny_blip2(str(model))
    return model


LEARN_SIZE = 112       # canvas of the demo's learning step: the learner's input size (its compose --size)
LEARN_QUERY_TOKENS = 16


def learner_vlm(models: Path, width: int) -> Path:
    """The tiny BLIP-2 the demo trains whole (``train-pin --method full``) on one-object scenes:
    vision tower, Q-Former and language model ``width`` wide, a :data:`LEARN_SIZE` canvas in
    14-pixel patches, :data:`LEARN_QUERY_TOKENS` query tokens (``models/tiny-blip2-learn``)."""
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    model = models / "tiny-blip2-learn"
    config = model / "config.json"
    if not config.exists() or json.loads(config.read_text()).get("vision_config", {}).get("hidden_size") != width:
        build_tiny_blip2(str(model), image_size=LEARN_SIZE, vision_width=width, qformer_width=width,
                         text_width=width, num_query_tokens=LEARN_QUERY_TOKENS)
    return model


def make_demo_data(out: Path, vlm: str = "blip2", learn_width: int = 128, say=print) -> dict:
    """Everything the demo recipe reads, made here offline: an object bank and backgrounds from
    scikit-image's samples, a photo, the names to render, and tiny random-weight models (SD,
    open_clip, a u2net-style ONNX net under rembg's model root, the VLM PIN is trained on, and,
    unless ``learn_width`` is 0, the wider tiny BLIP-2 of :func:`learner_vlm`) saved as real
    checkpoints are. Writes ``demo-data.json`` (what was made) last."""
    import os

    from synthgen.demo.tiny_render import build_tiny_models, rembg_home
    from synthgen.storage import atomic_write_json

    out = Path(out)
    if vlm not in ("blip2", "openflamingo"):
        raise UserError(f"--vlm must be blip2 or openflamingo (got {vlm!r})")
    if learn_width < 0 or learn_width % 2:
        raise UserError(f"--learn-width must be 0 or an even width >= 2 (got {learn_width})")
    bank = build_demo_bank(out / "objects")
    n = sum(1 for _ in open(bank / INDEX_FILE))
    say(f"object bank {bank}: {n} cut-outs from scikit-image samples")
    bgs = build_demo_backgrounds(out / "backgrounds")
    say(f"backgrounds {bgs}: {len(list(bgs.glob('*.jpg')))} scikit-image samples")
    photo = build_demo_photo(out / "photos")
    names = out / "categories.txt"
    names.write_text("\n".join(DEMO_RENDER_CATEGORIES) + "\n")
    models = out / "models"
    if not os.environ.get("U2NET_HOME") and not os.environ.get("REMBG_HOME"):
        os.environ["U2NET_HOME"] = str(models / "rembg")  # keep the ONNX net inside the demo folder
    tiny = build_tiny_models(models)
    say(f"tiny random render models under {models} (SD pipeline, open_clip, ONNX cut-out net in "
        f"{rembg_home()}): loaded by path, like real checkpoints")
    model = tiny_vlm(models, vlm)
    say(f"tiny random {vlm} {model}")
    made = {"objects": str(bank), "backgrounds": str(bgs), "photo": str(photo), "categories": str(names),
            "sd_model": tiny.sd_model, "clip_model": tiny.clip_model, "cutout": tiny.cutout,
            "vlm": vlm, "model": str(model)}
    if learn_width:
        made["learner"] = str(learner_vlm(models, learn_width))
        say(f"tiny random blip2 of width {learn_width} to train whole {made['learner']}")
    atomic_write_json(out / DEMO_DATA_FILE, made)
    return made


def demo_recipe() -> Path:
    """``recipes/demo.yaml`` of a source checkout, or the copy an installed wheel carries."""
    import sys

    for folder in (Path(__file__).resolve().parents[2] / "recipes",
                   Path(sys.prefix) / "share" / "synthgen" / "recipes"):
        if (folder / "demo.yaml").is_file():
            return folder / "demo.yaml"
    raise UserError("recipes/demo.yaml not found (neither in the source checkout nor in "
                    f"{Path(sys.prefix) / 'share' / 'synthgen' / 'recipes'})")


def run_demo(out: Path = Path("demo-out"), num_samples: int = 256, workers: int = 2, steps: int = 150,
             train: bool = True, render: bool = True, vlm: str = "blip2", learn_steps: int = 800) -> int:
    """``synthgen demo``: the demo recipe with these variables (``synthgen run recipes/demo.yaml``);
    its exit status."""
    from synthgen.workflow.report import run_recipe

    if vlm not in ("blip2", "openflamingo"):
        raise UserError(f"--vlm must be blip2 or openflamingo (got {vlm!r})")
    if num_samples < 1 or steps < 1 or workers < 1 or learn_steps < 1:
        raise UserError("--num-samples, --steps, --learn-steps and --workers must be >= 1")
    sets = {"out": str(out), "samples": str(num_samples), "workers": str(workers), "steps": str(steps),
            "eval_every": str(max(1, steps // 2)), "vlm": vlm, "learn_steps": str(learn_steps)}
    skip = ",".join(w for w, keep in (("render", render), ("train", train)) if not keep)
    return run_recipe(demo_recipe(), sets, skip=skip)
