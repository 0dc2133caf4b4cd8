"""eval-pin's baselines beside the paper's random one (issue 21): `prior`, the best constant box
fitted on the other half of the set, and `raw`, the run's VLM asked PIN's question without PIN."""

from __future__ import annotations

import json
from itertools import combinations

import numpy as np
import pytest

from synthgen.grounding import iou
from synthgen.pin.evaluation import protocol as P


def test_grid_boxes_are_every_box_on_the_grid_lines():
    boxes = P.grid_boxes(56, 4)
    lines = [0, 14, 28, 42, 56]
    want = {(x1, y1, x2, y2) for x1, x2 in combinations(lines, 2) for y1, y2 in combinations(lines, 2)}
    assert {tuple(b) for b in boxes.tolist()} == want and len(boxes) == len(want)


def test_best_constant_box_is_the_brute_force_best():
    rng = np.random.default_rng(0)
    for _ in range(5):
        gts = [sorted(rng.uniform(0, 56, 2)) for _ in range(9)]
        gts = [[a, b, c, d] for (a, c), (b, d) in zip(gts, [sorted(rng.uniform(0, 56, 2)) for _ in range(9)])]
        best = P.best_constant_box(gts, 56, 4)
        scores = {tuple(c): np.mean([iou(c, g) for g in gts]) for c in P.grid_boxes(56, 4).tolist()}
        assert np.isclose(np.mean([iou(best, g) for g in gts]), max(scores.values()))


def test_prior_is_fitted_on_the_other_half_only():
    rng = np.random.default_rng(1)
    pool = [(k, [float(v) for v in np.sort(rng.uniform(0, 112, 4).reshape(2, 2), axis=1).T.ravel()])
            for k in range(10)]
    prior = P.PriorBox(pool, 112, 8, seed=3)
    halves = [sorted(k for k, h in prior.half.items() if h == side) for side in (0, 1)]
    assert sorted(halves[0] + halves[1]) == list(range(10)) and {len(h) for h in halves} == {5}
    for k, _ in pool:
        other = [b for j, b in pool if prior.half[j] != prior.half[k]]
        assert prior.box(k) == P.best_constant_box(other, 112, 8)
    # where every object of the set is in one grid cell, the prior finds that cell
    same = P.PriorBox([(k, [14.0, 28.0, 28.0, 42.0]) for k in range(4)], 112, 8)
    assert same.box(0) == [14.0, 28.0, 28.0, 42.0]
    with pytest.raises(ValueError):
        P.PriorBox([(1, [0, 0, 14, 14])], 112, 8)


@pytest.mark.slow
def test_raw_and_prior_through_eval_pin(tmp_path):
    from typer.testing import CliRunner

    from synthgen.cli import app
    from synthgen.pin.training.checkpoint import load_run
    from tests.pin.fixtures import coco_set, tiny_blip2_run

    runner = CliRunner()
    run = tiny_blip2_run(tmp_path, runner)
    coco, images = coco_set(tmp_path)
    base = ["eval-pin", str(run), "--coco-json", str(coco), "--images", str(images)]
    for b in ("raw", "prior"):
        r = runner.invoke(app, base + ["--baseline", b])
        assert r.exit_code == 0, r.output
    raw = [json.loads(x) for x in (run / "eval" / "coco" / "raw-baseline" / "preds.jsonl").read_text().splitlines()]
    m = json.loads((run / "eval" / "coco" / "raw-baseline" / "metrics.json").read_text())
    assert m["baseline"] == "raw" and m["protocol"]["num_beams"] == 3  # (the VLM answered: its settings apply)
    _, adapter = load_run(run)
    adapter.detach_pin()
    from synthgen.pin.evaluation.evaluate import canvas_tensor

    px, _ = canvas_tensor(images / "1.jpg", 112)
    first = next(r for r in raw if r["image_id"] == 1)
    want = adapter.generate(px[None], [first["category"]], num_beams=3, max_new_tokens=12)[0]
    assert first["output"].strip() == want.strip()
    prior = [json.loads(x) for x in (run / "eval" / "coco" / "prior-baseline" / "preds.jsonl").read_text().splitlines()]
    assert len(prior) == len(raw) and all(p["parsed"] for p in prior)
    # two images: each query gets the best box of the other image's objects
    for p in prior:
        other = [q["gt_box"] for q in prior if q["image_id"] != p["image_id"]]
        assert p["pred_box"] == [round(v, 2) for v in P.best_constant_box(other, 112, 8)]
