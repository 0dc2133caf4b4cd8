"""``synthgen export``: scene shards to a fine-tuning framework's dataset, boxes in a VLM family's
convention (``export-coco`` is ``export --to coco``, kept under its old name)."""

from __future__ import annotations

from typing import Any

from synthgen.commands.core import Command, Option


def _export(v: dict[str, Any]) -> dict[str, Any]:
    return {k: x for k, x in v.items() if k != "progress"}   # (how to run it: a runtime value)


EXPORT = Command(
    "export", "Export scene shards for fine-tuning any VLM: every question a scene records is one sample "
    "(the scene's own prompt/answer without questions), its boxes in the model family's convention, in the "
    "dataset format of a fine-tuning framework; each image written once. Re-running resumes.",
    (Option("shards", None, "Scene shards: a folder, a .tar, or a brace pattern (paths or s3:// / gs:// / hf:// "
            "URLs).", argument=True, required=True, metavar="SHARDS"),
     Option("to", None, "Container: llama-factory (ShareGPT data.json + dataset_info.json), swift (ms-swift "
            "train.jsonl: messages + images), hf (parquet with an Image feature for datasets.load_dataset), "
            "jsonl (samples.jsonl, every field), coco (export-coco: instances.json with masks), yolo (labels/*.txt, "
            "classes.txt, data.yaml).", required=True, metavar="CONTAINER"),
     Option("boxes", "pin", "Box convention of questions and answers: pin (\\[x1,y1,x2,y2] canvas pixels), "
            "qwen2_5_vl (JSON bbox_2d in pixels of the image as Qwen2.5-VL's processor resizes it), qwen2_vl "
            "(<|box_start|>(x1,y1),(x2,y2)<|box_end|>, 0-1000), internvl (<ref>/<box> 0-1000), paligemma (detect "
            "prompt, <locYYYY><locXXXX>... 1024 bins, y first), florence2 (<loc_N> 1000 bins with its task tokens), "
            "llava (fractions of the padded square, 2 decimals). Not used by coco and yolo.", metavar="CONVENTION"),
     Option("out", None, "Folder (or s3:// / gs:// URL) to write: images/ and the container's files.",
            flags=("--out", "-o"), required=True, metavar="PATH"),
     Option("limit", None, "Export at most this many scenes (the first ones, in shard order).", "int"),
     Option("overwrite", False, "Replace an earlier export in --out made with other settings (or a finished "
            "one); without it such an --out is refused before any work.", "bool"),
     Option("progress", True, "Show the progress bar (on stderr).", "bool", cli=False)),
    _export, run="synthgen.export.run:export", runtime=("progress",), done="synthgen.export.run:export_done",
    overwrite="--overwrite")
