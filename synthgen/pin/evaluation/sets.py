"""Evaluation sets read into queries, checked entry by entry (no torch, no model).

* COCO-format instances json (COCO val2017, LVIS v1 val, VOC as COCO json): images with
  ``1..max_objects`` annotated objects (crowd ones included), one query per annotation with its
  class name (the authors' LVIS rule ``bow_(weapon)`` -> ``bow`` by default, or the raw name);
  crowd annotations are queried (the authors) or only counted.
* PASCAL VOC (the devkit layout: ``ImageSets/Main/<split>.txt``, ``Annotations/<id>.xml``,
  ``JPEGImages/<id>.jpg``): images with ``1..max_objects`` objects, difficult ones included, one
  query per object with the XML's raw class name (``diningtable``), as the authors' torchvision
  ``VOCDetection`` loader. The XML is untrusted: a document with a DOCTYPE (where entity
  expansion and external entities live) is refused, never expanded.
* RefCOCO (the refer toolkit layout: ``refs(unc).p`` + ``instances.json``): one query per
  referring expression of a split (the last sentence's ``raw`` text, as the authors, or every
  sentence's ``sent``); the pickle is read by a restricted unpickler that admits only plain
  containers, so a malicious pickle cannot run code.

A file of the wrong shape is a one-line error; a bad entry in it (a bbox that is not four
positive numbers, a category without a name, an annotation of an unknown image, an image of
width 0, ...) is skipped and counted by reason in a :class:`Skips`, which eval-pin reports.
Image paths must resolve inside ``--images`` (VOC: inside the VOC folder), symlinks included.

Each query carries the annotated box in the set's own form (``bbox`` ``[x, y, w, h]`` for COCO
and RefCOCO, ``voc_box`` ``[xmin, ymin, xmax, ymax]`` for VOC), which
:mod:`synthgen.pin.evaluation.protocol` puts on the canvas.
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from synthgen.errors import UserError
from synthgen.pin.evaluation.protocol import class_name


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
    A path that resolves outside ``images_dir`` (``../``, absolute, a symlink out) is refused.
    ``images_dir`` may be on an object store (checked lexically, before any request:
    :func:`~synthgen.storage.locate`)."""
    from synthgen import storage

    for rel in (file_name, Path(file_name).name):
        try:
            path = storage.locate(images_dir, rel)
        except PermissionError:
            raise PermissionError(f"{file_name} resolves outside {images_dir}") from None
        if path is not None:
            return path
    return None


# --- COCO-format sets ----------------------------------------------------------------------

def coco_queries(coco: Any, max_objects: int = 3, skips: Skips | None = None, *, names: str = "strip",
                 crowd: str = "query", tally: Counter | None = None) -> list[dict]:
    """One query per annotation of images with 1..max_objects valid annotations.

    Crowd annotations (``iscrowd``) count towards the number of objects either way; ``crowd``
    ``query`` queries them too (the authors' loader does), ``skip`` does not (and counts them in
    ``tally["crowd_not_queried"]``). Class names by :func:`~synthgen.pin.evaluation.protocol.class_name`
    (``names``). Bad entries are skipped and counted in ``skips``; a json of the wrong shape is a
    UserError."""
    skips = skips if skips is not None else Skips()
    tally = tally if tally is not None else Counter()
    if not isinstance(coco, dict) or not all(isinstance(coco.get(k), list)
                                             for k in ("images", "annotations", "categories")):
        raise UserError("not a COCO instances json: expected an object with lists 'images', "
                        "'annotations' and 'categories'")
    cats = {}
    for c in coco["categories"]:
        name = c.get("name") if isinstance(c, dict) else None
        if not isinstance(name, str) or not class_name(name, names):
            skips.add("bad_category", c)
        else:
            cats[c["id"]] = class_name(name, names)
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
            is_crowd = bool(a.get("iscrowd", 0))
            if is_crowd and crowd == "skip":
                tally["crowd_not_queried"] += 1
                continue
            x, y, w, h = _xywh(a["bbox"])
            queries.append({"image_id": img["id"], "ann_id": a.get("id"), "file_name": image_file_name(img),
                            "width": img["width"], "height": img["height"],
                            "category": cats[a["category_id"]], "crowd": is_crowd,
                            "bbox": [x, y, w, h], "box_xyxy": [x, y, x + w, y + h]})
    return queries


# --- PASCAL VOC ----------------------------------------------------------------------------

MAX_XML_BYTES = 1 << 20  # a VOC annotation is ~1 kB
_VOC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class UnsafeXML(ValueError):
    """An XML document with a DOCTYPE (entity declarations, external entities): refused."""


def parse_untrusted_xml(data: bytes):
    """``data`` as an ElementTree element, refusing any DOCTYPE before its internal subset is
    read (so no entity is declared, expanded or fetched). Malformed XML raises
    ``xml.parsers.expat.ExpatError``; a DOCTYPE :class:`UnsafeXML`."""
    import xml.etree.ElementTree as ET
    from xml.parsers import expat

    def refuse(name, *_):
        raise UnsafeXML(f"DOCTYPE {name} refused")

    builder = ET.TreeBuilder()
    p = expat.ParserCreate()
    p.StartDoctypeDeclHandler = refuse
    p.EntityDeclHandler = refuse
    p.StartElementHandler = builder.start
    p.EndElementHandler = builder.end
    p.CharacterDataHandler = builder.data
    p.Parse(data, True)
    return builder.close()


def _voc_number(text: str | None) -> float | None:
    try:
        v = float(text) if text is not None else None
    except ValueError:
        return None
    return v if v is not None and math.isfinite(v) else None


