"""The data contracts of scenes and run folders, written once (the object bank's: :mod:`synthgen.bank.format`).

1. The scene record (``{key}.json`` in a shard, schema ``synthgen.scene/1``): :class:`SceneRecord`
   and :class:`SceneObject`, written by compose and read by every other stage. A record with the
   question fields (``compose --tasks``: each object's ``colors`` and ``point``, the scene's
   ``negatives`` and ``questions``) is ``synthgen.scene/2``; readers accept both.
2. Run folders: the file names of compose, render and train-pin outputs, and the growth record
   of an extended compose run (:func:`growth_step`).
3. The scene index (``scenes-NNNNNN_index.parquet`` beside each shard, ``synthgen.scene-index/1``):
   one row per scene, :data:`INDEX_COLUMNS` and :func:`index_row`.

Category names: :func:`clean_name` (display name) and :func:`slugify` (folder name).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthgen.errors import UserError

# --- names ---------------------------------------------------------------------------------


def clean_name(name: str) -> str:
    """LVIS/X-Paste key to display name: ``bow_(weapon)`` -> ``bow (weapon)`` (underscores to
    spaces, runs of white space collapsed)."""
    return " ".join(str(name).replace("_", " ").split())


def slugify(name: str) -> str:
    """Folder-safe slug: ``bow_(weapon)`` -> ``bow_weapon``."""
    s = re.sub(r"[^a-z0-9]+", "_", str(name).lower()).strip("_")
    return s or "category"


# --- 1. scene records ----------------------------------------------------------------------

SCENE_SCHEMA = "synthgen.scene/1"
SCENE_SCHEMA_2 = "synthgen.scene/2"     # /1 plus the optional question fields
SCENE_SCHEMAS = (SCENE_SCHEMA, SCENE_SCHEMA_2)
KEY_RE = re.compile(r"[0-9]{9,20}")   # the writer's keys: the scene index, 9 digits or more


def valid_key(key: str) -> bool:
    """Whether ``key`` has the writer's format (digits only: safe as a file name anywhere)."""
    return isinstance(key, str) and KEY_RE.fullmatch(key) is not None


class SchemaError(UserError):
    """A scene json that does not follow ``synthgen.scene/1``; ``reason`` names the fault."""

    def __init__(self, message: str, reason: str = "bad_record"):
        super().__init__(message)
        self.reason = reason

    def __reduce__(self):
        return (type(self), (str(self), self.reason))


@dataclass(frozen=True)
class SceneObject:
    """One pasted object. ``category`` / ``category_id`` are the bank's; ``name`` is the text it
    is asked for by (``bow`` for ``bow (weapon)``; absent in early records: the category);
    ``referral`` the name with its position word when the name repeats in the scene. ``box`` is
    ``[x1, y1, x2, y2]`` in canvas pixels (x2/y2 exclusive), ``cells`` the same box in grid
    cells, ``visible`` the fraction of its pixels (alpha >= the paste threshold) left visible by
    later objects; objects are listed in paste order. Optional (``synthgen.scene/2``, None when
    not recorded): ``colors`` ``((term, share), ...)`` of its opaque pixels
    (:mod:`synthgen.compose.attributes`), ``point`` ``(x, y)`` a pixel among its visible ones."""

    category: str
    category_id: int | None
    object_id: str
    box: tuple[int, ...]
    cells: tuple[int, ...]
    visible: float
    referral: str
    name: str = ""   # the name it is asked for by (the category without its qualifier)
    colors: tuple[tuple[str, float], ...] | None = None
    point: tuple[int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"category": self.category, "category_id": self.category_id,
             "name": self.name or self.category, "object_id": self.object_id,
             "box": list(self.box), "cells": list(self.cells), "visible": self.visible,
             "referral": self.referral}
        if self.colors is not None:
            d["colors"] = dict(self.colors)
        if self.point is not None:
            d["point"] = list(self.point)
        return d

    extended = property(lambda self: self.colors is not None or self.point is not None)


