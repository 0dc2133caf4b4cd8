"""``train-pin --objects ... --categories-map`` (issue 19 item 7): the scenes composed on the fly
name the bank's categories as compose would with the same map; the map is part of the run's
resume settings; without --objects it is refused."""

from __future__ import annotations

import pytest

from synthgen.errors import UserError
from tests.compose.test_categories import FLAT, MAP, _flat
from tests.helpers import make_backgrounds
from tests.pin.fixtures import FakeCodec


class Recording(FakeCodec):
    def __init__(self):
        self.referrals = []

    def encode(self, referral, answer=None, name_loss=False, art=None):
        self.referrals.append(referral)
        return super().encode(referral, answer, name_loss, art)


def _cfg(bank, bg, out, **kw):
    from synthgen.pin.training.train import TrainConfig

    return TrainConfig(objects=str(bank), backgrounds=str(bg), compose={"size": 32, "grid": 4, "a_max": 2},
                       out=str(out), batch_size=4, steps=3, loader_workers=0, progress=False, hidden=(8, 8), seed=3,
                       **kw)


def _referrals(cfg, batches: int = 6) -> list[str]:
    from synthgen.pin.training.sources import plan_data, stream_for

    plan = plan_data(cfg, 1)
    cls, scfg = stream_for(plan.phases[-1], cfg, rank=0, world=1, image_size=32)
    codec = Recording()
    it = cls(scfg, codec).batches(0, 1)
    for _ in range(batches):
        next(it)
    return codec.referrals, plan


def test_the_map_names_the_categories_of_scenes_composed_on_the_fly(tmp_path):
    bank = _flat(tmp_path / "flat", FLAT)
    bg = make_backgrounds(tmp_path / "bg", n=2)
    m = tmp_path / "names.yaml"
    m.write_text("".join(f"{k}: {v}\n" for k, v in MAP.items()))
    mapped, plan = _referrals(_cfg(bank, bg, tmp_path / "run", categories_map=str(m)))
    raw, plan_raw = _referrals(_cfg(bank, bg, tmp_path / "raw"))
    said = " ".join(mapped)
    assert any(w in said for w in ("sheep", "bus", "teacup")) and not any(w in said for w in ("md", "jarno", "rollandin"))
    assert any(w in " ".join(raw) for w in ("md", "jarno", "rollandin"))  # (the same scenes without the map)
    from synthgen.bank.names import map_identity
    from synthgen.pin.training.checkpoint import resume_conflicts

    assert plan.settings["categories_map"] == map_identity(str(m)) and plan_raw.settings["categories_map"] is None
    assert any(c.startswith("--categories-map") for c in resume_conflicts(plan.settings, plan_raw.settings))


def test_the_map_needs_objects(tmp_path):
    from synthgen.errors import raise_problems
    from synthgen.pin.training.train import TrainConfig

    with pytest.raises(UserError, match="--categories-map names the categories of --objects"):
        raise_problems(TrainConfig(shards=str(tmp_path), categories_map="coco").problems())
