"""End-to-end PIN tests on a tiny random-weight BLIP-2 saved to disk and loaded by path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from synthgen.errors import UserError  # noqa: E402
from tests.pin.fixtures import (
    one_image_coco,
    one_thread,  # noqa: E402, F401 (an autouse fixture: one torch thread)
    write_shards,  # noqa: E402
)

pytestmark = pytest.mark.slow

CANVAS, GRID = 112, 8



@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    return build_tiny_blip2(tmp_path_factory.mktemp("vlm") / "tiny-blip2", image_size=CANVAS)


def _cfg(shards, out, vlm_dir, **kw):
    from synthgen.pin.training.train import TrainConfig

    base = dict(shards=str(shards), out=str(out), model=str(vlm_dir), batch_size=16, loader_workers=0,
                log_every=1, save_every=1000, progress=False, shuffle_buffer=16, hidden=(512, 768))
    base.update(kw)
    return TrainConfig(**base)


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "log.jsonl").read_text().splitlines()) if "loss" in r]


def test_pin_off_restores_the_vlm_exactly(vlm_dir):
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.models.module import PIN

    a = load_adapter("blip2", str(vlm_dir))
    assert (a.input_size, a.patch_grid, a.num_positions) == (CANVAS, 8, 65)
    px = torch.randint(0, 256, (2, 3, CANVAS, CANVAS), dtype=torch.uint8)
    enc = a.codec.collate([a.codec.encode("cat"), a.codec.encode("dog")])
    base = a.logits(px, enc["input_ids"], enc["attention_mask"])
    base_gen = a.generate(px, ["cat", "dog"])
    pin = PIN(a.num_positions, a.vision_width)
    a.attach_pin(pin)
    with_pin = a.logits(px, enc["input_ids"], enc["attention_mask"])
    assert not torch.allclose(with_pin, base)  # PIN changes what the LM sees
    with a.pin_disabled():
        assert torch.equal(a.logits(px, enc["input_ids"], enc["attention_mask"]), base)
        assert a.generate(px, ["cat", "dog"]) == base_gen
    assert a.pin_enabled
    a.detach_pin()
    assert torch.equal(a.logits(px, enc["input_ids"], enc["attention_mask"]), base)


def test_only_pin_gets_gradients(vlm_dir):
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.models.module import PIN

    a = load_adapter("blip2", str(vlm_dir))
    a.assert_frozen()
    pin = PIN(a.num_positions, a.vision_width, hidden=(32, 32))
    a.attach_pin(pin)
    ids, labels = a.codec.encode("cat", "[14,28,56,70]")
    n = sum(1 for x in labels if x != -100)
    assert labels[:-n] == [-100] * (len(labels) - n)  # image tokens and prompt masked
    assert labels[-n:] == ids[-n:] and ids[-1] == a.codec.tokenizer.eos_token_id
    assert a.codec.decode(ids[-n:]).strip() == "[14,28,56,70]"  # loss on the box (+ EOS) only
    assert a.codec.decode(ids[: len(ids) - n]).strip() == "In the image is a cat located at"
    _, with_name = a.codec.encode("cat", "[14,28,56,70]", name_loss=True)
    assert sum(1 for x in with_name if x != -100) > n
    batch = a.codec.collate([(ids, labels)])
    batch["pixels"] = torch.zeros(1, 3, CANVAS, CANVAS, dtype=torch.uint8)
    a.loss(batch).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pin.parameters())
    assert all(p.grad is None for _, p in a.vlm_parameters())


def test_pin_learns_and_vlm_stays_bit_identical(vlm_dir, shards, tmp_path):
    from synthgen.pin.evaluation.evaluate import evaluate_scenes
    from synthgen.pin.models.adapters import load_adapter
    from synthgen.pin.models.module import PIN
    from synthgen.pin.training.train import train
    from synthgen.shards import find_shards as list_shards

    a = load_adapter("blip2", str(vlm_dir))
    before = {k: v.clone() for k, v in a.model.state_dict().items()}
    steps = 500
    res = train(_cfg(shards, tmp_path / "run", vlm_dir, steps=steps, log_every=10), echo=lambda *_: None,
                adapter=a)
    after = a.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # VLM untouched, bit for bit
    a.assert_frozen()

    losses = _losses(tmp_path / "run")
    assert len(losses) == steps // 10
    assert losses[-1] <= 0.5 * losses[0], losses  # the loss falls by half

    val = list_shards(str(shards))
    trained = evaluate_scenes(a, val, canvas=CANVAS, grid=GRID, limit=16)
    a.detach_pin()
    torch.manual_seed(0)  # the trained PIN's initialisation (TrainConfig.seed = 0)
    a.attach_pin(PIN(a.num_positions, a.vision_width))
    untrained = evaluate_scenes(a, val, canvas=CANVAS, grid=GRID, limit=16)
    assert trained["miou"] > untrained["miou"] + 0.05, (trained, untrained)
    assert trained["unparseable"] < untrained["unparseable"]
    assert res["step"] == steps


def test_encoder_decoder_blip2_is_refused(vlm_dir, tmp_path):
    """A BLIP-2 with an encoder-decoder LM (the Flan-T5 checkpoints) is refused up front: the
    prompt/label layout assumes a decoder-only LM."""
    import shutil

    from transformers import Blip2Config

    from synthgen.pin.models.adapters import load_adapter

    t5_dir = shutil.copytree(vlm_dir, tmp_path / "blip2-t5")
    cfg = Blip2Config.from_pretrained(vlm_dir)
    t5 = Blip2Config(vision_config=cfg.vision_config.to_dict(), qformer_config=cfg.qformer_config.to_dict(),
                     text_config=dict(model_type="t5", vocab_size=cfg.text_config.vocab_size, d_model=64,
                                      d_kv=32, d_ff=128, num_layers=1, num_heads=2),
                     num_query_tokens=cfg.num_query_tokens, image_token_index=cfg.image_token_index)
    assert not t5.use_decoder_only_language_model
    t5.save_pretrained(t5_dir)
    with pytest.raises(UserError, match="decoder-only"):
        load_adapter("blip2", str(t5_dir))


def test_checkpoint_round_trip(vlm_dir, shards, tmp_path):
    from safetensors.torch import load_file

    from synthgen.pin.training.checkpoint import load_run, load_state
    from synthgen.pin.training.train import train

    run = tmp_path / "run"
    train(_cfg(shards, run, vlm_dir, steps=3, activation="swiglu", table="learned", hidden=(64, 48)),
          echo=lambda *_: None)
    meta = json.loads((run / "pin.json").read_text())
    assert meta["step"] == 3 and meta["canvas"] == CANVAS and meta["grid"] == GRID
    assert meta["model"] == str(vlm_dir) and meta["vlm"] == "blip2"
    assert meta["pin"] == {"num_positions": 65, "out_dim": 32, "table": "learned", "table_dim": 64,
                           "hidden": [64, 48], "activation": "swiglu"}
    assert not list(run.glob(".*tmp*"))  # atomic writes leave no temp files
    assert not (run / ".synthgen.lock").exists()  # nor the run's lock
    weights = load_file(str(run / "pin.safetensors"))
    assert "table" in weights  # learned table is saved
    state = load_state(run)
    assert state["step"] == 3 and state["optimizer"]["state"]

    _, adapter = load_run(run)
    pin = adapter._pin
    assert all(torch.equal(pin.state_dict()[k].cpu(), v) for k, v in weights.items())
    px = torch.randint(0, 256, (1, 3, CANVAS, CANVAS), dtype=torch.uint8)
    out1 = adapter.generate(px, ["cat"])
    _, adapter2 = load_run(run)
    assert adapter2.generate(px, ["cat"]) == out1


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_reproduces_the_uninterrupted_curve(vlm_dir, shards, tmp_path, workers):
    from synthgen.pin.training.train import train

    kw = dict(hidden=(64, 64), batch_size=4, loader_workers=workers, save_every=3, shuffle_buffer=8)
    train(_cfg(shards, tmp_path / "full", vlm_dir, steps=8, **kw), echo=lambda *_: None)
    train(_cfg(shards, tmp_path / "part", vlm_dir, steps=3, **kw), echo=lambda *_: None)
    with pytest.raises(UserError, match="--resume"):
        train(_cfg(shards, tmp_path / "part", vlm_dir, steps=8, **kw), echo=lambda *_: None)
    with open(tmp_path / "part" / "log.jsonl", "a") as f:  # as if it had crashed after step 4
        f.write(json.dumps({"step": 4, "loss": 99.0}) + "\n")
    train(_cfg(shards, tmp_path / "part", vlm_dir, steps=8, resume=True, **kw), echo=lambda *_: None)
    full, part = _losses(tmp_path / "full"), _losses(tmp_path / "part")
    assert len(full) == len(part) == 8
    assert part == full  # identical floats, not just close
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "pin.safetensors"))
    b = load_file(str(tmp_path / "part" / "pin.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("killed_at", ["train_state.pt", "pin.safetensors", "pin.json"])
def test_resume_after_a_kill_mid_checkpoint(vlm_dir, shards, tmp_path, monkeypatch, killed_at):
    """A kill before any one of the checkpoint files of step 6 is written: --resume continues
    (from step 6 when train_state.pt was written, else from step 3) along the same curve."""
    from safetensors.torch import load_file

    import synthgen.pin.training.checkpoint as C
    import synthgen.pin.training.train as T

    kw = dict(hidden=(16, 16), batch_size=4, loader_workers=0, save_every=3, shuffle_buffer=8)
    T.train(_cfg(shards, tmp_path / "full", vlm_dir, steps=8, **kw), echo=lambda *_: None)

    real = C.atomic_write_with
    calls = []

    def killed(path, write):
        calls.append(Path(path).name)
        if Path(path).name == killed_at and calls.count(killed_at) == 2:  # the step-6 checkpoint
            raise KeyboardInterrupt("killed")
        return real(path, write)

    monkeypatch.setattr(C, "atomic_write_with", killed)
    with pytest.raises(KeyboardInterrupt):
        T.train(_cfg(shards, tmp_path / "part", vlm_dir, steps=8, **kw), echo=lambda *_: None)
    monkeypatch.setattr(C, "atomic_write_with", real)
    (tmp_path / "part" / f".{killed_at}.99999.synthgen-tmp").write_bytes(b"half")  # a kill mid-write
    said = []
    T.train(_cfg(shards, tmp_path / "part", vlm_dir, steps=8, resume=True, **kw), echo=said.append)
    assert f"resuming {tmp_path / 'part'} at step {3 if killed_at == 'train_state.pt' else 6}" in said
    assert _losses(tmp_path / "part") == _losses(tmp_path / "full")
    a = load_file(str(tmp_path / "full" / "pin.safetensors"))
    b = load_file(str(tmp_path / "part" / "pin.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "part" / "pin.json").read_text())["step"] == 8
    assert not list((tmp_path / "part").glob(".*tmp*"))


def test_resume_refuses_changed_settings(vlm_dir, shards, tmp_path, monkeypatch):
    from synthgen.pin.training.train import train

    kw = dict(hidden=(16, 16), batch_size=4, loader_workers=0, shuffle_buffer=8, steps=2)
    run = tmp_path / "run"
    train(_cfg(shards, run, vlm_dir, **kw), echo=lambda *_: None)
    meta = json.loads((run / "pin.json").read_text())
    assert (meta["workers"], meta["shuffle_buffer"], meta["train_shard_count"]) == (0, 8, 2)
    before = (run / "pin.json").read_text()

    more = tmp_path / "more"
    write_shards(more, 24, canvas=CANVAS, grid=GRID, per_shard=8)
    monkeypatch.setenv("WORLD_SIZE", "2")  # refused before any process group is started
    changed = dict(kw, seed=5, batch_size=7, lr=0.5, loader_workers=2, shuffle_buffer=3, name_loss=True,
                   steps=4, resume=True)
    with pytest.raises(UserError) as exc:
        train(_cfg(more, run, vlm_dir, **changed), echo=lambda *_: None)
    msg = str(exc.value)
    for part in ("--seed 0 -> 5", "--batch-size 4 -> 7", "--lr 0.001 -> 0.5", "world size 1 -> 2",
                 "--loader-workers 0 -> 2", "--shuffle-buffer 8 -> 3", "--name-loss False -> True",
                 f"shards {shards} (2 shards) -> {more} (3 shards)"):
        assert part in msg, msg
    assert "\n" not in msg
    assert (run / "pin.json").read_text() == before  # untouched
    monkeypatch.delenv("WORLD_SIZE")

    # what may change: --steps, and 0 <-> 1 workers (both read the stream in one split)
    res = train(_cfg(shards, run, vlm_dir, **dict(kw, steps=3, loader_workers=1, resume=True)), echo=lambda *_: None)
    assert res["step"] == 3


def test_canvas_mismatch_is_a_clear_error(vlm_dir, tmp_path):
    from typer.testing import CliRunner

    from synthgen.cli import app
    from synthgen.pin.training.train import train

    write_shards(tmp_path / "s64", 2, canvas=64, grid=4)
    with pytest.raises(UserError, match=r"64x64 canvas but .* takes 112x112"):
        train(_cfg(tmp_path / "s64", tmp_path / "run", vlm_dir, steps=1), echo=lambda *_: None)
    r = CliRunner().invoke(app, ["train-pin", str(tmp_path / "s64"), "--model", str(vlm_dir),
                                 "--out", str(tmp_path / "run2"), "--steps", "1", "--loader-workers", "0"])
    assert r.exit_code == 2
    assert "64x64" in r.output and "112x112" in r.output and "Traceback" not in r.output


def test_user_error_in_a_dataloader_worker_is_one_line(vlm_dir, tmp_path):
    import io
    import multiprocessing
    import tarfile

    from typer.testing import CliRunner

    from synthgen.cli import app

    # a shard whose scenes but the first have no objects: the worker skips and counts them, and
    # stops with a UserError once more than --max-bad-samples (and 10) are bad
    shard = write_shards(tmp_path / "ok", 14, canvas=CANVAS, grid=GRID, per_shard=14)[0]
    (tmp_path / "bad").mkdir()
    with tarfile.open(shard) as src, tarfile.open(tmp_path / "bad" / "scenes-000000.tar", "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name.endswith(".json") and not m.name.startswith("000000000."):
                data = json.dumps(dict(json.loads(data), objects=[])).encode()
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    r = CliRunner().invoke(app, ["train-pin", str(tmp_path / "bad"), "--model", str(vlm_dir),
                                 "--out", str(tmp_path / "run"), "--steps", "1", "--batch-size", "2",
                                 "--loader-workers", "1", "--hidden", "16,16", "--no-progress",
                                 "--max-bad-samples", "0", "--shuffle-buffer", "1"])
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and "Traceback" not in r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "worker" not in err[0], err
    assert re.fullmatch(r"error: \S+scenes-000000\.tar: scene 0000000\d\d has no objects — 11 of 1[12] "
                        r"samples read are bad \(no_objects 11\), more than --max-bad-samples 0 allows; "
                        r"fix or remove those shards, or raise --max-bad-samples", err[0]), err
    # the worker is stopped at once (left to the garbage collector its shutdown waited 5 s)
    assert not multiprocessing.active_children()


def test_cli_train_eval_predict(vlm_dir, shards, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from synthgen.cli import app

    runner = CliRunner()
    run = tmp_path / "run"
    r = runner.invoke(app, ["train-pin", str(shards), "--model", str(vlm_dir), "--out", str(run),
                            "--steps", "4", "--batch-size", "4", "--loader-workers", "0", "--hidden", "64,64",
                            "--val", str(shards), "--eval-every", "2", "--val-limit", "4",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "parameters" in r.output and "val mIoU" in r.output
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log if "val_miou" in x] == [2, 4]
    assert all(x["samples_per_s"] > 0 for x in log if "loss" in x)

    # a one-image COCO-format set
    coco, images = one_image_coco(tmp_path)
    r = runner.invoke(app, ["eval-pin", str(run), "--coco-json", str(coco),
                            "--images", str(images), "--out", str(tmp_path / "ev" / "preds.jsonl")])
    assert r.exit_code == 0, r.output
    rec = json.loads((tmp_path / "ev" / "preds.jsonl").read_text())
    # squashed 224x112 -> 112x112; at canvas 112 the buckets are 16..48 px sides (s = 0.5)
    assert rec["gt_box"] == [0, 0, 30, 40] and rec["bucket"] == "medium"
    assert set(rec) >= {"image_id", "category", "query", "pred_box", "gt_box", "iou", "bucket"}
    assert "mIoU" in r.output

    r = runner.invoke(app, ["predict", str(run), str(images / "1.jpg"), "cat", "-o", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    assert r.output.strip().splitlines()[0].startswith("[")
    assert Image.open(tmp_path / "p.png").size == (224, 112)

    r = runner.invoke(app, ["eval-pin", str(tmp_path), "--coco-json", str(coco),
                            "--images", str(images)])
    assert r.exit_code == 2 and "not a PIN run" in r.output


def test_predict_marks_a_fallback_box_and_strict_exits_3(vlm_dir, shards, tmp_path, cli_env):
    """The tiny VLM's answer holds no box: predict says so (line, --json, picture) and --strict exits 3."""
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from synthgen.cli import app
    from synthgen.pin.evaluation.predict import BOX_COLOUR, FALLBACK_COLOUR

    runner = CliRunner()
    run = tmp_path / "run"
    r = runner.invoke(app, ["train-pin", str(shards), "--model", str(vlm_dir), "--out", str(run), "--steps", "1",
                            "--batch-size", "2", "--loader-workers", "0", "--hidden", "16,16", "--no-progress"])
    assert r.exit_code == 0, r.output
    image = tmp_path / "photo.png"
    Image.new("RGB", (224, 112), (40, 90, 160)).save(image)
    args = ["predict", str(run), str(image), "cat"]

    r = runner.invoke(app, [*args, "--json", "-o", str(tmp_path / "p.png")])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["parsed"] is False and res["fallback"] is True, res
    assert isinstance(res["output"], str) and "[" not in res["output"]
    assert res["box"] == [0.0, 0.0, 28.0, 14.0]  # the one-cell box at the origin, in the image's pixels
    px = np.asarray(Image.open(tmp_path / "p.png").convert("RGB")).reshape(-1, 3)
    assert (px == FALLBACK_COLOUR).all(axis=1).any() and not (px == BOX_COLOUR).all(axis=1).any()

    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "fallback: no box in answer" in r.stdout
    r = runner.invoke(app, [*args, "--strict"])
    assert r.exit_code == 3, r.output
    assert r.stdout.startswith("[0,0,28,14]") and "fallback" in r.stdout
    r = runner.invoke(app, [*args, "--strict", "--json"])
    assert r.exit_code == 3 and json.loads(r.stdout)["fallback"] is True

    # in a recipe, that exit 3 is the step's result, not a failure: the next step runs and the
    # run ends with 3; a second run checks the strict step again and skips the other
    import subprocess
    import sys

    import yaml
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"run": {"vars": {"out": str(tmp_path / "runout")}, "steps": [
        {"predict": {"run": str(run), "image": str(image), "text": "cat", "strict": True,
                     "out": "{out}/strict.png"}},
        {"predict": {"run": str(run), "image": str(image), "text": "cat", "out": "{out}/plain.png"}},
    ]}}))
    cmd = [sys.executable, "-m", "synthgen", "run", str(recipe)]
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "[1] predict: no box (exit 3); the run goes on" in r.stderr
    assert (tmp_path / "runout" / "strict.png").is_file() and (tmp_path / "runout" / "plain.png").is_file()
    rows = {line.split("│")[1].strip(): line for line in r.stderr.splitlines() if line.startswith("│")}
    assert "no box" in rows["1"] and " ran " in rows["2"] and "failed" not in r.stderr
    r = subprocess.run(cmd, env=cli_env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 3 and r.stderr.count("done, skipped") == 1, r.stderr[-3000:]
    assert "[2] plain: done, skipped" in r.stderr or "[2] predict: done, skipped" in r.stderr
