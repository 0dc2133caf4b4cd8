"""Evaluation of a trained PIN (the authors' protocol by default) on COCO-format sets, PASCAL VOC,
RefCOCO and scene shards.

COCO-format sets (COCO val2017, LVIS v1 val, VOC converted to COCO json) and VOC (the devkit
folder): keep images with ``1..max_objects`` annotations, one query per annotated object with its
class name (``In the image is {a|an} {class} located at``), images squashed to the square canvas
by :func:`synthgen.images.fit_square` (the resampling compose uses), ground-truth boxes put on the
canvas by the authors' truncation rules (or exactly), size buckets on those boxes. LVIS images,
which have no ``file_name``, are found by their ``coco_url`` (``val2017/NAME.jpg`` under
``--images``, or ``NAME.jpg``). Beam search, 3 beams, <= 12 new tokens; answers are read by the
authors' strict grid parser (or the lenient one), and one that is rejected counts as the one-cell
box at the origin; how many answers each rule rejects is reported either way.

RefCOCO: P@0.3 (share of expressions with IoU >= 0.3) and mIoU. Reading the sets (and what is
skipped, and why) is :mod:`.eval_sets`; the rules and options are :mod:`.protocol`
(:class:`~synthgen.pin.evaluation.protocol.EvalProtocol`, recorded in ``metrics.json`` under
``protocol``). An image that cannot be read, or that lies outside ``--images``, is skipped with
its queries and counted (``metrics.json`` ``skipped``).

Every set is scored by one helper, :func:`score_queries` (model or baseline).
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from synthgen import storage
from synthgen.errors import UserError
from synthgen.grounding import iou, query_prompt, scale_box
from synthgen.pin.evaluation import protocol as P
from synthgen.pin.evaluation.protocol import EvalProtocol, box_from_text, parsed_by, size_bucket, summarize, uniform_box
from synthgen.pin.evaluation.sets import Skips, coco_queries, find_image, refcoco_queries, safe_load_pickle, voc_queries
from synthgen.schema import metrics_file
from synthgen.storage import atomic_write

__all__ = ["EvalProtocol", "evaluate_coco", "evaluate_refcoco", "evaluate_scenes", "evaluate_voc",
           "safe_load_pickle", "score_queries"]

BASELINES = P.BASELINES
_baseline = P.baseline_boxes


# --- scoring -------------------------------------------------------------------------------

def generate_boxes(adapter, images: Sequence, referrals: Sequence[str], *, canvas: int, grid: int,
                   batch_size: int = 16, num_beams: int = 3, max_new_tokens: int = 12,
                   art: str | None = None, parse: str = "strict", native: bool = False,
                   image_ids: Sequence | None = None) -> list[tuple[str, list[float], bool]]:
    """``(text, box, parsed)`` for each (uint8 ``[3,H,W]`` image, referral) pair: the raw
    continuation, its box by the ``parse`` rule (:func:`~synthgen.pin.evaluation.protocol.box_from_text`)
    and whether that rule accepted it. ``native``: the VLM's own grounding answer instead
    (``adapter.native_boxes``), a box it does not give counting as the one-cell box. ``image_ids``:
    each query's image, for an adapter that picks its prompt by it (the in-context baseline)."""
    import torch

    out = []
    for i in range(0, len(images), batch_size):
        px = torch.stack(list(images[i:i + batch_size]))
        if native:
            out += [(t, b, True) if b is not None else (t, P.one_cell_box(canvas, grid, parse), False)
                    for t, b in adapter.native_boxes(px, list(referrals[i:i + batch_size]))]
            continue
        keys = {} if image_ids is None else {"image_ids": list(image_ids[i:i + batch_size])}
        texts = adapter.generate(px, list(referrals[i:i + batch_size]), num_beams=num_beams,
                                 max_new_tokens=max_new_tokens, art=art, **keys)
        for t in texts:
            box, ok = box_from_text(t, canvas, grid, parse)
            out.append((t, box, ok))
    return out


