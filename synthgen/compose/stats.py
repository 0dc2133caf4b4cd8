"""The distributions of scene shards (``synthgen stats``): objects per scene, box sides, categories,
referral kinds, position words, what compose dropped; printed, and drawn into one PNG."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from synthgen.compose.inspection import _load_record
from synthgen.errors import UserError
from synthgen.schema import SceneRecord
from synthgen.shards import find_shards, is_stream, iter_samples


def _stats_file(shard: str):
    """The ``*_stats.json`` compose wrote beside a shard, local or on an object store (None for
    streams such as ``pipe:`` or ``https://``)."""
    from synthgen import storage

    if is_stream(shard):
        return None
    p = storage.path(shard)
    return p.with_name(p.stem + "_stats.json")


def shard_stats(shards: Sequence[str]) -> dict[str, Any]:
    """What compose's per-shard stats files record for ``shards``, summed: objects dropped and
    scenes resampled by reason, inputs skipped by reason; ``found``: how many shards had one."""
    dropped: Counter = Counter()
    resampled: Counter = Counter()
    skipped: dict[str, Counter] = {"backgrounds": Counter(), "objects": Counter()}
    found = placed = 0
    for s in shards:
        f = _stats_file(s)
        if f is None or not f.is_file():
            continue
        try:
            st = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"{f}: not a readable stats file ({exc})") from None
        found += 1
        placed += int(st.get("objects") or 0)
        dropped.update(st.get("dropped_objects") or {})
        resampled.update(st.get("scene_resamples") or {})
        for kind in skipped:
            for reason, names in ((st.get("skipped_inputs") or {}).get(kind) or {}).items():
                skipped[kind][reason] += len(names)
    return {"found": found, "shards": len(shards), "objects": placed, "dropped_objects": dict(dropped),
            "scene_resamples": dict(resampled), "skipped_inputs": {k: dict(v) for k, v in skipped.items()}}


def _cells(o, rec: SceneRecord) -> tuple[int, int, int, int]:
    if len(o.cells) == 4:
        return tuple(int(v) for v in o.cells)
    c = rec.width / rec.grid
    return tuple(int(round(v / c)) for v in o.box)


RELATIONS = ("left", "right", "top", "bottom", "middle", "front", "behind")
PHRASINGS_SHOWN = 5   # per task, in the printed table (collect_stats counts them all)


def phrasing(text: str, names: Sequence[str]) -> str:
    """The phrasing of a question: its text with the scene's names (singular and plural, longest
    first) as ``X``, colour words as ``COLOUR``, boxes as ``[box]`` and points as ``(x,y)``:
    ``Give the box of the X left of the X.``"""
    import re

    from synthgen.compose.attributes import COLOR_TERMS
    from synthgen.compose.questions_text import plural_phrase, singular_phrase

    forms = {f for n in names for f in (singular_phrase(n), plural_phrase(n), n)}
    for form in sorted(forms, key=len, reverse=True):
        text = re.sub(rf"\b{re.escape(form)}\b", "X", text, flags=re.IGNORECASE)
    text = re.sub(rf"\b({'|'.join(COLOR_TERMS)})\b", "COLOUR", text)
    return re.sub(r"\(\d+,\d+\)", "(x,y)", re.sub(r"\[\d+,\d+,\d+,\d+\]", "[box]", text))


