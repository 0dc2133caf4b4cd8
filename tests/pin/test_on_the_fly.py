"""train-pin on scenes composed in the DataLoader workers, the warm-up phase, epochs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from synthgen.errors import UserError
from synthgen.pin.training.sources import steps_per_epoch
from tests.helpers import make_backgrounds, make_index_bank
from tests.pin.fixtures import (
    one_thread,  # noqa: E402, F401 (an autouse fixture: one torch thread)
    write_shards,
)

CANVAS, GRID = 112, 8
COMPOSE = {"size": CANVAS, "grid": GRID, "a_max": 3}



@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    return build_tiny_blip2(tmp_path_factory.mktemp("vlm") / "tiny-blip2", image_size=CANVAS, lm_steps=20)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return make_index_bank(root / "bank"), make_backgrounds(root / "bg", n=3)


def _cfg(inputs, out, vlm_dir, **kw):
    from synthgen.pin.training.train import TrainConfig

    bank, bg = inputs
    base = dict(objects=str(bank), backgrounds=str(bg), compose=dict(COMPOSE), out=str(out), model=str(vlm_dir),
                batch_size=4, loader_workers=0, log_every=1, save_every=1000, progress=False, hidden=(16, 16),
                epochs=3, epoch_size=16, warmup_epochs=1)
    base.update(kw)
    return TrainConfig(**base)


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]


def test_steps_per_epoch_split_over_ranks_like_a_distributed_sampler():
    assert steps_per_epoch(60_000, 2, 64) == 468  # 160 x 468 = 74,880 steps in the paper's run
    assert steps_per_epoch(60_000, 1, 64) == 937
    with pytest.raises(UserError, match="no full batch"):
        steps_per_epoch(10, 4, 4)


def test_loss_spans_of_the_codec(vlm_dir):
    from transformers import Blip2Processor

    from synthgen.pin.models.adapters.base import TextCodec

    proc = Blip2Processor.from_pretrained(vlm_dir)
    codec = TextCodec(proc.tokenizer, 8, proc.tokenizer.convert_tokens_to_ids("<image>"))
    tok = proc.tokenizer

    def covered(span):
        ids, labels = codec.encode("teddy bear", "[14,28,56,70]", name_loss=span)
        return tok.decode([i for i, lab in zip(ids, labels) if lab != -100], skip_special_tokens=True)

    assert covered(False) == " [14,28,56,70]"
    assert covered("name") == " teddy bear [14,28,56,70]"
    assert covered("name_prompt") == " teddy bear located at [14,28,56,70]"
    with pytest.raises(ValueError):
        codec.encode("cat", "[0,0,14,14]", name_loss="everything")


@pytest.mark.slow
def test_on_the_fly_training_with_a_warmup_resumes_to_the_same_curve(inputs, vlm_dir, tmp_path):
    from synthgen.pin.training.train import train

    full = tmp_path / "full"
    res = train(_cfg(inputs, full, vlm_dir, loader_workers=1), echo=lambda *_: None)
    assert res["step"] == 12  # 3 epochs of 16 scenes at batch 4
    log = [r for r in _log(full) if "loss" in r]
    warm, main = [r for r in log if r["phase"] == "warmup"], [r for r in log if r["phase"] == "main"]
    assert [r["step"] for r in warm] == [1, 2, 3, 4] and len(main) == 8
    assert all(r["objects_per_scene"] == 3 and r["loss_span"] == "name_prompt" for r in warm)
    assert all(r["loss_span"] == "box" for r in main) and sum(r["objects_per_scene"] for r in main) / 8 < 2.9
    meta = json.loads((full / "pin.json").read_text())
    assert meta["train_source"] == "composed" and meta["compose"]["layout"]["grid"] == GRID
    assert meta["inputs"]["objects"]["count"] == 12
    # stopped after 2 epochs (in the main phase), then resumed: the same losses, step for step
    part = tmp_path / "part"
    train(_cfg(inputs, part, vlm_dir, loader_workers=1, epochs=2), echo=lambda *_: None)
    said = []
    train(_cfg(inputs, part, vlm_dir, loader_workers=1, resume=True), echo=said.append)
    assert any("resuming" in s and "step 8" in s for s in said), said
    assert [r["loss"] for r in _log(part) if "loss" in r] == [r["loss"] for r in log]
    # the compose settings fix the stream: a resume with others is refused
    with pytest.raises(UserError, match="compose settings"):
        train(_cfg(inputs, part, vlm_dir, compose=dict(COMPOSE, o_max=0.2), epochs=4, resume=True),
              echo=lambda *_: None)


def test_warmup_needs_epochs_and_warmup_shards_with_shard_input(tmp_path):
    from synthgen.pin.training.train import TrainConfig, train

    shards = write_shards(tmp_path / "s", 8, canvas=CANVAS, grid=GRID)[0].parent
    with pytest.raises(UserError, match="--warmup-epochs needs the run's length in epochs"):
        train(TrainConfig(shards=str(shards), out=str(tmp_path / "r"), warmup_epochs=2), echo=lambda *_: None)
    with pytest.raises(UserError, match="--warmup-shards"):
        train(TrainConfig(shards=str(shards), out=str(tmp_path / "r"), epochs=3, epoch_size=8, batch_size=4,
                          warmup_epochs=1), echo=lambda *_: None)
    with pytest.raises(UserError, match="not both"):
        train(TrainConfig(shards=str(shards), objects="b", backgrounds="g", out=str(tmp_path / "r")),
              echo=lambda *_: None)
    with pytest.raises(UserError, match="no training data"):
        train(TrainConfig(out=str(tmp_path / "r")), echo=lambda *_: None)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_warmup_from_shards_reads_the_warmup_set_first(tmp_path, vlm_dir):
    from synthgen.pin.training.train import TrainConfig, train

    main = write_shards(tmp_path / "main", 8, canvas=CANVAS, grid=GRID, max_objects=1)[0].parent
    warm = write_shards(tmp_path / "warm", 8, canvas=CANVAS, grid=GRID, max_objects=3, seed=5)[0].parent
    run = tmp_path / "run"
    train(TrainConfig(shards=str(main), warmup_shards=str(warm), out=str(run), model=str(vlm_dir), epochs=2,
                      epoch_size=8, warmup_epochs=1, batch_size=4, loader_workers=0, log_every=1, progress=False,
                      hidden=(16, 16), shuffle_buffer=4), echo=lambda *_: None)
    log = [r for r in _log(run) if "loss" in r]
    assert [r["phase"] for r in log] == ["warmup", "warmup", "main", "main"]
    assert all(r["objects_per_scene"] == 1 for r in log[2:]) and any(r["objects_per_scene"] > 1 for r in log[:2])
