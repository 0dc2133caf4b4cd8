"""``preview`` and ``stats`` on real compose runs: the target marked apart, labels that stay apart
and inside the tile, the plot and the numbers it is drawn from."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from synthgen.compose.config import ComposeParams, LayoutParams
from synthgen.compose.inspection import PALETTE, TARGET, contact_sheet, draw_scene, place_labels
from synthgen.compose.run import ComposeJob, run_compose
from synthgen.compose.stats import collect_stats, plot_stats
from synthgen.schema import SceneObject, SceneRecord


def _run(bank, backgrounds, out, n=24, per=12, **kw) -> Path:
    params = ComposeParams(layout=LayoutParams(o_max=kw.pop("o_max", 0.5)), **kw)
    run_compose(ComposeJob(objects=str(bank), backgrounds=str(backgrounds), out=str(out), num_samples=n,
                           samples_per_shard=per, params=params), executor="serial", progress=False)
    return out


def _samples(out: Path):
    """(image, json dict) of every scene, read with tarfile (not synthgen's reader)."""
    for t in sorted(out.glob("scenes-*.tar")):
        with tarfile.open(t) as tf:
            files = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
        for name in sorted(files):
            if name.endswith(".json"):
                key = name[:-5]
                yield Image.open(io.BytesIO(files[key + ".jpg"])), json.loads(files[name])


def _inside(r, w, h):
    return 0 <= r[0] < r[2] <= w and 0 <= r[1] < r[3] <= h


def _apart(rects):
    rs = [r for r in rects if r is not None]
    return all(not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])
               for i, a in enumerate(rs) for b in rs[i + 1:])


def test_preview_marks_the_target_apart_and_ties_prompt_and_answer_to_it(bank, backgrounds, tmp_path):
    out = _run(bank, backgrounds, tmp_path / "out", same_category_p=1.0)
    scale = 2
    seen_targets = Counter()
    for img, d in _samples(out):
        rec = SceneRecord.from_dict(d)
        tile, lay = draw_scene(img, rec, scale, return_layout=True)
        w, h = lay.image_size
        assert (w, h) == (224 * scale, 224 * scale) and tile.width == w and tile.height > h
        assert all(r is not None and _inside(r, w, h) for r in lay.label_rects) and _apart(lay.label_rects)
        t = d["target"]
        seen_targets[t] += 1
        # the target's box is drawn in the reserved colour, which no other object gets
        assert TARGET not in PALETTE
        px = np.asarray(tile)[:h]
        magenta = np.all(px == TARGET, axis=-1)
        x1, y1, x2, y2 = (v * scale for v in d["objects"][t]["box"])
        outside = magenta.copy()
        outside[max(0, y1 - 2):y2 + 2, max(0, x1 - 2):x2 + 2] = False
        lx1, ly1, lx2, ly2 = lay.label_rects[t]
        outside[ly1:ly2, lx1:lx2] = False
        assert magenta[y1 + 2:y2 - 2, x1 + 3].mean() > 0.5 and not outside.any()
        # under the image: the target's referral, its prompt, the answer = its box
        assert f"target {t}" in lay.title and d["objects"][t]["referral"] in lay.title
        assert " ".join(lay.caption) == d["prompt"]
        assert lay.answer_ok and d["answer"] in lay.answer and f"target {t}'s box" in lay.answer
        assert [label.split(" ", 1)[1] for label in lay.labels] == [o["referral"] for o in d["objects"]]
    assert len(seen_targets) > 1  # targets other than object 0 were drawn
    sheet = tmp_path / "sheet.png"
    assert contact_sheet(str(out), sheet, n=6) == 6 and Image.open(sheet).format == "PNG"


def test_crowded_labels_never_overlap_nor_leave_the_tile():
    canvas = 224
    objs = tuple(SceneObject(category="cat", category_id=1, object_id=f"c/{i}", box=box, cells=(), visible=1.0,
                             referral=text, name="cat")
                 for i, (box, text) in enumerate([
                     ((0, 0, 56, 56), "cat at the top " + "and further " * 10),   # longer than the tile
                     ((0, 0, 42, 42), "cat in front"), ((14, 14, 56, 56), "upper cat"),
                     ((182, 182, 224, 224), "cat on the right"), ((196, 0, 224, 28), "rear cat")]))
    rec = SceneRecord(key="000000001", seed=1, width=canvas, height=canvas, grid=16, background={}, objects=objs,
                      target=3, prompt="In the image is a cat on the right located at", answer="[0,0,14,14]")
    img = Image.new("RGB", (canvas, canvas), (120, 120, 120))
    for scale in (1, 2, 3):
        tile, lay = draw_scene(img, rec, scale, return_layout=True)
        w, h = lay.image_size
        assert all(r is not None and _inside(r, w, h) for r in lay.label_rects), lay.label_rects
        assert _apart(lay.label_rects)
        assert lay.labels[0].endswith("…") and lay.labels[0].startswith("0 cat at the top")
        # a wrong answer is said, not hidden
        assert not lay.answer_ok and any("not the target's box [182,182,224,224]" in n for n in lay.notes)
    # the layout itself: many labels on a small tile, nothing overlaps; what cannot fit is None
    boxes = [(x, y, x + 30, y + 30) for x in range(0, 90, 10) for y in range(0, 90, 10)]
    rects = place_labels(boxes, [(40, 12)] * len(boxes), 100, 100)
    placed = [r for r in rects if r is not None]
    assert 10 < len(placed) < len(boxes) and _apart(rects) and all(_inside(r, 100, 100) for r in placed)
    assert place_labels([(0, 0, 5, 5)], [(120, 10)], 100, 100) == [None]


