"""Evaluation sets read into queries, checked entry by entry (no torch, no model).

* COCO-format instances json (COCO val2017, LVIS v1 val, VOC as COCO json): images with
  ``1..max_objects`` annotated objects, one query per annotation with its class name.
* RefCOCO (the refer toolkit layout: ``refs(unc).p`` + ``instances.json``): one query per
  referring expression of a split; the pickle is read by a restricted unpickler that admits only
  plain containers, so a malicious pickle cannot run code.

A file of the wrong shape is a one-line error; a bad entry in it (a bbox that is not four
positive numbers, a category without a name, an annotation of an unknown image, an image of
width 0, ...) is skipped and counted by reason in a :class:`Skips`, which eval-pin reports.
Image paths must resolve inside ``--images`` (symlinks included).
"""

from __future__ import annotations

import io
import math
import os
import pickle
from collections import defaultdict
from pathlib import Path
from typing import Any

from synthgen.errors import UserError


class Skips(dict):
    """reason -> list of examples (what was skipped and why), for the metrics file."""

    def add(self, reason: str, example: Any) -> None:
        self.setdefault(reason, []).append(str(example)[:200])

    def summary(self, examples: int = 5) -> dict:
        return {r: {"count": len(v), "examples": v[:examples]} for r, v in sorted(self.items())}


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
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as exc:
        raise UserError(f"unsafe or corrupt pickle: {type(exc).__name__}: {exc}") from None


# --- checks --------------------------------------------------------------------------------

def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _xywh(v: Any) -> list[float] | None:
    """A COCO bbox ``[x, y, w, h]`` with w, h > 0, or None."""
    if isinstance(v, (list, tuple)) and len(v) == 4 and all(_number(x) for x in v) and v[2] > 0 and v[3] > 0:
        return [float(x) for x in v]
    return None


def _images(entries: Any, skips: Skips) -> dict[Any, dict]:
    out = {}
    for im in entries:
        if not isinstance(im, dict) or "id" not in im:
            skips.add("bad_image_entry", im)
        elif not (_number(im.get("width")) and _number(im.get("height")) and im["width"] > 0 and im["height"] > 0):
            skips.add("bad_image_size", f"image {im.get('id')}: {im.get('width')}x{im.get('height')}")
        elif not isinstance(im.get("file_name") or im.get("coco_url"), str):
            skips.add("bad_image_entry", f"image {im.get('id')}: no file_name or coco_url")
        else:
            out[im["id"]] = im
    return out


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
    one split, e.g. ``val2017/``, for an LVIS name ``val2017/x.jpg``); None when neither exists.
    A path that resolves outside ``images_dir`` (``../``, absolute, a symlink out) is refused."""
    from synthgen.compose.bank import inside

    for path in (images_dir / file_name, images_dir / Path(file_name).name):
        if path.is_file():
            if not inside(str(path), [str(images_dir)], real=True):
                raise PermissionError(f"{file_name} resolves outside {images_dir}")
            return path
    return None


# --- COCO-format sets ----------------------------------------------------------------------

def coco_queries(coco: Any, max_objects: int = 3, skips: Skips | None = None) -> list[dict]:
    """One query per annotation of images with 1..max_objects valid annotations (crowd ones
    count towards the number of objects but are not queried). Bad entries are skipped and
    counted in ``skips``; a json of the wrong shape is a UserError."""
    skips = skips if skips is not None else Skips()
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise UserError("not a COCO instances json: expected an object with lists 'images', "
                        "'annotations' and 'categories'")
    cats = {}
    for c in coco["categories"]:
        name = c.get("name") if isinstance(c, dict) else None
        if not isinstance(name, str) or not name.replace("_", " ").strip():
            skips.add("bad_category", c)
        else:
            cats[c["id"]] = " ".join(name.replace("_", " ").split())
    images = _images(coco["images"], skips)
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for a in coco["annotations"]:
        if not isinstance(a, dict) or a.get("image_id") not in images:
            skips.add("unknown_image", a.get("image_id") if isinstance(a, dict) else a)
        elif a.get("category_id") not in cats:
            skips.add("unknown_category", f"annotation {a.get('id')}: category {a.get('category_id')}")
        elif _xywh(a.get("bbox")) is None:
            skips.add("bad_bbox", f"annotation {a.get('id')}: {a.get('bbox')!r:.60}")
        else:
            by_image[a["image_id"]].append(a)
    queries = []
    for img in sorted(images.values(), key=lambda im: str(im["id"])):
        anns = by_image.get(img["id"], [])
        if not 1 <= len(anns) <= max_objects:
            continue
        for a in anns:
            if a.get("iscrowd", 0):
                continue
            x, y, w, h = _xywh(a["bbox"])
            queries.append({"image_id": img["id"], "file_name": image_file_name(img),
                            "width": img["width"], "height": img["height"],
                            "category": cats[a["category_id"]], "box_xyxy": [x, y, x + w, y + h]})
    return queries


# --- RefCOCO -------------------------------------------------------------------------------

def refcoco_queries(refcoco_dir: Path, split: str, skips: Skips | None = None) -> tuple[list[dict], Path]:
    """One query per referring expression of ``split`` (``refs(unc).p`` + ``instances.json``)."""
    import json

    skips = skips if skips is not None else Skips()
    d = Path(refcoco_dir)
    refs_file = next((p for p in (d / "refs(unc).p", d / "refs(google).p") if p.is_file()), None)
    if refs_file is None:
        cands = sorted(d.glob("refs*.p"))
        refs_file = cands[0] if cands else None
    if refs_file is None or not (d / "instances.json").is_file():
        raise UserError(f"{d} needs refs(unc).p and instances.json (the refer toolkit layout)")
    refs = safe_load_pickle(refs_file)
    try:
        inst = json.loads((d / "instances.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{d / 'instances.json'} is not valid JSON: {exc}") from None
    if not isinstance(refs, list) or not isinstance(inst, dict) or not all(
            isinstance(inst.get(k), list) for k in ("images", "annotations")):
        raise UserError(f"{d}: expected refs as a list of dicts and instances.json with lists "
                        "'images' and 'annotations' (the refer toolkit layout)")
    anns = {a["id"]: a for a in inst["annotations"] if isinstance(a, dict) and "id" in a}
    imgs = _images(inst["images"], skips)
    queries = []
    for r in refs:
        if not isinstance(r, dict) or r.get("split") != split:
            continue
        a, im = anns.get(r.get("ann_id")), imgs.get(r.get("image_id"))
        box = _xywh(a.get("bbox")) if isinstance(a, dict) else None
        sentences = r.get("sentences")
        if a is None or im is None or box is None or not isinstance(sentences, list):
            skips.add("bad_ref", f"ref {r.get('ref_id')}")
            continue
        x, y, w, h = box
        for s in sentences:
            text = s.get("sent") if isinstance(s, dict) else None
            if not isinstance(text, str) or not text.strip():
                skips.add("bad_sentence", f"ref {r.get('ref_id')}")
                continue
            queries.append({"image_id": r["image_id"], "ref_id": r.get("ref_id"),
                            "file_name": image_file_name(im), "width": im["width"],
                            "height": im["height"], "sentence": text.strip(),
                            "box_xyxy": [x, y, x + w, y + h]})
    return queries, refs_file