def score_queries(items: Iterable[tuple[object, str, list[float], dict]], adapter, *, canvas: int,
                  grid: int, batch_size: int = 16, num_beams: int = 3, max_new_tokens: int = 12,
                  art: str | None = None, parse: str = "strict",
                  baseline: Callable[[dict], list[float]] | None = None,
                  rng: np.random.Generator | None = None, native: bool = False) -> list[dict]:
    """One record per ``(image uint8 [3,H,W], text, ground-truth box on the canvas, fields)``:
    ``fields`` + predicted box, IoU, size bucket, whether the answer parsed (by ``parse``, and by
    each rule: ``parsed_strict`` / ``parsed_lenient``), the raw output. ``adapter`` None scores a
    baseline instead: ``baseline(fields)`` gives each query's box, called in query order (without
    one, a uniform grid box drawn from ``rng``). ``native``: the adapter's VLM answers with its
    own grounding output (PIN off), ``parsed`` = a box was decoded from it."""
    records: list[dict] = []
    chunk: list[tuple[object, str, list[float], dict]] = []

    def flush() -> None:
        if adapter is None:
            pick = baseline or (lambda _f: uniform_box(rng, canvas, grid))
            preds = [("", pick(c[3]), True) for c in chunk]
        else:
            preds = generate_boxes(adapter, [c[0] for c in chunk], [c[1] for c in chunk],
                                   canvas=canvas, grid=grid, batch_size=batch_size,
                                   num_beams=num_beams, max_new_tokens=max_new_tokens, art=art,
                                   parse=parse, native=native, image_ids=[c[3].get("image_id") for c in chunk]
                                   if getattr(adapter, "takes_image_ids", False) else None)
        for (_, _, gt, fields), (text, box, ok) in zip(chunk, preds):
            rec = {**fields, "pred_box": [round(v, 2) for v in box],
                   "gt_box": [round(v, 2) for v in gt], "iou": iou(box, gt),
                   "bucket": size_bucket(gt, canvas), "parsed": ok, "output": text}
            if adapter is not None and not native:
                rec.update({f"parsed_{k}": v for k, v in parsed_by(text, canvas, grid).items()})
            records.append(rec)
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

    arr, size = load_canvas(storage.path(path).source(), canvas, orient=False, what=f"image {path}")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous(), size


# --- shared by the sets --------------------------------------------------------------------

def _write_outputs(records: list[dict], metrics: dict, out: Path) -> Path:
    """Write ``preds.jsonl`` and its metrics json atomically (each temp file + rename); both are
    serialised before either is written, so a failure leaves the previous pair untouched."""
    preds = "".join(json.dumps(r) + "\n" for r in records)
    summary = json.dumps(metrics, indent=2) + "\n"
    mpath = metrics_file(storage.path(out))
    atomic_write(out, preds)
    atomic_write(mpath, summary)
    return mpath


def _protocol(protocol: EvalProtocol | None, options: dict) -> EvalProtocol:
    """``protocol`` (default: the authors') with ``options`` (its field names) applied, checked."""
    proto = dataclasses.replace(protocol or EvalProtocol(), **options)
    problems = proto.problems()
    if problems:
        raise UserError("; ".join(problems))
    return proto


