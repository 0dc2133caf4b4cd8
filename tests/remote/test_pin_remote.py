"""train-pin streaming shards from s3:// into a run folder on s3://, resumed; eval-pin and predict
reading that run (a tiny BLIP-2 from a local folder; moto server on loopback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from synthgen.schema import LOCK_FILE
from tests.pin.fixtures import write_shards

pytestmark = pytest.mark.slow

CANVAS, GRID = 112, 8


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    return build_tiny_blip2(tmp_path_factory.mktemp("vlm") / "tiny-blip2", image_size=CANVAS, lm_steps=20)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(shards, out, vlm_dir, **kw):
    from synthgen.pin.training.train import TrainConfig

    base = dict(shards=None if shards is None else str(shards), out=str(out), model=str(vlm_dir), batch_size=4, loader_workers=0, log_every=1,
                save_every=2, progress=False, shuffle_buffer=8, hidden=(32, 32))
    base.update(kw)
    return TrainConfig(**base)


def _losses(text: str) -> list[float]:
    return [r["loss"] for r in map(json.loads, text.splitlines()) if "loss" in r]


def test_train_pin_on_s3_resumes_and_eval_pin_reads_the_run(s3, vlm_dir, tmp_path):
    from safetensors.torch import load

    from synthgen.compose.export import export_coco
    from synthgen.pin.evaluation.evaluate import evaluate_coco
    from synthgen.pin.evaluation.predict import predict
    from synthgen.pin.training.train import train

    write_shards(tmp_path / "shards", 16, canvas=CANVAS, grid=GRID, per_shard=8)
    shards = s3.upload(tmp_path / "shards", "shards")
    quiet = lambda *_: None  # noqa: E731
    train(_cfg(tmp_path / "shards", tmp_path / "full", vlm_dir, steps=4), echo=quiet)  # local, uninterrupted
    run = f"{s3.url}/runs/pin"
    said: list[str] = []
    train(_cfg(shards, run, vlm_dir, steps=2, loader_workers=1, val=shards, val_limit=4, eval_every=2), echo=said.append)
    assert s3.keys("runs/pin") == ["log.jsonl", "pin.json", "pin.safetensors", "train_state.pt"]
    with pytest.raises(Exception, match="--resume"):
        train(_cfg(shards, run, vlm_dir, steps=4), echo=quiet)
    train(_cfg(shards, run, vlm_dir, steps=4, resume=True), echo=said.append)
    assert f"resuming {run} at step 2" in said
    objs = s3.objects("runs/pin")
    assert LOCK_FILE not in objs
    full = (tmp_path / "full" / "log.jsonl").read_text()
    assert _losses(objs["log.jsonl"].decode()) == _losses(full)  # the same curve, float for float
    assert json.loads(objs["pin.json"])["step"] == 4
    want = load((tmp_path / "full" / "pin.safetensors").read_bytes())
    got = load(objs["pin.safetensors"])
    assert all(torch.equal(got[k], want[k]) for k in want)

    # eval-pin on a COCO set exported to s3, predict on an image there: both read the run from s3
    export_coco(shards, f"{s3.url}/coco", limit=4)
    m = evaluate_coco(run, f"{s3.url}/coco/instances.json", f"{s3.url}/coco/images", limit=4, batch_size=4)
    assert m["n"] == 4 and m["metrics_file"] == f"{run}/eval/instances/model/metrics.json"
    assert {"eval/instances/model/metrics.json", "eval/instances/model/preds.jsonl"} <= set(s3.keys("runs/pin"))
    r = predict(run, f"{s3.url}/coco/images/000000000.jpg", "cat", out=f"{s3.url}/boxed.png")
    assert len(r["box"]) == 4 and s3.objects()["boxed.png"][:4] == b"\x89PNG"


def test_eval_pin_cli_reads_a_run_on_s3(s3, vlm_dir, tmp_path, cli_env):
    """The CLI takes URLs for the run, --coco-json and --images (typer paths would mangle them)."""
    from synthgen.compose.export import export_coco
    from synthgen.pin.training.train import train

    write_shards(tmp_path / "shards", 8, canvas=CANVAS, grid=GRID, per_shard=8)
    shards = s3.upload(tmp_path / "shards", "shards")
    run = f"{s3.url}/run"
    train(_cfg(shards, run, vlm_dir, steps=1), echo=lambda *_: None)
    export_coco(shards, f"{s3.url}/coco", limit=2)
    env = {**cli_env, **s3.env}
    r = subprocess.run([sys.executable, "-m", "synthgen", "eval-pin", run, "--coco-json", f"{s3.url}/coco/instances.json",
                        "--images", f"{s3.url}/coco/images", "--limit", "2", "--batch-size", "2"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"{run}/eval/instances/model/metrics.json" in r.stdout
    r = subprocess.run([sys.executable, "-m", "synthgen", "eval-pin", run, "--voc", f"{s3.url}/VOC2007"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--voc reads a local folder" in r.stderr and "Traceback" not in r.stderr


def test_train_pin_composes_on_the_fly_from_a_bank_and_backgrounds_on_s3(s3, vlm_dir, tmp_path):
    """--objects/--backgrounds on s3: the DataLoader workers read the bank's cut-outs and the
    backgrounds by URL; the scenes are those of the same inputs on a local disk."""
    from synthgen.pin.training.train import train
    from tests.helpers import make_backgrounds, make_index_bank
    from tests.pin.test_on_the_fly import COMPOSE

    bank, bg = make_index_bank(tmp_path / "bank"), make_backgrounds(tmp_path / "bg", n=3)
    kw = dict(compose=dict(COMPOSE), steps=2, save_every=1000, hidden=(16, 16))
    train(_cfg(None, tmp_path / "local", vlm_dir, objects=str(bank), backgrounds=str(bg), **kw), echo=lambda *_: None)
    train(_cfg(None, f"{s3.url}/run", vlm_dir, objects=s3.upload(bank, "bank"), backgrounds=s3.upload(bg, "bg"),
               loader_workers=1, **kw), echo=lambda *_: None)
    assert _losses(s3.objects("run")["log.jsonl"].decode()) == _losses((tmp_path / "local" / "log.jsonl").read_text())
