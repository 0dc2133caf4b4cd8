"""synthgen table (issue 21): Table 1 from eval-pin results, ours beside the paper's figures."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest

from synthgen.errors import UserError
from synthgen.pin.evaluation import paper
from synthgen.pin.evaluation import protocol as P
from synthgen.pin.evaluation import table as T


def _metrics(seed: int, set_path: str, kind: str = "coco-json", baseline=None, run="/runs/a", repeats=0,
             shots=2) -> dict:
    """metrics.json as eval-pin writes it: the summary of (random) records, the protocol, set, run."""
    rng = np.random.default_rng(seed)
    recs = [{"iou": float(rng.uniform()), "bucket": ["small", "medium", "large"][i % 3], "parsed": True,
             **({"repeat": r} if repeats else {})} for r in range(max(repeats, 1)) for i in range(12)]
    m = P.summarize_repeats(recs)
    proto = P.EvalProtocol(baseline=baseline, shots=shots, repeats=max(repeats, 1)).record(kind, 224, 32)
    m.update({"set": set_path, "protocol": proto, "baseline": baseline, "run": run})
    return m


def test_paper_figures_are_table_1():
    # (spot checks against the paper's text, and SPEC.md's PIN rows)
    assert paper.figure("openflamingo", "pin", "PVOC", "all") == (0.45, None)
    assert [paper.figure("blip2", "pin", "COCO", b)[0] for b in ("all", "M", "L")] == [0.34, 0.22, 0.60]
    assert paper.figure("openflamingo", "5-context", "LVIS", "L") == (0.17, 0.13)
    assert paper.figure("blip2", "random", "COCO", "all") == (0.12, 0.04)  # the random row: any VLM
    assert paper.figure("blip2", "coop", "COCO", "all") is None and paper.figure("openflamingo", "prior", "COCO",
                                                                                 "all") is None
    assert [paper.paper_set(s) for s in ("voc-test", "instances_val2017", "lvis_v1_val", "refcoco-testA")] == [
        "PVOC", "COCO", "LVIS", None]


def test_rows_markdown_and_csv_from_results():
    pin_meta = {"vlm": "openflamingo", "pin_parameters": 1_200_000}
    lora_meta = {"vlm": "openflamingo", "method": "lora-vision", "trainable_parameters": 6_000_000}
    results = [
        (_metrics(1, "/d/instances_val2017.json"), pin_meta, "a/coco/model/metrics.json"),
        (_metrics(2, "voc:/d/VOC2007:test", "voc"), pin_meta, "a/voc/model/metrics.json"),
        (_metrics(3, "/d/instances_val2017.json", baseline="random"), pin_meta, "a/coco/random/metrics.json"),
        (_metrics(4, "/d/instances_val2017.json", baseline="prior"), pin_meta, "a/coco/prior/metrics.json"),
        (_metrics(5, "/d/instances_val2017.json", baseline="in-context", repeats=3, shots=5), pin_meta, "ic5"),
        (_metrics(6, "/d/instances_val2017.json", baseline="in-context", repeats=3), pin_meta, "ic2"),
        (_metrics(7, "/d/instances_val2017.json", run="/runs/b"), lora_meta, "b/coco/model/metrics.json"),
        (_metrics(8, "/d/instances_val2017.json", baseline="random", run="/runs/b"), lora_meta, "b/random"),
    ]
    rows = T.make_rows(results)
    assert [r.key for r in rows] == ["random", "prior", "2-context", "5-context", "lora-vision", "pin"]
    by = {r.key: r for r in rows}
    assert by["pin"].params == 1_200_000 and by["lora-vision"].params == 6_000_000 and by["random"].params is None
    assert by["lora-vision"].label == "LoRA on phi_V" and by["pin"].label == "PIN"
    assert set(by["pin"].cells) == {"instances_val2017", "voc-test"}
    # the first random result is kept (run a's); the in-context rows carry their std
    assert by["random"].cells["instances_val2017"]["all"][0] == results[2][0]["miou"]
    assert by["5-context"].cells["instances_val2017"]["M"][1] == results[4][0]["miou_M_std"]
    assert T.table_sets(rows) == ["voc-test", "instances_val2017"]  # the paper's order: PVOC, COCO

    md = T.markdown(rows)
    lines = [x for x in md.splitlines() if x.startswith("| ")]
    assert lines[0].split(" | ")[3:6] == ["voc-test (PVOC) all", "voc-test (PVOC) M", "voc-test (PVOC) L"]
    pin_line = next(x for x in lines if x.startswith("| PIN |"))
    m = results[0][0]
    assert f"{m['miou']:.3f} (0.35)" in pin_line and f"{m['miou_L']:.3f} (0.59)" in pin_line
    assert "1,200,000" in pin_line
    ic = next(x for x in lines if x.startswith("| 5 context |"))
    m5 = results[4][0]
    assert f"{m5['miou']:.3f} ± {m5['miou_std']:.3f} (0.10 ± 0.08)" in ic
    assert "| - (0.19 ± 0.09) | - (0.07 ± 0.04) |" in ic  # no VOC result of ours: the paper's alone

    table = list(csv.DictReader(io.StringIO(T.csv_text(rows))))
    assert len(table) == 3 * (1 + 1 + 1 + 1 + 1 + 2)  # buckets x (row, set) pairs with a result
    got = {(x["row"], x["set"], x["bucket"]): x for x in table}
    x = got[("pin", "voc-test", "M")]
    assert float(x["miou"]) == results[1][0]["miou_M"] and x["paper_set"] == "PVOC" and float(x["paper_miou"]) == 0.27
    assert x["trainable_parameters"] == "1200000" and x["source"] == "a/voc/model/metrics.json"
    assert int(x["n"]) == results[1][0]["n_M"]
    assert got[("5-context", "instances_val2017", "all")]["paper_std"] == "0.08"
    assert got[("prior", "instances_val2017", "all")]["paper_miou"] == ""


def test_results_per_question_task_make_their_own_table():
    meta = {"vlm": "blip2", "pin_parameters": 100}
    tasks = {"name": {"n": 6, "metric": "mIoU", "miou": 0.25}, "count": {"n": 4, "metric": "accuracy", "accuracy": 0.5},
             "relation": {"n": 0, "metric": "mIoU", "miou": None}}
    scenes = {"set": "/d/val", "n": 10, "tasks": tasks, "protocol": {"set_kind": "scenes"}, "run": "/r/one"}
    raw = {**scenes, "baseline": "raw", "tasks": {"name": {"n": 6, "metric": "mIoU", "miou": 0.0}}}
    rows = T.make_rows([(_metrics(1, "/d/coco.json", run="/r/one"), meta, "a"), (scenes, meta, "b"), (raw, meta, "c")])
    by = {r.key: r for r in rows}
    assert by["pin"].tasks == {"val": {"name": (0.25, 6), "count": (0.5, 4), "relation": (None, 0)}}
    assert set(by["pin"].cells) == {"coco"} and not by["raw"].cells
    assert T.table_sets(rows) == ["coco"] and T.task_columns(rows) == [("val", "name"), ("val", "count"),
                                                                       ("val", "relation")]
    md = T.markdown(rows)
    first, second = md.split("## Question tasks")
    assert "| raw |" not in first  # (no mIoU result of its own)
    lines = [x for x in second.splitlines() if x.startswith("| ")]
    assert lines[0] == ("| row | VLM | trainable parameters | val name (mIoU) | val count (accuracy) | "
                        "val relation (mIoU) |")
    assert lines[1:] == ["| raw | blip2 |  | 0.000 | - | - |", "| PIN | blip2 | 100 | 0.250 | 0.500 | - |"]
    assert "Questions: val name 6, val count 4, val relation 0." in second
    table = [x for x in csv.DictReader(io.StringIO(T.csv_text(rows))) if x["task"]]
    got = {(x["row"], x["task"]): (x["miou"], x["accuracy"], x["n"]) for x in table}
    assert got == {("raw", "name"): ("0.0", "", "6"), ("pin", "name"): ("0.25", "", "6"),
                   ("pin", "count"): ("", "0.5", "4"), ("pin", "relation"): ("", "", "0")}


def test_method_defaults_to_pin_and_same_method_runs_are_told_apart():
    meta = {"vlm": "blip2"}
    rows = T.make_rows([(_metrics(1, "/d/coco.json", run="/r/one"), meta, "x"),
                        (_metrics(2, "/d/coco.json", run="/r/two"), {**meta, "trainable_parameters": 7}, "y")])
    assert [(r.key, r.label, r.params) for r in rows] == [("pin", "PIN", None), ("pin", "PIN (two)", 7)]


@pytest.mark.slow
def test_table_command_on_a_tiny_run(tmp_path):
    from typer.testing import CliRunner

    from synthgen.cli import app
    from tests.pin.fixtures import coco_set, tiny_blip2_run

    runner = CliRunner()
    run = tiny_blip2_run(tmp_path, runner)
    coco, images = coco_set(tmp_path)
    base = ["eval-pin", str(run), "--coco-json", str(coco), "--images", str(images), "--parse", "lenient"]
    for extra in ([], ["--baseline", "random"], ["--baseline", "prior"], ["--baseline", "raw"]):
        r = runner.invoke(app, base + extra)
        assert r.exit_code == 0, r.output
    out = tmp_path / "t" / "table.md"
    r = runner.invoke(app, ["table", str(run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"wrote {out}" in r.output
    md, rows = out.read_text(), list(csv.DictReader(io.StringIO(out.with_suffix(".csv").read_text())))
    meta = json.loads((run / "pin.json").read_text())
    assert {x["row"] for x in rows} == {"raw", "random", "prior", "pin"}
    for x in rows:
        m = json.loads(open(x["source"]).read())
        key = {"all": "miou", "M": "miou_M", "L": "miou_L"}[x["bucket"]]
        assert x["set"] == "coco" and x["paper_set"] == "COCO"
        assert x["vlm"] == ("" if x["row"] in ("random", "prior") else "blip2")  # (those two: any VLM's)
        assert (float(x["miou"]) == m[key]) or (m[key] != m[key] and x["miou"] == "nan")
        if x["row"] == "pin":
            assert int(x["trainable_parameters"]) == meta["pin_parameters"] and x["paper_miou"] != ""
    assert md.index("| raw |") < md.index("| random |") < md.index("| prior |") < md.index("| PIN |")
    # deterministic; a folder without results, and a csv --out, are one line each
    again = tmp_path / "again.md"
    assert runner.invoke(app, ["table", str(run / "eval"), "--out", str(again)]).exit_code == 0
    assert again.read_text() == md
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(run / "pin.json", empty / "pin.json")
    for argv, msg in ((["table", str(empty), "--out", str(tmp_path / "x.md")], "no eval-pin results"),
                      (["table", str(run), "--out", str(tmp_path / "x.csv")], "the csv is written beside it")):
        r = runner.invoke(app, argv)
        assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output


def test_missing_folder_is_one_line(tmp_path):
    with pytest.raises(UserError, match="no such run or eval folder"):
        T.collect([tmp_path / "nope"])


# --- recipes/table1.yaml ---------------------------------------------------------------------

RECIPE = __import__("pathlib").Path(__file__).resolve().parents[2] / "recipes" / "table1.yaml"
METHODS = ("pin", "coop", "vpt-fusion", "vpt-vision", "lora-vision", "full")


def test_table1_recipe_plan_resolves_for_each_vlm():
    from synthgen.workflow.plan import command_line, load_plan, select

    for vlm in ("openflamingo", "blip2"):
        plan = load_plan(RECIPE, {"vlm": vlm, "model": f"models/{vlm}", "out": "o"})
        lines = {s.name: command_line(s, plan) for s in plan.steps}
        trains = [a for a in lines.values() if a[0] == "train-pin"]
        assert sorted(a[a.index("--method") + 1] for a in trains) == sorted(METHODS)
        assert all(a[a.index("--vlm") + 1] == vlm and a[a.index("--model") + 1] == f"models/{vlm}" for a in trains)
        evals = [a for a in lines.values() if a[0] == "eval-pin"]
        assert sorted(a[1] for a in evals if "--baseline" not in a) == sorted(f"o/runs/{m}" for m in METHODS)
        baselines = sorted(a[a.index("--baseline") + 1] + (a[a.index("--shots") + 1] if "--shots" in a else "")
                           for a in evals if "--baseline" in a)
        assert baselines == ["in-context10", "in-context2", "in-context5", "prior", "random", "raw"]
        assert lines["table"][:4] == ["table", "o/runs", "--out", "o/table1.md"] and plan.steps[-1].command == "table"
        kept = [s.name for s in select(plan, skip=["in-context", "full"])]
        assert "2-context" not in kept and "train-full" not in kept and "table" in kept


@pytest.mark.slow
def test_table1_recipe_runs_end_to_end_on_the_tiny_openflamingo(tmp_path):
    """Every row trained 2 steps on the tiny OpenFlamingo and evaluated, then the table (the
    numbers mean nothing: the point is that every step runs and lands in the table)."""
    from typer.testing import CliRunner

    from synthgen.cli import app
    from synthgen.demo.tiny_flamingo import build_tiny_openflamingo
    from tests.pin.fixtures import write_shards
    from tests.pin.test_incontext import _coco_set

    vlm = build_tiny_openflamingo(tmp_path / "of", image_size=112, vision_width=32, gate=1.0, perceiver_depth=1,
                                  heads=1, num_latents=8, lm_steps=10, max_seq_len=512)
    out = tmp_path / "t1"
    write_shards(out / "shards", 8, canvas=112, grid=8, per_shard=4)
    coco, images = _coco_set(tmp_path, n=12)
    sets = {"vlm": "openflamingo", "model": str(vlm), "steps": 2, "batch": 4, "loader_workers": 0, "repeats": 2,
            "coco_json": str(coco), "images": str(images), "eval_name": "tiny"}
    argv = ["run", str(RECIPE), "--out", str(out), "--skip", "compose"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(io.StringIO((out / "table1.csv").read_text())))
    assert {x["row"] for x in rows} == {"raw", "random", "prior", "2-context", "5-context", "10-context", *METHODS}
    assert all(x["set"] == "coco" and x["vlm"] in ("openflamingo", "") for x in rows)
    params = {x["row"]: x["trainable_parameters"] for x in rows}
    assert all(params[m] != "" and int(params[m]) > 0 for m in METHODS)
    for m in METHODS:  # each run's own count, from its pin.json
        meta = json.loads((out / "runs" / m / "pin.json").read_text())
        assert int(params[m]) == meta.get("trainable_parameters", meta.get("pin_parameters"))
    md = (out / "table1.md").read_text()
    assert md.startswith("# Table 1 (openflamingo)") and "± " in md