def _run_and_adapter(run_dir, baseline: str | None, model: str | None, device: str | None,
                     vlm_options: dict | None = None):
    """The run's description, and the VLM with PIN attached unless a baseline replaces it."""
    from synthgen.pin.training.checkpoint import load_run, read_run

    if baseline not in (None, *BASELINES):
        raise UserError(f"unknown --baseline {baseline!r}: random (ground-truth boxes of other "
                        "images, the paper's), uniform (uniform boxes on the grid), prior (the best constant box "
                        "of the other half of the set), raw (the VLM without PIN), native (the "
                        "VLM's own grounding output, PaliGemma and Qwen2.5-VL) or in-context (OpenFlamingo)")
    if baseline in ("raw", "in-context"):  # the run's VLM without PIN, PIN's question (the paper's "raw" row)
        run, adapter = load_run(run_dir, model=model, device=device, vlm_options=vlm_options)
        adapter.detach_pin()
        return run, adapter
    if baseline == "native":  # the run's VLM without PIN, asked its own way
        from synthgen.pin.models.adapters import adapter_class

        vlm = read_run(run_dir).meta["vlm"]
        if getattr(adapter_class(vlm), "native_prompt", None) is None:
            raise UserError(f"--baseline native: {vlm} has no native detector (paligemma and qwen2_5_vl have one)")
        run, adapter = load_run(run_dir, model=model, device=device, vlm_options=vlm_options)
        adapter.detach_pin()
        return run, adapter
    if baseline is not None:
        return read_run(run_dir), None
    return load_run(run_dir, model=model, device=device, vlm_options=vlm_options)


def _locate(images_dir: Path, fn: str, set_name: str, skips: Skips, missing_ok: bool = False) -> Path | None:
    try:
        path = find_image(images_dir, fn)
    except PermissionError as exc:
        skips.add("outside_images", exc)
        return None
    if path is None:
        if missing_ok:
            skips.add("missing_image", images_dir / fn)
            return None
        also = f" (nor {images_dir / Path(fn).name})" if Path(fn).name != fn else ""
        raise UserError(f"image {images_dir / fn}{also} listed in {set_name} not found")
    return path


def _score_set(queries: list[dict], run, adapter, proto: EvalProtocol, *, images_dir: Path, set_name: str,
               skips: Skips, gt: Callable[[dict], list[float]], text: Callable[[dict], str],
               fields: Callable[[dict], dict], baseline, batch_size: int, missing_ok: bool = False,
               limit: int | None = None) -> tuple[list[dict], dict]:
    """Score the first ``limit`` of ``queries`` (images read once each, unreadable ones skipped and
    counted); also returns counts about the images (``size_mismatch_images``: the file's size is not
    the annotated one, which the authors' loaders would scale by). The in-context baseline draws
    its contexts from every query's image, once per repeat."""
    counts: Counter = Counter()
    pool, queries = queries, queries[:limit] if limit is not None else queries

    def items(first: bool = True) -> Iterator[tuple]:
        sk, n = (skips, counts) if first else (Skips(), Counter())  # (another repeat counts nothing again)
        cached: tuple[str, object] | None = None
        for q in queries:
            fn = q["file_name"]
            if cached is None or cached[0] != fn:
                path = _locate(images_dir, fn, set_name, sk, missing_ok)
                img = None
                if path is not None:
                    try:
                        img, size = canvas_tensor(path, run.canvas)
                        n["size_mismatch_images"] += tuple(size) != (q["width"], q["height"])
                    except UserError as exc:
                        sk.add("unreadable_image", exc)
                cached = (fn, img)
            if cached[1] is None:
                continue
            yield cached[1], text(q), gt(q), fields(q)

    def score(model, first: bool = True) -> list[dict]:
        return score_queries(items(first), model, canvas=run.canvas, grid=run.grid, batch_size=batch_size,
                             num_beams=proto.num_beams, max_new_tokens=proto.max_new_tokens, art=proto.art,
                             parse=proto.parse, baseline=baseline, native=proto.baseline == "native")

    if proto.baseline == "in-context":  # contexts: the images of every query (an unreadable one is not drawn)
        from synthgen.pin.evaluation import incontext as ic

        def load(fn: str):
            path = _locate(images_dir, fn, set_name, Skips(), missing_ok=True)
            try:
                return canvas_tensor(path, run.canvas)[0] if path is not None else None
            except UserError:
                return None

        ctx = ic.in_context(adapter, ((q["image_id"], q["file_name"], text(q), gt(q)) for q in pool), load,
                            shots=proto.shots, seed=proto.seed, canvas=run.canvas, grid=run.grid, set_name=set_name)
        records = ic.score_repeats(lambda r: score(ctx, r == 0), ctx, proto.repeats)
    else:
        records = score(adapter)
    extra = {"native": adapter.native_settings} if proto.baseline == "native" else {}
    return records, {"size_mismatch_images": counts["size_mismatch_images"], **extra}


