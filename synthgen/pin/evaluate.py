"""Evaluation of a trained PIN (SPEC §4, the authors' protocol) and single-image prediction.

COCO-format sets (COCO val2017, LVIS v1 val, PASCAL VOC converted to COCO json): keep images with
``1..max_objects`` annotations, one query per annotated object with its class name
(``In the image is a {class} located at``), images squashed to the square canvas, boxes scaled
the same way, size buckets on the scaled boxes (medium: area in [(32s)^2, (96s)^2), large:
>= (96s)^2, s = canvas/224). LVIS images, which have no ``file_name``, are found by their
``coco_url`` (``val2017/NAME.jpg`` under ``--images``, or ``NAME.jpg``). Beam search, 3 beams, <= 12 new tokens; output without a parseable
box counts as the one-cell box at the origin (authors' rule) and is counted separately.

RefCOCO: P@0.3 (share of expressions with IoU >= 0.3) and mIoU, the refs pickle read by a
restricted unpickler that admits only plain containers.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from synthgen.atomic import atomic_write
from synthgen.boxes import area, article, format_box, iou, parse_box, scale_box
from synthgen.errors import UserError

BUCKETS = ("small", "medium", "large")


# --- pure maths ----------------------------------------------------------------------------

def one_cell_box(canvas: int, grid: int) -> list[float]:
    c = canvas / grid
    return [0.0, 0.0, c, c]


def box_from_text(text: str, canvas: int, grid: int) -> tuple[list[float], bool]:
    """The predicted box and whether it was parseable (else the one-cell box at the origin)."""
    box = parse_box(text)
    if box is None:
        return one_cell_box(canvas, grid), False
    return box, True


def size_bucket(box: Sequence[float], canvas: int) -> str:
    """COCO size bucket of a box already scaled to the canvas, thresholds scaled by canvas/224."""
    s = canvas / 224.0
    a = area(box)
    if a < (32 * s) ** 2:
        return "small"
    if a < (96 * s) ** 2:
        return "medium"
    return "large"


def random_box(rng: np.random.Generator, canvas: int, grid: int) -> list[float]:
    """Random-box baseline: corners drawn uniformly on the grid lines, non-empty."""
    cell = canvas / grid
    xs = np.sort(rng.choice(grid + 1, size=2, replace=False)) * cell
    ys = np.sort(rng.choice(grid + 1, size=2, replace=False)) * cell
    return [float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1])]


def summarize(records: Iterable[dict], threshold: float = 0.3) -> dict:
    """n, mIoU overall and per bucket (``miou_M``, ``miou_L``, ``miou_S``), unparseable count,
    and P@threshold, from records with ``iou``, ``bucket`` and ``parsed``."""
    recs = list(records)
    out: dict = {"n": len(recs)}
    ious = [r["iou"] for r in recs]
    out["miou"] = float(np.mean(ious)) if ious else float("nan")
    for name, tag in (("small", "S"), ("medium", "M"), ("large", "L")):
        b = [r["iou"] for r in recs if r.get("bucket") == name]
        out[f"n_{tag}"] = len(b)
        out[f"miou_{tag}"] = float(np.mean(b)) if b else float("nan")
    out["unparseable"] = sum(1 for r in recs if not r.get("parsed", True))
    out[f"p@{threshold}"] = float(np.mean([i >= threshold for i in ious])) if ious else float("nan")
    return out


# --- restricted unpickler ------------------------------------------------------------------

class _PlainUnpickler(pickle.Unpickler):
    _ALLOWED = {("builtins", "set"), ("builtins", "frozenset"), ("__builtin__", "set"),
                ("__builtin__", "frozenset")}

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return set if name == "set" else frozenset
        if (module, name) == ("_codecs", "encode"):  # how protocol-2 pickles spell bytes
            import codecs
            return codecs.encode
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only plain containers allowed")


def safe_load_pickle(data: bytes | str | os.PathLike):
    """Unpickle dicts/lists/tuples/sets/str/bytes/numbers only (RefCOCO ``refs(unc).p``).

    Any global (class, function) is refused, so a malicious pickle cannot run code.
    """
    if not isinstance(data, (bytes, bytearray)):
        data = Path(data).read_bytes()
    try:
        return _PlainUnpickler(io.BytesIO(data), encoding="latin1").load()
    except pickle.UnpicklingError as exc:
        raise UserError(f"unsafe or corrupt pickle: {exc}") from None


# --- runs ----------------------------------------------------------------------------------

@dataclass
class Run:
    dir: Path
    meta: dict

    @property
    def canvas(self) -> int:
        return int(self.meta["canvas"])

    @property
    def grid(self) -> int:
        return int(self.meta["grid"])


def read_run(run_dir: str | os.PathLike) -> Run:
    d = Path(run_dir)
    meta_path = d / "pin.json"
    if not meta_path.is_file():
        raise UserError(f"{d} is not a PIN run: no pin.json")
    return Run(d, json.loads(meta_path.read_text()))


def load_run(run_dir: str | os.PathLike, model: str | None = None, device: str | None = None):
    """``(run, adapter)``: the frozen VLM of the run with its trained PIN attached."""
    import torch
    from safetensors.torch import load_file

    from synthgen.pin.adapters import load_adapter
    from synthgen.pin.module import PIN

    run = read_run(run_dir)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float32 if dev == "cpu" else torch.bfloat16
    adapter = load_adapter(run.meta["vlm"], model or run.meta["model"], device=dev, dtype=dtype)
    pin = PIN.from_config(run.meta["pin"])
    pin.load_state_dict(load_file(str(run.dir / "pin.safetensors")))
    pin.to(adapter.device).eval()
    if (pin.num_positions, pin.out_dim) != (adapter.num_positions, adapter.vision_width):
        raise UserError(f"PIN of {run.dir} is {pin.num_positions}x{pin.out_dim} but "
                        f"{adapter.model_id} has {adapter.num_positions}x{adapter.vision_width} vision tokens")
    if adapter.input_size != run.canvas:
        raise UserError(f"run canvas {run.canvas} != {adapter.model_id} input size {adapter.input_size}")
    for p in pin.parameters():
        p.requires_grad_(False)
    adapter.attach_pin(pin)
    return run, adapter


def generate_boxes(adapter, images: Sequence, referrals: Sequence[str], *, canvas: int, grid: int,
                   batch_size: int = 16, num_beams: int = 3, max_new_tokens: int = 12,
                   art: str | None = None) -> list[tuple[str, list[float], bool]]:
    """``(text, box, parsed)`` for each (uint8 ``[3,H,W]`` image, referral) pair."""
    import torch

    out = []
    for i in range(0, len(images), batch_size):
        px = torch.stack(list(images[i:i + batch_size]))
        texts = adapter.generate(px, list(referrals[i:i + batch_size]), num_beams=num_beams,
                                 max_new_tokens=max_new_tokens, art=art)
        for t in texts:
            box, ok = box_from_text(t, canvas, grid)
            out.append((t, box, ok))
    return out


def squash(path: str | os.PathLike, canvas: int):
    """Image file -> (uint8 ``[3,canvas,canvas]`` tensor, original (w, h))."""
    import torch
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        size = im.size
        im = im.resize((canvas, canvas), Image.BICUBIC)
        arr = np.asarray(im).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), size


# --- COCO-format evaluation ----------------------------------------------------------------

def image_file_name(img: dict) -> str:
    """The image's path relative to the set's image root: COCO's ``file_name``, or for LVIS
    (whose image entries carry only ``coco_url``) the last two parts of the URL
    (``val2017/000000000139.jpg``)."""
    name = img.get("file_name")
    if name:
        return str(name)
    return "/".join(str(img["coco_url"]).split("/")[-2:])


def find_image(images_dir: Path, file_name: str) -> Path | None:
    """``images_dir/file_name``, else ``images_dir/basename`` (``--images`` given as the folder of
    one split, e.g. ``val2017/``, for an LVIS name ``val2017/x.jpg``); None when neither exists."""
    for path in (images_dir / file_name, images_dir / Path(file_name).name):
        if path.is_file():
            return path
    return None


def coco_queries(coco: dict, max_objects: int = 3) -> list[dict]:
    """One query per annotation of images with 1..max_objects annotations (crowd ones count
    towards the number of objects but are not queried)."""
    cats = {c["id"]: c["name"].replace("_", " ") for c in coco["categories"]}
    by_image: dict[int, list[dict]] = defaultdict(list)
    for a in coco["annotations"]:
        by_image[a["image_id"]].append(a)
    queries = []
    for img in sorted(coco["images"], key=lambda im: im["id"]):
        anns = by_image.get(img["id"], [])
        if not 1 <= len(anns) <= max_objects:
            continue
        for a in anns:
            if a.get("iscrowd", 0):
                continue
            x, y, w, h = a["bbox"]
            queries.append({"image_id": img["id"], "file_name": image_file_name(img),
                            "width": img["width"], "height": img["height"],
                            "category": cats[a["category_id"]], "box_xyxy": [x, y, x + w, y + h]})
    return queries


def _write_outputs(records: list[dict], metrics: dict, out: Path) -> Path:
    """Write ``preds.jsonl`` and its metrics json atomically (each temp file + rename); both are
    serialised before either is written, so a failure leaves the previous pair untouched."""
    preds = "".join(json.dumps(r) + "\n" for r in records)
    summary = json.dumps(metrics, indent=2) + "\n"
    mpath = out.with_name("metrics.json") if out.name == "preds.jsonl" else out.with_suffix(".metrics.json")
    atomic_write(out, preds)
    atomic_write(mpath, summary)
    return mpath


def _run_and_adapter(run_dir, baseline: str | None, model: str | None, device: str | None):
    """The run's description, and the VLM with PIN attached unless the baseline needs none."""
    if baseline == "random":
        return read_run(run_dir), None
    return load_run(run_dir, model=model, device=device)


