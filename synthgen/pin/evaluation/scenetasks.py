"""``eval-pin --scenes SHARDS --tasks name,relation,...``: a run scored on synthetic validation
shards, one metric per question task (:mod:`.taskmetrics`).

The questions of each scene: ``name`` asks every object by its referral with PIN's prompt (the
question training's ``name`` asks, and the one the training-time validation asks); every other
task's are the record's ``questions`` of that task where compose wrote them (``compose
--tasks``), else derived from the record by :func:`~synthgen.compose.questions.scene_questions`
with the record's seed (records without the fields a task needs, ``colors``, ``point``,
``negatives``, ask none of it). ``--limit N``: the first N questions of each task. Questions are
generated in batches of one task (beam search as ``--num-beams``; at least
``--max-new-tokens`` new tokens, more where the true answer is longer, e.g. several boxes). A
point is checked against the scene's ``{key}.mask.png`` when the shards have masks (compose
``--masks``), else against the target's box.
"""

from __future__ import annotations

import io
from pathlib import PurePosixPath
from typing import Iterator, Sequence

import numpy as np

from synthgen.compose.questions import parse_tasks, scene_questions
from synthgen.errors import UserError
from synthgen.grounding import format_box, query_prompt
from synthgen.pin.evaluation import taskmetrics as M

PARSE = "lenient"


def _mask(raw: dict) -> np.ndarray | None:
    data = raw.get("mask.png")
    if data is None:
        return None
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im)
    except Exception:  # noqa: BLE001 - an unreadable mask: the box rule
        return None


def scene_task_queries(shards: Sequence[str], tasks: Sequence[str], *, limit: int | None = None,
                       image_size: int | None = None, bad: dict[str, int] | None = None,
                       art: str | None = None) -> Iterator[tuple]:
    """``(image uint8 [3,H,W], mask or None, query)`` for the questions of ``tasks`` in every
    scene of ``shards`` (in order; at most ``limit`` per task); a query is ``{"task", "key",
    "text", "answer", "targets", "boxes", "referral"}`` (``referral``: PIN's prompt is built
    from it, ``name`` / ``referral`` tasks; else ``text`` is the prompt). Bad scenes are
    skipped and counted in ``bad``."""
    from synthgen.pin.training.data import iter_scenes

    counts = {t: 0 for t in tasks}
    for url, raw, rec, img in iter_scenes(shards, image_size, bad):
        mask = _mask(raw)
        key = f"{PurePosixPath(str(url)).name}/{raw['__key__']}"
        for q in _questions(rec, tasks, art):
            if limit is not None and counts[q["task"]] >= limit:
                continue
            counts[q["task"]] += 1
            yield img, mask, {**q, "key": key, "boxes": [list(rec.objects[i].box) for i in q["targets"]]}
        if limit is not None and all(n >= limit for n in counts.values()):
            return


def _questions(rec, tasks: Sequence[str], art: str | None) -> list[dict]:
    out = []
    for task in tasks:
        if task == "name":
            for i in range(len(rec.objects)):
                referral, box = rec.query(i)
                out.append({"task": "name", "text": query_prompt(referral, art), "answer": format_box(box),
                            "targets": [i], "referral": referral})
            continue
        own = [q for q in rec.questions or () if q["task"] == task]
        for q in own or scene_questions(rec, [task]):
            ref = None
            if task == "referral":
                o = rec.objects[q["targets"][0]]
                ref = o.referral or o.category
            out.append({"task": task, "text": query_prompt(ref, art) if ref else q["text"], "answer": q["answer"],
                        "targets": list(q["targets"]), "referral": ref})
    return out


def _answer_tokens(adapter, answers: Sequence[str]) -> int:
    tok = adapter.codec.tokenizer
    return max(len(tok(" " + a, add_special_tokens=False)["input_ids"]) for a in answers) + 2