@dataclass(frozen=True)
class SceneRecord:
    """The json of one scene. ``target`` indexes ``objects``; ``prompt`` + `` `` + ``answer`` is
    the training text for it. Optional (``synthgen.scene/2``, None when not recorded):
    ``negatives`` ``((category, name), ...)``, bank categories absent from the scene (close
    names first), ``questions`` those of the tasks compose was asked for (:mod:`synthgen.compose.questions`)."""

    key: str
    seed: int
    width: int
    height: int
    grid: int
    background: dict
    objects: tuple[SceneObject, ...]
    target: int
    prompt: str
    answer: str
    negatives: tuple[tuple[str, str], ...] | None = None
    questions: tuple[dict, ...] | None = None

    extended = property(lambda self: self.negatives is not None or self.questions is not None
                        or any(o.extended for o in self.objects), doc="Has fields of synthgen.scene/2.")

    def to_dict(self) -> dict[str, Any]:
        d = {"schema": SCENE_SCHEMA_2 if self.extended else SCENE_SCHEMA, "key": self.key, "seed": self.seed,
             "width": self.width, "height": self.height, "grid": self.grid, "background": dict(self.background),
             "objects": [o.to_dict() for o in self.objects], "target": self.target,
             "prompt": self.prompt, "answer": self.answer}
        if self.negatives is not None:
            d["negatives"] = [{"category": c, "name": n} for c, n in self.negatives]
        if self.questions is not None:
            d["questions"] = [dict(q) for q in self.questions]
        return d

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=False, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str, where: str = "scene") -> "SceneRecord":
        """Parse and check a scene json; raises :class:`SchemaError` naming ``where``."""
        try:
            d = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise SchemaError(f"{where}: not valid JSON ({exc})", "not_json") from None
        return cls.from_dict(d, where)

    @classmethod
    def from_dict(cls, d: Any, where: str = "scene") -> "SceneRecord":
        if not isinstance(d, dict):
            raise SchemaError(f"{where}: the scene json is not an object", "bad_record")
        if d.get("schema") not in SCENE_SCHEMAS:
            raise SchemaError(f"{where}: schema {d.get('schema')!r}, expected "
                              f"{' or '.join(map(repr, SCENE_SCHEMAS))}", "bad_schema")
        try:
            objects = tuple(_object(o, f"object {i}") for i, o in enumerate(d["objects"]))
            rec = cls(key=_str(d["key"], "key"), seed=_int(d.get("seed", 0), "seed"),
                      width=_int(d["width"], "width"), height=_int(d["height"], "height"),
                      grid=_int(d.get("grid", 0), "grid"), background=_background(d.get("background")),
                      objects=objects, target=_int(d.get("target", 0), "target"),
                      prompt=_str(d.get("prompt", ""), "prompt"), answer=_str(d.get("answer", ""), "answer"),
                      negatives=_negatives(d.get("negatives")), questions=_questions(d.get("questions"), len(objects)))
        except KeyError as exc:
            raise SchemaError(f"{where}: missing field {exc.args[0]!r}", "missing_field") from None
        except _BadText as exc:
            raise SchemaError(f"{where}: {exc}", "bad_text") from None
        except (TypeError, ValueError) as exc:
            raise SchemaError(f"{where}: {exc}", "bad_field") from None
        if not valid_key(rec.key):
            raise SchemaError(f"{where}: key {rec.key!r:.40} is not a scene index (9+ digits)", "bad_key")
        if not objects:
            raise SchemaError(f"{where} has no objects", "no_objects")
        if rec.width < 1 or rec.height < 1:
            raise SchemaError(f"{where}: canvas {rec.width}x{rec.height}", "bad_field")
        if not 0 <= rec.target < len(objects):
            raise SchemaError(f"{where}: target {rec.target} of {len(objects)} objects", "bad_field")
        return rec

    def query(self, index: int) -> tuple[str, list[float]]:
        """``(referral, box)`` asking for object ``index``."""
        o = self.objects[index]
        return o.referral or o.category, [float(v) for v in o.box]