def preds_path(run_dir, set_name: str, proto: EvalProtocol, kind: str, out=None):
    """Where the predictions go: ``out``, else ``RUN/eval/SET/LABEL/preds.jsonl`` with LABEL the
    :meth:`~synthgen.pin.evaluation.protocol.EvalProtocol.label` (model or baseline, and the protocol's
    choices), so a baseline or another protocol never lands on the model's numbers."""
    if out:
        return storage.path(str(out))
    return storage.path(str(run_dir)) / "eval" / set_name / proto.label(kind) / "preds.jsonl"


def refuse_existing(path, overwrite: bool) -> None:
    """An earlier evaluation's results are never replaced silently (checked before any work)."""
    metrics = metrics_file(path)
    if overwrite or not (metrics.exists() or path.exists()):
        return
    try:
        old = json.loads(metrics.read_text())
        what = f" (mIoU {old['miou']:.4f} over {old['n']} queries)" if isinstance(old.get("miou"), float) else ""
    except (OSError, ValueError, KeyError, TypeError):
        what = ""
    raise UserError(f"{metrics if metrics.exists() else path} holds an earlier evaluation{what}: pass "
                    "--overwrite to replace it, or --out another path")


def _finish(records: list[dict], extra: dict, out_path: Path, skips: Skips | None = None) -> dict:
    if not records:
        why = "; ".join(f"{len(v)} {k}" for k, v in (skips or {}).items())
        raise UserError(f"no query could be scored ({why or 'no queries'})")
    metrics = P.summarize_repeats(records)  # (summarize, or mean +- std over the in-context repeats)
    metrics.update(extra)
    metrics["skipped"] = (skips or Skips()).summary()
    metrics["metrics_file"] = str(_write_outputs(records, metrics, out_path))
    metrics["preds_file"] = str(out_path)
    return metrics


def _extra(kind: str, set_name: str, records: list[dict], run, proto: EvalProtocol, counts: dict) -> dict:
    """The metrics besides the scores: what was evaluated, and how."""
    return {"set": set_name, "images": len({r["image_id"] for r in records}),
            "protocol": proto.record(kind, run.canvas, run.grid), **counts,
            # kept at the top level for earlier readers of metrics.json
            "max_objects": proto.max_objects, "canvas": run.canvas, "grid": run.grid,
            "baseline": proto.baseline, "run": str(run.dir)}


def _local_only(folder, option: str) -> None:
    """VOC devkits and RefCOCO folders are read by path (thousands of small files, a pickle):
    an object-store URL is refused with one line."""
    if storage.is_remote(folder):  # inherent: these readers open local files by path
        raise UserError(f"{option} reads a local folder, not {folder}: copy it to a local disk "
                        "(eval-pin reads the run folder, --coco-json and --images from URLs)")


# --- COCO-format sets ----------------------------------------------------------------------

def _coco_gt(proto: EvalProtocol, canvas: int) -> Callable[[dict], list[float]]:
    """A COCO-format query's ground-truth box on the canvas: the authors' truncation, or exact floats."""
    def gt(q: dict) -> list[float]:
        if proto.gt_boxes == "exact":  # today's float scaling of the corners
            return scale_box(q["box_xyxy"], canvas / q["width"], canvas / q["height"])
        return P.coco_box_on_canvas(q["bbox"], q["width"], q["height"], canvas, "authors")

    return gt