def score_scene_tasks(adapter, shards: Sequence[str], tasks: Sequence[str], *, canvas: int, limit: int | None,
                      batch_size: int = 16, num_beams: int = 3, max_new_tokens: int = 12, art: str | None = None,
                      bad: dict[str, int] | None = None) -> list[dict]:
    """One scored record per question (:func:`scene_task_queries`): the query, the raw output and
    its score (:func:`~synthgen.pin.evaluation.taskmetrics.score`)."""
    import torch

    pending: dict[str, list[tuple]] = {t: [] for t in tasks}
    records: list[dict] = []

    def flush(task: str) -> None:
        chunk = pending[task]
        if not chunk:
            return
        px = torch.stack([c[0] for c in chunk])
        budget = max(max_new_tokens, _answer_tokens(adapter, [c[2]["answer"] for c in chunk]))
        if chunk[0][2]["referral"] is not None:
            outs = adapter.generate(px, [c[2]["referral"] for c in chunk], num_beams=num_beams,
                                    max_new_tokens=budget, art=art)
        else:
            outs = adapter.generate(px, [c[2]["text"] for c in chunk], num_beams=num_beams,
                                    max_new_tokens=budget, prompts=True)
        for (_, mask, q), out in zip(chunk, outs):
            if task == "point":
                s = M.score_point(out, q["targets"][0], q["boxes"][0], mask)
            else:
                s = M.score(task, q["answer"], out, boxes=q["boxes"])
            if task in M.BOX_TASKS:
                s["miou"] = float(np.mean(s["ious"])) if s["ious"] else 0.0
            records.append({"task": task, "key": q["key"], "text": q["text"], "answer": q["answer"],
                            "targets": q["targets"], "n_true": len(q["boxes"]) if task in M.BOX_TASKS else None,
                            "output": out, **s})
        chunk.clear()

    for img, mask, q in scene_task_queries(shards, tasks, limit=limit, image_size=canvas, bad=bad, art=art):
        pending[q["task"]].append((img, mask, q))
        if len(pending[q["task"]]) >= batch_size:
            flush(q["task"])
    for t in tasks:
        flush(t)
    return records


def evaluate_scene_tasks(run_dir, scenes, *, tasks: str | Sequence[str] = "name", out=None, model: str | None = None,
                         batch_size: int = 16, limit: int | None = None, device: str | None = None, protocol=None,
                         vlm_options: dict | None = None, overwrite: bool = False) -> dict:
    """Score a run on scene shards per task; write ``preds.jsonl`` + ``metrics.json`` (``tasks``:
    the table of :func:`~synthgen.pin.evaluation.taskmetrics.summarize_tasks`); return the metrics."""
    from synthgen.pin.evaluation.evaluate import (
        _protocol,
        _run_and_adapter,
        _write_outputs,
        preds_path,
        refuse_existing,
    )
    from synthgen.pin.evaluation.sets import Skips
    from synthgen.shards import find_shards

    proto = _protocol(protocol, {})
    try:
        chosen = parse_tasks(tasks)
    except ValueError as exc:
        raise UserError(f"--tasks: {exc}") from None
    shards = find_shards(scenes)
    if not shards:
        raise UserError(f"--scenes {scenes}: no .tar shards there")
    name = PurePosixPath(str(scenes).rstrip("/")).name.replace("*", "_") or "scenes"
    out_path = preds_path(run_dir, f"scenes-{name}", proto, "scenes", out)
    refuse_existing(out_path, overwrite)
    run, adapter = _run_and_adapter(run_dir, proto.baseline, model, device, vlm_options)
    bad: dict[str, int] = {}
    records = score_scene_tasks(adapter, shards, chosen, canvas=run.canvas, limit=limit, batch_size=batch_size,
                                num_beams=proto.num_beams, max_new_tokens=proto.max_new_tokens, art=proto.art, bad=bad)
    if not records:
        raise UserError(f"--scenes {scenes}: no question of {', '.join(chosen)} in its scenes"
                        + (f" ({', '.join(f'{k} {v}' for k, v in sorted(bad.items()))} bad)" if bad else ""))
    table = M.summarize_tasks(records, chosen)
    rec = proto.record("scenes", run.canvas, run.grid)
    for k in ("max_objects", "article" if "name" not in chosen and "referral" not in chosen else ""):
        rec.pop(k, None)
    rec["parse"] = PARSE
    # (no top-level "miou": `synthgen table` puts a per-task result in its "Question tasks" table)
    metrics = {"set": str(scenes), "n": len(records), "tasks": table, "protocol": rec, "matching": "greedy by IoU, one to one; unmatched boxes count as IoU 0",
               "canvas": run.canvas, "grid": run.grid, "baseline": proto.baseline, "run": str(run.dir),
               "bad_scenes": bad, "skipped": Skips().summary()}
    metrics["metrics_file"] = str(_write_outputs(records, metrics, out_path))
    metrics["preds_file"] = str(out_path)
    return metrics
