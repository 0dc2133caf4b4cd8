"""train-pin on the fly reads prepared backgrounds: raw ones are prepared once inside --out
(``OUT/backgrounds-SIZE``, resumable, by rank 0 alone), prepared ones are read as given, and the
scenes are those ``synthgen compose --prepare-backgrounds`` makes with the same seed."""

from __future__ import annotations

import dataclasses
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from synthgen.errors import UserError
from tests.helpers import make_backgrounds, make_index_bank
from tests.pin.fixtures import FakeAdapter, FakeCodec

CANVAS = 32  # FakeAdapter's input size: prepared at 64
COMPOSE = {"size": CANVAS, "grid": 4, "a_max": 2}
SEED = 3


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    return make_index_bank(root / "bank"), make_backgrounds(root / "bg", n=3, size=(640, 480))


class RecordingAdapter(FakeAdapter):
    """FakeAdapter that keeps every batch the training loop gives it."""

    def __init__(self, rank: int = 0):
        super().__init__(rank)
        self.seen: list[tuple[str, np.ndarray]] = []

    def loss(self, batch):
        for key, px in zip(batch["keys"], batch["pixels"]):
            self.seen.append((key, px.permute(1, 2, 0).numpy().copy()))
        return super().loss(batch)


def _cfg(inputs, out, **kw):
    from synthgen.pin.training.train import TrainConfig

    bank, bg = inputs
    base = dict(objects=str(bank), backgrounds=str(bg), compose=dict(COMPOSE), out=str(out), batch_size=2, steps=3,
                loader_workers=0, log_every=1, save_every=100, progress=False, hidden=(8, 8), seed=SEED)
    base.update(kw)
    return TrainConfig(**base)


def _compose_prepared(inputs, out: Path, n: int) -> dict[str, bytes]:
    """``synthgen compose --prepare-backgrounds`` of the run's main-phase seed: its shard members."""
    from synthgen.commands.compose import scene_params
    from synthgen.compose.run import ComposeJob, run_compose
    from synthgen.pin.training.scenes import phase_seed

    bank, bg = inputs
    params = dataclasses.replace(scene_params(dict(COMPOSE)), seed=phase_seed(SEED, 1))
    run_compose(ComposeJob(objects=str(bank), backgrounds=str(bg), out=str(out), num_samples=n, params=params,
                           prepare_backgrounds=True), executor="serial", progress=False)
    members = {}
    for shard in sorted(out.glob("scenes-*.tar")):
        with tarfile.open(shard) as tf:
            members.update({m.name: tf.extractfile(m).read() for m in tf})
    return members


def _jpeg(pixels: np.ndarray) -> bytes:
    from synthgen.images import encode_jpeg

    return encode_jpeg(pixels, 95)  # compose's --jpeg-quality


def _stream_scenes(cfg, n_batches: int = 2) -> tuple[list[np.ndarray], object]:
    """The first scenes of the main phase's stream, built as train-pin builds it."""
    from synthgen.pin.training.sources import plan_data, stream_for

    plan = plan_data(cfg, 1)
    cls, scfg = stream_for(plan.phases[-1], cfg, rank=0, world=1, image_size=CANVAS)
    it = cls(scfg, FakeCodec()).batches(0, 1)
    out = []
    for _ in range(n_batches):
        out += [px.permute(1, 2, 0).numpy() for px in next(it)["pixels"]]
    return out, scfg.source


def _stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("backgrounds-*")}