class _BadText(ValueError):
    pass


def _negatives(v: Any) -> tuple[tuple[str, str], ...] | None:
    if v is not None and not (isinstance(v, list) and all(isinstance(x, dict) for x in v)):
        raise TypeError("negatives must be a list of {category, name} objects")
    return None if v is None else tuple((_str(x["category"], "negative category"), _str(x["name"], "negative name")) for x in v)


QUESTION_KEYS = ("task", "category", "text", "answer", "targets")


def _questions(v: Any, n: int) -> tuple[dict, ...] | None:
    if v is None:
        return None
    if not isinstance(v, list):
        raise TypeError("questions must be a list")
    out = []
    for k, q in enumerate(v):
        if not isinstance(q, dict) or list(q) != list(QUESTION_KEYS):
            raise ValueError(f"question {k} must have the keys {', '.join(QUESTION_KEYS)}, in order")
        targets = q["targets"]
        if not isinstance(targets, list) or not all(_number(t, int) and 0 <= t < n for t in targets):
            raise ValueError(f"question {k}: targets must be indices of objects (got {targets!r:.60})")
        out.append({key: (_str(q[key], f"question {k} {key}") if key != "targets" else list(targets))
                    for key in QUESTION_KEYS})
    return tuple(out)


def _colors(v: Any, where: str) -> tuple[tuple[str, float], ...] | None:
    if v is not None and not (isinstance(v, dict) and all(_number(s) for s in v.values())):
        raise TypeError(f"{where} colors must map colour names to shares")
    return None if v is None else tuple((_str(c, f"{where} colour"), float(s)) for c, s in v.items())


def _point(v: Any, where: str) -> tuple[int, int] | None:
    if v is not None and not (isinstance(v, list) and len(v) == 2 and all(_number(x, int) for x in v)):
        raise TypeError(f"{where} point must be 2 integers (got {v!r:.40})")
    return None if v is None else (v[0], v[1])


def _number(v: Any, kind: type | tuple = (int, float)) -> bool:
    return isinstance(v, kind) and not isinstance(v, bool)


def _str(v: Any, name: str) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{name} must be a string (got {v!r:.40})")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise _BadText(f"{name} is not valid UTF-8 text (lone surrogates)") from None
    return v


def _background(v: Any) -> dict:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise TypeError("background must be an object")
    return {_str(k, "background key"): (_str(x, f"background {k}") if isinstance(x, str) else x)
            for k, x in v.items()}


def _int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an integer (got {v!r:.40})")
    return v


def _box(v: Any, name: str) -> tuple:
    if not isinstance(v, (list, tuple)) or len(v) != 4 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
        raise ValueError(f"{name} must be 4 finite numbers (got {v!r:.60})")
    if not (v[0] < v[2] and v[1] < v[3]):
        raise ValueError(f"{name} {list(v)} is empty (x1 < x2 and y1 < y2 needed)")
    return tuple(v)


def _object(o: Any, where: str) -> SceneObject:
    if not isinstance(o, dict):
        raise TypeError(f"{where} is not an object")
    cid = o.get("category_id")
    if cid is not None:
        cid = _int(cid, f"{where} category_id")
    vis = o.get("visible", 1.0)
    if isinstance(vis, bool) or not isinstance(vis, (int, float)):
        raise TypeError(f"{where} visible must be a number")
    return SceneObject(category=_str(o["category"], f"{where} category"), category_id=cid,
                       object_id=_str(str(o.get("object_id", "")), f"{where} object_id"),
                       box=_box(o["box"], f"{where} box"),
                       cells=tuple(o.get("cells") or ()), visible=vis,
                       referral=_str(o.get("referral") or o["category"], f"{where} referral"),
                       name=_str(o.get("name") or o["category"], f"{where} name"),
                       colors=_colors(o.get("colors"), where), point=_point(o.get("point"), where))


