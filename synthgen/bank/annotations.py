"""``synthgen bank-from-annotations``: an object bank cut out of annotated images (COCO / LVIS json).

Each instance (not crowd) is cut out of its image by its mask (:mod:`.masks`: polygons or RLE):
the mask's largest 8-connected component, cropped tight, the image's pixels with the mask as alpha
(255 inside, 0 outside). The result is a synthgen bank (``index.jsonl`` + RGBA PNGs under
``{category slug}/{annotation id}.png``) that compose reads like a rendered one; categories by
their names (LVIS ``bus_(vehicle)`` as ``bus (vehicle)``), with their ids and LVIS synsets.

What is left out is counted by reason, with examples: ``crowd``; ``bad_segmentation`` (the
decoder's few words); ``empty_mask``; ``too_small`` (a side of the crop under ``--min-size``);
``truncated`` (the mask touches the image border: only with ``--skip-truncated``); ``occluded``
(more than ``--max-occlusion`` of the crop's box covered by the other instances of the image: a
proxy, COCO records no occlusion); ``missing_image``, ``unreadable_image``, ``size_mismatch`` (the image is not the size its entry
gives: the masks would not fit it); ``outside_images`` (a
``file_name`` leading out of ``--images``, refused without reading it).

Resumable: images are taken in chunks of :data:`CHUNK` (sorted by id); a chunk's PNGs are written,
then its records (``_parts/NNNNNN.json``, the chunk's "done" mark). A re-run with the same
settings skips the finished chunks; the bank's index is built from every part at the end.
"""

from __future__ import annotations

import io
import json
import posixpath
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from synthgen import storage
from synthgen.bank.format import CATEGORIES_DIR, RENDER_CONFIG_FILE, bank_record
from synthgen.bank.masks import BadSegmentation, decode, largest_component
from synthgen.errors import UserError
from synthgen.schema import clean_name, slugify

CHUNK = 200            # images per resumable part
PARTS_DIR = "_parts"
EXAMPLES = 5
FORMAT = "synthgen.bank-from-annotations/1"


@dataclass(frozen=True)
class AnnotationsJob:
    annotations: str
    images: str
    out: str
    min_size: int = 32
    skip_truncated: bool = False
    max_occlusion: float = 1.0
    categories: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        checks = ((self.min_size >= 1, f"--min-size must be >= 1 (got {self.min_size})"),
                  (0.0 <= self.max_occlusion <= 1.0, f"--max-occlusion must lie in 0..1 (got {self.max_occlusion})"))
        return [msg for ok, msg in checks if not ok]


def read_annotations(spec: str) -> tuple[list[dict], dict[int, list[dict]], dict[int, dict]]:
    """``(images sorted by id, {image id: annotations}, {category id: category})`` of a COCO /
    LVIS json; a one-line UserError when it is not one."""
    p = storage.path(spec)
    if not p.is_file():
        raise UserError(f"annotations not found: {p}")
    try:
        doc = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{p}: not a UTF-8 JSON file ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise UserError(f"{p}: expected COCO / LVIS instances json (lists images, annotations, categories)")
    try:
        cats = {int(c["id"]): c for c in doc["categories"]}
        images = sorted(({**im, "id": int(im["id"])} for im in doc["images"]), key=lambda im: im["id"])
        by_image: dict[int, list[dict]] = {}
        for a in doc["annotations"]:
            by_image.setdefault(int(a["image_id"]), []).append(a)
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{p}: an image, annotation or category lacks its id ({type(exc).__name__}: {exc})") from None
    return images, by_image, cats


def image_name(image: dict) -> str | None:
    """The file an image entry names: ``file_name`` (COCO), else the last part of ``coco_url`` (LVIS)."""
    name = image.get("file_name") or posixpath.basename(str(image.get("coco_url") or ""))
    return str(name) if name else None


