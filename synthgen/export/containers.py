"""The containers of ``synthgen export --to``: what files the samples go into, for which framework.

A scene entry (:func:`synthgen.export.run.scene_entry`) is ``{"key", "image", "width", "height",
"frame", "objects", "samples"}``: ``image`` the file under ``images/`` (written once per scene,
at its canvas size), ``frame`` the size ``[w, h]`` the convention's absolute coordinates refer
to, ``samples`` the scene's questions rendered in the convention (``task``, ``category``,
``question``, ``answer``, ``boxes``: the targets' canvas boxes). Every record written carries
the scene's ``key``.

* ``jsonl``: ``samples.jsonl``, one sample a line with every field.
* ``llama-factory``: ``data.json`` (ShareGPT with OpenAI-style tags: ``messages`` of
  ``{"role", "content"}``, the user turn starting ``<image>``, ``images`` relative to the folder)
  and ``dataset_info.json`` registering it as ``synthgen`` (LLaMA-Factory's data/README.md,
  "Sharegpt Format" / "OpenAI Format" / "Multimodal Dataset").
* ``swift``: ``train.jsonl`` in ms-swift's standard format (``messages`` + ``images``, absolute
  paths or URLs; docs/source_en/Customization/Custom-dataset.md).
* ``hf``: ``data/train-NNNNN.parquet`` per input shard with a Hugging Face ``Image`` feature
  (``datasets.load_dataset("parquet", data_files=...)``), one row per sample; rows of one scene
  repeat the same image bytes, which parquet's dictionary encoding stores once per row group.
* ``yolo``: ``labels/{image}.txt`` (``class cx cy w h``, fractions of the canvas), ``classes.txt``
  and an Ultralytics ``data.yaml`` (classes numbered by sorted category name).
* ``coco``: :mod:`synthgen.compose.export` (``export-coco``), with instance masks.
"""

from __future__ import annotations

import io
import json
from typing import Sequence

from synthgen import storage
from synthgen.storage import atomic_write, atomic_write_json