# --- 2. run folders ------------------------------------------------------------------------

LOCK_FILE = ".synthgen.lock"    # held while a run writes the folder, removed after

# compose
RUN_FILE = "run.json"           # the options that decide the dataset
MANIFEST_FILE = "manifest.json"
SHARD_PREFIX = "scenes"


def shard_name(i: int, prefix: str = SHARD_PREFIX) -> str:
    return f"{prefix}-{i:06d}.tar"


def stats_name(i: int, prefix: str = SHARD_PREFIX) -> str:
    """The done marker (and counters) of shard ``i``."""
    return f"{prefix}-{i:06d}_stats.json"


def index_name(i: int) -> str:
    """The scene index of shard ``i`` (section 3), written before its done marker."""
    return f"{SHARD_PREFIX}-{i:06d}_index.parquet"


def growth_step(num_samples: int, rewritten: list[str] | None = None) -> dict[str, Any]:
    """One entry of ``growth`` in an extended run's ``run.json`` (and ``manifest.json``): the size
    the folder was composed or extended to, in order, and the shards an extension rewrote (the
    earlier last shard when it was partial: it gains scenes and a new stats marker). A folder
    never extended has no ``growth``."""
    step: dict[str, Any] = {"num_samples": int(num_samples)}
    if rewritten is not None:
        step["rewritten"] = list(rewritten)
    return step


# prepare-backgrounds: shards named as compose's (shard_name(i, BACKGROUNDS_PREFIX)) of {key}.jpg +
# {key}.json (source name, original size), a manifest.json, and the identity of the source listing
BACKGROUNDS_PREFIX = "backgrounds"
BACKGROUNDS_FORMAT = "synthgen.backgrounds/1"
PREPARED_FILE = "prepared.json"

# train-pin
PIN_FORMAT = "synthgen.pin/1"
PIN_WEIGHTS_FILE = "pin.safetensors"
PIN_META_FILE = "pin.json"
TRAIN_STATE_FILE = "train_state.pt"   # the commit point of a checkpoint
TRAIN_LOG_FILE = "log.jsonl"


# what each kind of output folder holds when it is complete: `synthgen run` asks each command's
# (synthgen.commands) before it skips a step; a folder still locked by a run is not complete
COCO_FILE = "instances.json"        # export-coco
DEMO_DATA_FILE = "demo-data.json"   # demo-data: written last


def unlocked(folder: Path, marker: str) -> bool:
    """Whether ``marker`` is in ``folder`` and no run holds the folder."""
    return (folder / marker).is_file() and not (folder / LOCK_FILE).exists()


def scenes_done(out: Path) -> bool:
    """A compose (or prepare-backgrounds) folder: its manifest, written after every shard."""
    return unlocked(out, MANIFEST_FILE)


def pin_run_done(out: Path) -> bool:
    """A train-pin run that reached its planned steps."""
    try:
        meta = json.loads((out / PIN_META_FILE).read_text())
        return (not (out / LOCK_FILE).exists() and meta.get("step") is not None
                and meta.get("steps_planned") is not None and meta["step"] >= meta["steps_planned"])
    except (OSError, ValueError, TypeError):
        return False


def pin_run_exists(out: Path) -> bool:
    """An imported run (it has no steps to reach)."""
    return (out / PIN_META_FILE).is_file()


def metrics_file(preds: Any) -> Any:
    """The ``metrics.json`` eval-pin writes beside its predictions file (a path of either kind)."""
    return preds.with_name("metrics.json") if preds.name == "preds.jsonl" else preds.with_suffix(".metrics.json")


def eval_done(preds: Path) -> bool:
    """An evaluation: its metrics, written after its predictions."""
    return metrics_file(preds).is_file()


def coco_done(out: Path) -> bool:
    return (out / COCO_FILE).is_file()


def demo_data_done(out: Path) -> bool:
    return (out / DEMO_DATA_FILE).is_file()