class _Tally:
    def __init__(self):
        self.skipped: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}

    def skip(self, reason: str, what: str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n
        examples = self.skipped.setdefault(reason, [])
        if len(examples) < EXAMPLES:
            examples.append(what)


def cut_image(job: AnnotationsJob, image: dict, anns: list[dict], cats: dict[int, dict], wanted: set[str] | None,
              tally: _Tally) -> list[tuple[dict, bytes]]:
    """``[(record, png)]`` of one image's instances; what is left out goes to ``tally``."""
    from PIL import Image

    from synthgen.errors import Skip
    from synthgen.images import decode as decode_image

    mine = [a for a in anns if a.get("category_id") in cats and (wanted is None or
            clean_name(str(cats[a["category_id"]]["name"])).lower() in wanted)]
    if not mine:
        return []
    name = image_name(image)
    if name is None:
        tally.skip("missing_image", f"image {image['id']} has no file_name", len(mine))
        return []
    path = storage.join(job.images, name)
    if not storage.inside(path, [job.images], real=True):
        tally.skip("outside_images", name, len(mine))
        return []
    src = storage.path(path)
    if not src.is_file():
        tally.skip("missing_image", name, len(mine))
        return []
    img = decode_image(src.source(), orient=False)  # (masks refer to the stored pixel grid, as in COCO)
    if isinstance(img, Skip):
        tally.skip("unreadable_image", f"{name}: {img.detail}", len(mine))
        return []
    rgb = np.asarray(img.convert("RGB"))
    h, w = rgb.shape[:2]
    if (image.get("width"), image.get("height")) not in ((None, None), (w, h)):
        tally.skip("size_mismatch", f"{name} is {w}x{h}, the annotations say {image.get('width')}x{image.get('height')}", len(mine))
        return []
    masks: dict[int, np.ndarray] = {}
    for a in mine:
        try:
            masks[id(a)] = decode(a.get("segmentation"), h, w)
        except BadSegmentation as exc:
            if not a.get("iscrowd"):
                tally.skip("bad_segmentation", f"annotation {a.get('id')}: {exc}")
    out = []
    for a in mine:
        if a.get("iscrowd"):
            tally.skip("crowd", f"annotation {a.get('id')}")
            continue
        if id(a) not in masks:
            continue
        comp = largest_component(masks[id(a)])
        ys, xs = np.nonzero(comp)
        if not len(ys):
            tally.skip("empty_mask", f"annotation {a.get('id')}")
            continue
        x1, y1, x2, y2 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
        if min(x2 - x1, y2 - y1) < job.min_size:
            tally.skip("too_small", f"annotation {a.get('id')} ({x2 - x1}x{y2 - y1})")
            continue
        if job.skip_truncated and (x1 == 0 or y1 == 0 or x2 == w or y2 == h):
            tally.skip("truncated", f"annotation {a.get('id')}")
            continue
        if job.max_occlusion < 1.0:
            others = [m[y1:y2, x1:x2] for k, m in masks.items() if k != id(a)]
            covered = float(np.logical_or.reduce(others).mean()) if others else 0.0
            if covered > job.max_occlusion:
                tally.skip("occluded", f"annotation {a.get('id')} ({covered:.0%} of its box)")
                continue
        rgba = np.dstack([rgb[y1:y2, x1:x2], comp[y1:y2, x1:x2].astype(np.uint8) * 255])
        buf = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(buf, format="PNG", compress_level=6)
        cat = cats[a["category_id"]]
        display = clean_name(str(cat["name"]))
        slug = slugify(str(cat["name"]))
        rel = f"{slug}/{int(a['id']):012d}.png"
        out.append((bank_record(id=f"{slug}/{int(a['id']):012d}", category=display, category_id=int(cat["id"]),
                                path=rel, width=x2 - x1, height=y2 - y1, kept=True, reason=None,
                                source_image=name, annotation_id=int(a["id"]), box=[x1, y1, x2, y2],
                                **({"synset": cat["synset"]} if cat.get("synset") else {})), buf.getvalue()))
    return out


def bank_from_annotations(job: AnnotationsJob, *, progress: bool = True) -> dict[str, Any]:
    """Cut the bank out (resuming); the summary: images, instances kept, categories, skipped."""
    from synthgen.bank.writer import BankWriter
    from synthgen.errors import raise_problems
    from synthgen.progress import progress_bars
    from synthgen.storage import RunFolder, atomic_write, atomic_write_json

    raise_problems(job.problems())
    if not storage.path(job.images).is_dir():
        raise UserError(f"--images {job.images}: not a folder")
    if storage.overlap(job.out, job.images):
        raise UserError(f"--out {job.out} and --images {job.images} overlap; choose an --out outside the images")
    images, by_image, cats = read_annotations(job.annotations)
    wanted = {c.strip().lower() for c in job.categories if c.strip()} or None
    if wanted is not None:
        known = {clean_name(str(c["name"])).lower() for c in cats.values()}
        missing = sorted(wanted - known)
        if missing:
            raise UserError(f"--categories: {', '.join(missing)} not among the {len(known)} categories of "
                            f"{job.annotations}")
    ident = {"format": FORMAT, **{k: v for k, v in asdict(job).items() if k not in ("out",)},
             "images_listed": len(images), "annotations_listed": sum(map(len, by_image.values()))}
    chunks = [images[i:i + CHUNK] for i in range(0, len(images), CHUNK)]
    out = storage.path(job.out)
    with RunFolder(job.out, "bank-from-annotations") as folder:
        folder.check_identity(RENDER_CONFIG_FILE, ident, what="settings or annotations")
        done = {p.name for p in (out / PARTS_DIR).glob("*.json")} if (out / PARTS_DIR).is_dir() else set()
        with progress_bars("images", enabled=progress, label_width=21) as prog:
            finished = sum(len(c) for k, c in enumerate(chunks) if f"{k:06d}.json" in done)
            task = prog.add_task("bank-from-annotations", total=len(images), completed=finished, begin=finished)
            for k, chunk in enumerate(chunks):
                if f"{k:06d}.json" in done:
                    continue
                tally, records = _Tally(), []
                for image in chunk:
                    for rec, png in cut_image(job, image, by_image.get(image["id"], []), cats, wanted, tally):
                        atomic_write(out / rec["path"], png)
                        records.append(rec)
                    prog.advance(task)
                atomic_write_json(out / PARTS_DIR / f"{k:06d}.json",
                                  {"records": records, "skipped": tally.skipped, "counts": tally.counts})
        return _finish(out, len(chunks), cats, len(images), BankWriter, atomic_write_json)


def _finish(out, n_chunks: int, cats: dict[int, dict], n_images: int, writer_class, write_json) -> dict[str, Any]:
    """The bank's index and totals from every part (the category documents render writes too)."""
    records: list[dict] = []
    counts: dict[str, int] = {}
    examples: dict[str, list[str]] = {}
    for k in range(n_chunks):
        part = json.loads((out / PARTS_DIR / f"{k:06d}.json").read_text(encoding="utf-8"))
        records += part["records"]
        for reason, n in part["counts"].items():
            counts[reason] = counts.get(reason, 0) + n
            examples.setdefault(reason, []).extend(part["skipped"].get(reason, []))
    if not records:
        why = ", ".join(f"{n} {r.replace('_', ' ')}" for r, n in sorted(counts.items())) or "no instance"
        raise UserError(f"no instance could be cut out ({why}); nothing written as a bank")
    by_slug: dict[str, list[dict]] = {}
    for r in records:
        by_slug.setdefault(r["id"].split("/", 1)[0], []).append(r)
    writer = writer_class(out)
    for slug, recs in sorted(by_slug.items()):
        recs.sort(key=lambda r: r["id"])
        cat = next(c for c in cats.values() if int(c["id"]) == recs[0]["category_id"])
        stats = {"category": recs[0]["category"], "category_id": recs[0]["category_id"], "slug": slug,
                 "generated": len(recs), "kept": len(recs), "rejected": {}, "category_dropped": False, "seconds": 0.0}
        category = {"name": str(cat["name"]), "id": int(cat["id"]), "synset": cat.get("synset")}
        write_json(out / CATEGORIES_DIR / f"{slug}.json", {"slug": slug, "category": category, "stats": stats,
                                                           "records": recs})
        writer.docs[slug] = {"slug": slug, "category": category, "stats": stats, "records": recs}
    writer.flush()
    return {"images": n_images, "kept": len(records), "categories": len(by_slug),
            "skipped": {r: {"count": n, "examples": examples.get(r, [])[:EXAMPLES]} for r, n in sorted(counts.items())}}
