"""``synthgen run RECIPE``: recipes read into steps, steps into the command lines a user types,
done steps skipped, a failed step stops the run and the next run resumes after it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from synthgen import workflow as wf
from synthgen.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, run: dict, **sections) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"run": run, **sections}, sort_keys=False))
    return path


def test_variables_resolve_in_order_and_set_overrides(tmp_path):
    recipe = _recipe(tmp_path, {"vars": {"out": "o", "vlm": "blip2", "run": "{out}/runs/{vlm}"},
                                "env": {"HOME_OF_MODELS": "{out}/models"},
                                "steps": [{"export-pin": {"run": "{run}", "out": "{run}/pin.pt"}}]})
    plan = wf.load_plan(recipe, {"out": "/data", "vlm": "openflamingo"})
    assert plan.vars["run"] == "/data/runs/openflamingo"
    assert plan.env == {"HOME_OF_MODELS": "/data/models"}
    assert plan.steps[0].args == {"run": "/data/runs/openflamingo", "out": "/data/runs/openflamingo/pin.pt"}
    assert plan.state_file == Path("/data") / wf.STATE_FILE
    with pytest.raises(UserError, match="the recipe has no variable 'vml'"):
        wf.load_plan(recipe, {"vml": "x"})


@pytest.mark.parametrize("run, message", [
    ({"vars": {"out": "o"}, "steps": [{"compose": {"out": "{oot}/x"}}]},
     r"step 1 \(compose\): `out`: \{oot\} is not a variable of the recipe \(variables: out"),
    ({"vars": {"x": 1}, "steps": [{"compose": {}}]}, "must declare `out`"),
    ({"vars": {"out": "o"}, "steps": []}, "`run.steps` must be a list"),
    ({"vars": {"out": "o"}, "steps": [{"compose": {}, "stats": {}}]}, "must name one command"),
    ({"vars": {"out": "o"}, "steps": ["compose"]}, "must be a mapping"),
    ({"vars": {"out": "o"}, "stepz": []}, "unknown key"),
    ({"vars": {"out": "{b"}, "steps": [{"compose": {}}]}, "bad braces"),
])
def test_bad_recipes_are_one_line_errors(tmp_path, run, message):
    with pytest.raises(UserError, match=message):
        wf.load_plan(_recipe(tmp_path, run))


def test_a_stage_recipe_without_run_section_says_how_to_use_it():
    with pytest.raises(UserError, match="has no `run:` section"):
        wf.load_plan(ROOT / "recipes" / "pin-refcoco.yaml")


def test_steps_become_the_command_lines_a_user_types(tmp_path):
    recipe = _recipe(tmp_path, {"vars": {"out": "o"}, "steps": [
        {"compose": {"objects": "b", "backgrounds": "g", "out": "{out}/s", "s_min": [0.3, 0.2], "masks": True,
                     "strip-qualifiers": False, "extra_object_root": ["r1", "r2"], "num_samples": 8}},
        {"predict": {"text": "a cat", "image": "c.jpg", "run": "r", "vlm_option": {"lm": "/m", "x": 1}}},
        {"train-pin": {"shards": "{out}/s", "hidden": [64, 64]}},
    ]}, compose={"a_max": 3})
    plan = wf.load_plan(recipe)
    compose, predict, train = (wf.command_line(s, plan) for s in plan.steps)
    assert compose == ["compose", "--objects", "b", "--backgrounds", "g", "--out", "o/s", "--s-min", "0.3,0.2",
                       "--masks", "--keep-qualifiers", "--extra-object-root", "r1", "--extra-object-root", "r2",
                       "--num-samples", "8", "--recipe", str(recipe)]  # the recipe has a compose: section
    # positional arguments in the command's order, whatever the recipe's order; repeatable options
    assert predict == ["predict", "r", "c.jpg", "a cat", "--vlm-option", "lm=/m", "--vlm-option", "x=1"]
    assert train == ["train-pin", "o/s", "--hidden", "64,64"]  # no train: section, no --recipe


@pytest.mark.parametrize("step, message", [
    ({"compose": {"objectz": "b"}}, r"step 1 \(compose\): compose has no option or argument 'objectz' \(did you mean objects\?\) \(it takes: "),
    ({"predict": {"run": "r", "image": "i"}}, r"step 1 \(predict\): `text` is required"),
    ({"compose": {"masks": "yes"}}, "`masks` is a switch: true or false"),
    ({"compose": {"a_max": {"x": 1}}}, "takes one value, not a mapping"),
    ({"composer": {}}, "not a synthgen command that a step can run"),
    ({"run": {}}, "not a synthgen command that a step can run"),
])
def test_bad_steps_name_the_step(tmp_path, step, message):
    plan = wf.load_plan(_recipe(tmp_path, {"vars": {"out": "o"}, "steps": [step]}))
    with pytest.raises(UserError, match=message):
        wf.command_line(plan.steps[0], plan)


def test_a_launcher_runs_the_module(tmp_path):
    plan = wf.load_plan(_recipe(tmp_path, {"vars": {"out": "o", "gpus": 2}, "steps": [
        {"train-pin": {"shards": "s"}, "launcher": "torchrun --nproc-per-node {gpus}"}, {"stats": {"shards": "s"}}]}))
    train, stats = plan.steps
    argv = wf.command_line(train, plan)
    assert wf.process_line(train, argv, "py") == ["torchrun", "--nproc-per-node", "2", "-m", "synthgen", "train-pin", "s"]
    assert wf.shell_line(argv, train.launcher) == "torchrun --nproc-per-node 2 -m synthgen train-pin s"
    assert wf.process_line(stats, wf.command_line(stats, plan), "py") == ["py", "-m", "synthgen", "stats", "s"]


def test_only_and_skip_take_commands_aliases_names_and_tags(tmp_path):
    plan = wf.load_plan(_recipe(tmp_path, {"vars": {"out": "o"}, "steps": [
        {"compose": {"out": "a"}}, {"compose": {"out": "b"}, "name": "val-scenes"},
        {"train-pin": {"shards": "a"}, "tags": ["train"]}, {"eval-pin": {"run": "r"}, "tags": ["train"]}]}))
    idx = lambda steps: [s.index for s in steps]
    assert idx(wf.select(plan, ["compose"])) == [1, 2]
    assert idx(wf.select(plan, ["val-scenes", "eval"])) == [2, 4]
    assert idx(wf.select(plan, skip=["train"])) == [1, 2]
    assert idx(wf.select(plan, ["train"], ["eval-pin"])) == [3]
    with pytest.raises(UserError, match=r"no step of .* is 'trian' \(steps: compose, eval-pin, train, "):
        wf.select(plan, ["trian"])


def test_every_step_of_the_shipped_recipes_is_a_valid_command_line():
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        if "run" not in (yaml.safe_load(path.read_text()) or {}):
            continue
        plan = wf.load_plan(path)
        for step in plan.steps:
            argv = wf.command_line(step, plan)
            assert argv[0] == step.command


def _compose_recipe(tmp_path, bank, backgrounds, n=8) -> Path:
    return _recipe(tmp_path, {
        "vars": {"out": str(tmp_path / "out"), "n": n, "bg": str(backgrounds)},
        "steps": [
            {"compose": {"objects": str(bank), "backgrounds": "{bg}", "out": "{out}/shards", "num_samples": "{n}",
                         "samples_per_shard": 4, "executor": "serial"}},
            {"preview": {"source": "{out}/shards", "out": "{out}/preview.png", "n": 4},
             "launcher": f"{sys.executable} -X utf8"},  # run through a launcher, as torchrun would
            {"export-coco": {"shards": "{out}/shards", "out": "{out}/coco"}},
        ],
        "message": "look under {out}"})


def _run(args, cli_env, **kw):
    # (--allow-launcher: _compose_recipe's preview step runs under `python -X utf8`, not a known launcher)
    return subprocess.run([sys.executable, "-m", "synthgen", "run", *map(str, args), "--allow-launcher"],
                          env=cli_env, capture_output=True, text=True, timeout=600, **kw)


@pytest.mark.parametrize("launcher", ["torchrun --nproc-per-node 2", "python3 -m torch.distributed.run --nnodes 1",
                                      "accelerate launch --num_processes 2", "srun -N 2 python",
                                      "mpirun -n 2 /usr/bin/python3.11"])
def test_known_launchers_are_accepted(tmp_path, launcher):
    recipe = _recipe(tmp_path, {"vars": {"out": str(tmp_path / "o")},
                                "steps": [{"stats": {"shards": "s"}, "launcher": launcher}]})
    assert wf.load_plan(recipe).steps[0].launcher == launcher


@pytest.mark.parametrize("launcher, why", [
    ("sh -c 'echo X > FILE' --", "not one of the known launchers"),
    ("torchrun --no-python sh", "a program other than python"),
    ("srun -N 2 bash", "srun must end with the python"),
    ("python -c 'import os' --", "a program other than python")])
def test_a_recipe_cannot_run_any_command_without_allow_launcher(tmp_path, cli_env, launcher, why):
    """A shared recipe's launcher ran any shell command (issue 19, item 14): refused before any
    step runs, one line naming --allow-launcher; nothing was executed."""
    flag = tmp_path / "ran"
    recipe = _recipe(tmp_path, {"vars": {"out": str(tmp_path / "o")},
                                "steps": [{"stats": {"shards": "s"}, "launcher": launcher.replace("FILE", str(flag))}]})
    r = subprocess.run([sys.executable, "-m", "synthgen", "run", str(recipe)], env=cli_env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert why in r.stderr and "--allow-launcher" in r.stderr, r.stderr
    assert not flag.exists() and "$ " not in r.stderr


@pytest.mark.parametrize("var", ["LD_PRELOAD", "PYTHONPATH", "PATH", "DYLD_INSERT_LIBRARIES"])
def test_run_env_cannot_set_code_loading_variables_without_allow_launcher(tmp_path, var):
    recipe = _recipe(tmp_path, {"vars": {"out": str(tmp_path / "o")}, "env": {var: "/tmp/x"},
                                "steps": [{"stats": {"shards": "s"}}]})
    with pytest.raises(UserError, match=f"sets {var}.*--allow-launcher"):
        wf.load_plan(recipe)
    assert wf.load_plan(recipe, allow_launcher=True).env == {var: "/tmp/x"}


def test_a_step_that_exits_0_without_its_output_failed(tmp_path, cli_env):
    """A launcher that runs something else (allowed by the user) exits 0 but makes nothing: the
    step is failed, not `ran`."""
    out = tmp_path / "o"
    recipe = _recipe(tmp_path, {"vars": {"out": str(out)}, "steps": [
        {"export-pin": {"run": str(tmp_path / "r"), "out": "{out}/pin.pt"}, "launcher": "true"}]})
    r = subprocess.run([sys.executable, "-m", "synthgen", "run", str(recipe), "--allow-launcher"], env=cli_env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0, r.stderr
    assert "exited 0 but left no complete output" in r.stderr, r.stderr
    rows = [line for line in r.stderr.splitlines() if line.startswith("│")]
    assert any("failed" in row for row in rows), r.stderr


@pytest.mark.slow
def test_run_skips_done_steps_and_resumes_after_a_failed_one(tmp_path, bank, backgrounds, cli_env):
    recipe = _compose_recipe(tmp_path, bank, backgrounds)
    out = tmp_path / "out"
    # a failed step stops the run: here the backgrounds do not exist yet
    r = _run([recipe, "--set", f"bg={tmp_path / 'nowhere'}"], cli_env)
    assert r.returncode == 2, r.stderr
    assert "[1] $ synthgen compose --objects" in r.stderr  # the command, as typed, before it runs
    assert "step 1 (compose) failed (exit 2)" in r.stderr
    assert not (out / "preview.png").exists()
    rows = {line.split("│")[1].strip(): line for line in r.stderr.splitlines() if line.startswith("│")}
    assert "failed" in rows["1"] and "not run" in rows["2"] and "not run" in rows["3"]

    r = _run([recipe], cli_env)
    assert r.returncode == 0, r.stderr
    assert (out / "shards" / "manifest.json").is_file() and (out / "preview.png").is_file()
    assert (out / "coco" / "instances.json").is_file()
    assert f"look under {out}" in r.stderr.replace("\n", " ")
    state = json.loads((out / wf.STATE_FILE).read_text())
    assert [a[0] for a in state["finished"]] == ["compose", "preview", "export-coco"]
    shard = out / "shards" / "scenes-000000.tar"
    before = shard.stat().st_mtime_ns

    r = _run([recipe], cli_env)  # everything done: nothing runs
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("done, skipped") == 3 and "$ synthgen" not in r.stderr
    assert shard.stat().st_mtime_ns == before

    # a step whose output was removed runs again, the others stay skipped
    (out / "preview.png").unlink()
    r = _run([recipe], cli_env)
    assert r.returncode == 0 and r.stderr.count("done, skipped") == 2
    assert f"[2] $ {sys.executable} -X utf8 -m synthgen preview" in r.stderr

    # another option for a finished stage: the stage itself refuses to mix datasets, the run stops
    r = _run([recipe, "--set", "n=12"], cli_env)
    assert r.returncode == 2 and "other options" in r.stderr and "step 1 (compose) failed" in r.stderr
    assert shard.stat().st_mtime_ns == before

    r = _run([recipe, "--only", "preview", "--dry-run"], cli_env)
    assert r.returncode == 0 and "1 of 3 step(s)" in r.stderr and "done, skipped" in r.stderr


@pytest.mark.slow
def test_synthgen_demo_is_the_demo_recipe(tmp_path, cli_env):
    """The whole offline demo, small: every step runs, the summary has the metrics and the
    plain-words message; a second run skips everything."""
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "synthgen", "demo", "--out", str(out), "-n", "32", "--steps", "4",
           "--learn-steps", "4", "--workers", "1"]
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-4000:]
    echoed = [line.split("$ synthgen ")[1].split()[0] for line in r.stderr.splitlines() if "] $ synthgen " in line]
    assert echoed == ["demo-data", "compose", "compose", "preview", "stats", "render", "preview", "compose",
                      "train-pin", "export-coco", "eval-pin", "eval-pin", "predict",
                      "compose", "compose", "train-pin", "export-coco", "eval-pin", "eval-pin", "eval-pin", "table"]
    for path in ("shards/manifest.json", "preview.png", "stats.png", "rendered/index.jsonl", "predict.png",
                 "runs/pin-blip2/eval/val-coco/metrics.json",
                 "runs/pin-blip2/eval/val-coco/random-baseline/metrics.json", "learn-table.md", "learn-table.csv",
                 "runs/full-blip2-learn/eval/learn-val-coco/prior-baseline/metrics.json"):
        assert (out / path).is_file(), path
    assert "eval-pin metrics" in r.stderr and "baseline random" in r.stderr and "baseline prior" in r.stderr
    # the learning part's table is in the summary: the whole-model row beside prior and random
    table = (out / "learn-table.md").read_text()
    assert table.splitlines()[0] in r.stderr and "| prior |" in table and "| random |" in table
    assert "| full | blip2 |" in table
    assert "cannot teach it grounding" in r.stderr.replace("\n", " ")
    again = subprocess.run(cmd + ["--no-render"], env=cli_env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ synthgen" not in again.stderr.replace("$ synthgen stats", "")  # only stats runs again
    assert "render" not in [line.split()[1] for line in again.stderr.splitlines()
                            if line.startswith("│ ") and len(line.split()) > 1]
