"""Evaluation of a trained PIN (the authors' protocol) on COCO-format sets, RefCOCO and scenes.

COCO-format sets (COCO val2017, LVIS v1 val, PASCAL VOC converted to COCO json): keep images with
``1..max_objects`` annotations, one query per annotated object with its class name
(``In the image is a {class} located at``), images squashed to the square canvas by
:func:`synthgen.images.fit_square` (the resampling compose uses), boxes scaled the same way, size
buckets on the scaled boxes (:mod:`.protocol`). LVIS images, which have no ``file_name``, are
found by their ``coco_url`` (``val2017/NAME.jpg`` under ``--images``, or ``NAME.jpg``). Beam
search, 3 beams, <= 12 new tokens; output without a parseable box counts as the one-cell box at
the origin (authors' rule) and is counted separately.

RefCOCO: P@0.3 (share of expressions with IoU >= 0.3) and mIoU, the refs pickle read by a
restricted unpickler that admits only plain containers.

Every set is scored by one helper, :func:`score_queries` (model or random baseline).
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from synthgen.errors import UserError
from synthgen.grounding import iou, query_prompt, scale_box
from synthgen.pin.protocol import box_from_text, random_box, size_bucket, summarize
from synthgen.rundir import atomic_write

BASELINES = ("random",)


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


# --- scoring -------------------------------------------------------------------------------

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


def score_queries(items: Iterable[tuple[object, str, list[float], dict]], adapter, *, canvas: int,
                  grid: int, batch_size: int = 16, num_beams: int = 3, max_new_tokens: int = 12,
                  art: str | None = None, rng: np.random.Generator | None = None) -> list[dict]:
    """One record per ``(image uint8 [3,H,W], text, ground-truth box on the canvas, fields)``:
    ``fields`` + predicted box, IoU, size bucket, whether the answer parsed, the raw output.
    ``adapter`` None scores the random-box baseline (drawn from ``rng``)."""
    records: list[dict] = []
    chunk: list[tuple[object, str, list[float], dict]] = []

    def flush() -> None:
        if adapter is None:
            preds = [("", random_box(rng, canvas, grid), True) for _ in chunk]
        else:
            preds = generate_boxes(adapter, [c[0] for c in chunk], [c[1] for c in chunk],
                                   canvas=canvas, grid=grid, batch_size=batch_size,
                                   num_beams=num_beams, max_new_tokens=max_new_tokens, art=art)
        for (_, _, gt, fields), (text, box, ok) in zip(chunk, preds):
            records.append({**fields, "pred_box": [round(v, 2) for v in box],
                            "gt_box": [round(v, 2) for v in gt], "iou": iou(box, gt),
                            "bucket": size_bucket(gt, canvas), "parsed": ok, "output": text})
        chunk.clear()

    for item in items:
        chunk.append(item)
        if len(chunk) >= batch_size:
            flush()
    if chunk:
        flush()
    return records


def canvas_tensor(path: Path, canvas: int):
    """An evaluation image as uint8 ``[3, canvas, canvas]`` (stored pixel grid: the annotations'),
    and its size."""
    import torch

    from synthgen.images import load_canvas

    arr, size = load_canvas(path, canvas, orient=False, what=f"image {path}")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), size


# --- COCO-format sets ----------------------------------------------------------------------

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
    from synthgen.pin.checkpoint import load_run, read_run

    if baseline not in (None, *BASELINES):
        raise UserError(f"unknown --baseline {baseline!r}; the only baseline is 'random'")
    if baseline == "random":
        return read_run(run_dir), None
    return load_run(run_dir, model=model, device=device)


def _finish(records: list[dict], extra: dict, out_path: Path) -> dict:
    metrics = summarize(records)
    metrics.update(extra)
    metrics["metrics_file"] = str(_write_outputs(records, metrics, out_path))
    metrics["preds_file"] = str(out_path)
    return metrics


def evaluate_coco(run_dir, coco_json, images_dir, *, max_objects: int = 3, out=None,
                  baseline: str | None = None, model: str | None = None, batch_size: int = 16,
                  limit: int | None = None, article_mode: str = "a", seed: int = 0,
                  num_beams: int = 3, max_new_tokens: int = 12, device: str | None = None) -> dict:
    """Run the protocol on a COCO-format set; write ``preds.jsonl`` + ``metrics.json``; return
    the metrics."""
    coco_path = Path(coco_json)
    if not coco_path.is_file():
        raise UserError(f"no such COCO json: {coco_path}")
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise UserError(f"no such image directory: {images_dir}")
    if article_mode not in ("a", "auto"):
        raise UserError("--article must be 'a' or 'auto'")
    try:
        queries = coco_queries(json.loads(coco_path.read_text()), max_objects)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{coco_path} is not a COCO instances json ({type(exc).__name__}: {exc})") from None
    queries = queries[:limit] if limit is not None else queries
    if not queries:
        raise UserError(f"{coco_path}: no image has 1..{max_objects} annotated objects")
    run, adapter = _run_and_adapter(run_dir, baseline, model, device)
    art = "a" if article_mode == "a" else None

    def items() -> Iterator[tuple]:
        cached: tuple[str, object] | None = None
        for q in queries:
            fn = q["file_name"]
            if cached is None or cached[0] != fn:
                path = find_image(images_dir, fn)
                if path is None:
                    also = f" (nor {images_dir / Path(fn).name})" if Path(fn).name != fn else ""
                    raise UserError(f"image {images_dir / fn}{also} listed in {coco_path.name} not found")
                cached = (fn, canvas_tensor(path, run.canvas)[0])
            gt = scale_box(q["box_xyxy"], run.canvas / q["width"], run.canvas / q["height"])
            fields = {"image_id": q["image_id"], "category": q["category"],
                      "query": query_prompt(q["category"], art)}
            yield cached[1], q["category"], gt, fields

    records = score_queries(items(), adapter, canvas=run.canvas, grid=run.grid, batch_size=batch_size,
                            num_beams=num_beams, max_new_tokens=max_new_tokens, art=art,
                            rng=np.random.default_rng(seed))
    extra = {"set": str(coco_path), "images": len({r["image_id"] for r in records}),
             "max_objects": max_objects, "canvas": run.canvas, "grid": run.grid,
             "baseline": baseline, "run": str(run.dir)}
    return _finish(records, extra, Path(out) if out else run.dir / "eval" / coco_path.stem / "preds.jsonl")


# --- RefCOCO -------------------------------------------------------------------------------

def refcoco_queries(refcoco_dir: Path, split: str) -> tuple[list[dict], Path]:
    """One query per referring expression of ``split`` (``refs(unc).p`` + ``instances.json``)."""
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
    return queries, refs_file


def evaluate_refcoco(run_dir, refcoco_dir, images_dir, *, split: str = "testA", out=None,
                     model: str | None = None, batch_size: int = 16, limit: int | None = None,
                     baseline: str | None = None, seed: int = 0, device: str | None = None) -> dict:
    """P@0.3 and mIoU on a RefCOCO split (``refs(unc).p`` + ``instances.json`` in ``refcoco_dir``)."""
    queries, refs_file = refcoco_queries(Path(refcoco_dir), split)
    queries = queries[:limit] if limit is not None else queries
    if not queries:
        raise UserError(f"{refs_file}: no referring expressions in split {split!r}")
    run, adapter = _run_and_adapter(run_dir, baseline, model, device)
    images_dir = Path(images_dir)

    def items() -> Iterator[tuple]:
        for q in queries:
            path = images_dir / q["file_name"]
            if not path.is_file():
                raise UserError(f"image {path} not found")
            gt = scale_box(q["box_xyxy"], run.canvas / q["width"], run.canvas / q["height"])
            fields = {"image_id": q["image_id"], "ref_id": q["ref_id"], "query": q["sentence"]}
            yield canvas_tensor(path, run.canvas)[0], q["sentence"], gt, fields

    records = score_queries(items(), adapter, canvas=run.canvas, grid=run.grid, batch_size=batch_size,
                            rng=np.random.default_rng(seed))
    extra = {"set": f"refcoco:{split}", "canvas": run.canvas, "grid": run.grid, "run": str(run.dir),
             "baseline": baseline}
    return _finish(records, extra, Path(out) if out else run.dir / "eval" / f"refcoco-{split}" / "preds.jsonl")


# --- scene shards (validation during training) ---------------------------------------------

def evaluate_scenes(adapter, shards: Sequence[str], *, canvas: int, grid: int, limit: int = 256,
                    batch_size: int = 16, num_beams: int = 3, max_new_tokens: int = 12) -> dict:
    """mIoU over every object of the first scenes of ``shards`` (one query per object)."""
    from synthgen.pin.data import iter_scene_queries

    items = ((img, ref, box, {}) for img, ref, box, _key in
             iter_scene_queries(shards, limit=limit, image_size=canvas))
    return summarize(score_queries(items, adapter, canvas=canvas, grid=grid, batch_size=batch_size,
                                   num_beams=num_beams, max_new_tokens=max_new_tokens))
