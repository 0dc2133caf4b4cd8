"""A tiny BLIP-2 trained with a task mix on shards composed with --tasks, and evaluated per task,
through the CLI; the default --tasks leaves a training run's losses as they were; a resume with
other tasks is refused; scenes composed on the fly ask the mix too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthgen.pin.evaluation import taskmetrics as M
from tests.pin.fixtures import one_thread  # noqa: F401 (an autouse fixture: one torch thread)

pytestmark = pytest.mark.slow

CANVAS, GRID = 112, 8
TASKS = "name,referral,relation,attribute,all,absent,count,region,point"
MIX = "name=1,relation=0.5,attribute=0.5,all=1,absent=0.5,count=1,region=1,point=1"
MIX_TASKS = [t.split("=")[0] for t in MIX.split(",")]


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    return build_tiny_blip2(tmp_path_factory.mktemp("vlm") / "tiny-blip2", image_size=CANVAS, lm_steps=20)


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """Train and validation shards composed with every task (and masks), through the CLI."""
    from typer.testing import CliRunner

    from synthgen.cli import app
    from tests.helpers import make_backgrounds, make_index_bank

    root = tmp_path_factory.mktemp("tasks")
    bank, bg = make_index_bank(root / "bank"), make_backgrounds(root / "bg")
    for name, n, seed in (("train", 32, 0), ("val", 12, 1)):
        r = CliRunner().invoke(app, ["compose", "--objects", str(bank), "--backgrounds", str(bg), "--out",
                                     str(root / name), "--num-samples", str(n), "--size", str(CANVAS), "--grid",
                                     str(GRID), "--a-max", "3", "--masks", "--tasks", TASKS, "--same-category-p",
                                     "0.7", "--seed", str(seed), "--executor", "serial"])
        assert r.exit_code == 0, r.output
    return root


def _train(args: list[str]):
    from typer.testing import CliRunner

    from synthgen.cli import app

    pin = [] if "--method" in args else ["--hidden", "16,16"]  # (a small PIN; other methods have none)
    return CliRunner().invoke(app, ["train-pin", *args, *pin, "--batch-size", "4", "--loader-workers", "0",
                                    "--no-progress", "--log-every", "1"])


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_train_with_a_task_mix_and_evaluate_each_task(vlm_dir, composed, tmp_path):
    from typer.testing import CliRunner

    from synthgen.cli import app

    run = tmp_path / "run"
    r = _train([str(composed / "train"), "--model", str(vlm_dir), "--out", str(run), "--steps", "4", "--tasks", MIX,
                "--val", str(composed / "val"), "--eval-every", "4", "--val-limit", "3"])
    assert r.exit_code == 0, r.output
    # validation scores PIN's question and each other task of the mix (weight > 0), logged and printed
    val = [x for x in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "val_miou" in x]
    assert [x["step"] for x in val] == [4] and list(val[0]["val_tasks"]) == [t for t in MIX_TASKS if t != "name"]
    assert all(v is None or 0 <= v <= 1 for v in val[0]["val_tasks"].values())
    assert "; tasks (mIoU or accuracy) relation " in r.output
    meta = json.loads((run / "pin.json").read_text())
    assert meta["tasks"] == {"name": 1.0, "relation": 0.5, "attribute": 0.5, "all": 1.0, "absent": 0.5,
                             "count": 1.0, "region": 1.0, "point": 1.0}
    assert all(x == x for x in _losses(run)) and len(_losses(run)) == 4

    # a resume with other tasks is refused in one line, naming --tasks
    r = _train([str(composed / "train"), "--model", str(vlm_dir), "--out", str(run), "--steps", "6", "--resume",
                "--tasks", "name=1,count=1"])
    assert r.exit_code == 2 and "--tasks" in r.output and len(r.output.strip().splitlines()) == 1, r.output

    r = CliRunner().invoke(app, ["eval-pin", str(run), "--scenes", str(composed / "val"), "--tasks", TASKS,
                                 "--limit", "6", "--batch-size", "4"])
    assert r.exit_code == 0, r.output
    for task in TASKS.split(","):
        assert task in r.output
    out = run / "eval" / "scenes-val" / "model"
    m = json.loads((out / "metrics.json").read_text())
    recs = [json.loads(x) for x in (out / "preds.jsonl").read_text().splitlines()]
    assert list(m["tasks"]) == TASKS.split(",") and m["n"] == len(recs)
    assert all(0 < m["tasks"][t]["n"] <= 6 for t in ("name", "referral", "all", "count", "region", "point", "absent"))
    assert m["tasks"] == json.loads(json.dumps(M.summarize_tasks(recs, TASKS.split(","))))  # the table is the preds'
    assert m["tasks"]["point"]["rule"] == {"mask": m["tasks"]["point"]["n"], "box": 0}  # composed with --masks
    for rec in recs:  # every score re-checked from the raw output
        if rec["task"] in M.BOX_TASKS:
            assert rec["ious"] == M.score(rec["task"], rec["answer"], rec["output"])["ious"]
        elif rec["task"] != "point":
            assert rec["correct"] == M.score(rec["task"], rec["answer"], rec["output"])["correct"]

    # `synthgen table` puts them in its "Question tasks" table, each score as metrics.json has it
    r = CliRunner().invoke(app, ["table", str(run), "--out", str(tmp_path / "t" / "table.md")])
    assert r.exit_code == 0, r.output
    md = (tmp_path / "t" / "table.md").read_text()
    table = [x for x in md.split("## Question tasks")[1].splitlines() if x.startswith("| ")]
    head, line = table[0], next(x for x in table if x.startswith("| PIN |"))
    assert "val relation (mIoU)" in head and "val count (accuracy)" in head
    cells = dict(zip(head.strip("| ").split(" | "), line.strip("| ").split(" | ")))
    for t in TASKS.split(","):
        value = m["tasks"][t]["miou" if t in M.BOX_TASKS else "accuracy"]
        assert cells[f"val {t} ({'mIoU' if t in M.BOX_TASKS else 'accuracy'})"] == f"{value:.3f}"


@pytest.mark.parametrize("method", ["pin", "coop"])
def test_default_tasks_keep_a_training_runs_losses(vlm_dir, composed, tmp_path, method):
    """No --tasks and --tasks name=1 train on the same batches (the stream is today's: test_tasks),
    so the same losses and weights; a mix trains on other text, so other losses."""
    runs = {}
    for label, extra in (("none", []), ("name", ["--tasks", "name=1"]), ("mix", ["--tasks", MIX])):
        runs[label] = tmp_path / label
        r = _train([str(composed / "train"), "--model", str(vlm_dir), "--out", str(runs[label]), "--steps", "3",
                    *(["--method", method] if method != "pin" else []), *extra])
        assert r.exit_code == 0, r.output
    assert _losses(runs["none"]) == _losses(runs["name"])
    weights = [next(p.glob("*.safetensors")).read_bytes() for p in (runs["none"], runs["name"])]
    assert weights[0] == weights[1]
    assert _losses(runs["mix"]) != _losses(runs["none"])


def test_scenes_composed_on_the_fly_ask_the_mix(vlm_dir, tmp_path):
    from synthgen.pin.training.train import TrainConfig, train
    from tests.helpers import make_backgrounds, make_index_bank

    bank, bg = make_index_bank(tmp_path / "bank"), make_backgrounds(tmp_path / "bg")
    cfg = TrainConfig(objects=str(bank), backgrounds=str(bg), compose={"size": CANVAS, "grid": GRID, "a_max": 3},
                      out=str(tmp_path / "run"), model=str(vlm_dir), batch_size=4, loader_workers=0, steps=2,
                      log_every=1, progress=False, hidden=(16, 16), tasks="point=1,absent=1,count=1")
    train(cfg)
    meta = json.loads((tmp_path / "run" / "pin.json").read_text())
    assert meta["tasks"] == {"absent": 1.0, "count": 1.0, "point": 1.0}
    # the composer records what those tasks need
    assert tuple(meta["compose"]["tasks"]) == ("name", "absent", "count", "point")
    assert len(_losses(tmp_path / "run")) == 2


def test_a_mix_resumes_to_the_same_curve(vlm_dir, composed, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    common = [str(composed / "train"), "--model", str(vlm_dir), "--tasks", MIX, "--save-every", "2"]
    assert _train([*common, "--out", str(whole), "--steps", "4"]).exit_code == 0
    assert _train([*common, "--out", str(parts), "--steps", "2"]).exit_code == 0
    r = _train([*common, "--out", str(parts), "--steps", "4", "--resume"])
    assert r.exit_code == 0, r.output
    assert _losses(parts) == _losses(whole)
