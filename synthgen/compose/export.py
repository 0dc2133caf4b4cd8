"""Scene shards to a COCO-format detection set (images + ``instances.json``).

Lets any COCO tool — and ``synthgen eval-pin`` — read synthetic scenes. Boxes become COCO's
``[x, y, w, h]``; categories are numbered by sorted name (``category_id`` of the scene kept
as ``lvis_id`` when known); the referral text is kept in each annotation's ``referral``.
"""

from __future__ import annotations

from pathlib import Path

from synthgen.errors import UserError
from synthgen.rundir import atomic_write_json
from synthgen.schema import SceneRecord
from synthgen.shards import find_shards, iter_samples


def export_coco(shards: str, out: Path, limit: int | None = None) -> dict:
    out = Path(out)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns, cats = [], [], {}
    for sample in iter_samples(find_shards(shards)):
        if limit is not None and len(images) >= limit:
            break
        if "jpg" not in sample or "json" not in sample:
            continue
        rec = SceneRecord.from_json(sample["json"], f"{sample['__url__']}: sample {sample['__key__']}")
        name = f"{rec.key}.jpg"
        (img_dir / name).write_bytes(sample["jpg"])
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": name, "width": rec.width, "height": rec.height})
        for o in rec.objects:
            c = cats.setdefault(o.category, {"name": o.category, "lvis_id": o.category_id})
            x1, y1, x2, y2 = o.box
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_name": c["name"],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "iscrowd": 0, "referral": o.referral, "visible": o.visible})
    if not images:
        raise UserError(f"no scenes found in {shards}")
    ids = {name: i + 1 for i, name in enumerate(sorted(cats))}
    for a in anns:
        a["category_id"] = ids[a.pop("category_name")]
    coco = {"info": {"description": f"synthgen scenes exported from {shards}"},
            "images": images, "annotations": anns,
            "categories": [{"id": ids[n], "name": n, "lvis_id": cats[n]["lvis_id"]} for n in sorted(cats)]}
    atomic_write_json(out / "instances.json", coco)
    return coco