def collect_stats(shards: str) -> dict[str, Any]:
    from synthgen.compose.referral import relation_of

    paths = find_shards(shards)
    per_scene: Counter = Counter()
    cats: Counter = Counter()
    long_side: Counter = Counter()
    short_side: Counter = Counter()
    visible: list[float] = []
    kinds: Counter = Counter()
    relations: Counter = Counter()
    grids: Counter = Counter()
    centres: Counter = Counter()  # (row, col) of the box centre's cell, on each scene's grid
    tasks: Counter = Counter()
    phrasings: Counter = Counter()  # (task, phrasing)
    scenes = 0
    sizes = set()
    for sample in iter_samples(paths, want=("json",)):
        rec = _load_record(sample)
        scenes += 1
        sizes.add((rec.width, rec.grid))
        grids[rec.grid] += 1
        per_scene[len(rec.objects)] += 1
        names = Counter(o.name for o in rec.objects)
        every_name = [*names, *(o.category for o in rec.objects), *(n for pair in rec.negatives or () for n in pair)]
        for q in rec.questions or ():
            tasks[q["task"]] += 1
            phrasings[(q["task"], phrasing(q["text"], every_name))] += 1
        for o in rec.objects:
            cats[o.category] += 1
            c = _cells(o, rec)
            w, h = c[2] - c[0], c[3] - c[1]
            long_side[max(w, h)] += 1
            short_side[min(w, h)] += 1
            col = min(rec.grid - 1, int((c[0] + c[2]) / 2))
            row = min(rec.grid - 1, int((c[1] + c[3]) / 2))
            centres[(rec.grid, row, col)] += 1
            visible.append(float(o.visible))
            if o.referral == o.name:
                kinds["plain"] += 1
                continue
            kinds["relative" if names[o.name] > 1 else "absolute"] += 1
            relations[relation_of(o.referral, o.name) or "other"] += 1
    if scenes == 0:
        raise UserError(f"no scenes found in {shards}")
    grid = grids.most_common(1)[0][0]
    heat = [[0] * grid for _ in range(grid)]
    for (g, row, col), v in centres.items():  # other grids mapped onto the most common one
        heat[min(grid - 1, row * grid // g)][min(grid - 1, col * grid // g)] += v
    return {"scenes": scenes, "objects": sum(cats.values()), "canvas_grid": sorted(sizes),
            "objects_per_scene": dict(sorted(per_scene.items())), "categories": cats,
            "long_side_cells": dict(sorted(long_side.items())), "short_side_cells": dict(sorted(short_side.items())),
            "grid": grid, "centres": heat, "visible": visible,
            "referrals": {k: kinds[k] for k in ("plain", "relative", "absolute") if kinds[k]},
            "relations": {k: relations[k] for k in (*RELATIONS, "other") if relations[k]},
            "tasks": dict(tasks.most_common()), "phrasings": {f"{t}: {p}": n for (t, p), n in phrasings.most_common()},
            "shard_stats": shard_stats(paths)}


def print_stats(st: dict[str, Any], top: int = 15) -> None:
    import numpy as np
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{st['scenes']}[/] scenes, [bold]{st['objects']}[/] objects, "
              f"{len(st['categories'])} categories, canvas "
              + ", ".join(f"{c} px with a {g}x{g} grid" for c, g in st["canvas_grid"]))
    t = Table("objects per scene", "scenes", "share")
    for k, v in st["objects_per_scene"].items():
        t.add_row(str(k), str(v), f"{v / st['scenes']:.1%}")
    con.print(t)
    t = Table("side (cells)", "longer", "shorter")
    for k in sorted(set(st["long_side_cells"]) | set(st["short_side_cells"])):
        t.add_row(str(k), str(st["long_side_cells"].get(k, 0)), str(st["short_side_cells"].get(k, 0)))
    con.print(t)
    vis = np.asarray(st["visible"])
    t = Table("visible fraction", "value")
    for q in (0.0, 0.1, 0.5, 0.9, 1.0):
        t.add_row(f"q{int(q * 100)}", f"{np.quantile(vis, q):.3f}")
    t.add_row("share < 0.5", f"{(vis < 0.5).mean():.1%}")
    con.print(t)
    t = Table("referral", "objects")
    for k, v in st["referrals"].items():
        t.add_row(k, str(v))
    for k, v in st["relations"].items():
        t.add_row(f"  {k}", str(v))
    con.print(t)
    if st["tasks"]:  # (scenes composed with --tasks)
        from rich.markup import escape

        t = Table(f"questions (task, then its {PHRASINGS_SHOWN} most frequent phrasings)", "count")
        for task, n in st["tasks"].items():
            t.add_row(task, str(n))
            mine = [(key[len(task) + 2:], m) for key, m in st["phrasings"].items() if key.startswith(f"{task}: ")]
            for text, m in mine[:PHRASINGS_SHOWN]:
                t.add_row(f"  {escape(text)}", str(m))
            if len(mine) > PHRASINGS_SHOWN:
                t.add_row(f"  +{len(mine) - PHRASINGS_SHOWN} more phrasings", str(sum(m for _, m in mine[PHRASINGS_SHOWN:])))
        con.print(t)
    ss = st["shard_stats"]
    t = Table(f"compose stats ({ss['found']}/{ss['shards']} shards)", "count")
    for reason, v in sorted(ss["dropped_objects"].items()):
        t.add_row(f"dropped object: {reason}", str(v))
    for reason, v in sorted(ss["scene_resamples"].items()):
        t.add_row(f"scene resampled: {reason}", str(v))
    for kind, reasons in ss["skipped_inputs"].items():
        for reason, v in sorted(reasons.items()):
            t.add_row(f"skipped {kind[:-1]}: {reason}", str(v))
    con.print(t)
    t = Table(f"top {top} categories", "objects")
    for k, v in st["categories"].most_common(top):
        t.add_row(k, str(v))
    con.print(t)


PLOT_FIGSIZE = (20, 9)   # inches; at PLOT_DPI: 1600 x 720 px
PLOT_DPI = 80


def plot_stats(st: dict[str, Any], path: Path) -> dict[str, Any]:
    """Draw ``st`` (:func:`collect_stats`) into a PNG of 1600 x 720 px; returns the numbers each
    panel shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    grid = st["grid"]
    ss = st["shard_stats"]
    drawn: dict[str, Any] = {
        "objects_per_scene": dict(st["objects_per_scene"]),
        "long_side_cells": {k: st["long_side_cells"].get(k, 0) for k in range(1, grid + 1)},
        "short_side_cells": {k: st["short_side_cells"].get(k, 0) for k in range(1, grid + 1)},
        "centres": [list(r) for r in st["centres"]],
        "referrals": dict(st["referrals"]),
        "relations": dict(st["relations"]),
        "dropped_objects": {**{f"dropped object: {k}": v for k, v in sorted(ss["dropped_objects"].items())},
                            **{f"resampled scene: {k}": v for k, v in sorted(ss["scene_resamples"].items())},
                            **{f"skipped {kind[:-1]}: {k}": v for kind, r in ss["skipped_inputs"].items()
                               for k, v in sorted(r.items())}},
        "categories": dict(st["categories"].most_common(15)),
    }
    fig, ax = plt.subplots(2, 4, figsize=PLOT_FIGSIZE)
    a = ax[0, 0]
    a.bar([str(k) for k in drawn["objects_per_scene"]], list(drawn["objects_per_scene"].values()), color="#4477aa")
    a.set_title(f"objects per scene ({st['scenes']} scenes)")
    a.set_xlabel("objects")
    a = ax[0, 1]
    ks = list(range(1, grid + 1))
    a.bar([k - 0.2 for k in ks], [drawn["long_side_cells"][k] for k in ks], width=0.4, label="longer side")
    a.bar([k + 0.2 for k in ks], [drawn["short_side_cells"][k] for k in ks], width=0.4, label="shorter side")
    a.set_xticks(ks)
    a.set_xlim(0.4, grid + 0.6)
    a.set_xlabel(f"cells (grid {grid})")
    a.set_title("box sides in cells")
    a.legend()
    a = ax[0, 2]
    im = a.imshow(drawn["centres"], cmap="viridis", origin="upper", extent=(-0.5, grid - 0.5, grid - 0.5, -0.5))
    a.set_xticks(range(grid))
    a.set_yticks(range(grid))
    a.tick_params(labelsize=7)
    a.set_xlabel("cell column of the box centre")
    a.set_ylabel("cell row")
    a.set_title("box centres on the grid")
    fig.colorbar(im, ax=a, fraction=0.046, pad=0.04)
    a = ax[0, 3]
    a.hist(st["visible"], bins=20, range=(0, 1), color="#4477aa")
    a.set_title("visible fraction")
    a = ax[1, 0]
    colours = {"plain": "#999999", "relative": "#cc6677", "absolute": "#ddcc77"}
    bars = a.bar(list(drawn["referrals"]), list(drawn["referrals"].values()),
                 color=[colours[k] for k in drawn["referrals"]])
    a.bar_label(bars)
    a.set_title("referral kinds (objects)")
    a = ax[1, 1]
    if drawn["relations"]:
        a.bar_label(a.bar(list(drawn["relations"]), list(drawn["relations"].values()), color="#cc6677"))
    else:
        a.text(0.5, 0.5, "no position words", ha="center", va="center", transform=a.transAxes)
        a.set_axis_off()
    a.set_title("position words by relation")
    a = ax[1, 2]
    if drawn["dropped_objects"]:
        names = list(drawn["dropped_objects"])
        bars = a.barh(names[::-1], list(drawn["dropped_objects"].values())[::-1], height=0.5, color="#aa3377")
        a.bar_label(bars)
        extra = max(0.0, (3 - len(names)) / 2)  # a few bars stay bars, not slabs
        a.set_ylim(-0.5 - extra, len(names) - 0.5 + extra)
    else:
        a.text(0.5, 0.5, "none dropped or resampled" if ss["found"] else "no *_stats.json beside the shards",
               ha="center", va="center", transform=a.transAxes)
        a.set_axis_off()
    n_drop = sum(ss["dropped_objects"].values())
    share = f", {n_drop / (n_drop + ss['objects']):.1%} of objects dropped" if ss["objects"] else ""
    a.set_title("compose: dropped, resampled, skipped")
    a.set_xlabel(f"count ({ss['found']}/{ss['shards']} shards have stats{share})")
    a = ax[1, 3]
    common = list(drawn["categories"].items())
    a.barh([k for k, _ in common][::-1], [v for _, v in common][::-1], color="#4477aa")
    a.set_title("top categories")
    for a in (ax[0, 0], ax[0, 1], ax[0, 3], ax[1, 0], ax[1, 1]):  # counts are whole numbers
        a.yaxis.set_major_locator(MaxNLocator(integer=True))
    for a in (ax[1, 2], ax[1, 3]):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    from synthgen.storage import save_or_explain

    save_or_explain(path, lambda: fig.savefig(path, dpi=PLOT_DPI))
    plt.close(fig)
    return drawn
