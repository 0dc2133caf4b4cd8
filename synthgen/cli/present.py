"""What each command prints: it runs the command's call (giving the stage the console's callbacks)
and shows the result. Outputs go to stdout; progress and the one line of an error to stderr."""

from __future__ import annotations

import json
from typing import Any, Callable

import typer

from synthgen.commands import Call


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def counts_text(counts: dict[str, int]) -> str:
    """``{'no_position': 8, 'empty': 1}`` as words: ``8 no position, 1 empty`` (largest first)."""
    return ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def examples_text(examples: list, n: int = 3, total: int | None = None) -> str:
    """The first ``n`` examples, comma separated, and how many more of ``total`` (default: of the
    examples) there are: ``a.jpg, b.jpg, +4 more``."""
    left = (len(examples) if total is None else total) - min(n, len(examples))
    return ", ".join(str(e) for e in examples[:n]) + (f", +{left} more" if left > 0 else "")


def _skipped(counts: dict, what: str, examples: int = 3) -> None:
    for reason, info in counts.items():
        typer.echo(f"skipped {what}({reason.replace('_', ' ')}): {info['count']}, e.g. "
                   f"{examples_text(info['examples'], examples, info['count'])}", err=True)


def compose(call: Call, values: dict) -> None:
    # the bank line on stdout: stderr stays progress and, on failure, one error line
    from rich.markup import escape

    manifest = call.execute(echo=typer.echo)
    con, t = _console(stderr=True), manifest["totals"]
    con.print(f"[green]done[/]: {t['samples']} scenes, {t['objects']} objects in {len(manifest['shards'])} "
              f"shard(s) -> {values['out']}", soft_wrap=True)
    if t["dropped_objects"]:
        con.print(f"dropped objects: {counts_text(t['dropped_objects'])}", soft_wrap=True, markup=False)
    for kind in ("backgrounds", "objects"):
        for reason, info in t[f"skipped_{kind}"].items():
            con.print(f"[yellow]skipped {kind}[/] ({reason.replace('_', ' ')}): {info['count']}, e.g. "
                      f"{escape(examples_text(info['examples'], total=info['count']))}", soft_wrap=True)


def prepare_backgrounds(call: Call, values: dict) -> None:
    m = call.execute()
    typer.echo(f"done: {m['backgrounds']} backgrounds in {len(m['shards'])} shard(s) -> {values['out']}")
    _skipped(m["skipped"], "")


def prepare_objects(call: Call, values: dict) -> None:
    m = call.execute()
    typer.echo(f"done: {m['usable']} of {m['objects']} cut-outs at {m['max_side']} px in {len(m['shards'])} "
               f"shard(s), {m['bytes'] / 1e6:.0f} MB -> {values['out']}")
    _skipped(m["unusable"], "cut-outs ")


def bank_from_annotations(call: Call, values: dict) -> None:
    r = call.execute()
    typer.echo(f"done: {r['kept']} cut-outs of {r['categories']} categories from {r['images']} images -> "
               f"{values['out']}")
    _skipped(r["skipped"], "instances ")


def preview(call: Call, values: dict) -> None:
    r = call.execute()
    typer.echo(f"wrote {r['path']} ({r['shown']} {r['what']})")


def stats(call: Call, values: dict) -> None:
    from synthgen.compose.stats import print_stats

    print_stats(call.execute(), top=values["top"])
    if values["out"] is not None:
        typer.echo(f"wrote {values['out']}")


def export_coco(call: Call, values: dict) -> None:
    coco = call.execute()
    typer.echo(f"wrote {values['out']}/instances.json: {len(coco['images'])} images, "
               f"{len(coco['annotations'])} boxes, {len(coco['categories'])} categories")
    _skipped(coco["info"]["skipped_scenes"], "scenes ", examples=2)


def export(call: Call, values: dict) -> None:
    r = call.execute()
    what = "boxes" if r["to"] in ("coco", "yolo") else f"samples (boxes {r['boxes']})"
    typer.echo(f"wrote {values['out']} ({r['to']}): {r['samples']} {what} of {r['scenes']} scenes "
               f"({', '.join(r['files'])})")
    if r["skipped"]:
        typer.echo(f"skipped: {counts_text(r['skipped'])}", err=True)


def render(call: Call, values: dict) -> None:
    def report(name: str, st: dict) -> None:
        clip = st["clip"] or {}
        rej = ", ".join(f"{k} {v}" for k, v in st["rejected"].items()) or "none"
        flag = "  [category dropped]" if st["category_dropped"] else ""
        # print (not typer.echo): on a terminal the progress bars show it above themselves
        print(f"{name}: kept {st['kept']}/{st['generated']}  median CLIP {clip.get('median', float('nan')):.1f}  "
              f"rejected: {rej}  {st['seconds']:.1f}s{flag}", flush=True)

    res = call.execute(on_category=report, echo=typer.echo)
    typer.echo(f"{res.out}: {res.rendered} categories rendered, {res.skipped} already done; {res.kept}/"
               f"{res.generated} objects kept, {res.dropped_categories} categories dropped "
               f"(< {call.config.config.min_per_category}); {res.seconds:.0f}s")


def train_pin(call: Call, values: dict) -> None:
    res = call.execute(echo=typer.echo)
    if res.get("loss") is not None and res.get("main", True):
        typer.echo(f"step {res['step']}: loss {res['loss']:.4f}")