def evaluate_coco(run_dir, coco_json, images_dir, *, out=None, model: str | None = None, batch_size: int = 16,
                  limit: int | None = None, device: str | None = None, protocol: EvalProtocol | None = None,
                  vlm_options: dict | None = None, overwrite: bool = False, **options) -> dict:
    """Run the protocol on a COCO-format set; write ``preds.jsonl`` + ``metrics.json`` (see
    :func:`preds_path`; an existing result is kept unless ``overwrite``); return the metrics.
    ``protocol`` (default: the authors') with ``options`` (its fields: article, names, crowd,
    gt_boxes, parse, baseline, max_objects, seed, num_beams, max_new_tokens)."""
    proto = _protocol(protocol, options)
    coco_path = storage.path(str(coco_json))
    if not coco_path.is_file():
        raise UserError(f"no such COCO json: {coco_path}")
    out_path = preds_path(run_dir, coco_path.stem, proto, "coco-json", out)
    refuse_existing(out_path, overwrite)
    images_dir = storage.path(str(images_dir))
    if not images_dir.is_dir():
        raise UserError(f"no such image directory: {images_dir}")
    skips, tally = Skips(), Counter()
    try:
        queries = coco_queries(json.loads(coco_path.read_bytes()), proto.max_objects, skips,
                               names=proto.names, crowd=proto.crowd, tally=tally)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{coco_path} is not valid JSON ({exc})") from None
    except UserError as exc:
        raise UserError(f"{coco_path}: {exc}") from None
    if not queries:
        raise UserError(f"{coco_path}: no image has 1..{proto.max_objects} annotated objects")
    run, adapter = _run_and_adapter(run_dir, proto.baseline, model, device, vlm_options)

    gt = _coco_gt(proto, run.canvas)
    baseline = _baseline(proto, ((q["image_id"], gt(q)) for q in queries), run.canvas, run.grid, coco_path.name)
    records, counts = _score_set(
        queries, run, adapter, proto, images_dir=images_dir, set_name=coco_path.name, skips=skips, gt=gt,
        text=lambda q: q["category"], baseline=baseline, batch_size=batch_size, limit=limit,
        fields=lambda q: {"image_id": q["image_id"], "category": q["category"], "crowd": q["crowd"],
                          "query": query_prompt(q["category"], proto.art)})
    counts["crowd_queries"] = sum(r["crowd"] for r in records)
    if proto.crowd == "skip":
        counts["crowd_not_queried"] = tally["crowd_not_queried"]
    return _finish(records, _extra("coco-json", str(coco_path), records, run, proto, counts), out_path, skips)


# --- PASCAL VOC ----------------------------------------------------------------------------

def evaluate_voc(run_dir, voc_dir, *, split: str = "test", out=None, model: str | None = None,
                 batch_size: int = 16, limit: int | None = None, device: str | None = None,
                 protocol: EvalProtocol | None = None, vlm_options: dict | None = None, overwrite: bool = False,
                 **options) -> dict:
    """Run the protocol on a PASCAL VOC devkit folder (``VOCdevkit/VOC2007``): the images of
    ``ImageSets/Main/<split>.txt`` with 1..max_objects objects (difficult included), raw class
    names, ``JPEGImages/<id>.jpg``; ``names`` and ``crowd`` do not apply."""
    proto = _protocol(protocol, options)
    _local_only(voc_dir, "--voc")
    voc = Path(voc_dir)
    if not voc.is_dir():
        raise UserError(f"no such VOC folder: {voc}")
    out_path = preds_path(run_dir, f"voc-{split}", proto, "voc", out)
    refuse_existing(out_path, overwrite)
    skips = Skips()
    queries, split_file = voc_queries(voc, split, proto.max_objects, skips)
    if not queries:
        why = "; ".join(f"{len(v)} {k}" for k, v in skips.items())
        raise UserError(f"{split_file}: no image has 1..{proto.max_objects} objects" + (f" ({why})" if why else ""))
    run, adapter = _run_and_adapter(run_dir, proto.baseline, model, device, vlm_options)

    def gt(q: dict) -> list[float]:
        return P.voc_box_on_canvas(q["voc_box"], q["width"], q["height"], run.canvas, proto.gt_boxes)

    set_name = f"{voc.name}/{split_file.relative_to(voc)}"
    baseline = _baseline(proto, ((q["image_id"], gt(q)) for q in queries), run.canvas, run.grid, set_name)
    records, counts = _score_set(
        queries, run, adapter, proto, images_dir=voc / "JPEGImages", set_name=set_name, skips=skips, gt=gt,
        text=lambda q: q["category"], baseline=baseline, batch_size=batch_size, limit=limit, missing_ok=True,
        fields=lambda q: {"image_id": q["image_id"], "category": q["category"], "difficult": q["difficult"],
                          "query": query_prompt(q["category"], proto.art)})
    counts["difficult_queries"] = sum(r["difficult"] for r in records)
    return _finish(records, _extra("voc", f"voc:{voc}:{split}", records, run, proto, counts), out_path, skips)


