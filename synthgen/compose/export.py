"""Scene shards to a COCO-format detection set (images + ``instances.json``).

Lets any COCO tool — and ``synthgen eval-pin`` — read synthetic scenes. Boxes become COCO's
``[x, y, w, h]``; categories are numbered by sorted name (``category_id`` of the scene kept
as ``lvis_id`` when known); the referral text is kept in each annotation's ``referral``.

Image files are named by the scene key, which must have the writer's format (digits only);
scenes whose json is not a valid scene record are skipped and counted, never written. Keys that
repeat (two compose runs both start at scene 0) get the shard's name in front, so no image
overwrites another. Every file written is checked to lie inside ``--out`` (which may be an
object-store URL: every object is written whole).
"""

from __future__ import annotations

import os
from pathlib import Path

from synthgen import storage
from synthgen.compose.bank import inside
from synthgen.errors import UserError
from synthgen.rundir import atomic_write, atomic_write_json
from synthgen.schema import SceneRecord, SchemaError, valid_key
from synthgen.shards import find_shards, iter_samples


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


def export_coco(shards: str, out: Path | str, limit: int | None = None) -> dict:
    out = storage.path(str(out))
    img_dir = out / "images"
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
        name = _image_name(rec, str(sample["__url__"]), taken)
        path = img_dir / name
        if not valid_key(rec.key) or not inside(str(path), [str(img_dir)], real=True):
            skipped.setdefault("bad_key", []).append(where)  # (valid keys cannot get here)
            continue
        atomic_write(path, sample["jpg"])
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "width": rec.width, "height": rec.height,
                       "synthgen_key": rec.key, "shard": os.path.basename(sample["__url__"])})
        for o in rec.objects:
            c = cats.setdefault(o.category, {"name": o.category, "lvis_id": o.category_id})
            x1, y1, x2, y2 = o.box
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_name": c["name"],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": 0, "referral": o.referral, "visible": o.visible})
    if not images:
        why = f" ({'; '.join(f'{len(v)} {k}' for k, v in skipped.items())})" if skipped else ""
        raise UserError(f"no scenes found in {shards}{why}")
    ids = {name: i + 1 for i, name in enumerate(sorted(cats))}
    for a in anns:
        a["category_id"] = ids[a.pop("category_name")]
    coco = {"info": {"description": f"synthgen scenes exported from {shards}",
                     "skipped_scenes": {k: {"count": len(v), "examples": v[:10]} for k, v in skipped.items()}},
            "images": images, "annotations": anns,
            "categories": [{"id": ids[n], "name": n, "lvis_id": cats[n]["lvis_id"]} for n in sorted(cats)]}
    atomic_write_json(out / "instances.json", coco)
    return coco