def evaluate_coco(run_dir, coco_json, images_dir, *, max_objects: int = 3, out=None,
                  baseline: str | None = None, model: str | None = None, batch_size: int = 16,
                  limit: int | None = None, article_mode: str = "a", seed: int = 0,
                  num_beams: int = 3, max_new_tokens: int = 12, device: str | None = None) -> dict:
    """Run the §4 protocol; write ``preds.jsonl`` + ``metrics.json``; return the metrics."""
    coco_path = Path(coco_json)
    if not coco_path.is_file():
        raise UserError(f"no such COCO json: {coco_path}")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(f"no such image directory: {images_dir}")
    if baseline not in (None, "random"):
        raise UserError(f"unknown --baseline {baseline!r}; the only baseline is 'random'")
    if article_mode not in ("a", "auto"):
        raise UserError("--article must be 'a' or 'auto'")
    try:
        coco = json.loads(coco_path.read_text())
        queries = coco_queries(coco, max_objects)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{coco_path} is not a COCO instances json ({type(exc).__name__}: {exc})") from None
    if limit is not None:
        queries = queries[:limit]
    if not queries:
        raise UserError(f"{coco_path}: no image has 1..{max_objects} annotated objects")

    run, adapter = _run_and_adapter(run_dir, baseline, model, device)
    canvas, grid = run.canvas, run.grid
    rng = np.random.default_rng(seed)

    def text_for(cat: str) -> tuple[str, str]:
        art = article(cat) if article_mode == "auto" else "a"
        return f"In the image is {art} {cat} located at", cat

    records = []
    cache: dict[str, object] = {}
    pending: list[tuple[dict, object, list[float]]] = []

    def flush():
        if not pending:
            return
        if adapter is None:
            preds = [("", random_box(rng, canvas, grid), True) for _ in pending]
        else:
            preds = generate_boxes(adapter, [im for _, im, _ in pending],
                                   [q["category"] for q, _, _ in pending], canvas=canvas, grid=grid,
                                   batch_size=batch_size, num_beams=num_beams,
                                   max_new_tokens=max_new_tokens,
                                   art="a" if article_mode == "a" else None)
        for (q, _, gt), (text, box, ok) in zip(pending, preds):
            records.append({
                "image_id": q["image_id"], "category": q["category"], "query": text_for(q["category"])[0],
                "pred_box": [round(v, 2) for v in box], "gt_box": [round(v, 2) for v in gt],
                "iou": iou(box, gt), "bucket": size_bucket(gt, canvas), "parsed": ok, "output": text,
            })
        pending.clear()

    for q in queries:
        fn = q["file_name"]
        if fn not in cache:
            path = find_image(images_dir, fn)
            if path is None:
                tried = images_dir / fn
                also = f" (nor {images_dir / Path(fn).name})" if Path(fn).name != fn else ""
                raise UserError(f"image {tried}{also} listed in {coco_path.name} not found")
            cache.clear()
            cache[fn] = squash(path, canvas)[0]
        sx, sy = canvas / q["width"], canvas / q["height"]
        pending.append((q, cache[fn], scale_box(q["box_xyxy"], sx, sy)))
        if len(pending) >= batch_size:
            flush()
    flush()

    metrics = summarize(records)
    metrics.update({"set": str(coco_path), "images": len({r["image_id"] for r in records}),
                    "max_objects": max_objects, "canvas": canvas, "grid": grid,
                    "baseline": baseline, "run": str(run.dir)})
    out_path = Path(out) if out else run.dir / "eval" / coco_path.stem / "preds.jsonl"
    metrics["metrics_file"] = str(_write_outputs(records, metrics, out_path))
    metrics["preds_file"] = str(out_path)
    return metrics