def _fmt(v) -> str:
    return "-" if v is None or v != v else (f"{v:.4f}" if isinstance(v, float) else str(v))


def eval_pin(call: Call, values: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    m = call.execute()
    if "tasks" in m:  # --scenes: one row per question task
        _eval_tasks(m, call.config.title())
        return
    t = Table(title=call.config.title())
    for col in ("n", "mIoU", "mIoU_M", "mIoU_L", "P@0.3", "unparseable"):
        t.add_column(col, justify="right")
    t.add_row(str(m["n"]), _fmt(m["miou"]), _fmt(m["miou_M"]), _fmt(m["miou_L"]), _fmt(m["p@0.3"]),
              str(m["unparseable"]))
    c = _console()
    c.print(t)
    if "miou_std" in m:  # the in-context baseline: the table is the mean over the repeats
        c.print(f"mean over {len(m['repeats'])} repeats; std mIoU {_fmt(m['miou_std'])}, M {_fmt(m['miou_M_std'])}, "
                f"L {_fmt(m['miou_L_std'])}", soft_wrap=True)
    c.print(f"medium {m['n_M']}, large {m['n_L']}, small {m['n_S']} queries; "
            f"preds {m['preds_file']}; metrics {m['metrics_file']}", soft_wrap=True)
    proto = m.get("protocol") or {}
    if proto:
        line = " ".join(f"{k}={'model' if k == 'baseline' and v is None else v}" for k, v in proto.items())
        c.print(escape(f"protocol: {line}"), soft_wrap=True)
    rej = m.get("rejected") or {}
    notes = [f"rejected answers: strict {rej.get('strict', 0)}, lenient {rej.get('lenient', 0)}"
             ] if proto.get("baseline") is None and rej else []
    notes += [f"{k.replace('_', ' ')} {m[k]}" for k in ("crowd_queries", "crowd_not_queried", "difficult_queries",
                                                        "size_mismatch_images") if k in m]
    skipped = m.get("skipped") or {}
    if skipped:
        notes.append("skipped " + ", ".join(f"{k} {v['count']}" for k, v in skipped.items()))
    if notes:
        c.print(escape("; ".join(notes)), soft_wrap=True)


def _eval_tasks(m: dict, title: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=title)
    for col in ("task", "n", "metric", "value", "P@0.5", "unparsed"):
        t.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task, r in m["tasks"].items():
        value = r.get("miou") if r["metric"] == "mIoU" else r.get("accuracy")
        t.add_row(task, str(r["n"]), r["metric"], _fmt(value) if value is not None else "-",
                  _fmt(r["p@0.5"]) if r.get("p@0.5") is not None else "", str(r["unparsed"]))
    c = _console()
    c.print(t)
    c.print(escape(f"{m['matching']}; preds {m['preds_file']}; metrics {m['metrics_file']}"), soft_wrap=True)
    notes = [f"all: {_fmt(m['tasks']['all']['exact'])} of the questions exactly right"] if m["tasks"].get(
        "all", {}).get("exact") is not None else []
    if "point" in m["tasks"]:
        notes.append("point checked on " + ", ".join(f"{k} {v}" for k, v in m["tasks"]["point"]["rule"].items()))
    if m.get("bad_scenes"):
        notes.append("bad scenes " + ", ".join(f"{k} {v}" for k, v in m["bad_scenes"].items()))
    if notes:
        c.print(escape("; ".join(notes)), soft_wrap=True)


def predict(call: Call, values: dict) -> None:
    from synthgen.commands.pin import EXIT_FALLBACK

    r = call.execute()
    if values["json"]:
        typer.echo(json.dumps(r))
    else:
        note = "" if r["parsed"] else f"  (fallback: no box in answer {r['output']!r}; one-cell box at the origin)"
        typer.echo(f"{r['box_text']}{note}")
        if values["out"]:
            typer.echo(f"drawn to {values['out']}")
    if values["strict"] and r["fallback"]:
        raise typer.Exit(EXIT_FALLBACK)


def import_pin(call: Call, values: dict) -> None:
    meta = call.execute()
    typer.echo(f"imported {values['file']} -> {values['out']}: {meta['vlm']} {meta['model']}, PIN "
               f"{meta['num_positions']}x{meta['vision_width']} ({meta['pin_parameters']:,} parameters), "
               f"canvas {meta['canvas']}")


def export_pin(call: Call, values: dict) -> None:
    typer.echo(f"wrote {call.execute()}")


def table(call: Call, values: dict) -> None:
    r = call.execute()
    typer.echo(r["text"])
    typer.echo(f"wrote {r['markdown']} and {r['csv']}: {r['rows']} rows x {len(r['sets'])} set(s)")


def _exit_with(call: Call, values: dict) -> None:
    code = call.execute()
    if code:
        raise typer.Exit(code)


def _with_say(call: Call, values: dict) -> None:
    call.execute(say=typer.echo)


PRINTERS: dict[str, Callable[[Call, dict[str, Any]], None]] = {
    "render": render, "bank-from-annotations": bank_from_annotations, "compose": compose, "prepare-backgrounds": prepare_backgrounds,
    "prepare-objects": prepare_objects, "preview": preview,
    "stats": stats, "export": export, "export-coco": export_coco, "train-pin": train_pin, "eval-pin": eval_pin, "predict": predict,
    "import-pin": import_pin, "export-pin": export_pin, "run": _exit_with, "demo": _exit_with,
    "demo-data": _with_say, "prefetch": _with_say, "table": table}
