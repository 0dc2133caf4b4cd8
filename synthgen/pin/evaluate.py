"""Evaluation of a trained PIN (the authors' protocol) on COCO-format sets, RefCOCO and scenes.

COCO-format sets (COCO val2017, LVIS v1 val, PASCAL VOC converted to COCO json): keep images with
``1..max_objects`` annotations, one query per annotated object with its class name
(``In the image is a {class} located at``), images squashed to the square canvas by
:func:`synthgen.images.fit_square` (the resampling compose uses), boxes scaled the same way, size
buckets on the scaled boxes (:mod:`.protocol`). LVIS images, which have no ``file_name``, are
found by their ``coco_url`` (``val2017/NAME.jpg`` under ``--images``, or ``NAME.jpg``). Beam
search, 3 beams, <= 12 new tokens; output without a parseable box counts as the one-cell box at
the origin (authors' rule) and is counted separately.

RefCOCO: P@0.3 (share of expressions with IoU >= 0.3) and mIoU. Reading the sets (and what is
skipped, and why) is :mod:`.eval_sets`; an image that cannot be read, or that lies outside
``--images``, is skipped with its queries and counted (``metrics.json`` ``skipped``).

Every set is scored by one helper, :func:`score_queries` (model or random baseline).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from synthgen.errors import UserError
from synthgen.grounding import iou, query_prompt, scale_box
from synthgen.pin.eval_sets import Skips, coco_queries, find_image, refcoco_queries, safe_load_pickle

__all__ = ["evaluate_coco", "evaluate_refcoco", "evaluate_scenes", "safe_load_pickle", "score_queries"]
from synthgen.pin.protocol import box_from_text, size_bucket, summarize, uniform_box
from synthgen.rundir import atomic_write

BASELINES = ("random",)


# --- scoring -------------------------------------------------------------------------------

def generate_boxes(adapter, images: Sequence, referrals: Sequence[str], *, canvas: int, grid: int,
                   batch_size: int = 16, num_beams: int = 3, max_new_tokens: int = 12,
                   art: str | None = None, parse: str = "strict") -> list[tuple[str, list[float], bool]]:
    """``(text, box, parsed)`` for each (uint8 ``[3,H,W]`` image, referral) pair: the raw
    continuation, its box by the ``parse`` rule (:func:`~synthgen.pin.protocol.box_from_text`)
    and whether that rule accepted it."""
    import torch

    out = []
    for i in range(0, len(images), batch_size):
        px = torch.stack(list(images[i:i + batch_size]))
        texts = adapter.generate(px, list(referrals[i:i + batch_size]), num_beams=num_beams,
                                 max_new_tokens=max_new_tokens, art=art)
        for t in texts:
            box, ok = box_from_text(t, canvas, grid, parse)
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
            preds = [("", uniform_box(rng, canvas, grid), True) for _ in chunk]
        else:
            preds = generate_boxes(adapter, [c[0] for c in chunk], [c[1] for c in chunk],
                                   canvas=canvas, grid=grid, batch_size=batch_size,
                                   num_beams=num_beams, max_new_tokens=max_new_tokens, art=art,
                                   parse="lenient")
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


def _image(path: Path | None, name: str, canvas: int, skips: Skips):
    """The canvas tensor of an evaluation image, or None (skipped and counted) when it cannot be
    read; a missing image is an error (the wrong --images, most likely)."""
    if path is None:
        return None
    try:
        return canvas_tensor(path, canvas)[0]
    except UserError as exc:
        skips.add("unreadable_image", exc)
        return None


def _locate(images_dir: Path, fn: str, set_name: str, skips: Skips) -> Path | None:
    try:
        path = find_image(images_dir, fn)
    except PermissionError as exc:
        skips.add("outside_images", exc)
        return None
    if path is None:
        also = f" (nor {images_dir / Path(fn).name})" if Path(fn).name != fn else ""
        raise UserError(f"image {images_dir / fn}{also} listed in {set_name} not found")
    return path


def _finish(records: list[dict], extra: dict, out_path: Path, skips: Skips | None = None) -> dict:
    if not records:
        why = "; ".join(f"{len(v)} {k}" for k, v in (skips or {}).items())
        raise UserError(f"no query could be scored ({why or 'no queries'})")
    metrics = summarize(records)
    metrics.update(extra)
    metrics["skipped"] = (skips or Skips()).summary()
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
    skips = Skips()
    try:
        queries = coco_queries(json.loads(coco_path.read_bytes()), max_objects, skips)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{coco_path} is not valid JSON ({exc})") from None
    except UserError as exc:
        raise UserError(f"{coco_path}: {exc}") from None
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
                cached = (fn, _image(_locate(images_dir, fn, coco_path.name, skips), fn, run.canvas, skips))
            if cached[1] is None:
                continue
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
    return _finish(records, extra, Path(out) if out else run.dir / "eval" / coco_path.stem / "preds.jsonl",
                   skips)


# --- RefCOCO -------------------------------------------------------------------------------

def evaluate_refcoco(run_dir, refcoco_dir, images_dir, *, split: str = "testA", out=None,
                     model: str | None = None, batch_size: int = 16, limit: int | None = None,
                     baseline: str | None = None, seed: int = 0, device: str | None = None) -> dict:
    """P@0.3 and mIoU on a RefCOCO split (``refs(unc).p`` + ``instances.json`` in ``refcoco_dir``)."""
    skips = Skips()
    queries, refs_file = refcoco_queries(Path(refcoco_dir), split, skips)
    queries = queries[:limit] if limit is not None else queries
    if not queries:
        raise UserError(f"{refs_file}: no referring expressions in split {split!r}")
    run, adapter = _run_and_adapter(run_dir, baseline, model, device)
    images_dir = Path(images_dir)

    def items() -> Iterator[tuple]:
        cached: tuple[str, object] | None = None
        for q in queries:
            fn = q["file_name"]
            if cached is None or cached[0] != fn:
                cached = (fn, _image(_locate(images_dir, fn, refs_file.name, skips), fn, run.canvas, skips))
            if cached[1] is None:
                continue
            gt = scale_box(q["box_xyxy"], run.canvas / q["width"], run.canvas / q["height"])
            fields = {"image_id": q["image_id"], "ref_id": q["ref_id"], "query": q["sentence"]}
            yield cached[1], q["sentence"], gt, fields

    records = score_queries(items(), adapter, canvas=run.canvas, grid=run.grid, batch_size=batch_size,
                            rng=np.random.default_rng(seed))
    extra = {"set": f"refcoco:{split}", "canvas": run.canvas, "grid": run.grid, "run": str(run.dir),
             "baseline": baseline}
    return _finish(records, extra, Path(out) if out else run.dir / "eval" / f"refcoco-{split}" / "preds.jsonl",
                   skips)


# --- scene shards (validation during training) ---------------------------------------------

def evaluate_scenes(adapter, shards: Sequence[str], *, canvas: int, grid: int, limit: int = 256,
                    batch_size: int = 16, num_beams: int = 3, max_new_tokens: int = 12) -> dict:
    """mIoU over every object of the first scenes of ``shards`` (one query per object)."""
    from synthgen.pin.data import iter_scene_queries

    bad: dict[str, int] = {}
    items = ((img, ref, box, {}) for img, ref, box, _key in
             iter_scene_queries(shards, limit=limit, image_size=canvas, bad=bad))
    m = summarize(score_queries(items, adapter, canvas=canvas, grid=grid, batch_size=batch_size,
                                num_beams=num_beams, max_new_tokens=max_new_tokens))
    m["bad_scenes"] = bad
    return m
