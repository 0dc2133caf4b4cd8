"""Driver of ``synthgen export``: scene shards -> a fine-tuning framework's dataset.

Every question a scene records (``questions``, :mod:`synthgen.compose.questions`) is one sample;
a scene without questions gives one, its own ``prompt`` / ``answer`` (the ``name`` task). Answers
and the boxes inside questions are re-rendered in the box convention (:mod:`.boxes`) from the
targets' boxes; each scene's image is written once (``images/``, at its canvas size), however many
samples it has; the container (:mod:`.containers`) is written at the end.

Resumable like compose: each input shard's scene entries go to ``.parts/NNNNNN.json`` (written
whole, after its images), so a re-run of the same command reads the shards done and goes on with
the others; ``export.json``, written last, marks the export finished. The settings (container,
convention, shards, limit) are kept in ``.parts/settings.json``: another command on the same
``--out`` is refused without ``--overwrite``. ``--to coco`` is ``export-coco``.
"""

from __future__ import annotations

import json
import os
from pathlib import PurePosixPath
from typing import Any, Callable

from synthgen import storage
from synthgen.errors import UserError
from synthgen.export import containers
from synthgen.export.boxes import CONVENTIONS, Converter, render
from synthgen.schema import SceneRecord, SchemaError
from synthgen.shards import find_shards, iter_tar
from synthgen.storage import RunFolder, atomic_write, atomic_write_json

SCHEMA = "synthgen.export/1"
DONE = "export.json"
PARTS = ".parts"


def export_done(out: str) -> bool:
    """Whether ``out`` holds a finished export (its ``export.json``)."""
    return storage.path(str(out) + "/" + DONE).exists()


def scene_samples(rec: SceneRecord, conv: Converter, skipped: dict[str, int]) -> list[dict[str, Any]]:
    """The samples of one scene in ``conv``'s convention (unknown tasks counted in ``skipped``)."""
    objects = [o.to_dict() for o in rec.objects]
    questions = rec.questions
    if questions is None:   # the paper's scenes: the record's own question
        t = rec.objects[rec.target]
        questions = ({"task": "name", "category": t.category, "text": rec.prompt, "answer": rec.answer,
                      "targets": [rec.target]},)
    out = []
    for q in questions:
        qa = render(conv, objects, q)
        if qa is None:
            skipped[f"task_{q['task']}"] = skipped.get(f"task_{q['task']}", 0) + 1
            continue
        out.append({"task": q["task"], "category": q["category"], "question": qa[0], "answer": qa[1],
                    "boxes": [list(objects[t]["box"]) for t in q.get("targets") or []]})
    return out


def _image_name(key: str, url: str, taken: set[str]) -> str:
    name = f"{key}.jpg"
    if name in taken:   # (two compose runs both numbered from scene 0)
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in PurePosixPath(url).name.split(".")[0])
        name, k = f"{stem or 'shard'}-{key}.jpg", 1
        while name in taken:
            k += 1
            name = f"{stem or 'shard'}-{k}-{key}.jpg"
    taken.add(name)
    return name


def export_shard(url: str, out, boxes: str, room: int | None, taken: set[str],
                 advance: Callable[[], None]) -> dict[str, Any]:
    """The scene entries of one shard (at most ``room``), their images written to ``out/images``."""
    scenes: list[dict] = []
    skipped: dict[str, int] = {}
    for sample in iter_tar(url, ("json", "jpg")):
        if room is not None and len(scenes) >= room:
            break
        where = f"{url}: sample {sample['__key__']}"
        if "jpg" not in sample or "json" not in sample:
            why = "no_image" if "json" in sample else "no_json"
            skipped[why] = skipped.get(why, 0) + 1
            continue
        try:
            rec = SceneRecord.from_json(sample["json"], where)
        except SchemaError as exc:
            skipped[exc.reason] = skipped.get(exc.reason, 0) + 1
            continue
        conv = Converter(boxes, rec.width, rec.height)
        name = _image_name(rec.key, url, taken)
        atomic_write(out / "images" / name, sample["jpg"])
        scenes.append({"key": rec.key, "image": name, "width": rec.width, "height": rec.height,
                       "frame": list(conv.frame), "objects": [{"category": o.category, "box": list(o.box)}
                                                              for o in rec.objects],
                       "samples": scene_samples(rec, conv, skipped)})
        advance()
    return {"shard": os.path.basename(url), "scenes": scenes, "skipped": skipped}


def _clear(out, to: str) -> None:
    """Remove what an export writes in ``out`` (and nothing else)."""
    for name in (DONE, *containers.written(to), "images/", PARTS + "/"):
        p = out / name.rstrip("/")
        if name.endswith("/"):
            for f in (p.find() if p.is_dir() else {}):
                storage.path(f).unlink(missing_ok=True)
        else:
            p.unlink(missing_ok=True)