CONTAINERS = ("llama-factory", "swift", "hf", "jsonl", "coco", "yolo")
DATASET_NAME = "synthgen"
LLAMA_FACTORY_INFO = {
    "file_name": "data.json", "formatting": "sharegpt",
    "columns": {"messages": "messages", "images": "images"},
    "tags": {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant"}}
IMAGE_TOKEN = "<image>"


def _messages(s: dict) -> list[dict[str, str]]:
    return [{"role": "user", "content": IMAGE_TOKEN + s["question"]}, {"role": "assistant", "content": s["answer"]}]


def _lines(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def jsonl(out, scenes: Sequence[dict], meta: dict) -> list[str]:
    rows = [{"key": sc["key"], "image": f"images/{sc['image']}", "width": sc["width"], "height": sc["height"],
             "frame": sc["frame"], "convention": meta["boxes"], **s} for sc in scenes for s in sc["samples"]]
    atomic_write(out / "samples.jsonl", _lines(rows))
    return ["samples.jsonl"]


def llama_factory(out, scenes: Sequence[dict], meta: dict) -> list[str]:
    rows = [{"messages": _messages(s), "images": [f"images/{sc['image']}"], "key": sc["key"]}
            for sc in scenes for s in sc["samples"]]
    atomic_write(out / "data.json", json.dumps(rows, ensure_ascii=False, indent=1) + "\n")
    atomic_write_json(out / "dataset_info.json", {DATASET_NAME: LLAMA_FACTORY_INFO})
    return ["data.json", "dataset_info.json"]


def swift(out, scenes: Sequence[dict], meta: dict) -> list[str]:
    images = storage.path(str(out)).resolve() / "images"
    rows = [{"messages": _messages(s), "images": [str(images / sc["image"])], "key": sc["key"]}
            for sc in scenes for s in sc["samples"]]
    atomic_write(out / "train.jsonl", _lines(rows))
    return ["train.jsonl"]


def _value(dtype: str) -> dict:
    return {"dtype": dtype, "_type": "Value"}


# the Hugging Face features of the parquet rows (schema metadata "huggingface", read by `datasets`)
HF_FEATURES = {
    "key": _value("string"), "image": {"_type": "Image"}, "width": _value("int64"), "height": _value("int64"),
    "frame_width": _value("int64"), "frame_height": _value("int64"), "convention": _value("string"),
    "task": _value("string"), "category": _value("string"), "question": _value("string"),
    "answer": _value("string"),
    "boxes": {"feature": {"feature": _value("float64"), "_type": "Sequence"}, "_type": "Sequence"},
    "messages": [{"role": _value("string"), "content": _value("string")}],
}
DICTIONARY_PAGE = 256 << 20   # a row group's distinct images stay in the dictionary


def hf_part(scenes: Sequence[dict], meta: dict, read_image) -> bytes:
    """One parquet file of the samples of ``scenes`` (``read_image(name) -> bytes``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list] = {k: [] for k in HF_FEATURES}
    for sc in scenes:
        data = read_image(sc["image"]) if sc["samples"] else b""
        for s in sc["samples"]:
            row = {"key": sc["key"], "image": {"bytes": data, "path": sc["image"]}, "width": sc["width"],
                   "height": sc["height"], "frame_width": sc["frame"][0], "frame_height": sc["frame"][1],
                   "convention": meta["boxes"], "task": s["task"], "category": s["category"],
                   "question": s["question"], "answer": s["answer"],
                   "boxes": [[float(v) for v in b] for b in s["boxes"]], "messages": _messages(s)}
            for k, v in row.items():
                cols[k].append(v)
    schema = pa.schema([
        ("key", pa.string()), ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("width", pa.int64()), ("height", pa.int64()), ("frame_width", pa.int64()), ("frame_height", pa.int64()),
        ("convention", pa.string()), ("task", pa.string()), ("category", pa.string()), ("question", pa.string()),
        ("answer", pa.string()), ("boxes", pa.list_(pa.list_(pa.float64()))),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))],
        metadata={"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})
    table = pa.table(cols, schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=max(1, table.num_rows), use_dictionary=True,
                   dictionary_pagesize_limit=DICTIONARY_PAGE, compression="zstd")
    return buf.getvalue()


def hf(out, parts: Sequence[Sequence[dict]], meta: dict) -> list[str]:
    names = []
    for i, scenes in enumerate(p for p in parts if any(sc["samples"] for sc in p)):
        name = f"data/train-{i:05d}.parquet"
        atomic_write(out / name, hf_part(scenes, meta, lambda n: (out / "images" / n).read_bytes()))
        names.append(name)
    return names


def yolo(out, scenes: Sequence[dict], meta: dict) -> list[str]:
    classes = sorted({o["category"] for sc in scenes for o in sc["objects"]})
    ids = {c: i for i, c in enumerate(classes)}
    for sc in scenes:
        w, h = sc["width"], sc["height"]
        lines = [f"{ids[o['category']]} {(o['box'][0] + o['box'][2]) / 2 / w:.6f} {(o['box'][1] + o['box'][3]) / 2 / h:.6f} "
                 f"{(o['box'][2] - o['box'][0]) / w:.6f} {(o['box'][3] - o['box'][1]) / h:.6f}" for o in sc["objects"]]
        atomic_write(out / "labels" / (sc["image"].rsplit(".", 1)[0] + ".txt"), "".join(x + "\n" for x in lines))
    atomic_write(out / "classes.txt", "".join(c + "\n" for c in classes))
    names = "".join(f"  {i}: {json.dumps(c)}\n" for i, c in enumerate(classes))
    root = str(storage.path(str(out)).resolve())
    atomic_write(out / "data.yaml", f"path: {json.dumps(root)}\ntrain: images\nval: images\nnames:\n{names}")
    return ["classes.txt", "data.yaml", "labels/"]


def write(to: str, out, parts: Sequence[Sequence[dict]], meta: dict) -> list[str]:
    """Write container ``to`` from the scene entries of each input shard; the files written."""
    if to == "hf":
        return hf(out, parts, meta)
    scenes = [sc for p in parts for sc in p]
    return {"jsonl": jsonl, "llama-factory": llama_factory, "swift": swift, "yolo": yolo}[to](out, scenes, meta)


def written(to: str) -> tuple[str, ...]:
    """The files and folders (``/``) a container writes besides ``images/``, to clear on --overwrite."""
    return {"jsonl": ("samples.jsonl",), "llama-factory": ("data.json", "dataset_info.json"),
            "swift": ("train.jsonl",), "hf": ("data/",), "yolo": ("labels/", "classes.txt", "data.yaml"),
            "coco": ("instances.json",)}[to]
