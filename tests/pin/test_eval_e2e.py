"""eval-pin end to end through the CLI on a tiny random BLIP-2 (trained 2 steps by train-pin):
the authors' protocol by default, the old rules as options, both parsers' counts."""

from __future__ import annotations

import json

import pytest

from synthgen.grounding import parse_box
from synthgen.pin.evaluation import protocol as P
from tests.pin.fixtures import (
    coco_set,
    one_thread,  # noqa: E402, F401 (an autouse fixture: one torch thread)
    tiny_blip2_run,
)

pytestmark = pytest.mark.slow

CANVAS, GRID = 112, 8


def test_eval_pin_cli_end_to_end(tmp_path):
    from typer.testing import CliRunner

    from synthgen.cli import app
    from synthgen.pin.training.checkpoint import load_run
    from tests.pin.test_eval_sets import _voc

    runner = CliRunner()
    run = tiny_blip2_run(tmp_path, runner)
    coco_json, images = coco_set(tmp_path)

    # defaults: the authors' protocol
    r = runner.invoke(app, ["eval-pin", str(run), "--coco-json", str(coco_json), "--images", str(images),
                            "--out", str(tmp_path / "ev" / "preds.jsonl")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["protocol"] == {"set_kind": "coco-json", "article": "auto", "names": "strip", "crowd": "query",
                             "gt_boxes": "authors", "parse": "strict", "baseline": None, "max_objects": 3,
                             "seed": 0, "num_beams": 3, "max_new_tokens": 12, "canvas": CANVAS, "grid": GRID}
    assert ("protocol: set_kind=coco-json article=auto names=strip crowd=query gt_boxes=authors "
            "parse=strict baseline=model max_objects=3 seed=0 num_beams=3 max_new_tokens=12 "
            f"canvas={CANVAS} grid={GRID}") in r.output
    assert f"rejected answers: strict {m['rejected']['strict']}, lenient {m['rejected']['lenient']}" in r.output
    recs = [json.loads(x) for x in (tmp_path / "ev" / "preds.jsonl").read_text().splitlines()]
    assert [r_["query"] for r_ in recs] == ["In the image is an apple located at",
                                            "In the image is a bow located at",
                                            "In the image is a bow located at"]
    assert [r_["crowd"] for r_ in recs] == [False, True, False] and m["crowd_queries"] == 1
    # 224x112 -> 112: x, w halved, y, h kept; the crowd box's far corner capped at 111
    assert recs[0]["gt_box"] == [0, 0, 30, 40] and recs[1]["gt_box"] == [50, 50, 111, 111]
    # 100x150 -> 112: int(10.5*1.12) = 11, int(20.5*.7467) = 15, int(50*1.12) = 56, int(90*.7467) = 67
    assert recs[2]["gt_box"] == [11, 15, 67, 82]
    one_cell = P.one_cell_box(CANVAS, GRID, "strict")
    for rec in recs:
        out = rec["output"]
        assert rec["parsed"] == rec["parsed_strict"] == (P.parse_box_strict(out, CANVAS, GRID) is not None)
        assert rec["parsed_lenient"] == (parse_box(out) is not None)
        if not rec["parsed"]:
            assert rec["pred_box"] == one_cell
    assert m["rejected"] == {"strict": sum(not x["parsed_strict"] for x in recs),
                             "lenient": sum(not x["parsed_lenient"] for x in recs)}
    assert m["unparseable"] == m["rejected"]["strict"]
    # the output is the raw continuation (not stripped), exactly what the adapter generates
    from synthgen.pin.evaluation.evaluate import canvas_tensor

    _, adapter = load_run(run, device="cpu")
    px = canvas_tensor(images / "2.jpg", CANVAS)[0].unsqueeze(0)
    assert adapter.generate(px, ["bow"]) == [recs[2]["output"]]

    # the old rules, as options
    r = runner.invoke(app, ["eval-pin", str(run), "--coco-json", str(coco_json), "--images", str(images),
                            "--article", "a", "--names", "raw", "--crowd", "skip", "--gt-boxes", "exact",
                            "--parse", "lenient", "--out", str(tmp_path / "old" / "preds.jsonl")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "old" / "metrics.json").read_text())
    recs = [json.loads(x) for x in (tmp_path / "old" / "preds.jsonl").read_text().splitlines()]
    assert [r_["query"] for r_ in recs] == ["In the image is a apple located at",
                                            "In the image is a bow (weapon) located at"]
    assert m["crowd_not_queried"] == 1 and m["unparseable"] == m["rejected"]["lenient"]
    assert recs[0]["gt_box"] == [0, 0, 30, 40] and recs[1]["gt_box"] == [11.76, 15.31, 67.76, 82.51]
    assert (m["protocol"]["article"], m["protocol"]["names"], m["protocol"]["crowd"], m["protocol"]["gt_boxes"],
            m["protocol"]["parse"]) == ("a", "raw", "skip", "exact", "lenient")

    # VOC through the CLI, with the model
    voc = _voc(tmp_path / "vocset")
    r = runner.invoke(app, ["eval-pin", str(run), "--voc", str(voc), "--split", "test",
                            "--out", str(tmp_path / "voc" / "preds.jsonl")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "voc" / "metrics.json").read_text())
    assert m["n"] == 3 and m["difficult_queries"] == 1 and m["protocol"]["set_kind"] == "voc"
    assert "unsafe_xml 1" in r.output and "difficult queries 1" in r.output


def test_every_result_has_its_own_name_and_none_is_replaced_silently(tmp_path):
    """Issue: --baseline random without --out overwrote the model's eval/SET/metrics.json."""
    from typer.testing import CliRunner

    from synthgen.cli import app

    runner = CliRunner()
    run = tiny_blip2_run(tmp_path, runner, steps=1)
    coco, images = coco_set(tmp_path)
    base = ["eval-pin", str(run), "--coco-json", str(coco), "--images", str(images)]
    for extra in ([], ["--baseline", "random"], ["--baseline", "uniform", "--seed", "3"], ["--parse", "lenient"]):
        r = runner.invoke(app, base + extra)
        assert r.exit_code == 0, r.output
    folders = sorted(p.parent.name for p in (run / "eval" / "coco").glob("*/metrics.json"))
    assert folders == ["model", "model+parse-lenient", "random-baseline", "uniform-baseline+seed-3"]
    model = json.loads((run / "eval" / "coco" / "model" / "metrics.json").read_text())
    assert model["baseline"] is None and model["protocol"]["parse"] == "strict"
    assert json.loads((run / "eval" / "coco" / "random-baseline" / "metrics.json").read_text())["baseline"] == "random"

    before = (run / "eval" / "coco" / "model" / "preds.jsonl").stat().st_mtime_ns
    r = runner.invoke(app, base)  # the same evaluation again: kept, and said so before any work
    assert r.exit_code == 2 and "holds an earlier evaluation (mIoU" in r.output and "--overwrite" in r.output
    assert (run / "eval" / "coco" / "model" / "preds.jsonl").stat().st_mtime_ns == before
    r = runner.invoke(app, base + ["--overwrite"])
    assert r.exit_code == 0, r.output
    assert (run / "eval" / "coco" / "model" / "preds.jsonl").stat().st_mtime_ns != before