def _voc_objects(root, ident: str, skips: Skips) -> tuple[tuple[int, int] | None, list[dict]]:
    """``((width, height), objects)`` of one VOC annotation; bad objects are skipped."""
    w, h = _voc_number(root.findtext("size/width")), _voc_number(root.findtext("size/height"))
    size = (int(w), int(h)) if w is not None and h is not None and w >= 1 and h >= 1 else None
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        box = [_voc_number(obj.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
        if not name:
            skips.add("bad_category", f"{ident} object {k}: no name")
        elif None in box or not (0 <= box[0] <= box[2] and 0 <= box[1] <= box[3]):
            skips.add("bad_bbox", f"{ident} object {k}: {box}")
        else:
            objects.append({"name": name, "box": box, "difficult": (obj.findtext("difficult") or "0").strip() == "1"})
    return size, objects


def voc_queries(voc_dir: Path, split: str = "test", max_objects: int = 3,
                skips: Skips | None = None) -> tuple[list[dict], Path]:
    """One query per object of the images of ``ImageSets/Main/<split>.txt`` with 1..max_objects
    objects (difficult ones included and counted, as the authors' loader), raw class names.

    Ids that are not plain file names, annotations that are missing, outside the VOC folder,
    malformed, with a DOCTYPE or without a size, and objects without a name or with a bad box are
    skipped and counted; a folder of the wrong layout is a UserError."""
    from synthgen.storage import inside

    skips = skips if skips is not None else Skips()
    d = Path(voc_dir)
    if not _VOC_ID.fullmatch(split):
        raise UserError(f"--split {split!r} is not a VOC image set name (e.g. test, val, trainval)")
    split_file = d / "ImageSets" / "Main" / f"{split}.txt"
    missing = [p for p in (split_file, d / "Annotations", d / "JPEGImages")
               if not (p.is_file() if p is split_file else p.is_dir())]
    if missing:
        raise UserError(f"{d} is not a VOC folder: no {', '.join(str(p.relative_to(d)) for p in missing)} "
                        "(give the year's folder of the devkit, e.g. VOCdevkit/VOC2007)")
    try:
        lines = split_file.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{split_file} is not a UTF-8 list of image ids") from None
    queries = []
    for line in lines:
        ident = line.strip()
        if not ident:
            continue
        if not _VOC_ID.fullmatch(ident):
            skips.add("bad_id", f"{split_file.name}: {ident!r}")
            continue
        xml = d / "Annotations" / f"{ident}.xml"
        if not xml.is_file():
            skips.add("missing_annotation", xml.name)
            continue
        if not inside(str(xml), [str(d)], real=True):
            skips.add("outside_voc", f"{xml} resolves outside {d}")
            continue
        with open(xml, "rb") as f:
            data = f.read(MAX_XML_BYTES + 1)
        if len(data) > MAX_XML_BYTES:
            skips.add("bad_xml", f"{xml.name}: larger than {MAX_XML_BYTES} bytes")
            continue
        try:
            root = parse_untrusted_xml(data)
        except UnsafeXML as exc:
            skips.add("unsafe_xml", f"{xml.name}: {exc}")
            continue
        except Exception as exc:  # noqa: BLE001 - expat errors and any other malformation
            skips.add("bad_xml", f"{xml.name}: {type(exc).__name__}: {exc}")
            continue
        if root.tag != "annotation":
            skips.add("bad_xml", f"{xml.name}: root <{root.tag}>, not <annotation>")
            continue
        size, objects = _voc_objects(root, xml.name, skips)
        if size is None:
            skips.add("bad_image_size", f"{xml.name}: size {root.findtext('size/width')}x{root.findtext('size/height')}")
            continue
        if not 1 <= len(objects) <= max_objects:
            continue
        for k, o in enumerate(objects):
            queries.append({"image_id": ident, "ann_id": f"{ident}/{k}", "file_name": f"{ident}.jpg",
                            "width": size[0], "height": size[1], "category": o["name"],
                            "difficult": o["difficult"], "voc_box": o["box"]})
    return queries, split_file


# --- RefCOCO -------------------------------------------------------------------------------

def refcoco_queries(refcoco_dir: Path, split: str, skips: Skips | None = None, *,
                    sentences: str = "last") -> tuple[list[dict], Path]:
    """The queries of ``split`` (``refs(unc).p`` + ``instances.json``): ``sentences`` ``last``:
    one per referring object, its last sentence's ``raw`` text as written (the authors'
    ``RefCOCOTestSet``); ``all``: one per sentence, its normalised ``sent`` text."""
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
        sents = r.get("sentences")
        if a is None or im is None or box is None or not isinstance(sents, list):
            skips.add("bad_ref", f"ref {r.get('ref_id')}")
            continue
        x, y, w, h = box
        if sentences == "last":
            last = sents[-1] if sents else None
            texts = [last.get("raw") if isinstance(last, dict) else None]
        else:
            texts = [s.get("sent") if isinstance(s, dict) else None for s in sents]
            texts = [t.strip() if isinstance(t, str) else t for t in texts]
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                skips.add("bad_sentence", f"ref {r.get('ref_id')}")
                continue
            queries.append({"image_id": r["image_id"], "ref_id": r.get("ref_id"), "ann_id": r.get("ann_id"),
                            "file_name": image_file_name(im), "width": im["width"],
                            "height": im["height"], "sentence": text, "bbox": [x, y, w, h],
                            "box_xyxy": [x, y, x + w, y + h]})
    return queries, refs_file