def file_done(out: Path) -> bool:
    """A command whose output is one file (preview, stats -o, predict -o, export-pin)."""
    return out.is_file()

# --- 3. the scene index --------------------------------------------------------------------

INDEX_SCHEMA = "synthgen.scene-index/1"   # parquet key-value metadata "synthgen_schema"

# (column, parquet type, meaning); list columns are per object, in paste order (as `objects`)
INDEX_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("key", "string", "scene key (the tar members' key; 9+ digits)"),
    ("index", "int64", "scene index k (the key as a number)"),
    ("shard", "string", "the tar holding the scene (scenes-NNNNNN.tar)"),
    ("seed", "int64", "the scene's seed"),
    ("width", "int32", "canvas width in pixels"),
    ("height", "int32", "canvas height in pixels"),
    ("grid", "int32", "grid cells per side"),
    ("background", "string", "background source (file name or shard:member)"),
    ("num_objects", "int32", "number of objects"),
    ("categories", "list<string>", "category of each object"),
    ("category_ids", "list<int64>", "category_id of each object (null when the bank has none)"),
    ("names", "list<string>", "the name each object is asked for by"),
    ("object_ids", "list<string>", "bank id of each object"),
    ("boxes", "list<list<int32>>", "[x1, y1, x2, y2] of each object, canvas pixels, x2/y2 exclusive"),
    ("cells", "list<list<int32>>", "the same boxes in grid cells"),
    ("visible", "list<float64>", "visible fraction of each object"),
    ("referrals", "list<string>", "referral text of each object"),
    ("referral_kinds", "list<string>", "plain (the referral is the name), relative (the name repeats) or absolute"),
    ("target", "int32", "index of the target object"),
    ("target_category", "string", "the target's category"),
    ("target_name", "string", "the target's name"),
    ("target_referral", "string", "the target's referral text"),
    ("target_referral_kind", "string", "plain, relative or absolute"),
    ("target_box", "list<int32>", "the target's box"),
    ("target_visible", "float64", "the target's visible fraction"),
    ("prompt", "string", "the training prompt"),
    ("answer", "string", "the training answer (the target's box as text)"),
    ("mask", "bool", "whether the scene has a {key}.mask.png"),
)


def referral_kind(obj: SceneObject, names: list[str]) -> str:
    """``plain`` when an object is asked for by its name alone, else ``relative`` when its name
    repeats in the scene (``names``: every object's name; ``left cup`` of two cups) or
    ``absolute`` (a position in the image: ``apple at the left``), as ``synthgen stats`` counts."""
    name = obj.name or obj.category
    if obj.referral == name:
        return "plain"
    return "relative" if names.count(name) > 1 else "absolute"


def index_row(rec: SceneRecord, shard: str, mask: bool) -> dict[str, Any]:
    """The index row of one scene (the columns of :data:`INDEX_COLUMNS`, in order)."""
    objs = rec.objects
    t = objs[rec.target]
    names = [o.name or o.category for o in objs]
    kinds = [referral_kind(o, names) for o in objs]
    return {"key": rec.key, "index": int(rec.key), "shard": shard, "seed": rec.seed,
            "width": rec.width, "height": rec.height, "grid": rec.grid,
            "background": str(rec.background.get("source", "")), "num_objects": len(objs),
            "categories": [o.category for o in objs], "category_ids": [o.category_id for o in objs],
            "names": names, "object_ids": [o.object_id for o in objs],
            "boxes": [[int(v) for v in o.box] for o in objs],
            "cells": [[int(v) for v in o.cells] for o in objs],
            "visible": [float(o.visible) for o in objs], "referrals": [o.referral for o in objs],
            "referral_kinds": kinds, "target": rec.target, "target_category": t.category,
            "target_name": t.name or t.category, "target_referral": t.referral,
            "target_referral_kind": kinds[rec.target], "target_box": [int(v) for v in t.box],
            "target_visible": float(t.visible), "prompt": rec.prompt, "answer": rec.answer,
            "mask": bool(mask)}