# --- RefCOCO -------------------------------------------------------------------------------

def evaluate_refcoco(run_dir, refcoco_dir, images_dir, *, split: str = "testA", out=None,
                     model: str | None = None, batch_size: int = 16, limit: int | None = None,
                     baseline: str | None = None, seed: int = 0, device: str | None = None) -> dict:
    """P@0.3 and mIoU on a RefCOCO split (``refs(unc).p`` + ``instances.json`` in ``refcoco_dir``)."""
    d = Path(refcoco_dir)
    refs_file = next((p for p in (d / "refs(unc).p", d / "refs(google).p") if p.is_file()), None)
    if refs_file is None:
        cands = sorted(d.glob("refs*.p"))
        refs_file = cands[0] if cands else None
    if refs_file is None or not (d / "instances.json").is_file():
        raise UserError(f"{d} needs refs(unc).p and instances.json (the refer toolkit layout)")
    refs = safe_load_pickle(refs_file)
    inst = json.loads((d / "instances.json").read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    imgs = {im["id"]: im for im in inst["images"]}
    queries = []
    for r in refs:
        if r.get("split") != split:
            continue
        a = anns[r["ann_id"]]
        im = imgs[r["image_id"]]
        x, y, w, h = a["bbox"]
        for s in r["sentences"]:
            queries.append({"image_id": r["image_id"], "ref_id": r["ref_id"], "file_name": im["file_name"],
                            "width": im["width"], "height": im["height"], "sentence": s["sent"],
                            "box_xyxy": [x, y, x + w, y + h]})
    if limit is not None:
        queries = queries[:limit]
    if not queries:
        raise UserError(f"{refs_file}: no referring expressions in split {split!r}")
    run, adapter = _run_and_adapter(run_dir, baseline, model, device)
    canvas, grid = run.canvas, run.grid
    rng = np.random.default_rng(seed)
    records = []
    images_dir = Path(images_dir)
    for i in range(0, len(queries), batch_size):
        chunk = queries[i:i + batch_size]
        gts, ims = [], []
        for q in chunk:
            path = images_dir / q["file_name"]
            if not path.is_file():
                raise UserError(f"image {path} not found")
            ims.append(squash(path, canvas)[0])
            gts.append(scale_box(q["box_xyxy"], canvas / q["width"], canvas / q["height"]))
        if adapter is None:
            preds = [("", random_box(rng, canvas, grid), True) for _ in chunk]
        else:
            preds = generate_boxes(adapter, ims, [q["sentence"] for q in chunk], canvas=canvas,
                                   grid=grid, batch_size=batch_size)
        for q, gt, (text, box, ok) in zip(chunk, gts, preds):
            records.append({"image_id": q["image_id"], "ref_id": q["ref_id"], "query": q["sentence"],
                            "pred_box": [round(v, 2) for v in box], "gt_box": [round(v, 2) for v in gt],
                            "iou": iou(box, gt), "bucket": size_bucket(gt, canvas), "parsed": ok,
                            "output": text})
    metrics = summarize(records)
    metrics.update({"set": f"refcoco:{split}", "canvas": canvas, "grid": grid, "run": str(run.dir),
                    "baseline": baseline})
    out_path = Path(out) if out else run.dir / "eval" / f"refcoco-{split}" / "preds.jsonl"
    metrics["metrics_file"] = str(_write_outputs(records, metrics, out_path))
    metrics["preds_file"] = str(out_path)
    return metrics


# --- scene shards (validation during training) ---------------------------------------------

def evaluate_scenes(adapter, shards: Sequence[str], *, canvas: int, grid: int, limit: int = 256,
                    batch_size: int = 16, num_beams: int = 3, max_new_tokens: int = 12) -> dict:
    """mIoU over every object of the first scenes of ``shards`` (one query per object)."""
    from synthgen.pin.data import iter_scene_queries

    items = list(iter_scene_queries(shards, limit=limit, image_size=canvas))
    preds = generate_boxes(adapter, [x[0] for x in items], [x[1] for x in items], canvas=canvas,
                           grid=grid, batch_size=batch_size, num_beams=num_beams,
                           max_new_tokens=max_new_tokens)
    recs = [{"iou": iou(box, it[2]), "bucket": size_bucket(it[2], canvas), "parsed": ok}
            for it, (_, box, ok) in zip(items, preds)]
    return summarize(recs)


# --- predict -------------------------------------------------------------------------------

def predict(run_dir, image, text: str, *, out=None, model: str | None = None,
            device: str | None = None) -> dict:
    """Box for ``text`` in ``image`` (original pixels); draws it to ``out`` when given."""
    from PIL import Image, ImageDraw

    path = Path(image)
    if not path.is_file():
        raise UserError(f"no such image: {path}")
    if not text.strip():
        raise UserError("the object text is empty")
    run, adapter = load_run(run_dir, model=model, device=device)
    px, (w, h) = squash(path, run.canvas)
    (raw, box, ok), = generate_boxes(adapter, [px], [text.strip()], canvas=run.canvas, grid=run.grid)
    orig = scale_box(box, w / run.canvas, h / run.canvas)
    result = {"text": text, "output": raw, "parsed": ok, "box_canvas": box,
              "box": [round(v, 1) for v in orig], "box_text": format_box(orig)}
    if out:
        with Image.open(path) as im:
            im = im.convert("RGB")
            draw = ImageDraw.Draw(im)
            lw = max(2, round(min(w, h) / 150))
            draw.rectangle([orig[0], orig[1], orig[2] - 1, orig[3] - 1], outline=(255, 32, 32), width=lw)
            draw.text((orig[0] + lw + 1, orig[1] + lw + 1), text, fill=(255, 32, 32))
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            im.save(out)
        result["drawn"] = str(out)
    return result
