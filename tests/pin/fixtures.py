"""Helpers for the PIN tests: tiny BLIP-2 and hand-made scene shards (no compose code)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

COLOURS = {"cat": (230, 40, 40), "dog": (40, 80, 230), "bird": (40, 200, 60)}


def make_scene(rng: np.random.Generator, canvas: int, grid: int, n_objects: int):
    """A grey canvas with ``n_objects`` non-overlapping solid rectangles on grid lines."""
    cell = canvas // grid
    img = np.full((canvas, canvas, 3), 128, np.uint8)
    objects, taken = [], []
    names = list(COLOURS)
    for k in range(n_objects):
        for _ in range(50):
            w, h = rng.integers(2, grid // 2 + 2, size=2)
            c1, r1 = rng.integers(0, grid - w + 1), rng.integers(0, grid - h + 1)
            cells = [int(c1), int(r1), int(c1 + w), int(r1 + h)]
            if all(cells[2] <= t[0] or t[2] <= cells[0] or cells[3] <= t[1] or t[3] <= cells[1]
                   for t in taken):
                break
        else:
            continue
        taken.append(cells)
        name = names[(len(objects)) % len(names)]
        box = [v * cell for v in cells]
        img[box[1]:box[3], box[0]:box[2]] = COLOURS[name]
        objects.append({"category": name, "category_id": k, "object_id": f"o{k}", "box": box,
                        "cells": cells, "visible": 1.0, "referral": name})
    return img, objects


def write_shards(out: Path, n_scenes: int, *, canvas: int = 112, grid: int = 8, per_shard: int = 8,
                 max_objects: int = 1, seed: int = 0, fmt: str = "jpg") -> list[Path]:
    """Scene shards in the ``synthgen.scene/1`` layout, written with plain ``tarfile``."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    tar = None
    for i in range(n_scenes):
        if i % per_shard == 0:
            if tar is not None:
                tar.close()
            paths.append(out / f"scenes-{len(paths):06d}.tar")
            tar = tarfile.open(paths[-1], "w")
        n = int(rng.integers(1, max_objects + 1))
        img, objects = make_scene(rng, canvas, grid, n)
        key = f"{i:09d}"
        t = 0
        meta = {"schema": "synthgen.scene/1", "key": key, "seed": seed, "width": canvas,
                "height": canvas, "grid": grid, "background": {"source": "grey", "fit": "squash"},
                "objects": objects, "target": t,
                "prompt": f"In the image is a {objects[t]['referral']} located at",
                "answer": "[" + ",".join(map(str, objects[t]["box"])) + "]"}
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG" if fmt == "jpg" else "PNG", quality=95)
        for name, data in ((f"{key}.{fmt}", buf.getvalue()), (f"{key}.json", json.dumps(meta).encode())):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tar.addfile(ti, io.BytesIO(data))
    if tar is not None:
        tar.close()
    return paths


def coco_set(tmp_path: Path) -> tuple[Path, Path]:
    """A two-image COCO set (``coco.json``, ``images/``): images of two sizes, a crowd box, a
    LVIS-style category name; its json and image folder."""
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (224, 112), (128, 60, 60)).save(images / "1.jpg")
    Image.new("RGB", (100, 150), (60, 128, 60)).save(images / "2.jpg")
    coco = {"images": [{"id": 1, "file_name": "1.jpg", "width": 224, "height": 112},
                       {"id": 2, "file_name": "2.jpg", "width": 100, "height": 150}],
            "categories": [{"id": 1, "name": "apple"}, {"id": 2, "name": "bow_(weapon)"}],
            "annotations": [
                {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 60, 40], "iscrowd": 0},
                {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100, 50, 124, 62], "iscrowd": 1},
                {"id": 3, "image_id": 2, "category_id": 2, "bbox": [10.5, 20.5, 50, 90], "iscrowd": 0}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    return tmp_path / "coco.json", images