def test_raw_backgrounds_are_prepared_once_in_the_run_folder_and_give_composes_scenes(inputs, tmp_path):
    """End to end: the scenes train-pin trains on are byte for byte those of compose
    --prepare-backgrounds; the prepared backgrounds live in --out, and a resumed run reuses them."""
    from synthgen.bank.reader import ObjectBank
    from synthgen.commands.compose import scene_params
    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.compose.scene import Composer
    from synthgen.pin.training.scenes import phase_seed
    from synthgen.pin.training.train import train

    run = tmp_path / "run"
    first = RecordingAdapter()
    said: list[str] = []
    train(_cfg(inputs, run, loader_workers=1), echo=said.append, adapter=first)  # a real worker process
    cache = run / "backgrounds-64"
    assert (cache / "manifest.json").is_file() and (cache / "backgrounds-000000_stats.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing written outside --out
    assert any(f"prepared once into {cache}" in s for s in said), said
    assert json.loads((run / "pin.json").read_text())["prepared_backgrounds"] == {"size": 64}
    stamps = _stamps(cache)

    later = RecordingAdapter()
    train(_cfg(inputs, run, loader_workers=1, steps=5, resume=True), echo=lambda *_: None, adapter=later)
    assert _stamps(cache) == stamps  # not prepared again

    members = _compose_prepared(inputs, tmp_path / "shards", 10)
    seen = first.seen + later.seen
    assert [k for k, _ in seen] == [f"{k:09d}" for k in range(10)]
    for key, px in seen:
        assert _jpeg(px) == members[f"{key}.jpg"], key
    # which is not what the raw backgrounds give: the workers read the prepared ones
    params = dataclasses.replace(scene_params(dict(COMPOSE)), seed=phase_seed(SEED, 1))
    raw = Composer(params, ObjectBank.open(str(inputs[0]), max_side=CANVAS), list_backgrounds(str(inputs[1])).items)
    assert sum(not np.array_equal(raw.scene(k).image, px) for k, (_, px) in enumerate(seen)) >= 5


def test_prepared_backgrounds_given_are_read_as_they_are(inputs, tmp_path):
    from synthgen.compose.prepare import PrepareJob, prepare_backgrounds
    from synthgen.pin.training.sources import plan_data

    raw_scenes, _ = _stream_scenes(_cfg(inputs, tmp_path / "raw-run"))
    prepared = tmp_path / "bg-64"
    prepare_backgrounds(PrepareJob(source=str(inputs[1]), out=str(prepared), size=64), executor="serial",
                        progress=False)
    stamps = _stamps(prepared)
    cfg = _cfg(inputs, tmp_path / "run", backgrounds=str(prepared))
    assert plan_data(cfg, 1).settings["prepared_backgrounds"] is None
    scenes, source = _stream_scenes(cfg)
    assert not (tmp_path / "run" / "backgrounds-64").exists()  # nothing prepared again (only the bank, objects-32)
    assert _stamps(prepared) == stamps
    assert all(item.startswith(str(prepared)) for item in source.backgrounds)
    assert all(np.array_equal(a, b) for a, b in zip(scenes, raw_scenes)) and len(scenes) == 4
    # a prepare-backgrounds folder that is not finished is refused, not read in part
    (prepared / "manifest.json").unlink()
    with pytest.raises(UserError, match="not finished"):
        plan_data(cfg, 1)


def test_an_interrupted_preparation_is_finished_by_the_next_run_and_never_read_half_done(inputs, tmp_path,
                                                                                         monkeypatch):
    import synthgen.compose.prepare as prepare

    reference, _ = _stream_scenes(_cfg(inputs, tmp_path / "ref"))
    run = tmp_path / "run"
    cfg = _cfg(inputs, run)
    real, calls = prepare.prepare_one, []

    def dies_on_the_second(item, size, quality):
        calls.append(item)
        if len(calls) == 2:
            raise OSError("disk went away")
        return real(item, size, quality)

    monkeypatch.setattr(prepare, "prepare_one", dies_on_the_second)
    with pytest.raises(UserError, match="backgrounds-000000.tar: .*disk went away"):
        _stream_scenes(cfg)
    monkeypatch.setattr(prepare, "prepare_one", real)
    cache = run / "backgrounds-64"
    assert (cache / "prepared.json").is_file() and not list(cache.glob("*_stats.json"))
    # as a kill mid-write could leave it: a truncated shard without its done marker
    (cache / "backgrounds-000000.tar").write_bytes(b"\0" * 700)
    (cache / ".backgrounds-000000.tar.synthgen-tmp").write_bytes(b"half")
    scenes, source = _stream_scenes(cfg)  # the next run finishes the preparation first
    assert all(np.array_equal(a, b) for a, b in zip(scenes, reference)) and len(scenes) == 4
    assert len(source.backgrounds) == 3 and (cache / "backgrounds-000000_stats.json").is_file()
    assert not list(cache.glob(".*synthgen-tmp"))


def test_raw_backgrounds_none_of_which_is_usable_are_one_line(inputs, tmp_path):
    bg = tmp_path / "bg"
    bg.mkdir()
    (bg / "a.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    (bg / "b.png").write_bytes(b"nope")
    with pytest.raises(UserError, match=r"none of its 2 images is usable \(2 unreadable\)"):
        _stream_scenes(_cfg(inputs, tmp_path / "run", backgrounds=str(bg)))


def _ddp_worker(rank: int, world: int, port: int, bank: str, bg: str, out: str, result_dir: str) -> None:
    """One gloo rank of an on-the-fly training on raw backgrounds; writes what it saw to
    ``rank{r}.json``: its calls of prepare_backgrounds, how the run ended, and what a failure of
    rank 0's preparation does on this rank."""
    import datetime
    import os
    import time

    import synthgen.compose.prepare as prepare
    from synthgen.pin.training.scenes import on_main_rank
    from synthgen.pin.training.train import TrainConfig, train

    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    real, calls = prepare.prepare_backgrounds, []

    def slow_prepare(*args, **kw):  # a rank that did not wait would list a folder not yet there
        calls.append(time.time())
        time.sleep(2)
        return real(*args, **kw)

    prepare.prepare_backgrounds = slow_prepare
    result = {"rank": rank}
    try:
        cfg = TrainConfig(objects=bank, backgrounds=bg, compose=dict(COMPOSE), out=out, steps=2, batch_size=2,
                          loader_workers=0, log_every=1, save_every=100, progress=False, hidden=(8, 8))
        result["train"] = train(cfg, echo=lambda *_: None, adapter=FakeAdapter(rank))["step"]
    except Exception as exc:  # noqa: BLE001 - the test reads what happened
        result["train"] = f"{type(exc).__name__}: {exc}"
    result["prepare_calls"] = len(calls)

    def boom():
        raise UserError("the disk is full")
    try:
        on_main_rank(boom, rank, world)
        result["failure"] = "not raised"
    except UserError as exc:
        result["failure"] = str(exc)
    Path(result_dir, f"rank{rank}.json").write_text(json.dumps(result))
    os._exit(0)  # skip the interpreter's teardown of torch and gloo


def test_under_ddp_rank_0_alone_prepares_and_the_others_wait(inputs, tmp_path):
    import multiprocessing as mp
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = tmp_path / "run"
    procs = [ctx.Process(target=_ddp_worker, args=(r, 2, port, str(inputs[0]), str(inputs[1]), str(out), str(tmp_path)))
             for r in range(2)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(timeout=240)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["train"] for r in results] == [2, 2], results
    assert [r["prepare_calls"] for r in results] == [1, 0]
    assert (out / "backgrounds-64" / "manifest.json").is_file()
    assert results[0]["failure"] == "the disk is full"
    assert results[1]["failure"] == "rank 0 could not prepare the backgrounds: the disk is full"


def test_the_stream_refuses_a_source_without_backgrounds(inputs):
    from synthgen.commands.compose import scene_params
    from synthgen.pin.training.scenes import ComposedConfig, ComposedStream, ComposeSource

    src = ComposeSource(str(inputs[0]), [], scene_params(dict(COMPOSE)))
    stream = ComposedStream(ComposedConfig(shards=[], batch_size=2, source=src), FakeCodec())
    with pytest.raises(ValueError, match="no backgrounds"):
        next(stream.batches(0, 1))

