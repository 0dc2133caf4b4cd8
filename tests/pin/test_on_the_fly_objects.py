"""train-pin on the fly reads a prepared bank: a bank that is not is prepared once at the canvas
inside --out (``OUT/objects-SIZE``), a prepared one is read as given, and the scenes are those
composed from the bank itself."""

from __future__ import annotations

import json

import numpy as np

from tests.compose.test_prepare_objects import make_textured_bank
from tests.helpers import make_backgrounds
from tests.pin.fixtures import FakeCodec

CANVAS = 32
COMPOSE = {"size": CANVAS, "grid": 4, "a_max": 2}


def _cfg(bank, bg, out, **kw):
    from synthgen.pin.training.train import TrainConfig

    return TrainConfig(objects=str(bank), backgrounds=str(bg), compose=dict(COMPOSE), out=str(out), batch_size=2,
                       steps=3, loader_workers=0, progress=False, hidden=(8, 8), seed=3, **kw)


def _stream(cfg, n_batches: int = 3):
    from synthgen.pin.training.sources import plan_data, stream_for

    plan = plan_data(cfg, 1)
    cls, scfg = stream_for(plan.phases[-1], cfg, rank=0, world=1, image_size=CANVAS)
    it = cls(scfg, FakeCodec()).batches(0, 1)
    out = [px.permute(1, 2, 0).numpy() for _ in range(n_batches) for px in next(it)["pixels"]]
    return out, scfg.source, plan


def test_the_bank_is_prepared_once_in_the_run_folder_with_the_banks_scenes(tmp_path):
    from synthgen.bank.reader import ObjectBank
    from synthgen.compose.backgrounds import list_backgrounds
    from synthgen.compose.prepare_objects import ObjectsJob, prepare_objects
    from synthgen.compose.scene import Composer

    bank = make_textured_bank(tmp_path / "bank", sides=(60, 150))
    bg = make_backgrounds(tmp_path / "bg", n=2)
    seen, source, plan = _stream(_cfg(bank, bg, tmp_path / "run"))
    cache = tmp_path / "run" / "objects-32"
    assert source.objects == str(cache) and json.loads((cache / "manifest.json").read_text())["max_side"] == CANVAS
    assert plan.settings["prepared_objects"] == {"size": CANVAS}
    # the same scenes as from the bank itself (on the same prepared backgrounds)
    raw = Composer(source.params, ObjectBank.open(str(bank), max_side=CANVAS),
                   list_backgrounds(str(tmp_path / "run" / "backgrounds-64")).items)
    assert all(np.array_equal(raw.scene(k).image, px) for k, px in enumerate(seen))
    # a prepared bank given is read as it is (nothing prepared into the run)
    prepare_objects(ObjectsJob(source=str(bank), out=str(tmp_path / "prep"), size=CANVAS), executor="serial",
                    progress=False)
    again, source2, plan2 = _stream(_cfg(tmp_path / "prep", bg, tmp_path / "run2"))
    assert source2.objects == str(tmp_path / "prep") and not (tmp_path / "run2" / "objects-32").exists()
    assert plan2.settings["prepared_objects"] is None
    assert plan2.settings["inputs"]["objects"] == plan.settings["inputs"]["objects"]  # the same bank's files
    assert all(np.array_equal(a, b) for a, b in zip(again, seen))
