"""Commands that make an object bank from something else than rendering: ``bank-from-annotations``."""

from __future__ import annotations

from typing import Any

from synthgen.commands.core import Command, Option


def _from_annotations(v: dict[str, Any]):
    from synthgen.bank.annotations import AnnotationsJob

    return AnnotationsJob(annotations=v["annotations"], images=v["images"], out=v["out"], min_size=v["min_size"],
                          skip_truncated=v["skip_truncated"], max_occlusion=v["max_occlusion"],
                          categories=tuple(v["categories"]))


BANK_FROM_ANNOTATIONS = Command(
    "bank-from-annotations", "Cut an object bank out of annotated images: every instance of a COCO or LVIS "
    "instances json (polygons or RLE; crowd ones skipped and counted) by its mask's largest component, tightly "
    "cropped, as an RGBA cut-out; written as a synthgen bank that compose reads.",
    (Option("annotations", None, "COCO / LVIS instances json (a path or an s3:// / gs:// URL).", argument=True,
            required=True, metavar="INSTANCES_JSON"),
     Option("images", None, "Folder of the images the json names (file_name; LVIS: the last part of coco_url). "
            "Nothing outside it is read.", required=True, metavar="DIR"),
     Option("out", None, "Object bank folder (or URL) to write, outside --images; re-running the same command "
            "resumes it.", flags=("--out", "-o"), required=True, metavar="PATH"),
     Option("min_size", 32, "Leave out instances whose cut-out has a side under this many pixels.", "int"),
     Option("skip_truncated", False, "Leave out instances whose mask touches the image border (cut by the frame).",
            "bool"),
     Option("max_occlusion", 1.0, "Leave out instances whose box is covered by other instances' masks beyond this "
            "fraction (a proxy for occlusion; 1: keep all).", "float", metavar="FRACTION"),
     Option("categories", (), "Comma list of category names to cut out (default: all).", "strs", shown=""),
     Option("progress", True, "Show the progress bar (on stderr).", "bool", cli=False)),
    _from_annotations, run="synthgen.bank.annotations:bank_from_annotations", runtime=("progress",),
    done="synthgen.bank.format:bank_done")