def test_stats_and_the_plot_are_drawn_from_the_shards_and_their_stats(bank, backgrounds, tmp_path):
    out = _run(bank, backgrounds, tmp_path / "out", n=40, per=20, same_category_p=0.7, absolute_referral_p=0.3,
               o_max=1.0)
    # expected numbers, computed here from the tars and the stats files
    heat = np.zeros((16, 16), int)
    long_side, kinds = Counter(), Counter()
    scenes = 0
    for _, d in _samples(out):
        scenes += 1
        names = Counter(o["name"] for o in d["objects"])
        for o in d["objects"]:
            x1, y1, x2, y2 = (v // 14 for v in o["box"])
            heat[min(15, (y1 + y2) // 2), min(15, (x1 + x2) // 2)] += 1
            long_side[max(x2 - x1, y2 - y1)] += 1
            kinds["plain" if o["referral"] == o["name"] else "relative" if names[o["name"]] > 1 else "absolute"] += 1
    dropped = Counter()
    for f in out.glob("scenes-*_stats.json"):
        dropped.update(json.loads(f.read_text())["dropped_objects"])
    st = collect_stats(str(out))
    assert st["scenes"] == scenes == 40 and st["grid"] == 16
    assert np.array_equal(np.asarray(st["centres"]), heat) and heat.sum() == st["objects"]
    assert st["long_side_cells"] == dict(long_side) and st["referrals"] == {k: v for k, v in kinds.items() if v}
    assert kinds["relative"] > 0 and kinds["absolute"] > 0
    assert st["shard_stats"]["found"] == 2 and st["shard_stats"]["dropped_objects"] == dict(dropped)
    assert sum(st["relations"].values()) == kinds["relative"] + kinds["absolute"] and "other" not in st["relations"]
    png = tmp_path / "plot" / "stats.png"
    drawn = plot_stats(st, png)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1600, 720)
        assert np.asarray(im.convert("L")).std() > 10
    assert drawn["centres"] == heat.tolist()
    assert drawn["long_side_cells"] == {k: long_side.get(k, 0) for k in range(1, 17)}  # every cell, integer ticks
    assert drawn["referrals"] == st["referrals"]
    assert {k.split(": ", 1)[1]: v for k, v in drawn["dropped_objects"].items()
            if k.startswith("dropped object")} == dict(dropped)
    # shards without their stats files: the plot says so instead of showing zero drops
    bare = tmp_path / "bare"
    bare.mkdir()
    for t in out.glob("scenes-*.tar"):
        shutil.copy(t, bare / t.name)
    st2 = collect_stats(str(bare))
    assert st2["shard_stats"]["found"] == 0 and st2["centres"] == st["centres"]
    plot_stats(st2, tmp_path / "bare.png")
    assert Image.open(tmp_path / "bare.png").size == (1600, 720)


def test_stats_preview_and_referral_grammar_on_the_command_line(bank, backgrounds, tmp_path, cli_env, synthgen_cmd):
    r = subprocess.run(synthgen_cmd + ["compose", "--help"], env=dict(cli_env, COLUMNS="250"), capture_output=True,
                       text=True, check=True)
    assert "--referral-grammar" in r.stdout and "grammatical" in r.stdout and "'cup on below'" in r.stdout
    base = ["compose", "--objects", str(bank), "--backgrounds", str(backgrounds), "-n", "4", "--executor", "serial"]
    r = subprocess.run(synthgen_cmd + base + ["--out", str(tmp_path / "bad"), "--referral-grammar", "poetic"],
                       env=cli_env, capture_output=True, text=True)
    assert r.returncode == 2 and "--referral-grammar must be one of grammatical, authors (got 'poetic')" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "bad").exists()
    recipe = tmp_path / "r.yaml"
    recipe.write_text("compose:\n  same_category_p: 1.0\n  referral_grammar: authors\n")
    out = tmp_path / "out"
    r = subprocess.run(synthgen_cmd + base + ["--out", str(out), "--recipe", str(recipe)], env=cli_env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "run.json").read_text())["params"]["referral_grammar"] == "authors"
    r = subprocess.run(synthgen_cmd + ["stats", str(out), "--out", str(tmp_path / "s.png")], env=cli_env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "compose stats (1/1 shards)" in r.stdout and "relative" in r.stdout, r.stderr
    assert Image.open(tmp_path / "s.png").size == (1600, 720)
    for bad, needle in ((["--scale", "0"], "--scale must be >= 1"), (["-n", "0"], "-n must be >= 1")):
        r = subprocess.run(synthgen_cmd + ["preview", str(out), "-o", str(tmp_path / "p.png"), *bad], env=cli_env,
                           capture_output=True, text=True)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


@pytest.mark.parametrize("size", [10, 48])
def test_fit_text_keeps_labels_inside_their_width(size):
    from synthgen.fonts import fit_text, font, wrap_text

    f, _ = font(size)
    d = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    for width in (30, 80, 200):
        t = fit_text(d, "a pair of scissors at the bottom " * 3, f, width)
        assert d.textlength(t, font=f) <= width or len(t) == 1
        lines = wrap_text(d, "In the image is a pair of scissors at the bottom located at", f, width)
        assert all(d.textlength(line, font=f) <= width for line in lines if len(line) > 1)