# --- RefCOCO -------------------------------------------------------------------------------

def evaluate_refcoco(run_dir, refcoco_dir, images_dir, *, split: str = "testA", out=None,
                     model: str | None = None, batch_size: int = 16, limit: int | None = None,
                     device: str | None = None, protocol: EvalProtocol | None = None, vlm_options: dict | None = None,
                     overwrite: bool = False, **options) -> dict:
    """P@0.3 and mIoU on a RefCOCO split (``refs(unc).p`` + ``instances.json`` in
    ``refcoco_dir``): by default one query per referred object, its last sentence's raw text
    (``refcoco_sentences="all"``: one per sentence); boxes by the COCO rule."""
    proto = _protocol(protocol, options)
    _local_only(refcoco_dir, "--refcoco")
    out_path = preds_path(run_dir, f"refcoco-{split}", proto, "refcoco", out)
    refuse_existing(out_path, overwrite)
    skips = Skips()
    queries, refs_file = refcoco_queries(Path(refcoco_dir), split, skips, sentences=proto.refcoco_sentences)
    if not queries:
        why = "; ".join(f"{len(v)} {k}" for k, v in skips.items())
        raise UserError(f"{refs_file}: no referring expressions in split {split!r}" + (f" ({why})" if why else ""))
    run, adapter = _run_and_adapter(run_dir, proto.baseline, model, device, vlm_options)
    images_dir = storage.path(str(images_dir))

    gt = _coco_gt(proto, run.canvas)
    objects = {q["ann_id"]: (q["image_id"], gt(q)) for q in queries}  # one per object, not per sentence
    baseline = _baseline(proto, objects.values(), run.canvas, run.grid, refs_file.name)
    records, counts = _score_set(
        queries, run, adapter, proto, images_dir=images_dir, set_name=refs_file.name, skips=skips, gt=gt,
        text=lambda q: q["sentence"], baseline=baseline, batch_size=batch_size, limit=limit,
        fields=lambda q: {"image_id": q["image_id"], "ref_id": q["ref_id"], "query": q["sentence"],
                          "prompt": query_prompt(q["sentence"], proto.art)})
    return _finish(records, _extra("refcoco", f"refcoco:{split}", records, run, proto, counts), out_path, skips)


# --- scene shards (validation during training) ---------------------------------------------

def evaluate_scenes(adapter, shards: Sequence[str], *, canvas: int, grid: int, limit: int = 256,
                    batch_size: int = 16, num_beams: int = 3, max_new_tokens: int = 12) -> dict:
    """mIoU over every object of the first scenes of ``shards`` (one query per object)."""
    from synthgen.pin.training.data import iter_scene_queries

    bad: dict[str, int] = {}
    items = ((img, ref, box, {}) for img, ref, box, _key in
             iter_scene_queries(shards, limit=limit, image_size=canvas, bad=bad))
    # the training-time check keeps the lenient parser (any bracketed box), as before eval-pin's
    # strict default: validation curves stay comparable with earlier runs
    m = summarize(score_queries(items, adapter, canvas=canvas, grid=grid, batch_size=batch_size,
                                num_beams=num_beams, max_new_tokens=max_new_tokens, parse="lenient"))
    m["bad_scenes"] = bad
    return m
