"""``synthgen table``: the paper's Table 1 (mIoU all / M / L per set, every baseline and method)
from eval-pin results, as markdown and csv."""

from __future__ import annotations

from synthgen.commands.core import Command, Option

TABLE = Command(
    "table", "Write Table 1 from eval-pin results: a row per baseline (raw, random, prior, K-context) and per "
    "train-pin run (labelled by its method, with its trainable parameter count), mIoU all / M / L per set, the "
    "paper's figures in brackets beside ours; results per question task (eval-pin --scenes --tasks) in a second "
    "table, a column per set and task.",
    (Option("runs", (), "train-pin run folders (their eval/ results), eval folders or metrics.json files: every "
            "eval-pin metrics.json under them is read.", "strs", argument=True, required=True, multiple=True,
            metavar="RUN_OR_EVAL_DIR"),
     Option("out", None, "Markdown file to write (e.g. table.md); the csv (one line per row x set x bucket, ours "
            "and the paper's) goes beside it with .csv.", "path", flags=("--out", "-o"), required=True,
            metavar="PATH"),
     Option("title", "Table 1", "The table's title (the markdown heading).")),
    lambda v: {"paths": list(v["runs"]), "out": v["out"], "title": v["title"]},
    run="synthgen.pin.evaluation.table:write_table", done="synthgen.schema:file_done", view=True)
