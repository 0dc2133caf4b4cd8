"""``synthgen table``: the paper's Table 1 from eval-pin results, ours beside the paper's figures.

:func:`collect` reads every eval-pin ``metrics.json`` under the folders given (train-pin runs,
their ``eval/`` folders, or an eval's own folder) and the ``pin.json`` of the run each scored;
:func:`make_rows` turns them into rows, :func:`markdown` and :func:`csv_text` write them (pure).
Rows: the baselines (raw, random, prior, uniform, native, K-context) then each train-pin run,
labelled by its ``method`` (``pin`` where ``pin.json`` names none) with its trainable parameter
count; columns: each set's mIoU all / M / L (medium and large: COCO's size buckets on the canvas),
mean +- std for the in-context rows. The paper's figures (:mod:`.paper`) are given where the set's
name says which of its sets it is (``voc``, ``coco``/``instances_val``, ``lvis``). Results per
question task (``eval-pin --scenes SHARDS --tasks ...``) make a second table, "Question tasks", of
the same rows: a column per set and task, mIoU for the tasks answered with boxes, accuracy for the
others.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from synthgen.errors import UserError
from synthgen.pin.evaluation.paper import ROW_NAMES, figure, paper_set
from synthgen.pin.evaluation.taskmetrics import BOX_TASKS, task_score

BUCKETS = (("all", "miou", "n"), ("M", "miou_M", "n_M"), ("L", "miou_L", "n_L"))
BASELINE_ORDER = ("raw", "random", "prior", "uniform", "native")
METHOD_ORDER = ("coop", "vpt-fusion", "vpt-vision", "lora-vision", "pin", "full")


@dataclass
class Row:
    """One row: ``key`` (``random``, ``5-context``, a method), the VLM, the trainable parameters
    (methods), and per set ``cells[set][bucket] = (mean, std or None, n)`` or, for the results per
    question task, ``tasks[set][task] = (score, n)`` (mIoU or accuracy: :func:`task_metric`), and
    its source file."""

    key: str
    label: str
    vlm: str | None = None
    params: int | None = None
    cells: dict[str, dict[str, tuple[float, float | None, int]]] = field(default_factory=dict)
    tasks: dict[str, dict[str, tuple[float | None, int]]] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def set_name(metrics: dict) -> str:
    """The name eval-pin gives the set's folder: the COCO json's stem, ``voc-SPLIT``, ``refcoco-SPLIT``."""
    kind = (metrics.get("protocol") or {}).get("set_kind", "coco-json")
    where = str(metrics.get("set", "?"))
    if kind in ("voc", "refcoco"):
        return f"{kind}-{where.rsplit(':', 1)[-1]}"
    return Path(where).stem


def row_key(metrics: dict, run_meta: dict | None) -> tuple[str, str]:
    """``(key, label)`` of the row a result belongs to."""
    baseline = metrics.get("baseline")
    if baseline == "in-context":
        k = int((metrics.get("protocol") or {}).get("shots", 0))
        return f"{k}-context", f"{k} context"
    if baseline:
        return baseline, baseline
    method = str((run_meta or {}).get("method") or "pin")
    return method, ROW_NAMES.get(method, method)


def _params(meta: dict | None) -> int | None:
    meta = meta or {}
    n = meta.get("trainable_parameters")
    if n is None and (meta.get("method") or "pin") == "pin":
        n = meta.get("pin_parameters")
    return int(n) if isinstance(n, (int, float)) else None


def _order(key: str) -> tuple:
    if key in BASELINE_ORDER:
        return (0, BASELINE_ORDER.index(key), 0, key)
    if key.endswith("-context") and key.split("-")[0].isdigit():
        return (1, int(key.split("-")[0]), 0, key)
    return (2, METHOD_ORDER.index(key) if key in METHOD_ORDER else len(METHOD_ORDER), 0, key)


def make_rows(results: Iterable[tuple[dict, dict | None, str]]) -> list[Row]:
    """Rows from ``(metrics.json, the scored run's pin.json or None, source path)``. A row is
    one key and VLM (method rows: one per run, a second run of the same method and VLM is
    labelled by its folder); the first result of a row on a set is kept."""
    rows: dict[tuple, Row] = {}
    for metrics, meta, source in results:
        key, label = row_key(metrics, meta)
        vlm = (meta or {}).get("vlm")
        ident = (key, None if key in ("random", "prior", "uniform") else vlm,
                 metrics.get("run") if metrics.get("baseline") is None else None)
        row = rows.get(ident)
        if row is None:
            same = sum(1 for r in rows.values() if (r.key, r.vlm) == (key, vlm))
            run_name = Path(str(metrics.get("run", ""))).name
            row = rows[ident] = Row(key, f"{label} ({run_name})" if same else label,
                                    ident[1], _params(meta) if metrics.get("baseline") is None else None)
        name = set_name(metrics)
        if name in row.cells or name in row.tasks:
            continue
        if "tasks" in metrics:
            row.tasks[name] = {t: (task_score(m), int(m.get("n", 0))) for t, m in metrics["tasks"].items()}
        else:
            row.cells[name] = {b: (float(metrics[m]), metrics.get(f"{m}_std"), int(metrics.get(n, 0)))
                               for b, m, n in BUCKETS if m in metrics}
        row.sources[name] = source
    return sorted(rows.values(), key=lambda r: (_order(r.key), r.vlm or "", r.label))


def task_metric(task: str) -> str:
    """What a question task is scored by: ``mIoU`` (answered with boxes) or ``accuracy``."""
    return "mIoU" if task in BOX_TASKS else "accuracy"


def task_columns(rows: Sequence[Row]) -> list[tuple[str, str]]:
    """``(set, task)`` of the results per question task, sets by name, tasks in the order scored."""
    cols: dict[tuple[str, str], None] = {}
    for name in sorted({s for r in rows for s in r.tasks}):
        for r in rows:
            cols.update(dict.fromkeys((name, t) for t in r.tasks.get(name, {})))
    return list(cols)


def table_sets(rows: Sequence[Row]) -> list[str]:
    """The sets of the rows' mIoU cells: the paper's (PVOC, COCO, LVIS) first, in its order, then
    the others."""
    names = {s for r in rows for s in r.cells}
    rank = {"PVOC": 0, "COCO": 1, "LVIS": 2}
    return sorted(names, key=lambda s: (rank.get(paper_set(s) or "", 3), s))


def _num(v: float | None, digits: int = 3) -> str:
    return "-" if v is None or v != v else f"{v:.{digits}f}"


def _cell(row: Row, name: str, bucket: str) -> str:
    mean, std, _ = row.cells.get(name, {}).get(bucket, (None, None, 0))
    text = _num(mean) + (f" ± {_num(std)}" if std is not None and mean is not None else "")
    fig = figure(row.vlm, row.key, paper_set(name), bucket)
    if fig is not None:
        text += f" ({fig[0]:.2f}" + (f" ± {fig[1]:.2f}" if fig[1] is not None else "") + ")"
    return text


def markdown(rows: Sequence[Row], title: str = "Table 1") -> str:
    """The table as markdown: a row per :class:`Row`, mIoU all / M / L per set, the paper's figure
    in brackets where there is one; then the results per question task, if any."""
    sets = table_sets(rows)
    lines = [f"# {title}", ""]
    if sets:
        head = ["row", "VLM", "trainable parameters"] + [
            f"{s}{f' ({paper_set(s)})' if paper_set(s) else ''} {b}" for s in sets for b, _, _ in BUCKETS]
        lines += ["mIoU over all / medium (M) / large (L) objects of each set's images with up to the eval's "
                  "--max-objects objects; in-context rows: mean ± std over the repeats. In brackets: the paper's "
                  "figure (PIN, CVPR 2024, Table 1; this VLM's rows; random: the baselines block).", "",
                  "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(head) - 3)) + "|"]
        for r in rows:
            if r.cells:
                lines.append("| " + " | ".join(_lead(r) + [_cell(r, s, b) for s in sets for b, _, _ in BUCKETS]) + " |")
        queries = ", ".join(f"{s}: {_queries(rows, s)}" for s in sets)
        lines += ["", f"Queries (all / M / L): {queries}.", ""]
    cols = task_columns(rows)
    if cols:
        head = ["row", "VLM", "trainable parameters"] + [f"{s} {t} ({task_metric(t)})" for s, t in cols]
        lines += ["## Question tasks", "",
                  "Each question task on scene shards (eval-pin --scenes SHARDS --tasks): mIoU over the boxes "
                  "asked for (one to one, an unmatched box counts 0) for the tasks answered with boxes, accuracy "
                  "for the others.", "",
                  "| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * len(cols)) + "|"]
        for r in rows:
            if r.tasks:
                lines.append("| " + " | ".join(_lead(r) + [_num(r.tasks.get(s, {}).get(t, (None, 0))[0])
                                                           for s, t in cols]) + " |")
        counts = ", ".join(f"{s} {t} {_task_n(rows, s, t)}" for s, t in cols)
        lines += ["", f"Questions: {counts}.", ""]
    return "\n".join(lines)


def _lead(r: Row) -> list[str]:
    return [r.label, r.vlm or "", f"{r.params:,}" if r.params is not None else ""]


def _task_n(rows: Sequence[Row], name: str, task: str) -> int:
    return next((r.tasks[name][task][1] for r in rows if task in r.tasks.get(name, {})), 0)


def _queries(rows: Sequence[Row], name: str) -> str:
    for r in rows:
        if name in r.cells:
            return " / ".join(str(r.cells[name].get(b, (0, 0, 0))[2]) for b, _, _ in BUCKETS)
    return "-"


def csv_text(rows: Sequence[Row]) -> str:
    """One line per row x set x bucket: ours (mean, std, queries), the paper's (mean, std), the source;
    then one per row x set x question task (``task``; its mIoU or ``accuracy``, the questions ``n``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["row", "label", "vlm", "trainable_parameters", "set", "paper_set", "bucket", "miou", "miou_std",
                "n", "paper_miou", "paper_std", "source", "task", "accuracy"])
    for r in rows:
        for s in table_sets(rows):
            if s not in r.cells:
                continue
            for b, _, _ in BUCKETS:
                if b not in r.cells[s]:
                    continue
                mean, std, n = r.cells[s][b]
                fig = figure(r.vlm, r.key, paper_set(s), b) or (None, None)
                w.writerow([r.key, r.label, r.vlm or "", "" if r.params is None else r.params, s,
                            paper_set(s) or "", b, mean, "" if std is None else std, n,
                            "" if fig[0] is None else fig[0], "" if fig[1] is None else fig[1], r.sources[s], "", ""])
    for s, t in task_columns(rows):
        for r in rows:
            if t not in r.tasks.get(s, {}):
                continue
            score, n = r.tasks[s][t]
            value = "" if score is None else score
            box = task_metric(t) == "mIoU"
            w.writerow([r.key, r.label, r.vlm or "", "" if r.params is None else r.params, s, "", "",
                        value if box else "", "", n, "", "", r.sources[s], t, "" if box else value])
    return buf.getvalue()


# --- I/O -------------------------------------------------------------------------------------

def _metrics_files(folder: Path) -> list[Path]:
    if folder.is_file():
        return [folder]
    return sorted({*folder.rglob("metrics.json"), *folder.rglob("*.metrics.json")})


def _run_meta(metrics: dict, cache: dict) -> dict | None:
    run = metrics.get("run")
    if not run:
        return None
    if run not in cache:
        meta = Path(run) / "pin.json"
        try:
            cache[run] = json.loads(meta.read_text()) if meta.is_file() else None
        except (OSError, ValueError):
            cache[run] = None
    return cache[run]


def collect(paths: Sequence[str | Path]) -> list[tuple[dict, dict | None, str]]:
    """Every eval-pin result under ``paths`` (folders or metrics files), in the order given, with
    the ``pin.json`` of the run it scored (None where that run is not on this machine)."""
    out, cache = [], {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise UserError(f"no such run or eval folder: {p}")
        for f in _metrics_files(p):
            try:
                metrics = json.loads(f.read_text())
            except (OSError, ValueError) as exc:
                raise UserError(f"{f} is not readable JSON ({exc})") from None
            if isinstance(metrics, dict) and ("miou" in metrics or "tasks" in metrics) and "protocol" in metrics:
                out.append((metrics, _run_meta(metrics, cache), str(f)))
    if not out:
        raise UserError(f"no eval-pin results (metrics.json) under {', '.join(map(str, paths))}")
    return out


def write_table(paths: Sequence[str | Path], out: str | Path, title: str = "Table 1") -> dict:
    """Write ``out`` (markdown) and ``out`` with ``.csv`` from the results under ``paths``."""
    out = Path(out)
    if out.suffix.lower() == ".csv":
        raise UserError(f"--out {out}: give the markdown file (e.g. table.md); the csv is written beside it")
    rows = make_rows(collect(paths))
    out.parent.mkdir(parents=True, exist_ok=True)
    md, table_csv = markdown(rows, title), csv_text(rows)
    out.write_text(md)
    csv_path = out.with_suffix(".csv")
    csv_path.write_text(table_csv)
    return {"markdown": str(out), "csv": str(csv_path), "rows": len(rows), "sets": table_sets(rows), "text": md}