def _settings(out, settings: dict, overwrite: bool) -> dict | None:
    """The finished export of these settings (None: work to do); another export is refused."""
    done, mine = out / DONE, out / PARTS / "settings.json"
    for f in (done, mine):
        if f.exists():
            old = json.loads(f.read_text())
            same = old.get("settings", old) == settings
            if same and not overwrite:
                return old if f == done else None
            if not overwrite:
                was = old.get("settings", old)
                raise UserError(f"--out {out} holds an export with other settings (--to {was.get('to')} --boxes "
                                f"{was.get('boxes')}, limit {was.get('limit')}, {len(was.get('shards', []))} shards); "
                                "pass --overwrite to replace it, or choose another --out")
            _clear(out, old.get("settings", old).get("to", settings["to"]))
            break
    atomic_write_json(mine, settings)
    return None


def _coco(shards: str, root, settings: dict, overwrite: bool) -> dict[str, Any]:
    """``--to coco``: export-coco (which refuses a finished export-coco in --out without --overwrite)."""
    from synthgen.compose.export import export_coco

    coco = export_coco(shards, root, limit=settings["limit"], overwrite=overwrite)
    summary = {"settings": settings, "to": "coco", "boxes": settings["boxes"], "scenes": len(coco["images"]),
               "samples": len(coco["annotations"]),
               "skipped": {k: v["count"] for k, v in coco["info"]["skipped_scenes"].items()},
               "files": ["images/", "instances.json"]}
    atomic_write_json(root / DONE, summary)
    return summary


def export(shards: str, out: str, to: str, boxes: str = "pin", limit: int | None = None,
           overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Export scene shards to container ``to`` with box convention ``boxes`` (see the module doc);
    the summary written to ``export.json``."""
    if to not in containers.CONTAINERS:
        raise UserError(f"--to {to!r} is not a container (the containers: {', '.join(containers.CONTAINERS)})")
    if boxes not in CONVENTIONS:
        raise UserError(f"--boxes {boxes!r} is not a box convention (the conventions: {', '.join(CONVENTIONS)})")
    if limit is not None and limit < 1:
        raise UserError(f"--limit must be at least 1 (got {limit})")
    if boxes == "qwen2_5_vl" and to not in ("coco", "yolo"):
        Converter(boxes, 28, 28)   # (transformers missing: one line before any work)
    urls = find_shards(shards)
    settings = {"schema": SCHEMA, "to": to, "boxes": boxes, "shards": [os.path.basename(u) for u in urls],
                "limit": limit}
    with RunFolder(out, "export", clean="recursive") as folder:   # (one export at a time in --out)
        return _export(shards, urls, folder.path, settings, overwrite, progress)


def _export(shards: str, urls: list[str], root, settings: dict, overwrite: bool, progress: bool) -> dict[str, Any]:
    to, boxes, limit = settings["to"], settings["boxes"], settings["limit"]
    finished = _settings(root, settings, overwrite)
    if finished is not None:
        return finished
    if to == "coco":
        return _coco(shards, root, settings, overwrite)
    from synthgen.progress import progress_bars

    parts, taken, count = [], set(), 0
    with progress_bars("scenes", enabled=progress) as bars:
        task = bars.add_task("export", total=limit)
        for i, url in enumerate(urls):
            if limit is not None and count >= limit:
                break
            part_file = root / PARTS / f"{i:06d}.json"
            if part_file.exists():
                part = json.loads(part_file.read_text())
                taken.update(sc["image"] for sc in part["scenes"])
                bars.advance(task, len(part["scenes"]))
            else:
                part = export_shard(url, root, boxes, None if limit is None else limit - count, taken,
                                    lambda: bars.advance(task))
                atomic_write(part_file, json.dumps(part, ensure_ascii=False) + "\n")
            parts.append(part)
            count += len(part["scenes"])
    skipped: dict[str, int] = {}
    for p in parts:
        for k, n in p["skipped"].items():
            skipped[k] = skipped.get(k, 0) + n
    if not count:
        why = f" ({', '.join(f'{n} {k}' for k, n in skipped.items())})" if skipped else ""
        raise UserError(f"no scenes found in {shards}{why}")
    files = containers.write(to, root, [p["scenes"] for p in parts], settings)
    frames = {f"{sc['width']}x{sc['height']}": sc["frame"] for p in parts for sc in p["scenes"]}
    summary = {"settings": settings, "to": to, "boxes": boxes, "scenes": count, "box_frame": frames,
               "samples": sum(len(sc["objects" if to == "yolo" else "samples"]) for p in parts for sc in p["scenes"]),
               "skipped": skipped, "files": ["images/", *files]}
    atomic_write_json(root / DONE, summary)
    return summary