def one_image_coco(tmp_path: Path, size: tuple[int, int] = (224, 112), box=(0, 0, 60, 40), *,
                   painted: bool = False, ext: str = "jpg") -> tuple[Path, Path]:
    """A COCO set of one grey image of ``size`` with one ``cat`` at ``box`` (x, y, w, h), drawn red
    there when ``painted``: its json and image folder."""
    images = tmp_path / "images"
    images.mkdir()
    img = np.full((size[1], size[0], 3), 128, np.uint8)
    if painted:
        x, y, w, h = box
        img[y:y + h, x:x + w] = COLOURS["cat"]
    Image.fromarray(img).save(images / f"1.{ext}")
    coco = {"images": [{"id": 1, "file_name": f"1.{ext}", "width": size[0], "height": size[1]}],
            "categories": [{"id": 1, "name": "cat"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": list(box)}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    return tmp_path / "coco.json", images


def tiny_blip2_run(tmp_path: Path, runner, steps: int = 2) -> Path:
    """A tiny random BLIP-2 (112 px) trained ``steps`` steps by ``train-pin`` (through ``runner``,
    a typer CliRunner) on 8 drawn scenes: its run folder, ``tmp_path / "run"``."""
    from synthgen.cli import app
    from synthgen.demo.tiny_blip2 import build_tiny_blip2

    vlm = build_tiny_blip2(tmp_path / "vlm", image_size=112, lm_steps=20)
    write_shards(tmp_path / "shards", 8, canvas=112, grid=8, per_shard=4)
    run = tmp_path / "run"
    r = runner.invoke(app, ["train-pin", str(tmp_path / "shards"), "--model", str(vlm), "--out", str(run),
                            "--steps", str(steps), "--batch-size", "4", "--loader-workers", "0", "--hidden", "16,16",
                            "--no-progress"])
    assert r.exit_code == 0, r.output
    return run


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two shared cores: one intra-op thread is several times faster than two here (imported by
    the modules that run the tiny VLMs)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- a stand-in VLM for multi-process (gloo) tests of the training loop ----------------------

class FakeCodec:
    """Token ids that depend on nothing: the stream still reads, shuffles and splits the shards."""

    def encode(self, referral, answer=None, name_loss=False, art=None):
        return [1, 2], [-100, 1]

    def collate(self, seqs, left_pad=False):
        import torch

        return {"input_ids": torch.tensor([s[0] for s in seqs]),
                "attention_mask": torch.ones(len(seqs), 2, dtype=torch.long),
                "labels": torch.tensor([s[1] for s in seqs])}


class FakeAdapter:
    """The adapter interface ``train`` uses, without a VLM: the loss is a function of PIN alone,
    made NaN on ``nan_rank`` from its ``nan_step``-th step on (``nan_steps`` steps)."""

    name, model_id, input_size, patch_grid, num_positions, vision_width = "blip2", "fake", 32, 4, 17, 8

    def __init__(self, rank: int, nan_rank: int = -1, nan_step: int = -1, nan_steps: int = 10**9):
        import torch

        self.device = torch.device("cpu")
        self.codec = FakeCodec()
        self.rank, self.nan_rank, self.nan_step, self.calls = rank, nan_rank, nan_step, 0
        self.nan_steps = nan_steps
        self._pin = None

    def attach_pin(self, pin):
        self._pin = pin

    def assert_frozen(self):
        pass

    def loss(self, batch):
        self.calls += 1
        loss = (self._pin().float() ** 2).mean() * batch["input_ids"].shape[0]
        if self.rank == self.nan_rank and self.nan_step <= self.calls < self.nan_step + self.nan_steps:
            loss = loss * float("nan")
        return loss


def ddp_nan_worker(rank: int, world: int, port: int, shards: str, out: str, result_dir: str,
                   nan_steps: int = 10**9) -> None:
    """One gloo rank of a toy training (no VLM) whose loss turns NaN on rank 1 only, from step 3
    on for ``nan_steps`` steps, stopping after 2 skipped steps in a row; writes ``rank{r}.txt``
    with how ``train`` ended (and the PIN weights' sum when it finished)."""
    import datetime
    import os

    import torch

    from synthgen.pin.training.train import TrainConfig, train

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world,
                                         timeout=datetime.timedelta(seconds=60))  # collectives
    cfg = TrainConfig(shards=shards, out=out, steps=6, batch_size=2, loader_workers=0, log_every=1,
                      save_every=100, progress=False, hidden=(8, 8), shuffle_buffer=4, max_skipped_steps=2)
    try:
        train(cfg, echo=lambda *_: None, adapter=FakeAdapter(rank, nan_rank=1, nan_step=3, nan_steps=nan_steps))
        from safetensors.torch import load_file

        result = f"finished {sum(float(v.sum()) for v in load_file(Path(out, 'pin.safetensors')).values())}"
    except Exception as exc:  # noqa: BLE001 - the test reads what happened
        result = f"{type(exc).__name__}: {exc}"
    Path(result_dir, f"rank{rank}.txt").write_text(result)
    # stay alive until every rank has ended, like a rank whose process lingers after its error
    # (NCCL peers do not notice an exited process): a peer still waiting in a collective hangs
    import time

    t0 = time.monotonic()
    while time.monotonic() - t0 < 90 and not all(Path(result_dir, f"rank{r}.txt").exists()
                                                  for r in range(world)):
        time.sleep(0.05)
    os._exit(0)  # skip the interpreter's teardown of torch and gloo (seconds on a busy machine)
