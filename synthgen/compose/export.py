"""Scene shards to a COCO-format detection set (images + ``instances.json``).

Lets any COCO tool — and ``synthgen eval-pin`` — read synthetic scenes. Boxes become COCO's
``[x, y, w, h]``; categories are numbered by sorted name (``category_id`` of the scene kept
as ``lvis_id`` when known); the referral text is kept in each annotation's ``referral``.

Scenes composed with ``--masks`` (a ``{key}.mask.png``: 0 background, i+1 the visible pixels of
object i) give each annotation its instance mask as COCO RLE (``segmentation``: ``{"size": [h,
w], "counts": str}``, the compressed form of pycocotools, :func:`synthgen.bank.masks.rle_encode`) and its ``area`` as
the mask's pixel count; an object hidden entirely by later ones keeps its box with an empty mask
and area 0. Scenes without a mask get no ``segmentation`` and the box's area, as before.

Image files are named by the scene key, which must have the writer's format (digits only);
scenes whose json is not a valid scene record are skipped and counted, never written. Keys that
repeat (two compose runs both start at scene 0) get the shard's name in front, so no image
overwrites another. Every file written is checked to lie inside ``--out`` (which may be an
object-store URL: every object is written whole).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from synthgen import storage
from synthgen.bank.masks import rle_encode
from synthgen.errors import UserError
from synthgen.schema import SceneRecord, SchemaError, valid_key
from synthgen.shards import find_shards, iter_samples
from synthgen.storage import atomic_write, atomic_write_json


def _image_name(rec: SceneRecord, url: str, taken: set[str]) -> str:
    name = f"{rec.key}.jpg"
    if name in taken:
        stem = Path(url).name.split(".")[0]
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem) or "shard"
        name = f"{stem}-{rec.key}.jpg"
        k = 1
        while name in taken:
            k += 1
            name = f"{stem}-{k}-{rec.key}.jpg"
    taken.add(name)
    return name


def _mask(data: bytes, rec: SceneRecord) -> np.ndarray | None:
    """The scene's owner map (None when it is not a PNG of the canvas' size)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode not in ("L", "P") or im.size != (rec.width, rec.height):
                return None
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _clear_earlier(out, img_dir, overwrite: bool) -> None:
    """A finished export in ``out`` (its instances.json) is refused, or with ``overwrite`` removed
    first, every image with it, so no stale image outlives it; the images of an unfinished one
    (interrupted before its instances.json) are removed: the same command starts it again."""
    images = img_dir.find() if img_dir.is_dir() else {}
    coco = out / "instances.json"
    if not images and not coco.exists():
        return
    if coco.exists() and not overwrite:
        raise UserError(f"--out {out} already holds a COCO export ({len(images)} images"
                        f"{', instances.json' if coco.exists() else ''}); pass --overwrite to replace it, or "
                        "choose another --out")
    coco.unlink(missing_ok=True)  # (first: a half-cleared folder is never a finished export)
    for f in images:
        storage.path(f).unlink(missing_ok=True)


def export_coco(shards: str, out: Path | str, limit: int | None = None, overwrite: bool = False) -> dict:
    """Write ``out/images/`` and ``out/instances.json`` (COCO detection format, with each
    object's referral and visibility) from scene shards."""
    out = storage.path(str(out))
    img_dir = out / "images"
    _clear_earlier(out, img_dir, overwrite)
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns, cats = [], [], {}
    taken: set[str] = set()
    skipped: dict[str, list[str]] = {}
    for sample in iter_samples(find_shards(shards)):
        if limit is not None and len(images) >= limit:
            break
        where = f"{sample['__url__']}: sample {sample['__key__']}"
        if "jpg" not in sample or "json" not in sample:
            skipped.setdefault("no_image" if "json" in sample else "no_json", []).append(where)
            continue
        try:
            rec = SceneRecord.from_json(sample["json"], where)
        except SchemaError as exc:
            skipped.setdefault(exc.reason, []).append(where)
            continue
        owner = None
        if "mask.png" in sample:
            owner = _mask(sample["mask.png"], rec)
            if owner is None:
                skipped.setdefault("bad_mask", []).append(where)
                continue
        name = _image_name(rec, str(sample["__url__"]), taken)
        path = img_dir / name
        if not valid_key(rec.key) or not storage.inside(path, [img_dir], real=True):
            skipped.setdefault("bad_key", []).append(where)  # (valid keys cannot get here)
            continue
        atomic_write(path, sample["jpg"])
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "width": rec.width, "height": rec.height,
                       "synthgen_key": rec.key, "shard": os.path.basename(sample["__url__"])})
        for i, o in enumerate(rec.objects):
            c = cats.setdefault(o.category, {"name": o.category, "lvis_id": o.category_id})
            x1, y1, x2, y2 = o.box
            ann = {"id": len(anns) + 1, "image_id": image_id, "category_name": c["name"],
                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                   "iscrowd": 0, "referral": o.referral, "visible": o.visible}
            if owner is not None:
                m = owner == i + 1
                ann["segmentation"] = rle_encode(m)
                ann["area"] = int(m.sum())
            anns.append(ann)
    if not images:
        why = f" ({'; '.join(f'{len(v)} {k}' for k, v in skipped.items())})" if skipped else ""
        raise UserError(f"no scenes found in {shards}{why}")
    ids = {name: i + 1 for i, name in enumerate(sorted(cats))}
    for a in anns:
        a["category_id"] = ids[a.pop("category_name")]
    coco = {"info": {"description": f"synthgen scenes exported from {shards}",
                     "skipped_scenes": {k: {"count": len(v), "examples": v[:10]} for k, v in skipped.items()}},
            "images": images, "annotations": anns,
            "categories": [{"id": ids[n], "name": n, "supercategory": "object", "lvis_id": cats[n]["lvis_id"]}
                           for n in sorted(cats)]}
    atomic_write_json(out / "instances.json", coco)
    return coco
